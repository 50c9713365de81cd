"""Fail closed: a fault in any dependency of a decision yields DENY or UNAVAILABLE, never
ALLOW (and never INTERNAL).

Each test starts a real server on port 0, grants consent and shows that a Check and a
BatchCheck ALLOW, then puts a faulty twin in place of one collaborator of the running App
(a real implementation subclassed to fail, as tests/unit does), asks again, and finally
removes the fault and sees ALLOW come back (so the fault was the only cause).

Redis is the exception by design (DESIGN.md: losing Redis costs latency, never
correctness): with Redis gone the ledger answers, so a granted subject is still ALLOWED;
what must never happen is a stale ALLOW from a Redis that missed a withdrawal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.metrics import NoOpMeter

from consentauthz.checker import Checker
from consentauthz.consent import ConsentService, LocalCache, MemoryLedger, SqliteLedger
from consentauthz.decisionlog import MemoryDecisionLog, QueuedDecisionLog
from consentauthz.domain import (
    CheckOutcome,
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    DecisionRecord,
    Effect,
    PolicyReload,
    SubjectState,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.errors import InvalidArgument, PolicyError, Unavailable
from consentauthz.policy import load_policy_set
from consentauthz.pseudonym import Pseudonymizer
from consentauthz.reload import PolicyHolder
from consentauthz.v1 import decision_pb2
from tests.conftest import POLICIES, Running, start_server
from tests.redis_server import RedisServer, free_port
from tests.scenario import decision_name, record

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"
SUBJECT = "fail-closed@example.org"
OTHER = "someone-else@example.org"


@pytest.fixture(autouse=True)
def _own_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each App here records on a meter of its own: the process's Prometheus registry is
    cumulative, and what faults make it count (a Redis tier, say) is not what the tests
    that scrape it (test_metrics.py) expect to find there."""
    monkeypatch.setattr("consentauthz.app.meter", lambda: NoOpMeter("consentauthz-faults"))


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    s = start_server(tmp_path / "data")
    try:
        yield s
    finally:
        s.channel.close()
        s.app.stop(grace=None)


# -- asking, and judging the answers --------------------------------------------------------


def item(subject: str = SUBJECT) -> decision_pb2.CheckRequest:
    return decision_pb2.CheckRequest(subject_id=subject, purpose=EMAIL,
                                     data_category=CONTACT_EMAIL, jurisdiction="DE")


def allowed(s: Running) -> None:
    """Consent is granted and both RPCs allow: what the fault must not turn into ALLOW."""
    record(s, SUBJECT, "grant", EMAIL)
    assert_allowed(s)


def assert_allowed(s: Running) -> None:
    assert decision_name(s.decisions.Check(item(), timeout=10)) == "ALLOW"
    batch = s.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[item(), item(OTHER)]),
                                   timeout=10)
    assert [decision_name(r.response) for r in batch.results] == ["ALLOW", "DENY"]


