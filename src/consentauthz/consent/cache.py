"""The per-replica, bounded, in-process cache of subject state, and how current it is.

Positions are per ledger partition (consent/ledger.py); a subject's partition follows from
its pseudonym, so everything below is per partition, and the cache keeps one of each per
partition. An entry holds a subject's state as of some position `e` of its partition (the
state's `sequence`). The cache also keeps a watermark `W` per partition: every ledger
write of the partition at or below `W` has been applied to it (the entry of the subject it
touched was dropped). Writes reach the cache through `note_write` (one write, from the
Redis invalidation channel or from this process's own write) and `note_writes` (a
contiguous range per partition, from the ledger poller).

An entry put while `e >= W` is *tracked*: every later write to its subject drops it, so as
long as it is present it is current as of `max(e, W)`. An entry put with `e < W` is not:
a write in `(e, W]` to its subject may have been applied before the entry existed, so it
is current only as of `e`. Readers compare that position with what they need (a
consistency token, the freshness floor) and go to a slower tier when it is not enough.

Every position the cache has seen (a write applied, a state cached) is one the ledger had
committed, so `highest_of(p)` is a position partition p must still hold: a head below it
means the ledger went back (consent/freshness.py). `reset` starts a new epoch; a state read
or written before it (under the old ledger) is refused by `put`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..domain import SubjectState
from .ledger import partition_of

#: Out-of-order invalidations remembered while waiting for the gap before them to fill.
_MAX_PENDING = 10_000


@dataclass(slots=True)
class _Entry:
    state: SubjectState
    tracked: bool
    part: int
    #: the last state handed out, re-sequenced to the position it was current as of
    #: (a copy costs more than the rest of a hit; it is made once per watermark move)
    view: SubjectState | None = None


class LocalCache:
    """LRU by subject pseudonym. Thread-safe; every operation holds one lock briefly.
    `watermark`: where each partition starts (an int: a ledger of one partition)."""

    def __init__(self, max_entries: int = 100_000,
                 watermark: int | Sequence[int] = 0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        marks = [watermark] if isinstance(watermark, int) else list(watermark)
        if not marks:
            raise ValueError("a ledger has at least one partition")
        self._max = max_entries
        self._partitions = len(marks)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._marks = marks
        #: per partition: seq -> subject of writes applied out of order (above W + 1)
        self._pending: list[dict[int, str]] = [{} for _ in marks]
        #: per partition: the highest position applied or cached since the last reset
        self._highest = list(marks)
        self._epoch = 0

    @property
    def partitions(self) -> int:
        return self._partitions

    def partition_of(self, subject: str) -> int:
        return partition_of(subject, self._partitions)

    @property
    def watermarks(self) -> tuple[int, ...]:
        return tuple(self._marks)

    def watermark_of(self, part: int) -> int:
        return self._marks[part]

    @property
    def watermark(self) -> int:
        """How many ledger writes have been applied, all partitions together (for one
        partition, its watermark)."""
        return sum(self._marks)

    @property
    def highests(self) -> tuple[int, ...]:
        """Per partition, the highest position this cache has applied a write at or holds
        a state as of (the watermark, writes applied out of order, cached states)."""
        return tuple(self._highest)

    @property
    def highest(self) -> int:
        """highests, all partitions together (for one partition, its highest)."""
        return sum(self._highest)

    @property
    def epoch(self) -> int:
        """Moves on at each `reset`: read it before reading or writing the ledger, and hand
        it to `put`."""
        return self._epoch

    def _effective(self, entry: _Entry) -> int:
        e = entry.state.sequence
        return max(e, self._marks[entry.part]) if entry.tracked else e

    def get(self, subject: str) -> SubjectState | None:
        """The cached state, its `sequence` set to the position it is known current as of."""
        with self._lock:
            entry = self._entries.get(subject)
            if entry is None:
                return None
            self._entries.move_to_end(subject)
            effective = self._effective(entry)
            if effective == entry.state.sequence:
                return entry.state
            view = entry.view
            if view is None or view.sequence != effective:
                view = entry.view = replace(entry.state, sequence=effective)
            return view

    def put(self, subject: str, state: SubjectState, epoch: int | None = None) -> None:
        """Cache `state`, current as of `state.sequence`; never replaces a more current one.
        `epoch`: the cache's epoch before the state was read or written; a state from
        before a reset is dropped (it may belong to the ledger that went back)."""
        part = self.partition_of(subject)
        with self._lock:
            if epoch is not None and epoch != self._epoch:
                return
            self._highest[part] = max(self._highest[part], state.sequence)
            tracked = state.sequence >= self._marks[part] and not any(
                seq > state.sequence and s == subject
                for seq, s in self._pending[part].items())
            new = _Entry(state, tracked, part)
            current = self._entries.get(subject)
            if current is not None and (
                    current.state.version > state.version
                    or self._effective(current) > self._effective(new)):
                return
            self._entries[subject] = new
            self._entries.move_to_end(subject)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def note_write(self, subject: str, sequence: int) -> None:
        """The ledger write at `sequence` of the subject's partition changed `subject`."""
        part = self.partition_of(subject)
        with self._lock:
            self._entries.pop(subject, None)
            self._highest[part] = max(self._highest[part], sequence)
            mark, pending = self._marks[part], self._pending[part]
            if sequence <= mark:
                return
            if sequence == mark + 1:
                mark = sequence
                while (mark + 1) in pending:
                    mark += 1
                    del pending[mark]
                self._marks[part] = mark
                return
            if len(pending) >= _MAX_PENDING:
                # Too far behind to track: forget the partition; the poller moves W on.
                for s in [s for s, e in self._entries.items() if e.part == part]:
                    del self._entries[s]
                pending.clear()
            pending[sequence] = subject

    def note_writes(self, changes: Sequence[tuple[int, int, str]],
                    heads: Sequence[int]) -> None:
        """Every write up to `heads` (per partition) is in `changes` (partition, seq,
        subject): the ledger said so."""
        with self._lock:
            for _, _, subject in changes:
                self._entries.pop(subject, None)
            self._advance(heads)

    def clear(self, heads: int | Sequence[int]) -> None:
        """Forget every entry; writes up to `heads` (per partition) are thereby applied."""
        with self._lock:
            self._entries.clear()
            self._advance(self._per_part(heads))

    def reset(self, heads: int | Sequence[int]) -> None:
        """The ledger went back to `heads` (or is another one): forget everything, the
        watermarks and the highest positions included, and start a new epoch."""
        marks = self._per_part(heads)
        with self._lock:
            self._entries.clear()
            for pending in self._pending:
                pending.clear()
            self._marks = list(marks)
            self._highest = list(marks)
            self._epoch += 1

    def _per_part(self, heads: int | Sequence[int]) -> list[int]:
        marks = [heads] if isinstance(heads, int) else list(heads)
        if len(marks) != self._partitions:
            raise ValueError(f"{len(marks)} heads for {self._partitions} partitions")
        return marks

    def _advance(self, heads: Sequence[int]) -> None:
        for part, head in enumerate(heads):
            self._highest[part] = max(self._highest[part], head)
            if head > self._marks[part]:
                pending = {s: subj for s, subj in self._pending[part].items() if s > head}
                mark = head
                while (mark + 1) in pending:
                    mark += 1
                    del pending[mark]
                self._marks[part], self._pending[part] = mark, pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
