"""Consent state shared by replicas: one PostgreSQL ledger, one Redis, a cache per replica.

In-process replicas (each its own ledger connection, Redis client, local cache, poller and
invalidation listener) against a real PostgreSQL database and a real redis-server, so each
step can be driven and inspected exactly; tests/integration/test_replicas.py does the same
with server processes over gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consentauthz.consent import (
    Changes,
    ConsentService,
    EntryCipher,
    InvalidationListener,
    LedgerPoller,
    LocalCache,
    MemoryLedger,
    PostgresLedger,
    RedisStateCache,
)
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    SubjectProfile,
    SubjectState,
    SubjectUpsert,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.errors import Unavailable
from consentauthz.pseudonym import Pseudonymizer
from consentauthz.telemetry import ATTR_CACHE_TIER, tracer
from tests.pg import fresh_database
from tests.redis_server import RedisServer

EMAIL = "marketing.communications.email"
PSEUDONYMS = Pseudonymizer(b"r" * 32)
SUBJECT = "alice@example.com"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """A monotonic clock the test moves by hand (the staleness bound's clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replica:
    ledger: PostgresLedger
    cache: LocalCache
    redis: RedisStateCache | None
    poller: LedgerPoller
    listener: InvalidationListener | None
    service: ConsentService
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.redis is not None:
            self.redis.close()
        self.ledger.close()


@pytest.fixture()
def make_replica(postgres_dsn: str, shipped_policy: CompiledPolicy
                 ) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(redis_url: str | None = None, *, listen: bool = True,
             clock: Callable[[], float] = time.monotonic, max_staleness: float = 1.0,
             timeout: float = 0.2, partitions: int = 1, cluster: bool = False) -> Replica:
        # One partition unless a test asks for more: these tests reason about positions
        # of one sequence (test_partitioned_replicas.py has the partitioned ones).
        ledger = PostgresLedger(postgres_dsn, partitions=partitions)
        cache = LocalCache(1000, watermark=ledger.heads())
        shared = (RedisStateCache(redis_url, utc_now, timeout=timeout, retry_after=0.2,
                                  cipher=EntryCipher(b"e" * 32), partitions=partitions,
                                  cluster=cluster)
                  if redis_url else None)
        poller = LedgerPoller(ledger, cache, max_staleness, clock=clock)
        listener = (InvalidationListener(redis_url, shared.channel, cache)
                    if shared is not None and redis_url and listen else None)
        service = ConsentService(ledger, cache, PSEUDONYMS,
                                 lambda: shipped_policy.policy.taxonomy, utc_now,
                                 freshness=poller, shared=shared)
        poller.poll_once()
        if listener is not None:
            listener.start()
            assert listener.subscribed.wait(5)
        replica = Replica(ledger, cache, shared, poller, listener, service)
        made.append(replica)
        return replica

    yield make
    for r in made:
        r.close()


def grant(r: Replica, subject: str = SUBJECT, expires: timedelta | None = None,
          evidence: dict[str, str] | None = None) -> int:
    return r.service.record(ConsentWrite(
        subject, ConsentAction.GRANT, purpose=EMAIL, data_categories=("user.contact.email",),
        method=CollectionMethod.AFFIRMATIVE, source="web", notice_version="v1",
        expires_at=utc_now() + expires if expires else None,
        evidence=evidence or {})).consistency_token


def withdraw(r: Replica, subject: str = SUBJECT) -> int:
    return r.service.record(ConsentWrite(subject, ConsentAction.WITHDRAW, purpose=EMAIL,
                                         data_categories=("user.contact.email",))).consistency_token


def actions(state: SubjectState) -> list[ConsentAction]:
    return [e.action for e in state.events]


def read(r: Replica, spans: InMemorySpanExporter, token: int = 0,
         subject: str = SUBJECT) -> tuple[list[ConsentAction], str]:
    spans.clear()
    # Under a recorded span, as in the server: consent.Get is only opened under one.
    with tracer().start_as_current_span("test.read"):
        state = r.service.state_of(r.service.subject_key(subject), token)
    if r.redis is not None:  # a read that went to the ledger may populate Redis after it
        assert r.redis.wait_populated()
    tiers = [s.attributes.get(ATTR_CACHE_TIER) for s in spans.get_finished_spans()
             if s.name == "consent.Get" and s.attributes is not None]
    # No consent.Get span: the local cache answered (the hot path opens none).
    return actions(state), str(tiers[-1]) if tiers else "local"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- the three tiers --------------------------------------------------------------------


def test_a_write_on_one_replica_is_read_from_redis_on_another(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a, b = make_replica(redis_server.url), make_replica(redis_server.url)
    token = grant(a)
    assert read(b, spans, token) == ([ConsentAction.GRANT], "redis")
    assert read(b, spans, token) == ([ConsentAction.GRANT], "local")


def test_a_withdrawal_invalidates_every_replicas_local_copy(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a, b = make_replica(redis_server.url), make_replica(redis_server.url)
    grant(a)
    b.poller.poll_once()
    assert read(b, spans)[0] == [ConsentAction.GRANT]
    token = withdraw(a)
    # With the token: at once, whatever has or has not arrived yet.
    assert read(b, spans, token)[0] == [ConsentAction.WITHDRAW]
    # Without it: as soon as the invalidation message arrives (no poll needed).
    c = make_replica(redis_server.url)
    grant(a, "bob")
    c.service.state_of(c.service.subject_key("bob"))
    withdraw_bob = withdraw(a, "bob")
    wait_for(lambda: c.cache.watermark >= withdraw_bob)
    assert read(c, spans, subject="bob")[0] == [ConsentAction.WITHDRAW]


def test_without_a_token_staleness_is_bounded_by_the_poll_even_without_redis(
        make_replica: Callable[..., Replica], spans: InMemorySpanExporter) -> None:
    clock = Clock()
    a = make_replica()
    b = make_replica(clock=clock, max_staleness=1.0)
    grant(a)
    b.poller.poll_once()
    assert read(b, spans) == ([ConsentAction.GRANT], "ledger")
    assert read(b, spans) == ([ConsentAction.GRANT], "local")
    withdraw(a)
    clock.now += 0.5  # within the bound and not yet polled: the cached grant may serve
    assert read(b, spans) == ([ConsentAction.GRANT], "local")
    clock.now += 0.6  # the newest poll is now older than the bound: no proof, read ledger
    assert read(b, spans) == ([ConsentAction.WITHDRAW], "ledger")
    b.poller.poll_once()  # the poll restores the proof (and drops the changed subject)
    assert read(b, spans) == ([ConsentAction.WITHDRAW], "ledger")
    assert read(b, spans) == ([ConsentAction.WITHDRAW], "local")


def test_a_token_ahead_of_the_ledger_is_unavailable(
        make_replica: Callable[..., Replica], redis_server: RedisServer) -> None:
    a = make_replica(redis_server.url)
    token = grant(a)
    with pytest.raises(Unavailable):
        a.service.state_of(a.service.subject_key(SUBJECT), token + 5)


# -- what Redis holds -------------------------------------------------------------------


def test_redis_keys_and_values_hold_no_subject_id_and_no_evidence(
        make_replica: Callable[..., Replica], redis_server: RedisServer) -> None:
    a = make_replica(redis_server.url)
    grant(a, evidence={"ip": "203.0.113.77", "user_agent": "SecretBrowser/1.0"})
    client = redis_server.client()
    dump = b"".join(k + (client.get(k) or b"") for k in client.keys("*"))
    assert dump
    for secret in (SUBJECT.encode(), b"203.0.113.77", b"SecretBrowser"):
        assert secret not in dump
    # Keys are hashed pseudonyms of fixed length: distinct subjects, distinct keys.
    other = a.redis.entry_key(a.service.subject_key("alice@example.co")) if a.redis else b""
    assert other != (a.redis.entry_key(a.service.subject_key(SUBJECT)) if a.redis else b"")


def test_redis_entries_are_encrypted_and_cannot_be_moved_to_another_subject(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_server.url)
    a.service.upsert_subject(SubjectUpsert(SUBJECT, "DE", date(1987, 6, 5)))
    grant(a)
    token = grant(a, "mallory")
    client = redis_server.client()
    assert b"1987-06-05" not in b"".join(client.get(k) or b"" for k in client.keys("*"))
    assert a.redis is not None
    alice = a.redis.entry_key(a.service.subject_key(SUBJECT))
    mallory = a.redis.entry_key(a.service.subject_key("mallory"))
    client.set(alice, client.get(mallory) or b"")  # someone who can write to Redis
    b = make_replica(redis_server.url)
    # The moved entry does not open under alice's key: a miss, answered from the ledger.
    got, tier = read(b, spans, int(token))
    assert (got, tier) == ([ConsentAction.GRANT], "ledger")
    state = b.service.state_of(b.service.subject_key(SUBJECT), 0)
    assert state.profile.birth_date == date(1987, 6, 5)


def test_entry_ttl_never_outlives_the_earliest_consent_expiry(
        make_replica: Callable[..., Replica], redis_server: RedisServer) -> None:
    a = make_replica(redis_server.url)
    grant(a, expires=timedelta(seconds=30))
    assert a.redis is not None
    key = a.redis.entry_key(a.service.subject_key(SUBJECT))
    ttl_ms = redis_server.client().pttl(key)
    assert 0 < ttl_ms <= 30_000


def test_a_write_redis_missed_starts_a_new_generation(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a, b = make_replica(redis_server.url), make_replica(redis_server.url)
    no_redis = make_replica()  # a replica configured without Redis: Redis misses its write
    token = grant(a)
    assert read(b, spans, token) == ([ConsentAction.GRANT], "redis")
    client = redis_server.client()
    head_before = client.get(b"ca:{p0}head")
    withdraw(no_redis)
    b.poller.poll_once()  # b now knows the ledger moved past what Redis holds
    assert read(b, spans) == ([ConsentAction.WITHDRAW], "ledger")
    head_after = client.get(b"ca:{p0}head")
    assert head_before is not None and head_after is not None
    assert head_after.split(b":")[0] != head_before.split(b":")[0]
    c = make_replica(redis_server.url)
    assert read(c, spans) == ([ConsentAction.WITHDRAW], "redis")


# -- Redis failures ---------------------------------------------------------------------


def test_redis_down_answers_from_the_ledger_and_repopulates_when_back(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a, b = make_replica(redis_server.url), make_replica(redis_server.url)
    grant(a)
    redis_server.kill()
    token = withdraw(a)  # the ledger takes it; the write-through fails
    assert a.redis is not None and not a.redis.available
    assert read(b, spans, token) == ([ConsentAction.WITHDRAW], "ledger")
    assert b.redis is not None and not b.redis.available
    redis_server.start()  # back, and empty
    wait_for(lambda: b.redis is not None and b.redis.ping())
    b.cache.clear(b.cache.watermark)
    assert read(b, spans, token) == ([ConsentAction.WITHDRAW], "ledger")
    assert redis_server.client().dbsize() >= 2  # head and the repopulated entry
    c = make_replica(redis_server.url)
    assert read(c, spans, token) == ([ConsentAction.WITHDRAW], "redis")


def test_hung_redis_times_out_and_the_ledger_answers(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_server.url)
    b = make_replica(redis_server.url, timeout=0.05)
    token = grant(a)
    b.cache.clear(b.cache.watermark)
    redis_server.pause()
    try:
        assert read(b, spans, token) == ([ConsentAction.GRANT], "ledger")
        assert b.redis is not None and not b.redis.available
        token = withdraw(b)  # the write succeeds on the ledger alone
        assert read(b, spans, token)[0] == [ConsentAction.WITHDRAW]
    finally:
        redis_server.resume()
    wait_for(lambda: b.redis is not None and b.redis.ping())
    c = make_replica(redis_server.url)
    c.poller.poll_once()
    assert read(c, spans, token)[0] == [ConsentAction.WITHDRAW]


# -- found in review: what must never be read as current ------------------------------


def test_a_ledger_that_went_back_is_never_read_through_the_old_redis(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        shipped_policy: CompiledPolicy, spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_server.url)
    for i in range(5):
        grant(a, f"filler-{i}")
    grant(a)  # Redis head is now at 6 with alice granted
    with fresh_database() as other:  # a restored or replaced database: positions reused
        ledger = PostgresLedger(other, partitions=1)
        cache = LocalCache(100, watermark=0)
        poller = LedgerPoller(ledger, cache, 1.0)
        shared = RedisStateCache(redis_server.url, utc_now, timeout=0.2,
                                 cipher=EntryCipher(b"e" * 32))
        c = ConsentService(ledger, cache, PSEUDONYMS, lambda: shipped_policy.policy.taxonomy,
                           utc_now, freshness=poller, shared=shared)
        poller.poll_once()
        c_replica = Replica(ledger, cache, shared, poller, None, c)
        try:
            # Read first, before any write could fence the old generation off.
            assert read(c_replica, spans)[0] == []
            grant(c_replica)
            token = withdraw(c_replica)  # position 2, far below Redis's 6
            assert read(c_replica, spans, token)[0] == [ConsentAction.WITHDRAW]
            cache.clear(cache.watermark)
            assert read(c_replica, spans)[0] == [ConsentAction.WITHDRAW]
        finally:
            c_replica.close()


def test_a_poll_that_sees_the_ledger_go_back_drops_every_cached_state() -> None:
    class Rewound(MemoryLedger):
        head_override: int | None = None

        def changes(self, after: Sequence[int], limit: int) -> Changes:
            if self.head_override is not None:
                return Changes(self.identity(), (self.head_override,), [])
            return super().changes(after, limit)

    ledger = Rewound()
    cache = LocalCache(10)
    poller = LedgerPoller(ledger, cache, 1.0)
    for i in range(3):
        ledger.append_profile("s", SubjectProfile("DE"), f"r{i}", utc_now())
    poller.poll_once()
    cache.put("s", SubjectState(sequence=3, version=3))
    ledger.head_override = 1
    poller.poll_once()
    assert cache.get("s") is None and cache.watermark == 1 and poller.floor(0) == 1


class Replaceable(MemoryLedger):
    """A ledger whose polls a test can point at another one: a restored backup (the same
    identity, fewer entries) or a new database (another identity)."""

    instead: MemoryLedger | None = None

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        if self.instead is not None:
            return self.instead.changes(after, limit)
        return super().changes(after, limit)


def _ledger_of(entries: int, identity: str | None = None) -> Replaceable:
    ledger = Replaceable()
    if identity is not None:
        ledger._identity = identity  # a backup of that ledger
    for i in range(entries):
        ledger.append_profile(f"filler-{i}", SubjectProfile("DE"), f"f{i}", utc_now())
    return ledger


def _critical(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]


@pytest.mark.parametrize("heard", ["redis", "own write", "read"])
def test_a_head_below_what_the_replica_applied_is_noticed_though_no_poll_saw_it(
        heard: str, caplog: pytest.LogCaptureFixture) -> None:
    ledger = _ledger_of(5)
    cache = LocalCache(10, watermark=5)
    fenced: list[tuple[str, tuple[int, ...]]] = []
    poller = LedgerPoller(ledger, cache, 1.0, identity=ledger.identity(),
                          on_replaced=lambda identity, heads: fenced.append((identity, heads)))
    poller.poll_once()  # saw head 5
    granted = ledger.append_profile("subject-at-6", SubjectProfile("DE"), "g6", utc_now())
    if heard == "redis":  # the invalidation, then a read of Redis's copy
        cache.note_write("subject-at-6", 6)
    cache.put("subject-at-6", granted.state)
    ledger.instead = _ledger_of(5, ledger.identity())  # restored from a backup taken at 5
    with caplog.at_level(logging.CRITICAL, logger="consentauthz.consent"):
        assert poller.poll_once() and poller.poll_once()
    assert fenced == [(ledger.identity(), (5,))]
    assert cache.get("subject-at-6") is None and cache.watermark == cache.highest == 5
    assert poller.floor(0) == 5
    (line,) = _critical(caplog)
    assert "went back" in line and "subject-at-6" not in line


def test_a_replaced_ledger_is_noticed_though_its_head_is_past_the_old(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = _ledger_of(3)
    cache = LocalCache(10, watermark=3)
    fenced: list[tuple[str, tuple[int, ...]]] = []
    poller = LedgerPoller(ledger, cache, 1.0,
                          on_replaced=lambda identity, heads: fenced.append((identity, heads)))
    poller.poll_once()  # takes the ledger's identity
    cache.put("filler-1", ledger.load("filler-1"))
    new = _ledger_of(6)  # dropped and recreated, and written to past the old head
    ledger.instead = new
    with caplog.at_level(logging.CRITICAL, logger="consentauthz.consent"):
        assert poller.poll_once() and poller.poll_once()
    assert fenced == [(new.identity(), (6,))] and poller.identity == new.identity()
    assert cache.get("filler-1") is None and cache.watermark == 6
    (line,) = _critical(caplog)
    assert "replaced" in line and ledger.identity() in line and new.identity() in line


def test_a_write_heard_of_while_a_poll_is_under_way_is_no_false_alarm(
        caplog: pytest.LogCaptureFixture) -> None:
    class Racing(MemoryLedger):
        def changes(self, after: Sequence[int], limit: int) -> Changes:
            seen = super().changes(after, limit)
            # Committed and heard of over Redis after the poll's snapshot was taken.
            result = self.append_profile("late", SubjectProfile("DE"), "late", utc_now())
            cache.note_write("late", result.sequence)
            cache.put("late", result.state)
            return seen

    ledger = Racing()
    cache = LocalCache(10)
    poller = LedgerPoller(ledger, cache, 1.0, identity=ledger.identity())
    with caplog.at_level(logging.CRITICAL, logger="consentauthz.consent"):
        for _ in range(3):
            assert poller.poll_once()
    assert not _critical(caplog) and cache.watermark == ledger.head() == 3


def test_the_local_cache_is_dropped_even_when_fencing_the_shared_one_fails() -> None:
    ledger = _ledger_of(2)
    cache = LocalCache(10, watermark=2)

    def fence(identity: str, heads: tuple[int, ...]) -> None:
        raise RuntimeError("redis said no")

    poller = LedgerPoller(ledger, cache, 1.0, identity=ledger.identity(), on_replaced=fence)
    cache.put("filler-0", replace(ledger.load("filler-0"), sequence=3))
    ledger.instead = _ledger_of(2, ledger.identity())
    assert poller.poll_once()
    assert cache.get("filler-0") is None and len(cache) == 0


def test_the_listener_follows_a_switch_and_ignores_the_channel_it_left(
        redis_server: RedisServer) -> None:
    cache = LocalCache(10)
    listener = InvalidationListener(redis_server.url, b"t:old:inv", cache)
    listener.start()
    try:
        assert listener.subscribed.wait(5)
        client = redis_server.client()
        listener.switch(b"t:new:inv")
        client.publish(b"t:old:inv", b"5:from-the-old-ledger")  # never applied
        wait_for(lambda: client.pubsub_numsub(b"t:new:inv")[0][1] == 1)
        client.publish(b"t:new:inv", b"1:from-the-new-ledger")
        wait_for(lambda: cache.watermark == 1)
        assert cache.highest == 1
    finally:
        listener.stop()


def test_an_entry_populated_under_an_older_head_reports_its_own_position(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_server.url)
    grant(a, "y")  # head g:1
    no_redis = make_replica()
    token = grant(no_redis, "x")  # position 2; Redis misses it
    clock = Clock()
    b = make_replica(redis_server.url, clock=clock)
    clock.now += 5  # b's freshness proof aged out: it reads the ledger and populates
    assert read(b, spans, subject="x")[1] == "ledger"
    c = make_replica(redis_server.url)
    state = c.service.state_of(c.service.subject_key("x"), 0)
    # Logged as the position the state is current as of, so replay finds the same state.
    assert state.sequence >= int(token) and actions(state) == [ConsentAction.GRANT]


def test_an_unreadable_entry_is_a_miss_not_an_error(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_server.url)
    token = grant(a)
    assert a.redis is not None
    key = a.redis.entry_key(a.service.subject_key(SUBJECT))
    client = redis_server.client()
    gen = client.get(b"ca:{p0}head").split(b":")[0]  # type: ignore[union-attr]
    client.set(key, gen + b":1:1:z-not-zlib")
    b = make_replica(redis_server.url)
    assert read(b, spans, token) == ([ConsentAction.GRANT], "ledger")
    assert b.redis is not None and b.redis.available  # one bad entry is not an outage
    c = make_replica(redis_server.url)
    assert read(c, spans, token) == ([ConsentAction.GRANT], "redis")  # repaired


def test_a_malformed_invalidation_message_does_not_stop_the_listener(
        make_replica: Callable[..., Replica], redis_server: RedisServer,
        spans: InMemorySpanExporter) -> None:
    a, b = make_replica(redis_server.url), make_replica(redis_server.url)
    client = redis_server.client()
    client.publish(b"ca:inv", b"\xff\xfe")
    client.publish(b"ca:inv", "²:x".encode())
    grant(a)
    b.service.state_of(b.service.subject_key(SUBJECT))
    token = withdraw(a)
    wait_for(lambda: b.cache.watermark >= int(token))
    assert read(b, spans)[0] == [ConsentAction.WITHDRAW]