def outcome(call: Any, request: Any, timeout: float = 10) -> str:
    """ALLOW, DENY or the status code's name; never INTERNAL or UNKNOWN."""
    try:
        resp = call(request, timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err
        assert SUBJECT not in (err.details() or "")  # type: ignore[attr-defined]
        return str(code.name)
    if isinstance(resp, decision_pb2.BatchCheckResponse):
        slots = []
        for r in resp.results:
            if r.WhichOneof("result") == "response":
                slots.append(decision_name(r.response))
            else:
                slots.append(grpc.StatusCode(next(c for c in grpc.StatusCode
                                                  if c.value[0] == r.error.code)).name)
        return ",".join(slots)
    return decision_name(resp)


def never_allows(s: Running, timeout: float = 10) -> tuple[str, str]:
    """Check and BatchCheck under the fault: DENY or UNAVAILABLE, never ALLOW."""
    single = outcome(s.decisions.Check, item(), timeout)
    batch = outcome(s.decisions.BatchCheck,
                    decision_pb2.BatchCheckRequest(items=[item(), item(OTHER)]), timeout)
    for answer in (single, *batch.split(",")):
        assert answer in ("DENY", "UNAVAILABLE", "DEADLINE_EXCEEDED"), (single, batch)
    return single, batch


def forget_cached_state(s: Running) -> None:
    """Drop this replica's cached consent state: the next check reads a slower tier."""
    s.app.cache.clear(s.app.ledger.head())


# -- the ledger -----------------------------------------------------------------------------


class FaultyLedger(SqliteLedger):
    """The real SQLite ledger (a second connection to the same file), whose reads fail
    or hang first and then fail."""

    def __init__(self, path: Path, hang: float = 0.0,
                 error: Exception | None = None) -> None:
        super().__init__(path, read_only=True)
        self.hang = hang
        self.error = error or Unavailable("consent ledger unavailable")

    def load(self, subject: str) -> SubjectState:
        time.sleep(self.hang)
        raise self.error


@pytest.mark.parametrize(("hang", "error"), [
    (0.0, Unavailable("consent ledger unavailable")),
    (0.0, RuntimeError("injected: ledger driver bug")),
    (0.3, TimeoutError("injected: ledger read timed out")),
], ids=["raises-unavailable", "raises-unexpected", "hangs-then-raises"])
def test_ledger_fault(running: Running, hang: float, error: Exception) -> None:
    s = running
    allowed(s)
    consent = s.app.consent
    healthy = consent._ledger
    consent._ledger = FaultyLedger(s.data_dir / "ledger.db", hang, error)
    try:
        forget_cached_state(s)
        assert never_allows(s) == ("UNAVAILABLE", "UNAVAILABLE")
    finally:
        consent._ledger.close()
        consent._ledger = healthy
    assert_allowed(s)


# -- the in-process cache ---------------------------------------------------------------------


def _raise(*_: object) -> Any:
    raise RuntimeError("injected: cache fault")


@pytest.mark.parametrize("method", ["get", "put"])
def test_local_cache_fault(running: Running, monkeypatch: pytest.MonkeyPatch,
                           method: str) -> None:
    # The one LocalCache is shared by the consent service, its freshness check and the
    # App, so the running instance's method is replaced rather than the instance.
    s = running
    allowed(s)
    if method == "put":
        forget_cached_state(s)  # a miss: the state is read from the ledger and put
    with monkeypatch.context() as patch:
        patch.setattr(s.app.cache, method, _raise)
        assert never_allows(s) == ("UNAVAILABLE", "UNAVAILABLE")
    assert_allowed(s)


# -- Redis ----------------------------------------------------------------------------------


def test_redis_unreachable_answers_from_the_ledger(tmp_path: Path) -> None:
    s = start_server(tmp_path / "data", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        allowed(s)  # from the ledger, correctly
        record(s, SUBJECT, "withdraw", EMAIL)
        forget_cached_state(s)
        started = time.perf_counter()
        assert never_allows(s) == ("DENY", "DENY,DENY")
        assert time.perf_counter() - started < 5
    finally:
        s.channel.close()
        s.app.stop(grace=None)


def test_redis_killed_or_hung_never_serves_a_stale_allow(tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    s = start_server(tmp_path / "data", redis_url=redis_server.url)
    try:
        allowed(s)
        forget_cached_state(s)
        assert_allowed(s)  # now from Redis
        # Hung: the withdrawal's write-through times out, so Redis still holds the grant.
        redis_server.pause()
        record(s, SUBJECT, "withdraw", EMAIL)
        redis_server.resume()
        forget_cached_state(s)
        assert never_allows(s) == ("DENY", "DENY,DENY")
        # Killed: the grant is answered from the ledger; the next withdrawal too.
        record(s, SUBJECT, "grant", EMAIL)
        redis_server.kill()
        forget_cached_state(s)
        assert_allowed(s)
        record(s, SUBJECT, "withdraw", EMAIL)
        forget_cached_state(s)
        assert never_allows(s) == ("DENY", "DENY,DENY")
        # Back, empty: still the ledger's answer.
        redis_server.start()
        forget_cached_state(s)
        assert never_allows(s) == ("DENY", "DENY,DENY")
    finally:
        s.channel.close()
        s.app.stop(grace=None)


# -- the decision log -----------------------------------------------------------------------


class FailingLog(MemoryDecisionLog):
    """A real in-memory log whose every write fails."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        raise self.error


class HeldLog(MemoryDecisionLog):
    """A real in-memory log whose writes wait until released (a hung disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        self.release.wait(timeout=30)
        return super().append(records)


@pytest.mark.parametrize("make", [
    lambda: FailingLog(Unavailable("decision log unavailable")),
    lambda: FailingLog(OSError(28, "injected: no space left on device")),
    lambda: QueuedDecisionLog(FailingLog(OSError(5, "injected: I/O error"))),
], ids=["append-unavailable", "append-oserror", "writer-sink-fails"])
def test_decision_log_fault(running: Running, make: Any) -> None:
    s = running
    allowed(s)
    checker = s.app.checker
    healthy, faulty = checker._log, make()
    checker._log = faulty
    try:
        assert never_allows(s) == ("UNAVAILABLE", "UNAVAILABLE")
    finally:
        checker._log = healthy
        faulty.close()
    assert_allowed(s)


def test_decision_log_hung_in_block_mode_never_answers(running: Running) -> None:
    s = running
    allowed(s)
    checker = s.app.checker
    sink = HeldLog()
    healthy, faulty = checker._log, QueuedDecisionLog(sink)
    checker._log = faulty
    try:
        assert never_allows(s, timeout=0.5) == ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")
    finally:
        sink.release.set()
        checker._log = healthy
        faulty.close()
    assert_allowed(s)


def test_decision_log_full_queue_in_drop_mode_never_allows(running: Running) -> None:
    s = running
    allowed(s)
    checker = s.app.checker
    sink = HeldLog()
    healthy, faulty = checker._log, QueuedDecisionLog(sink, mode="drop", max_queue=1)
    checker._log = faulty
    try:
        # The first write hangs in the sink, the second waits in the queue: it is full.
        for _ in range(2):
            s.decisions.Check(item(OTHER), timeout=10)
        deadline = time.monotonic() + 5
        while faulty.queue_depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        dropped = faulty.dropped()
        # An ALLOW that cannot even be queued is never answered...
        assert outcome(s.decisions.Check, item()) == "UNAVAILABLE"
        assert faulty.dropped() == dropped
        # ...while a DENY is answered and its entry dropped and counted (the mode's trade).
        assert outcome(s.decisions.Check, item(OTHER)) == "DENY"
        assert faulty.dropped() == dropped + 1
    finally:
        sink.release.set()
        checker._log = healthy
        faulty.close()


# -- the policy -----------------------------------------------------------------------------


class BrokenPolicy(CompiledPolicy):
    """The real compiled shipped policy, whose engine fails on every decision."""

    def decide(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: engine bug")


class BrokenHolder(PolicyHolder):
    """A policy holder that hands out something that is no policy, or fails."""

    def __init__(self, live: PolicyHolder, gives: Any) -> None:
        super().__init__(live(), Path(live.status.source), live.status.loaded_at)
        self.gives = gives

    def __call__(self) -> CompiledPolicy:
        if isinstance(self.gives, Exception):
            raise self.gives
        broken: CompiledPolicy = self.gives
        return broken


def test_policy_whose_decide_raises(running: Running) -> None:
    s = running
    allowed(s)
    holder = s.app.policy
    healthy = holder()
    now = datetime.now(UTC)
    broken = BrokenPolicy(load_policy_set(POLICIES))
    holder.swap(broken, now, PolicyReload(now, True, broken.version))
    try:
        assert never_allows(s) == ("UNAVAILABLE", "UNAVAILABLE")
    finally:
        holder.swap(healthy, now, PolicyReload(now, True, healthy.version))
    assert_allowed(s)


@pytest.mark.parametrize("gives", [None, object(), PolicyError(["injected: unreadable"])],
                         ids=["none", "not-a-policy", "raises"])
def test_policy_holder_returns_a_broken_policy(running: Running, gives: Any) -> None:
    s = running
    allowed(s)
    checker = s.app.checker
    healthy = checker._policy
    checker._policy = BrokenHolder(s.app.policy, gives)
    try:
        assert never_allows(s) == ("UNAVAILABLE", "UNAVAILABLE")
    finally:
        checker._policy = healthy
    assert_allowed(s)


# -- one batch item ahead of the ledger --------------------------------------------------------


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_only_the_item_ahead_of_the_ledger_is_unavailable(shipped_policy: CompiledPolicy
                                                          ) -> None:
    ledger = MemoryLedger()
    consent = ConsentService(ledger, LocalCache(100), Pseudonymizer(b"x" * 32),
                             lambda: shipped_policy.policy.taxonomy, lambda: NOW)
    log = MemoryDecisionLog()
    checker = Checker(consent, lambda: shipped_policy, log, lambda: NOW)
    consent.record(ConsentWrite(subject_id="alice", action=ConsentAction.GRANT, purpose=EMAIL,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))

    def request(subject: str, token: int = 0) -> CheckRequest:
        return CheckRequest(subject, EMAIL, CONTACT_EMAIL, "DE", consistency_token=token)

    items: list[CheckRequest | InvalidArgument] = [
        request("alice"), request("alice", token=99), request("bob", token=1)]
    results = checker.check_batch(items, caller="crm")
    assert isinstance(results[0], CheckOutcome) and results[0].decision.effect is Effect.ALLOW
    assert isinstance(results[1], Unavailable)
    assert str(results[1]) == "consistency_token is ahead of the consent ledger"
    assert isinstance(results[2], CheckOutcome) and results[2].decision.effect is Effect.DENY
    assert log.checkpoint().count == 2  # exactly the answered items were logged

    # A ledger that cannot be read is an outage, not one item's problem: the whole batch
    # fails (at its first item that asks no more than this replica has seen).
    class Down(MemoryLedger):
        def load(self, subject: str) -> SubjectState:
            raise Unavailable("consent ledger unavailable")

    consent._ledger = Down()
    consent._cache.clear(ledger.head())
    with pytest.raises(Unavailable):
        checker.check_batch([request("alice", token=99), request("bob")], caller="crm")
    assert log.checkpoint().count == 2
