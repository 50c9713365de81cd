"""The per-replica, bounded, in-process cache of subject state."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..domain import SubjectState


class LocalCache:
    """LRU by subject pseudonym. A put never replaces a newer state with an older one, so a
    slow reader that loaded before a write cannot overwrite what the write cached."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, SubjectState] = OrderedDict()

    def get(self, subject: str) -> SubjectState | None:
        with self._lock:
            state = self._entries.get(subject)
            if state is not None:
                self._entries.move_to_end(subject)
            return state

    def put(self, subject: str, state: SubjectState) -> None:
        with self._lock:
            current = self._entries.get(subject)
            if current is not None and current.version > state.version:
                return
            self._entries[subject] = state
            self._entries.move_to_end(subject)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def invalidate(self, subject: str) -> None:
        with self._lock:
            self._entries.pop(subject, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
