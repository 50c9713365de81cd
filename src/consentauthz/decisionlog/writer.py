"""A bounded queue in front of a decision-log sink (group commit).

Callers' appends wait on a bounded queue and are written in groups: one `sink.append`
takes up to `max_batch` queued records, so concurrent callers share one transaction (and
one fsync, with `--decision-log-fsync`) instead of queueing for the sink's lock one by
one. The records of one `append` call are never split across two sink writes, so a
BatchCheck is logged all or nothing.

Modes:
- "block" (the default, and what the checker's contract needs): `append` returns only
  once the sink has committed the records, with their sequence and hashes, so they are
  readable at once. There is no writer thread: the caller that finds no write in
  progress writes itself (the leader), taking whatever queued up behind it; callers that
  arrive during a write wait, and when it ends the first of them becomes the next leader
  and writes for all of them. An uncontended append therefore costs one sink write and no
  thread hand-off (a dedicated writer thread cost two hand-offs, about 140 us of the 200 us
  an append took, measured). A full queue makes callers wait (back-pressure), never
  drops. If the sink fails, every caller whose records were in that write gets
  `Unavailable`. `timeout` bounds a caller's wait for somebody else's write; a leader's own
  write is never abandoned half-way.
- "drop": `append` enqueues and returns at once, with the records un-numbered
  (sequence 0), and one writer thread writes in the background. When the queue is full,
  records of DENY decisions are dropped and counted, but a call holding an ALLOW gets
  `Unavailable`: no ALLOW is ever answered that could not even be queued (fail closed).
  Records whose write fails later are dropped and counted too (nobody is waiting to be
  told). This trades the audit trail's completeness for latency: an answered decision may
  have no log entry. It is never the default, and `dropped()` must be watched wherever it
  is used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, Literal, TypeVar

from ..domain import DecisionQuery, DecisionRecord, Effect
from ..errors import Unavailable
from .log import DecisionLog

log = logging.getLogger("consentauthz.decisionlog")

Mode = Literal["block", "drop"]
L = TypeVar("L", bound=DecisionLog)


class _Pending:
    """One append call's records, and how their write ended."""

    __slots__ = ("error", "finished", "lead", "records", "result", "wake")

    def __init__(self, records: tuple[DecisionRecord, ...]) -> None:
        self.records = records
        #: set when the records are written (or failed), or when this caller must lead
        self.wake = threading.Event()
        self.finished = False
        self.lead = False
        self.result: list[DecisionRecord] = []
        self.error: Unavailable | None = None

    def succeed(self, result: list[DecisionRecord]) -> None:
        self.result = result
        self.finished = True
        self.wake.set()

    def fail(self, cause: BaseException) -> None:
        # One exception object per caller: each raises it in its own thread, and raising
        # a shared instance from several threads would interleave their tracebacks.
        error = Unavailable(str(cause) if isinstance(cause, Unavailable)
                            else "decision log unavailable")
        error.__cause__ = cause
        self.error = error
        self.finished = True
        self.wake.set()


