"""A bounded queue and one writer thread in front of a decision-log sink (group commit).

Callers' appends wait on a bounded queue; a single writer thread takes up to `max_batch`
queued records at a time and writes them with one `sink.append`, so concurrent callers
share one transaction (and one fsync, with `--decision-log-fsync`) instead of queueing
for the sink's lock one by one. The records of one `append` call are never split across
two sink writes, so a BatchCheck is logged all or nothing.

Modes:
- "block" (the default, and what the checker's contract needs): `append` returns only
  once the sink has committed the records, with their sequence and hashes, so they are
  readable at once. A full queue makes callers wait (back-pressure), never drops. If the
  sink fails, every caller whose records were in that write gets `Unavailable`.
- "drop": `append` enqueues and returns at once, with the records un-numbered
  (sequence 0). When the queue is full, records of DENY decisions are dropped and
  counted, but a call holding an ALLOW gets `Unavailable`: no ALLOW is ever answered that
  could not even be queued (fail closed). Records whose write fails later are dropped and
  counted too (nobody is waiting to be told). This trades the audit trail's completeness
  for latency: an answered decision may have no log entry. It is never the default, and
  `dropped()` must be watched wherever it is used.
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

    __slots__ = ("done", "error", "records", "result")

    def __init__(self, records: tuple[DecisionRecord, ...]) -> None:
        self.records = records
        self.done = threading.Event()
        self.result: list[DecisionRecord] = []
        self.error: Unavailable | None = None

    def fail(self, cause: BaseException) -> None:
        # One exception object per caller: each raises it in its own thread, and raising
        # a shared instance from several threads would interleave their tracebacks.
        error = Unavailable(str(cause) if isinstance(cause, Unavailable)
                            else "decision log unavailable")
        error.__cause__ = cause
        self.error = error
        self.done.set()


class QueuedDecisionLog(Generic[L]):
    def __init__(self, sink: L, *, mode: Mode = "block", max_queue: int = 10_000,
                 max_batch: int = 1_000, timeout: float | None = None) -> None:
        """`max_queue` bounds the records waiting (an append larger than that is still
        accepted into an empty queue); `max_batch` bounds the records per sink write;
        `timeout` bounds how long a block-mode append waits in all (None: for as long as
        it takes). When it runs out the caller gets Unavailable: if the records were
        already queued they may still be written, which is safe (an entry without an
        answer), unlike the reverse."""
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
        self._queue: deque[_Pending] = deque()
        self._depth = 0
        self._dropped = 0
        self._closed = False
        self._stopped = False
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
        """Records waiting for the writer (not counting the write in progress)."""
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
            self._has_work.notify()
        if self._mode == "drop":
            return list(records)
        if not pending.done.wait(_remaining(deadline)):
            raise Unavailable("decision log write not confirmed in time")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def get(self, decision_id: str) -> DecisionRecord | None:
        return self._sink.get(decision_id)

    def query(self, query: DecisionQuery) -> list[DecisionRecord]:
        return self._sink.query(query)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the sink."""
        with self._lock:
            already = self._closed
            self._closed = True
            self._has_work.notify_all()
            self._has_room.notify_all()
        self._thread.join()
        if not already:
            self._sink.close()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closed:
                        self._has_work.wait()
                    if not self._queue:
                        return
                    batch = [self._queue.popleft()]
                    size = len(batch[0].records)
                    while self._queue and size + len(self._queue[0].records) <= self._max_batch:
                        batch.append(self._queue.popleft())
                        size += len(batch[-1].records)
                    self._depth -= size
                    self._has_room.notify_all()
                self._write(batch, size)
        finally:
            # Normally the queue is empty here; after an unexpected error nobody may be
            # left waiting for a writer that is gone.
            with self._lock:
                self._stopped = True
                left = list(self._queue)
                self._queue.clear()
                self._depth = 0
                self._has_room.notify_all()
            for p in left:
                p.fail(Unavailable("decision log writer stopped"))

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
            p.result = written[start:start + len(p.records)]
            start += len(p.records)
            p.done.set()

    def _failed(self, batch: list[_Pending], size: int, exc: BaseException) -> None:
        if self._mode == "drop":
            log.error("decision log write failed; %d records lost", size, exc_info=exc)
            with self._lock:
                self._dropped += size
        for p in batch:
            p.fail(exc)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
