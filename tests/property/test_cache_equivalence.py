"""Cached consent state answers exactly as the ledger does (issue 7: every fast path is
checked against the plain path).

Random interleavings of writes on two replicas that share one ledger and one real Redis,
each with a tiny local cache (so entries are evicted and re-read all the time), reads with
and without consistency tokens, ledger polls, and Redis flushes (a restart that lost
everything). After each read, the state a replica answers from must equal the ledger's,
and so must the decision the engine makes from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentauthz.consent import (
    ConsentService,
    EntryCipher,
    LedgerPoller,
    LocalCache,
    MemoryLedger,
    RedisStateCache,
)
from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    SubjectState,
    SubjectUpsert,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.pseudonym import Pseudonymizer
from tests.redis_server import RedisServer

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SUBJECTS = ("s0", "s1", "s2")
PURPOSES = ("marketing.communications.email", "marketing", "analytics")
KEYS = Pseudonymizer(b"q" * 32)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def clock() -> datetime:
    return NOW


op = st.one_of(
    # collected_at hours before NOW, independent of the order of writes: records arrive
    # out of event order, and the same instant twice ties a grant with a withdrawal.
    st.tuples(st.just("write"), st.integers(0, 1), st.sampled_from(SUBJECTS),
              st.sampled_from((ConsentAction.GRANT, ConsentAction.WITHDRAW,
                               ConsentAction.OBJECT)), st.sampled_from(PURPOSES),
              st.sampled_from((72, 48, 24, 24, 1))),
    st.tuples(st.just("upsert"), st.integers(0, 1), st.sampled_from(SUBJECTS),
              st.sampled_from(("DE", "US-CA", "FR"))),
    st.tuples(st.just("read"), st.integers(0, 1), st.sampled_from(SUBJECTS), st.booleans()),
    st.tuples(st.just("poll"), st.integers(0, 1)),
    st.tuples(st.just("flush"),),
)


def events_of(state: SubjectState) -> list[tuple[str, str, str]]:
    return [(e.record_id, e.action.value, e.purpose) for e in state.events]


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=40))
def test_cached_state_equals_the_ledger(ops: list[tuple[object, ...]], redis_url: str,
                                        shipped_policy: CompiledPolicy) -> None:
    ledger = MemoryLedger()
    # As the App does: keys carry the ledger's identity, and each example has a new ledger
    # (the Redis the previous examples left behind is another ledger's).
    prefix = f"eq:{ledger.identity()}:"
    replicas = []
    for _ in range(2):
        cache = LocalCache(2, watermark=0)
        poller = LedgerPoller(ledger, cache, max_staleness=3600.0)
        shared = RedisStateCache(redis_url, clock, prefix=prefix, timeout=1.0,
                                 cipher=EntryCipher(b"c" * 32))
        service = ConsentService(ledger, cache, KEYS, lambda: shipped_policy.policy.taxonomy,
                                 clock, freshness=poller, shared=shared)
        poller.poll_once()
        replicas.append((service, poller, shared))
    token = 0
    try:
        for step in ops:
            kind = step[0]
            if kind == "write":
                _, r, subject, action, purpose, hours = step
                service = replicas[int(r)][0]  # type: ignore[call-overload]
                token = service.record(ConsentWrite(
                    str(subject), action,  # type: ignore[arg-type]
                    purpose=str(purpose), source="web", notice_version="v1",
                    method=CollectionMethod.AFFIRMATIVE if action is ConsentAction.GRANT
                    else CollectionMethod.UNSPECIFIED,
                    collected_at=NOW - timedelta(hours=int(hours))  # type: ignore[call-overload]
                )).consistency_token
            elif kind == "upsert":
                _, r, subject, jurisdiction = step
                token = replicas[int(r)][0].upsert_subject(  # type: ignore[call-overload]
                    SubjectUpsert(str(subject), str(jurisdiction))).consistency_token
            elif kind == "poll":
                replicas[int(step[1])][1].poll_once()  # type: ignore[call-overload]
            elif kind == "flush":
                replicas[0][2]._client.flushdb()  # Redis restarted empty
            else:
                _, r, subject, with_token = step
                service, poller, _ = replicas[int(r)]  # type: ignore[call-overload]
                if not with_token:
                    # Without a token the bound is the poll: right after one, nothing older
                    # than it may be missing.
                    poller.poll_once()
                pseudonym = service.subject_key(str(subject))
                got = service.state_of(pseudonym, token if with_token else 0)
                truth = ledger.load(pseudonym)
                assert events_of(got) == events_of(truth), step
                assert got.profile.jurisdiction == truth.profile.jurisdiction, step
                request = CheckRequest(subject_id=str(subject), purpose=PURPOSES[0],
                                       data_category="user.contact.email", jurisdiction="DE")
                fast = shipped_policy.decide(request, got, NOW)
                slow = shipped_policy.decide(request, replace(truth, sequence=got.sequence),
                                             NOW)
                assert (fast.effect, fast.reason) == (slow.effect, slow.reason), step
    finally:
        for _, _, shared in replicas:
            shared.close()
