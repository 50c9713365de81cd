"""The per-replica, bounded, in-process cache of subject state, and how current it is.

An entry holds a subject's state as of some ledger position `e` (the state's `sequence`).
The cache also keeps a watermark `W`: every ledger write at or below `W` has been applied to
it (the entry of the subject it touched was dropped). Writes reach the cache through
`note_write` (one write, from the Redis invalidation channel or from this process's own
write) and `note_writes` (a contiguous range, from the ledger poller).

An entry put while `e >= W` is *tracked*: every later write to its subject drops it, so as
long as it is present it is current as of `max(e, W)`. An entry put with `e < W` is not:
a write in `(e, W]` to its subject may have been applied before the entry existed, so it
is current only as of `e`. Readers compare that position with what they need (a
consistency token, the freshness floor) and go to a slower tier when it is not enough.

Every position the cache has seen (a write applied, a state cached) is one the ledger had
committed, so `highest` is a position the ledger must still hold: a head below it means the
ledger went back (consent/freshness.py). `reset` starts a new epoch; a state read or
written before it (under the old ledger) is refused by `put`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from ..domain import SubjectState

#: Out-of-order invalidations remembered while waiting for the gap before them to fill.
_MAX_PENDING = 10_000


@dataclass(slots=True)
class _Entry:
    state: SubjectState
    tracked: bool
    #: the last state handed out, re-sequenced to the position it was current as of
    #: (a copy costs more than the rest of a hit; it is made once per watermark move)
    view: SubjectState | None = None


class LocalCache:
    """LRU by subject pseudonym. Thread-safe; every operation holds one lock briefly."""

    def __init__(self, max_entries: int = 100_000, watermark: int = 0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._watermark = watermark
        #: seq -> subject of writes applied out of order (above watermark + 1)
        self._pending: dict[int, str] = {}
        #: the highest ledger position applied or cached since the last reset
        self._highest = watermark
        self._epoch = 0

    @property
    def watermark(self) -> int:
        return self._watermark

    @property
    def highest(self) -> int:
        """The highest ledger position this cache has applied a write at or holds a state
        as of (the watermark, writes applied out of order, cached states)."""
        return self._highest

    @property
    def epoch(self) -> int:
        """Moves on at each `reset`: read it before reading or writing the ledger, and hand
        it to `put`."""
        return self._epoch

    def _effective(self, entry: _Entry) -> int:
        e = entry.state.sequence
        return max(e, self._watermark) if entry.tracked else e

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
        with self._lock:
            if epoch is not None and epoch != self._epoch:
                return
            self._highest = max(self._highest, state.sequence)
            tracked = state.sequence >= self._watermark and not any(
                seq > state.sequence and s == subject for seq, s in self._pending.items())
            new = _Entry(state, tracked)
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
        """The ledger write at `sequence` changed `subject`."""
        with self._lock:
            self._entries.pop(subject, None)
            self._highest = max(self._highest, sequence)
            if sequence <= self._watermark:
                return
            if sequence == self._watermark + 1:
                self._watermark = sequence
                while (nxt := self._watermark + 1) in self._pending:
                    del self._pending[nxt]
                    self._watermark = nxt
                return
            if len(self._pending) >= _MAX_PENDING:
                # Too far behind to track: forget everything; the poller moves W on.
                self._entries.clear()
                self._pending.clear()
            self._pending[sequence] = subject

    def note_writes(self, changes: list[tuple[int, str]], head: int) -> None:
        """Every write up to `head` is in `changes` (the ledger said so)."""
        with self._lock:
            for _, subject in changes:
                self._entries.pop(subject, None)
            self._advance(head)

    def clear(self, head: int) -> None:
        """Forget every entry; writes up to `head` are thereby applied."""
        with self._lock:
            self._entries.clear()
            self._advance(head)

    def reset(self, head: int) -> None:
        """The ledger went back to `head` (or is another one): forget everything, the
        watermark and the highest position included, and start a new epoch."""
        with self._lock:
            self._entries.clear()
            self._pending.clear()
            self._watermark = self._highest = head
            self._epoch += 1

    def _advance(self, head: int) -> None:
        self._highest = max(self._highest, head)
        if head > self._watermark:
            self._watermark = head
            self._pending = {s: subj for s, subj in self._pending.items() if s > head}
            while (nxt := self._watermark + 1) in self._pending:
                del self._pending[nxt]
                self._watermark = nxt

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
