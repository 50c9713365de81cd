"""The consent ledger boundary: append-only records, a projection, a global sequence.

The sequence number of a record is the consistency token its write returns. Three
implementations share this contract (tests/unit/test_ledger_contract.py): SQLite, the
embedded default; PostgreSQL, shared by replicas; and an in-memory twin for tests.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from ..chain import GENESIS, ChainReport, link
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import InvalidArgument
from .codec import (
    event_from_dict,
    event_to_dict,
    profile_from_dict,
    profile_to_dict,
    state_from_json,
)
from .projection import apply_event, apply_profile


@dataclass(frozen=True, slots=True)
class Idempotency:
    #: Already pseudonymised: callers sometimes put personal data in their keys.
    key: str
    request_hash: str
    #: The same key under the older keys of the pseudonymisation ring.
    older_keys: tuple[str, ...] = ()

    @property
    def all_keys(self) -> tuple[str, ...]:
        return (self.key, *self.older_keys)


@dataclass(frozen=True, slots=True)
class AppendResult:
    record_id: str
    sequence: int
    state: SubjectState
    #: True when the idempotency key matched an earlier write (nothing was appended).
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Changes:
    """What a ledger poll sees, from one consistent snapshot."""

    #: The ledger's identity (`Ledger.identity`): another one means another database.
    identity: str
    head: int
    #: (seq, subject) of the entries after the sequence asked about, oldest first.
    entries: list[tuple[int, str]]


class Ledger(Protocol):
    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None) -> AppendResult: ...

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime) -> AppendResult: ...

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        """The subject's state, current as of the head. `evidence`: the caller will show
        the evidence (a ledger that seals it opens it only then)."""
        ...

    def head(self) -> int: ...

    def identity(self) -> str:
        """A random id made with the ledger (when its schema is created) and kept with it (a
        restored backup keeps it; a new database has another): what tells one ledger's
        positions from another's. A read: never creates anything."""
        ...

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        """Of these pseudonyms, the one with the oldest ledger entry (None: none has any).
        The answer for a pseudonym that has entries never changes: a pseudonym without
        any can only ever get a newer first entry."""
        ...

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]: ...

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        """The subject's state exactly as it was at ledger position `sequence` (replay)."""
        ...

    def verify(self) -> ChainReport:
        """Recompute the hash chain; report the first entry that does not verify."""
        ...

    def changes(self, after_sequence: int, limit: int) -> Changes:
        """The identity, the head and (seq, subject) of the entries with seq >
        after_sequence, oldest first, at most `limit` of them; all from one consistent
        snapshot."""
        ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the ledger's global write order across the block: appends made inside it
        and whatever the caller does after them inside it (the Redis write-through) happen
        before any other writer's append, on every replica sharing this ledger. Not
        re-entrant per thread by contract."""
        ...

    def meta(self, key: str) -> str | None:
        """A value of the ledger's small key/value table (`ledger_meta`): facts about the
        ledger as a whole, kept with it (key fingerprints, ...). None: not set."""
        ...

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        """Set `key` to `value` if it is `expected` now (None: not set), atomically for
        every replica sharing the ledger; False (and nothing changed) otherwise."""
        ...

    def close(self) -> None: ...


def entry_payload(seq: int, subject: str, kind: str, record_id: str, recorded_at: str,
                  body: dict[str, Any]) -> dict[str, Any]:
    """What a ledger entry's hash covers."""
    return {"seq": seq, "subject": subject, "kind": kind, "record_id": record_id,
            "recorded_at": recorded_at, "body": body}


def replay(entries: Iterable[tuple[int, str, dict[str, Any]]], sequence: int) -> SubjectState:
    """Fold (seq, kind, body) ledger entries, oldest first, into the projected state."""
    state = SubjectState()
    for seq, kind, body in entries:
        if kind == "consent":
            state = apply_event(state, event_from_dict(body))
        else:
            state = apply_profile(state, profile_from_dict(body), seq)
    return replace(state, sequence=sequence)


def verify_entries(rows: Sequence[Sequence[Any]], projections: Mapping[str, str]) -> ChainReport:
    """Check stored ledger rows (seq, record_id, subject, kind, body, recorded_at,
    prev_hash, entry_hash; oldest first) and the stored projections against each other.

    The projection is what decisions read, so a tampered projection is tampering too.
    """
    prev, expected_seq = GENESIS, 1
    per_subject: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}

    def broken(seq: int, record_id: str, problem: str) -> ChainReport:
        return ChainReport("consent ledger", False, len(rows), expected_seq - 1, prev,
                           seq, record_id, problem)

    for seq, record_id, subject, kind, body, recorded_at, prev_hash, stored_hash in rows:
        if seq != expected_seq:
            return broken(seq, record_id, f"sequence gap: expected {expected_seq}")
        if prev_hash != prev:
            return broken(seq, record_id, "prev_hash does not link to the entry before")
        try:
            parsed = json.loads(body)
        except ValueError:
            return broken(seq, record_id, "unreadable record")
        if link(prev, entry_payload(seq, subject, kind, record_id, recorded_at,
                                    parsed)) != stored_hash:
            return broken(seq, record_id, "content does not match its hash")
        per_subject.setdefault(subject, []).append((seq, kind, parsed))
        prev, expected_seq = stored_hash, seq + 1
    head = expected_seq - 1
    missing = sorted(set(per_subject) - set(projections))
    if missing:
        last = per_subject[missing[0]][-1][0]
        return ChainReport("consent ledger", False, len(rows), head, prev, last, "",
                           "a subject with records has no projection (deleted?)")
    for subject, stored in projections.items():
        entries = per_subject.get(subject, [])
        rebuilt = replay(entries, head)
        try:
            current = state_from_json(stored, head)
        except (ValueError, KeyError):
            current = None
        if current != rebuilt:
            last = entries[-1][0] if entries else 0
            return ChainReport("consent ledger", False, len(rows), head, prev, last, "",
                               "the projection of a subject differs from its records")
    return ChainReport("consent ledger", True, len(rows), head, prev)


