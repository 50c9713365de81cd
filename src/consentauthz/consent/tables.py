"""The ledger's write path over SQL, shared by the SQLite and PostgreSQL ledgers.

Both keep the same tables (`ledger`, hash-chained per partition; `subject_state`, the
projection; `ledger_meta`, a small key/value table about the ledger as a whole) and
record a write the same way: the retry check, the partition's next sequence, the chained
entry, the projection replaced, in one transaction. Only the placeholder style, the
transaction (and how a partition's appends are serialised), where a partition's tip is
read and kept, and the retry lookup differ; the subclasses supply those.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ..chain import GENESIS, link
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import InvalidArgument, SubjectErased
from .codec import event_to_dict, profile_to_dict, state_from_json, state_to_json
from .ledger import (
    AppendResult,
    BatchItem,
    BatchResult,
    Idempotency,
    check_one_partition,
    entry_payload,
    idempotency_conflict,
    partition_of,
    replay,
)
from .projection import PROJECTION_RULES, apply_event, apply_profile

log = logging.getLogger("consentauthz.consent")


def refuse_if_erased(state: SubjectState) -> None:
    """Nothing more is recorded about an erased subject. Checked again under the
    partition's order: the erasure may have been recorded (by another replica) after the
    caller last read the subject."""
    if state.profile.erased_at is not None:
        raise SubjectErased("the subject was erased; nothing more is recorded about them")


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class Connection(Protocol):
    """What both drivers' connections offer: sqlite3's and psycopg's."""

    def execute(self, query: Any, params: Any = ..., /) -> Cursor: ...