class QueuedDecisionLog(Generic[L]):
    def __init__(self, sink: L, *, mode: Mode = "block", max_queue: int = 10_000,
                 max_batch: int = 1_000, timeout: float | None = None) -> None:
        """`max_queue` bounds the records waiting (an append larger than that is still
        accepted into an empty queue); `max_batch` bounds the records per sink write;
        `timeout` bounds how long a block-mode append waits for room and for another
        caller's write (None: for as long as it takes). When it runs out the caller gets
        Unavailable and its records, if not yet taken for a write, are withdrawn; if a
        write already holds them they may still be written, which is safe (an entry
        without an answer), unlike the reverse."""
        if mode not in ("block", "drop"):
            raise ValueError(f"mode must be 'block' or 'drop', not {mode!r}")
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be positive")
        self._sink = sink
        self._mode = mode
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._timeout = timeout
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._depth = 0
        self._dropped = 0
        self._closed = False
        self._stopped = False
        #: block mode: a caller is writing (and will hand on to the queue's first caller)
        self._leading = False
        self._thread: threading.Thread | None = None
        if mode == "drop":
            self._thread = threading.Thread(target=self._run, name="decisionlog-writer",
                                            daemon=True)
            self._thread.start()

    @property
    def sink(self) -> L:
        """The log written to: verify, checkpoint and retention are its business."""
        return self._sink

    @property
    def mode(self) -> Mode:
        return self._mode

    def queue_depth(self) -> int:
        """Records waiting to be written (not counting a write in progress)."""
        with self._lock:
            return self._depth

    def dropped(self) -> int:
        """Records never written: dropped on a full queue or lost to a failed write
        (drop mode only; block mode tells the caller instead)."""
        with self._lock:
            return self._dropped

    # -- the DecisionLog contract ---------------------------------------------------------

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        if not records:
            return []
        pending = _Pending(tuple(records))
        size = len(pending.records)
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._lock:
            while True:
                if self._closed:
                    raise Unavailable("decision log is closed")
                if self._stopped:
                    raise Unavailable("decision log writer stopped")
                if self._depth == 0 or self._depth + size <= self._max_queue:
                    break
                if self._mode == "drop":
                    if any(r.decision is Effect.ALLOW for r in pending.records):
                        raise Unavailable("decision log queue is full; an ALLOW is never "
                                          "answered without its log entry")
                    self._dropped += size
                    return list(records)
                remaining = _remaining(deadline)
                if remaining == 0:
                    raise Unavailable("decision log queue is full")
                self._has_room.wait(remaining)
            self._queue.append(pending)
            self._depth += size
            if self._mode == "drop":
                self._has_work.notify()
                return list(records)
            lead = not self._leading
            self._leading = True
        if not lead:
            lead = self._wait_for_turn(pending, size, deadline)
        if lead:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _wait_for_turn(self, pending: _Pending, size: int, deadline: float | None) -> bool:
        """Wait until `pending` is written (False) or it is its caller's turn to write
        (True)."""
        if pending.wake.wait(_remaining(deadline)):
            return not pending.finished
        with self._lock:
            if pending.lead:
                return True  # handed the lead as the wait ran out: it must be taken
            if pending.finished:
                return False
            if pending in self._queue:
                self._queue.remove(pending)
                self._depth -= size
                self._has_room.notify_all()
        raise Unavailable("decision log write not confirmed in time")

    def _lead(self, own: _Pending) -> None:
        """Write queued records, oldest first, until `own` is written; then hand the lead
        to the first caller still queued, or give it up."""
        handed = False
        try:
            while not own.finished:
                batch, size = self._take()
                self._write(batch, size)
            with self._lock:
                handed = self._hand_on()
        finally:
            if not handed:
                # A fatal error (not an Exception) in the write: it goes up this caller's
                # stack, and nobody may be left waiting for a leader that is gone.
                with self._lock:
                    self._stop()

    def _hand_on(self) -> bool:
        if self._queue:
            nxt = self._queue[0]
            nxt.lead = True
            nxt.wake.set()
        else:
            self._leading = False
            self._idle.notify_all()
        return True

    def _take(self) -> tuple[list[_Pending], int]:
        """The next write: the oldest queued append, and those after it that fit."""
        with self._lock:
            batch = [self._queue.popleft()]
            size = len(batch[0].records)
            while self._queue and size + len(self._queue[0].records) <= self._max_batch:
                batch.append(self._queue.popleft())
                size += len(batch[-1].records)
            self._depth -= size
            self._has_room.notify_all()
            return batch, size

    def _stop(self) -> None:
        """Fail everyone queued and refuse further appends (under the lock)."""
        self._stopped = True
        self._leading = False
        left = list(self._queue)
        self._queue.clear()
        self._depth = 0
        self._has_room.notify_all()
        self._idle.notify_all()
        for p in left:
            p.fail(Unavailable("decision log writer stopped"))

    def get(self, decision_id: str) -> DecisionRecord | None:
        return self._sink.get(decision_id)

    def query(self, query: DecisionQuery) -> list[DecisionRecord]:
        return self._sink.query(query)

    def close(self) -> None:
        """Write what is queued, stop writing, close the sink."""
        with self._lock:
            already = self._closed
            self._closed = True
            self._has_work.notify_all()
            self._has_room.notify_all()
            while self._leading:
                self._idle.wait()
        if self._thread is not None:
            self._thread.join()
        if not already:
            self._sink.close()

    # -- drop mode's writer thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closed:
                        self._has_work.wait()
                    if not self._queue:
                        return
                self._write(*self._take())
        finally:
            # Normally the queue is empty here; after an unexpected error nobody may be
            # left waiting for a writer that is gone.
            with self._lock:
                self._stop()

    def _write(self, batch: list[_Pending], size: int) -> None:
        records = [r for p in batch for r in p.records]
        try:
            written = self._sink.append(records)
            if len(written) != size:
                raise Unavailable(f"decision log wrote {len(written)} of {size} records")
        except Exception as exc:  # noqa: BLE001 - handed to every caller as Unavailable
            self._failed(batch, size, exc)
            return
        except BaseException as exc:
            self._failed(batch, size, exc)
            raise
        start = 0
        for p in batch:
            p.succeed(written[start:start + len(p.records)])
            start += len(p.records)

    def _failed(self, batch: list[_Pending], size: int, exc: BaseException) -> None:
        if self._mode == "drop":
            log.error("decision log write failed; %d records lost", size, exc_info=exc)
            with self._lock:
                self._dropped += size
        for p in batch:
            p.fail(exc)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