def idempotency_conflict() -> InvalidArgument:
    return InvalidArgument.single(
        "idempotency_key", "was already used for a different request")


class MemoryLedger:
    """A real ledger held in memory: same contract as SqliteLedger, nothing on disk."""

    def __init__(self) -> None:
        self._identity = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str, Any, str]] = []  # subject, kind, item, hash
        self._states: dict[str, SubjectState] = {}
        self._idempotency: dict[str, tuple[str, int, str]] = {}
        self._meta: dict[str, str] = {}
        self._first: dict[str, int] = {}  # subject -> sequence of its first entry

    def _append(self, subject: str, kind: str, record_id: str, recorded_at: datetime,
                body: dict[str, Any], item: Any) -> tuple[int, str]:
        seq = len(self._entries) + 1
        prev = self._entries[-1][3] if self._entries else GENESIS
        entry_hash = link(prev, entry_payload(seq, subject, kind, record_id,
                                              recorded_at.isoformat(), body))
        self._entries.append((subject, kind, item, entry_hash))
        self._first.setdefault(subject, seq)
        return seq, entry_hash

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None) -> AppendResult:
        with self._lock:
            seen = next((self._idempotency[k] for k in idempotency.all_keys
                         if k in self._idempotency), None) if idempotency else None
            if seen is not None:
                record_id, seq, request_hash = seen
                assert idempotency is not None
                if request_hash != idempotency.request_hash:
                    raise idempotency_conflict()
                return AppendResult(record_id, seq, self._current(subject), replayed=True)
            seq = len(self._entries) + 1
            ev = replace(event, sequence=seq)
            self._append(subject, "consent", ev.record_id, ev.recorded_at,
                         event_to_dict(ev), ev)
            state = apply_event(self._states.get(subject, SubjectState()), ev)
            self._states[subject] = state
            if idempotency is not None:
                self._idempotency[idempotency.key] = (
                    ev.record_id, seq, idempotency.request_hash)
            return AppendResult(ev.record_id, seq, replace(state, sequence=seq))

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime) -> AppendResult:
        with self._lock:
            seq, _ = self._append(subject, "profile", record_id, recorded_at,
                                  profile_to_dict(profile), profile)
            state = apply_profile(self._states.get(subject, SubjectState()), profile, seq)
            self._states[subject] = state
            return AppendResult(record_id, seq, replace(state, sequence=seq))

    def _current(self, subject: str) -> SubjectState:
        return replace(self._states.get(subject, SubjectState()), sequence=len(self._entries))

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        with self._lock:
            return self._current(subject)

    def head(self) -> int:
        with self._lock:
            return len(self._entries)

    def identity(self) -> str:
        return self._identity

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        with self._lock:
            found = [(self._first[s], s) for s in subjects if s in self._first]
        return min(found)[1] if found else None

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]:
        with self._lock:
            found = [item for s, kind, item, _ in self._entries
                     if s == subject and kind == "consent" and item.sequence > after_sequence]
            return found[:limit]

    def changes(self, after_sequence: int, limit: int) -> Changes:
        start = max(after_sequence, 0)
        with self._lock:
            found = [(seq, entry[0]) for seq, entry in
                     enumerate(self._entries[start:start + max(limit, 0)], start=start + 1)]
            return Changes(self._identity, len(self._entries), found)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        # One process, and the caller already serialises its writes.
        return contextlib.nullcontext()

    def meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        with self._lock:
            if self._meta.get(key) != expected:
                return False
            self._meta[key] = value
            return True

    def verify(self) -> ChainReport:
        with self._lock:
            entries = list(self._entries)
        prev = GENESIS
        for seq, (subject, kind, item, stored) in enumerate(entries, start=1):
            body = event_to_dict(item) if kind == "consent" else profile_to_dict(item)
            record_id = item.record_id if kind == "consent" else ""
            recorded = item.recorded_at.isoformat() if kind == "consent" else ""
            if kind == "consent" and link(prev, entry_payload(
                    seq, subject, kind, record_id, recorded, body)) != stored:
                return ChainReport("consent ledger", False, len(entries), seq - 1, prev, seq,
                                   record_id, "content does not match its hash")
            prev = stored
        return ChainReport("consent ledger", True, len(entries), len(entries), prev)

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        with self._lock:
            entries = [(seq, kind, event_to_dict(item) if kind == "consent"
                        else profile_to_dict(item))
                       for seq, (s, kind, item, _) in enumerate(self._entries[:sequence], 1)
                       if s == subject]
        return replay(entries, sequence)

    def close(self) -> None:
        pass
