"""The queued writer: group commit, back-pressure, drop mode, errors reach their callers.

The sinks are real in-memory logs with a hook: one that counts writes, one that makes the
writer wait at a gate (so what is queued meanwhile is known exactly), one that is slow,
one that fails on chosen records.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from consentauthz.decisionlog import (
    MemoryDecisionLog,
    QueuedDecisionLog,
    SqliteDecisionLog,
)
from consentauthz.domain import DecisionQuery, DecisionRecord, Effect, Reason
from consentauthz.errors import Unavailable
from tests.unit.test_decisionlog import assert_chain, record

WAIT = 5.0  # seconds; only ever reached when a test is about to fail


class CountingLog(MemoryDecisionLog):
    """Counts writes; optionally holds the first one at a gate, or sleeps in each."""

    def __init__(self, *, gated: bool = False, delay: float = 0.0,
                 fail_if: Callable[[DecisionRecord], BaseException | None] | None = None
                 ) -> None:
        super().__init__()
        self.writes: list[int] = []
        self.writers: list[int] = []  # the thread of each write
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self._delay = delay
        self._fail_if = fail_if

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        self.writers.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(WAIT)
        if self._delay:
            time.sleep(self._delay)
        self.writes.append(len(records))
        for r in records:
            error = self._fail_if(r) if self._fail_if else None
            if error is not None:
                raise error
        return super().append(records)


@pytest.fixture()
def threads() -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    yield started
    for t in started:
        t.join(WAIT)
        assert not t.is_alive()


def spawn(threads: list[threading.Thread], target: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    threads.append(t)
    return t


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def all_ids(log: MemoryDecisionLog) -> list[str]:
    return [r.decision_id for r in reversed(log.query(DecisionQuery(limit=100_000)))]


# -- block mode -------------------------------------------------------------------------


def test_concurrent_appends_are_numbered_once_each_and_batched(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(delay=0.002)
    queued = QueuedDecisionLog(sink, max_queue=64, max_batch=16)
    results: dict[str, DecisionRecord] = {}
    lock = threading.Lock()
    producers, per_producer = 8, 25

    def produce(p: int) -> None:
        for i in range(per_producer):
            batch = [record(f"p{p}-{i}-{j}", i) for j in range(1 + (i % 3))]
            stored = queued.append(batch)
            assert [r.decision_id for r in stored] == [r.decision_id for r in batch]
            # Accepted means readable, straight away.
            assert queued.get(stored[-1].decision_id) == stored[-1]
            with lock:
                results.update((r.decision_id, r) for r in stored)

    for p in range(producers):
        spawn(threads, lambda p=p: produce(p))
    for t in threads:
        t.join(WAIT * 4)
    queued.close()

    appends = producers * per_producer
    assert sorted(r.sequence for r in results.values()) == list(range(1, len(results) + 1))
    assert len(results) == sum(sink.writes) == sum(1 + i % 3 for i in range(per_producer)) * 8
    assert_chain(sorted(results.values(), key=lambda r: r.sequence))
    assert sink.verify().ok
    assert len(sink.writes) < appends, "concurrent appends should share writes"
    assert max(sink.writes) <= 16
    assert queued.dropped() == 0 and queued.queue_depth() == 0


def test_callers_queued_behind_a_write_share_the_next_one(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink, max_batch=100)
    first = spawn(threads, lambda: queued.append([record("first")]))
    assert sink.entered.wait(WAIT)  # the writer holds "first" at the gate
    for i in range(10):
        spawn(threads, lambda i=i: queued.append([record(f"r{i}"), record(f"r{i}b")]))
    wait_until(lambda: queued.queue_depth() == 20)
    sink.gate.set()
    for t in threads:
        t.join(WAIT)
    assert not first.is_alive()
    assert sink.writes == [1, 20]  # ten callers, one transaction
    queued.close()


def test_one_append_is_never_split_across_writes() -> None:
    sink = CountingLog()
    queued = QueuedDecisionLog(sink, max_queue=2, max_batch=2)
    stored = queued.append([record(f"d{i}") for i in range(5)])
    assert [r.sequence for r in stored] == [1, 2, 3, 4, 5]
    assert sink.writes == [5]
    queued.close()


def test_full_queue_blocks_producers_and_loses_nothing(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink, max_queue=3, max_batch=2)
    spawn(threads, lambda: queued.append([record("held")]))
    assert sink.entered.wait(WAIT)
    for i in range(3):
        spawn(threads, lambda i=i: queued.append([record(f"q{i}")]))
    wait_until(lambda: queued.queue_depth() == 3)

    blocked = spawn(threads, lambda: queued.append([record("late")]))
    blocked.join(0.2)
    assert blocked.is_alive(), "a full queue must make the producer wait"
    assert queued.queue_depth() == 3

    sink.gate.set()
    blocked.join(WAIT)
    assert not blocked.is_alive()
    queued.close()
    assert sorted(all_ids(sink)) == sorted(["held", "q0", "q1", "q2", "late"])
    assert queued.dropped() == 0


def test_slow_sink_with_a_small_queue_applies_back_pressure(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(delay=0.003)
    queued = QueuedDecisionLog(sink, max_queue=4, max_batch=2)
    depths: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            depths.append(queued.queue_depth())
            time.sleep(0.0005)

    spawn(threads, watch)
    producers = [spawn(threads, lambda p=p: [queued.append([record(f"p{p}-{i}")])
                                             for i in range(8)]) for p in range(6)]
    for t in producers:
        t.join(WAIT * 4)
    done.set()
    queued.close()
    assert len(all_ids(sink)) == 48
    assert sink.verify().ok
    assert max(depths) <= 4
    assert queued.dropped() == 0


def test_close_writes_what_is_queued_and_refuses_more(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink)
    spawn(threads, lambda: queued.append([record("d0")]))
    assert sink.entered.wait(WAIT)
    for i in (1, 2):
        spawn(threads, lambda i=i: queued.append([record(f"d{i}")]))
    wait_until(lambda: queued.queue_depth() == 2)
    closer = spawn(threads, queued.close)
    sink.gate.set()
    closer.join(WAIT)
    assert sorted(all_ids(sink)) == ["d0", "d1", "d2"]
    with pytest.raises(Unavailable, match="closed"):
        queued.append([record("after")])
    queued.close()  # twice is fine


def test_timeout_gives_unavailable_and_withdraws_what_no_write_took(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink, timeout=0.05)
    spawn(threads, lambda: queued.append([record("held")]))
    assert sink.entered.wait(WAIT)  # its caller is writing, held at the gate
    with pytest.raises(Unavailable, match="in time"):
        queued.append([record("late")])
    assert queued.queue_depth() == 0
    sink.gate.set()
    queued.close()
    assert all_ids(sink) == ["held"]  # no entry and no answer for "late"


def test_an_uncontended_append_is_written_by_its_own_caller() -> None:
    sink = CountingLog()
    queued = QueuedDecisionLog(sink)
    for i in range(3):
        queued.append([record(f"d{i}")])
    assert sink.writers == [threading.get_ident()] * 3  # no hand-off to another thread
    queued.close()


def test_the_lead_passes_to_a_caller_that_queued_during_a_write(
        threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink)
    first = spawn(threads, lambda: queued.append([record("first")]))
    assert sink.entered.wait(WAIT)
    late = [spawn(threads, lambda i=i: queued.append([record(f"late{i}")])) for i in range(3)]
    wait_until(lambda: queued.queue_depth() == 3)
    sink.gate.set()
    for t in threads:
        t.join(WAIT)
    assert sink.writes == [1, 3]
    assert sink.writers[0] == first.ident
    assert sink.writers[1] in {t.ident for t in late}
    queued.close()


# -- drop mode --------------------------------------------------------------------------


def test_drop_mode_drops_exactly_what_does_not_fit(threads: list[threading.Thread]) -> None:
    sink = CountingLog(gated=True)
    queued = QueuedDecisionLog(sink, mode="drop", max_queue=3)
    (first,) = queued.append([record("held")])
    assert first.sequence == 0  # returned before it is written
    assert sink.entered.wait(WAIT)
    kept = [queued.append([record(f"k{i}")]) for i in range(3)]
    assert queued.queue_depth() == 3
    lost = queued.append([deny("x1"), deny("x2")])
    lost += queued.append([deny("x3")])
    assert [r.sequence for r in lost] == [0, 0, 0]
    assert [r.decision_id for r in lost] == ["x1", "x2", "x3"]
    assert queued.dropped() == 3
    assert all(r.sequence == 0 for batch in kept for r in batch)
    # A call holding an ALLOW is refused rather than answered without its entry.
    with pytest.raises(Unavailable):
        queued.append([deny("x4"), record("allowed")])
    assert queued.dropped() == 3

    sink.gate.set()
    queued.close()
    assert all_ids(sink) == ["held", "k0", "k1", "k2"]
    assert sink.verify().ok
    assert queued.dropped() == 3


def deny(decision_id: str) -> DecisionRecord:
    return record(decision_id, decision=Effect.DENY, reason=Reason.NO_CONSENT)


def test_drop_mode_counts_failed_writes_as_dropped() -> None:
    sink = CountingLog(fail_if=lambda r: RuntimeError("disk on fire"))
    queued = QueuedDecisionLog(sink, mode="drop")
    queued.append([record("a"), record("b")])
    queued.close()
    assert queued.dropped() == 2
    assert all_ids(sink) == []


# -- errors -----------------------------------------------------------------------------


def test_a_failed_write_fails_exactly_the_callers_in_it(
        threads: list[threading.Thread]) -> None:
    def poison(r: DecisionRecord) -> BaseException | None:
        return sqlite3.OperationalError("disk I/O error") if r.decision_id == "bad" else None

    sink = CountingLog(gated=True, fail_if=poison)
    queued = QueuedDecisionLog(sink, max_batch=10)
    outcomes: dict[str, object] = {}

    def call(decision_id: str) -> None:
        try:
            outcomes[decision_id] = queued.append([record(decision_id)])[0].sequence
        except Unavailable as exc:
            outcomes[decision_id] = exc

    spawn(threads, lambda: call("before"))
    assert sink.entered.wait(WAIT)
    spawn(threads, lambda: call("bad"))
    wait_until(lambda: queued.queue_depth() == 1)
    spawn(threads, lambda: call("same-batch"))
    wait_until(lambda: queued.queue_depth() == 2)
    sink.gate.set()
    for t in threads:
        t.join(WAIT)

    assert outcomes["before"] == 1
    for failed in ("bad", "same-batch"):
        error = outcomes[failed]
        assert isinstance(error, Unavailable)
        assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert outcomes["bad"] is not outcomes["same-batch"]
    # The failed write left no trace; the chain goes on from the last good entry.
    (after,) = queued.append([record("after")])
    assert after.sequence == 2
    assert all_ids(sink) == ["before", "after"]
    assert sink.verify().ok
    queued.close()


def test_sink_unavailable_keeps_its_message() -> None:
    sink = CountingLog(fail_if=lambda r: Unavailable("decision log unavailable: disk full"))
    queued = QueuedDecisionLog(sink)
    with pytest.raises(Unavailable, match="disk full"):
        queued.append([record("a")])
    queued.close()


def test_writer_stopped_by_a_fatal_error_leaves_nobody_waiting(
        threads: list[threading.Thread]) -> None:
    class Fatal(BaseException):
        pass

    sink = CountingLog(gated=True, fail_if=lambda r: Fatal())
    queued = QueuedDecisionLog(sink)
    errors: dict[str, BaseException] = {}

    def call(decision_id: str) -> None:
        try:
            queued.append([record(decision_id)])
        except BaseException as exc:  # what each caller got is the test
            errors[decision_id] = exc

    spawn(threads, lambda: call("a"))
    assert sink.entered.wait(WAIT)
    spawn(threads, lambda: call("b"))
    wait_until(lambda: queued.queue_depth() == 1)
    sink.gate.set()
    for t in threads:
        t.join(WAIT)
    # The writing caller sees the fatal error itself; the one waiting behind it is told.
    assert isinstance(errors["a"], Fatal)
    assert isinstance(errors["b"], Unavailable)
    with pytest.raises(Unavailable):
        queued.append([record("c")])
    queued.close()


def test_over_sqlite_get_and_query_see_every_accepted_record(tmp_path: Path) -> None:
    queued = QueuedDecisionLog(SqliteDecisionLog(tmp_path / "d.db"))
    stored = queued.append([record("d1"), record("d2", 1)])
    assert queued.get("d2") == stored[1]
    assert [r.decision_id for r in queued.query(DecisionQuery())] == ["d2", "d1"]
    assert queued.sink.verify().ok
    queued.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        QueuedDecisionLog(MemoryDecisionLog(), mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        QueuedDecisionLog(MemoryDecisionLog(), max_queue=0)