class LedgerTables(ABC):
    #: the driver's parameter placeholder: "?" (sqlite3) or "%s" (psycopg)
    PLACEHOLDER: ClassVar[str]

    @property
    @abstractmethod
    def partitions(self) -> int: ...

    def _part(self, subject: str) -> int:
        return partition_of(subject, self.partitions)

    @abstractmethod
    def _append_tx(self, part: int | None) -> AbstractContextManager[Any]:
        """A transaction that holds the append order of partition `part` (None: every
        partition's) until it ends."""

    def _last(self, conn: Connection, part: int) -> tuple[int, str]:
        """(seq, entry_hash) of the partition's newest entry; the caller holds its order."""
        row = conn.execute(self._sql("SELECT seq, entry_hash FROM ledger WHERE part = ? "
                                     "ORDER BY seq DESC LIMIT 1"), (part,)).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def _advance(self, conn: Connection, part: int, seq: int, entry_hash: str) -> None:
        """The partition's tip is now (seq, entry_hash): for a ledger that keeps tips (the
        SQLite file's tip is its last entry)."""
        return None

    @abstractmethod
    def _retried(self, conn: Connection, keys: Sequence[str]) -> Any:
        """(record_id, seq, request_hash) of the first entry written under one of `keys`,
        or None."""

    def _sql(self, text: str) -> str:
        return text.replace("?", self.PLACEHOLDER)

    def _state(self, conn: Connection, subject: str, head: int) -> SubjectState:
        row = conn.execute(self._sql("SELECT state FROM subject_state WHERE subject = ?"),
                           (subject,)).fetchone()
        return state_from_json(row[0], head) if row else SubjectState(sequence=head)

    def _insert(self, conn: Connection, subject: str, kind: str, record_id: str,
                recorded_at: datetime, body: dict[str, Any],
                idempotency: Idempotency | None) -> int:
        part = self._part(subject)
        last, prev = self._last(conn, part)
        seq = last + 1
        stamp = recorded_at.isoformat()
        entry_hash = link(prev, entry_payload(seq, subject, kind, record_id, stamp, body))
        conn.execute(
            self._sql("INSERT INTO ledger (part, seq, record_id, subject, kind, body, "
                      "recorded_at, idempotency_key, request_hash, prev_hash, entry_hash) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (part, seq, record_id, subject, kind, json.dumps(body, sort_keys=True), stamp,
             idempotency.key if idempotency else None,
             idempotency.request_hash if idempotency else None, prev, entry_hash))
        self._advance(conn, part, seq, entry_hash)
        return seq

    def _save_state(self, conn: Connection, subject: str, state: SubjectState) -> None:
        conn.execute(
            self._sql("INSERT INTO subject_state (subject, part, version, state) "
                      "VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (subject) DO UPDATE SET version = excluded.version, "
                      "state = excluded.state"),
            (subject, self._part(subject), state.version, state_to_json(state)))

    def _meta(self, conn: Connection, key: str) -> str | None:
        row = conn.execute(self._sql("SELECT value FROM ledger_meta WHERE key = ?"),
                           (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put_meta(self, conn: Connection, key: str, value: str) -> None:
        conn.execute(self._sql("INSERT INTO ledger_meta (key, value) VALUES (?, ?) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                     (key, value))

    def _refresh_projections(self, conn: Connection) -> int:
        """Rebuild every stored projection from the records when they were made under
        other rules than projection.PROJECTION_RULES (a ledger written by an earlier
        release); the caller holds the ledger's append order. Returns how many subjects
        were rebuilt. The records are the truth, so this is always safe to do."""
        if self._meta(conn, "projection_rules") == PROJECTION_RULES:
            return 0
        rows = conn.execute("SELECT part, seq, subject, kind, body FROM ledger "
                            "ORDER BY part, seq").fetchall()
        per_subject: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        for _, seq, subject, kind, body in rows:
            per_subject.setdefault(str(subject), []).append((int(seq), kind, json.loads(body)))
        # A partition's head, not its newest entry: after `ledger migrate` they differ.
        heads = {p: self._last(conn, p)[0] for p in range(self.partitions)}
        for subject, entries in per_subject.items():
            self._save_state(conn, subject, replay(entries, heads[self._part(subject)]))
        self._put_meta(conn, "projection_rules", PROJECTION_RULES)
        if per_subject:
            log.warning("consent ledger: rebuilt the projections of %d subjects under the "
                        "current rules (projection rules %s)", len(per_subject),
                        PROJECTION_RULES)
        return len(per_subject)

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None, *,
                       read: SubjectState | None = None) -> AppendResult:
        # `read` is not needed: the state is read under the partition's order here.
        part = self._part(subject)
        with self._append_tx(part) as conn:
            return self._append_in(conn, part, subject, event, idempotency)

    def append_batch(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        if not items:
            return []
        part = check_one_partition(items, self.partitions)
        results: list[BatchResult] = []
        with self._append_tx(part) as conn:
            for item in items:
                try:
                    results.append(self._append_in(conn, part, item.subject, item.event,
                                                   item.idempotency))
                except (InvalidArgument, SubjectErased) as exc:
                    results.append(exc)  # raised before the item wrote anything
        return results

    def _append_in(self, conn: Connection, part: int, subject: str, event: ConsentEvent,
                   idempotency: Idempotency | None) -> AppendResult:
        """One consent event, inside a transaction that holds the partition's order."""
        if idempotency is not None:
            row = self._retried(conn, idempotency.all_keys)
            if row is not None:
                if row[2] != idempotency.request_hash:
                    raise idempotency_conflict()
                head = self._last(conn, part)[0]
                return AppendResult(row[0], int(row[1]), self._state(conn, subject, head),
                                    replayed=True)
        seq = self._last(conn, part)[0] + 1
        current = self._state(conn, subject, seq)
        refuse_if_erased(current)
        ev = replace(event, sequence=seq)
        self._insert(conn, subject, "consent", ev.record_id, ev.recorded_at,
                     event_to_dict(ev), idempotency)
        state = apply_event(current, ev)
        self._save_state(conn, subject, state)
        return AppendResult(ev.record_id, seq, replace(state, sequence=seq))

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime, *,
                       read: SubjectState | None = None) -> AppendResult:
        with self._append_tx(self._part(subject)) as conn:
            current = self._state(conn, subject, 0)
            if profile.erased_at is None:  # a second erasure marker changes nothing
                refuse_if_erased(current)
            seq = self._insert(conn, subject, "profile", record_id, recorded_at,
                               profile_to_dict(profile), None)
            state = apply_profile(current, profile, seq)
            self._save_state(conn, subject, state)
            return AppendResult(record_id, seq, replace(state, sequence=seq))

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        # Under the append order: one replica's swap is over before another's begins.
        with self._append_tx(None) as conn:
            if expected is None:
                cur = conn.execute(self._sql("INSERT INTO ledger_meta (key, value) VALUES "
                                             "(?, ?) ON CONFLICT (key) DO NOTHING"),
                                   (key, value))
            else:
                cur = conn.execute(self._sql("UPDATE ledger_meta SET value = ? "
                                             "WHERE key = ? AND value = ?"),
                                   (value, key, expected))
            return int(cur.rowcount) == 1
