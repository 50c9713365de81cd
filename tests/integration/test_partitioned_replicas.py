"""Replicas sharing a partitioned PostgreSQL ledger and a Redis (issue 19): tokens name a
partition, every cache tier keeps its positions per partition, and a withdrawal is still
honoured on every replica at once with its token and within the staleness bound without.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consentauthz.consent.ledger import partition_of
from consentauthz.domain import ConsentAction
from consentauthz.errors import InvalidArgument, TokenAhead
from consentauthz.validation import parse_token
from tests.integration import test_shared_state
from tests.integration.test_shared_state import PSEUDONYMS, Replica, read, wait_for
from tests.integration.test_shared_state import grant as grant_position
from tests.integration.test_shared_state import withdraw as withdraw_position
from tests.redis_server import RedisServer

PARTS = 4
#: The replicas' fixture (PostgreSQL ledger, local cache, poller, Redis when asked).
make_replica = test_shared_state.make_replica


def subjects_by_partition() -> dict[int, str]:
    """A subject id in each partition (of PSEUDONYMS' pseudonyms)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTS:
        name = f"customer-{i}@example.com"
        found.setdefault(partition_of(PSEUDONYMS(name), PARTS), name)
        i += 1
    return found


SUBJECTS = subjects_by_partition()


def grant(r: Replica, subject: str) -> str:
    """Grant, and the token callers get (partition and position)."""
    position = grant_position(r, subject)
    return r.service.token_of(r.service.subject_key(subject), position)


def withdraw(r: Replica, subject: str) -> str:
    position = withdraw_position(r, subject)
    return r.service.token_of(r.service.subject_key(subject), position)


def state_with(r: Replica, subject: str, token: str) -> list[ConsentAction]:
    parsed = parse_token(token)
    assert parsed is not None
    part, position = parsed
    pseudonym = r.service.subject_key(subject)
    r.service.check_token(pseudonym, part, position)
    return [e.action for e in r.service.state_of(pseudonym, position).events]


def test_tokens_name_the_subjects_partition_and_are_honoured_on_another_replica(
        make_replica: Callable[..., Replica], redis_server: RedisServer) -> None:
    a = make_replica(redis_server.url, partitions=PARTS)
    b = make_replica(redis_server.url, partitions=PARTS)
    for part, subject in SUBJECTS.items():
        token = grant(a, subject)
        assert token == f"{part}.1"  # each partition counts from 1
        assert state_with(b, subject, token) == [ConsentAction.GRANT]
        token = withdraw(b, subject)
        assert token == f"{part}.2"
        assert state_with(a, subject, token) == [ConsentAction.WITHDRAW]
    assert a.ledger.heads() == (2,) * PARTS
    # Every partition's keys share its hash tag (one Redis Cluster slot per partition).
    keys = set(redis_server.client().keys("*"))
    assert {b"ca:{p%d}head" % p for p in range(PARTS)} <= keys
    assert all(k.startswith(b"ca:{p") for k in keys)


def test_a_token_of_another_partition_or_none_is_refused(
        make_replica: Callable[..., Replica]) -> None:
    a = make_replica(partitions=PARTS)
    token = grant(a, SUBJECTS[1])
    other = SUBJECTS[2]
    pseudonym = a.service.subject_key(other)
    with pytest.raises(InvalidArgument, match="another subject's ledger partition"):
        a.service.check_token(pseudonym, 1, 1)
    a.service.check_token(pseudonym, None, 0)  # no token at all is fine
    # A bare position names no partition, and a token no partition this ledger has: both
    # named with the request's other bad fields.
    with pytest.raises(InvalidArgument) as err:
        a.service.get_state("", "1")
    assert {v.field for v in err.value.violations} == {"subject_id", "consistency_token"}
    with pytest.raises(InvalidArgument, match="partition this service does not have"):
        a.service.get_state(other, f"{PARTS}.1")
    # Ahead of the subject's partition (written in another): the item's own error.
    with pytest.raises(TokenAhead):
        a.service.state_of(pseudonym, 1)
    assert state_with(a, SUBJECTS[1], token) == [ConsentAction.GRANT]


def test_a_withdrawal_without_its_token_is_honoured_within_the_bound(
        make_replica: Callable[..., Replica], spans: InMemorySpanExporter) -> None:
    a = make_replica(partitions=PARTS)  # no Redis: only the poller tells b
    b = make_replica(partitions=PARTS, max_staleness=0.3)
    for subject in SUBJECTS.values():
        grant(a, subject)
    b.poller.poll_once()
    for subject in SUBJECTS.values():
        assert read(b, spans, subject=subject)[0] == [ConsentAction.GRANT]
    started = time.monotonic()
    for subject in SUBJECTS.values():
        withdraw(a, subject)
    b.poller.start()
    try:
        for subject in SUBJECTS.values():
            wait_for(lambda s=subject: read(b, spans, subject=s)[0]  # type: ignore[misc]
                     == [ConsentAction.WITHDRAW])
    finally:
        b.poller.stop()
    assert time.monotonic() - started < 5
    assert b.cache.watermarks == (2,) * PARTS


def test_an_invalidation_moves_only_its_partitions_watermark(
        make_replica: Callable[..., Replica], redis_server: RedisServer) -> None:
    a = make_replica(redis_server.url, partitions=PARTS)
    b = make_replica(redis_server.url, partitions=PARTS)
    grant(a, SUBJECTS[3])
    wait_for(lambda: b.cache.watermarks == (0, 0, 0, 1))
    grant(a, SUBJECTS[0])
    wait_for(lambda: b.cache.watermarks == (1, 0, 0, 1))
