"""The decision-log boundary, and its in-memory twin.

`append` returns only once the entries are accepted durably; a decision is never answered
without its entry (the checker calls append before replying). The one exception is opt-in
and counted: QueuedDecisionLog's drop mode (writer.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Protocol

from ..chain import GENESIS, canonical_json, link_text
from ..domain import DecisionQuery, DecisionRecord
from .record import record_to_dict
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
    return [r for r, _ in chain_entries(records, last_seq, last_hash)]


def chain_entries(records: Sequence[DecisionRecord], last_seq: int, last_hash: str
                  ) -> list[tuple[DecisionRecord, str]]:
    """`chain`, with each numbered record's content (its canonical JSON without the two
    hashes: exactly the text its entry_hash covers) built on the way.

    This runs under the log's lock, once per decision, and serialising the record is the
    largest part of it: a store writes this same text rather than serialising the record
    again, and keeps the two hashes in their own columns (record.py, `stored_dict`)."""
    out = []
    for r in records:
        last_seq += 1
        d = record_to_dict(r)
        del d["prev_hash"], d["entry_hash"]
        d["sequence"] = last_seq
        text = canonical_json(d)
        h = link_text(last_hash, text)
        out.append((r.numbered(last_seq, last_hash, h), text))
        last_hash = h
    return out


def matches(r: DecisionRecord, q: DecisionQuery) -> bool:
    return ((not q.subject or r.subject == q.subject)
            and (not q.purpose or r.purpose == q.purpose)
            and (not q.data_category or r.data_category == q.data_category)
            and (q.decision is None or r.decision is q.decision)
            and (not q.reason or r.reason.value == q.reason)
            and (not q.caller or r.caller == q.caller)
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
