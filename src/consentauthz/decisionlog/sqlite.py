"""The embedded decision log: one SQLite file, append-only, hash-chained.

Durability: WAL with synchronous=NORMAL. A commit is in the operating system's hands
before the decision is answered, so a crash of the server process loses nothing; an
operating-system crash or power loss may lose the last commits since the last WAL sync.
`--decision-log-fsync` (synchronous=FULL) closes that window at a measured cost.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from ..chain import GENESIS
from ..domain import DecisionQuery, DecisionRecord
from ..errors import Unavailable
from ..sqlite_files import open_database
from .log import chain
from .record import record_from_dict, record_to_dict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    subject TEXT NOT NULL,
    purpose TEXT NOT NULL,
    data_category TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    caller TEXT NOT NULL,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_subject ON decisions (subject, seq);
CREATE INDEX IF NOT EXISTS decisions_by_purpose ON decisions (purpose, seq);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (time);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'the decision log is append-only'); END;
"""


class SqliteDecisionLog:
    def __init__(self, path: Path, fsync: bool = False, read_only: bool = False) -> None:
        self._lock = threading.Lock()
        try:
            self._conn = open_database(path, _SCHEMA, fsync=fsync, read_only=read_only)
            row = self._conn.execute(
                "SELECT seq, entry_hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"decision log cannot be opened: {exc}") from exc
        self._last_seq, self._last_hash = (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        with self._lock:
            out = chain(records, self._last_seq, self._last_hash)
            rows = []
            for r in out:
                d = record_to_dict(r)
                rows.append((r.sequence, r.decision_id, d["time"], r.subject, r.purpose,
                             r.data_category, r.decision.value, r.reason.value, r.caller,
                             json.dumps(d, sort_keys=True), r.prev_hash, r.entry_hash))
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT INTO decisions (seq, decision_id, time, subject, purpose, "
                        "data_category, decision, reason, caller, record, prev_hash, "
                        "entry_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
            if out:
                self._last_seq, self._last_hash = out[-1].sequence, out[-1].entry_hash
            return out

    def get(self, decision_id: str) -> DecisionRecord | None:
        with self._lock:
            try:
                row = self._conn.execute("SELECT record FROM decisions WHERE decision_id = ?",
                                         (decision_id,)).fetchone()
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
        return record_from_dict(json.loads(row[0])) if row else None

    def query(self, query: DecisionQuery) -> list[DecisionRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("subject", query.subject), ("purpose", query.purpose),
                              ("data_category", query.data_category),
                              ("reason", query.reason)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.decision is not None:
            where.append("decision = ?")
            args.append(query.decision.value)
        if query.start is not None:
            where.append("time >= ?")
            args.append(query.start.astimezone(UTC).isoformat(timespec="microseconds"))
        if query.end is not None:
            where.append("time < ?")
            args.append(query.end.astimezone(UTC).isoformat(timespec="microseconds"))
        if query.before_sequence:
            where.append("seq < ?")
            args.append(query.before_sequence)
        sql = "SELECT record FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(query.limit)
        with self._lock:
            try:
                rows = self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise Unavailable("decision log unavailable") from exc
        return [record_from_dict(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
