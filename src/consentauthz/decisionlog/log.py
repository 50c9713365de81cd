"""The decision-log boundary, and its in-memory twin.

`append` returns only once the entries are accepted durably; a decision is never answered
without its entry (the checker calls append before replying).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from ..chain import GENESIS
from ..domain import DecisionQuery, DecisionRecord
from .record import entry_hash, record_to_dict
from .verify import INDEXED, Checkpoint, StoredEntry, VerifyResult, verify_entries


class DecisionLog(Protocol):
    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]: ...

    def get(self, decision_id: str) -> DecisionRecord | None: ...

    def query(self, query: DecisionQuery) -> list[DecisionRecord]: ...

    def close(self) -> None: ...


class VerifiableLog(DecisionLog, Protocol):
    """A log that stores its own chain (the SQLite log and the in-memory twin; not a
    queue in front of one)."""

    def checkpoint(self) -> Checkpoint: ...

    def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult: ...


def chain(records: Sequence[DecisionRecord], last_seq: int,
          last_hash: str) -> list[DecisionRecord]:
    """Number and hash-link new records after (last_seq, last_hash)."""
    out = []
    for r in records:
        last_seq += 1
        numbered = replace(r, sequence=last_seq, prev_hash=last_hash, entry_hash="")
        last_hash = entry_hash(last_hash, numbered)
        out.append(replace(numbered, entry_hash=last_hash))
    return out


def matches(r: DecisionRecord, q: DecisionQuery) -> bool:
    return ((not q.subject or r.subject == q.subject)
            and (not q.purpose or r.purpose == q.purpose)
            and (not q.data_category or r.data_category == q.data_category)
            and (q.decision is None or r.decision is q.decision)
            and (not q.reason or r.reason.value == q.reason)
            and (q.start is None or r.time >= q.start)
            and (q.end is None or r.time < q.end)
            and (not q.before_sequence or r.sequence < q.before_sequence))


class MemoryDecisionLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[DecisionRecord] = []
        self._by_id: dict[str, DecisionRecord] = {}

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        with self._lock:
            last = self._records[-1] if self._records else None
            out = chain(records, last.sequence if last else 0,
                        last.entry_hash if last else GENESIS)
            self._records.extend(out)
            self._by_id.update((r.decision_id, r) for r in out)
            return out

    def get(self, decision_id: str) -> DecisionRecord | None:
        with self._lock:
            return self._by_id.get(decision_id)

    def query(self, query: DecisionQuery) -> list[DecisionRecord]:
        with self._lock:
            found = [r for r in reversed(self._records) if matches(r, query)]
        return found[:query.limit]

    def checkpoint(self) -> Checkpoint:
        with self._lock:
            if not self._records:
                return Checkpoint(0, GENESIS, 0, None)
            head = self._records[-1]
            return Checkpoint(head.sequence, head.entry_hash, len(self._records), head.time)

    def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult:
        """The same checks as on disk, over each record's JSON form."""
        with self._lock:
            records = list(self._records)
        return verify_entries((_stored(r) for r in records), checkpoints=checkpoints)

    def close(self) -> None:
        pass


def _stored(r: DecisionRecord) -> StoredEntry:
    d = record_to_dict(r)
    return StoredEntry(r.sequence, json.dumps(d, sort_keys=True),
                       {name: d[name] for name in INDEXED})
