"""The shared consent ledger: one PostgreSQL database that every replica appends to.

Same tables, hash chain and contract as the SQLite ledger. What PostgreSQL adds is that
several processes write at once, so the global order is made explicit: every append
transaction takes one advisory lock before it reads the last sequence number, which makes
sequence order equal commit order. A reader that sees sequence s therefore sees every
sequence below s, which is what consistency tokens rely on. An append is one statement
(the function `consentauthz_append_v1`): one round trip instead of the transaction's many.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..chain import ChainReport, canonical_json
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import Unavailable
from .codec import event_from_dict, event_to_dict, profile_to_dict, state_from_json, state_to_json
from .ledger import (
    AppendResult,
    Changes,
    Idempotency,
    entry_payload,
    idempotency_conflict,
    replay,
    verify_entries,
)
from .projection import apply_event, apply_profile
from .tables import Connection, LedgerTables

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]
#: (current state, nonce) -> (the entry's body, the new state), the nonce as the sequence
_Build: TypeAlias = Callable[[SubjectState, int], tuple[dict[str, Any], SubjectState]]

#: Advisory lock keys (per database). APPEND_LOCK orders every append and exclusive();
#: SCHEMA_LOCK keeps two processes from running the DDL below at the same time.
APPEND_LOCK = 0x636F6E73656E74  # "consent"
SCHEMA_LOCK = APPEND_LOCK + 1

#: Nonces (where the sequence goes in an append's texts) are above any sequence a ledger
#: reaches, so ordering by sequence is the same with the nonce in its place.
_NONCE_FLOOR = 10**30

CONNECT_TIMEOUT = 5.0  # seconds; also bounds waiting for a pooled connection
STATEMENT_TIMEOUT = 5.0  # seconds; also bounds waiting for APPEND_LOCK

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq BIGINT PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('consent', 'profile')),
    body TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_subject ON ledger (subject, seq);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subject_state (
    subject TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_identity (id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE OR REPLACE FUNCTION consentauthz_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the consent ledger is append-only';
END $$;
CREATE OR REPLACE FUNCTION consentauthz_projection_no_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'projections are only ever replaced, never deleted';
END $$;
-- One append in one statement (one round trip): the append lock, the retry lookup, the
-- next sequence and the chain link, the entry, and the projection replaced if it is still
-- the version the writer computed the new state from (else SQLSTATE 40001, and the writer
-- reads again). The writer marks where the sequence goes (in the hashed payload, the body
-- and the state) with a random nonce that no subject data can forge; the hash is
-- chain.link over the payload with the nonce replaced, exactly as Python computes it.
CREATE OR REPLACE FUNCTION consentauthz_append_v1(
    p_lock BIGINT, p_subject TEXT, p_kind TEXT, p_record_id TEXT, p_body TEXT,
    p_recorded_at TEXT, p_retry_keys TEXT[], p_idempotency_key TEXT, p_request_hash TEXT,
    p_payload TEXT, p_state TEXT, p_expected BIGINT, p_nonce TEXT)
RETURNS TABLE (seq BIGINT, record_id TEXT, request_hash TEXT, replayed BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT;
    prev TEXT;
    h TEXT;
    n INT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF p_retry_keys IS NOT NULL THEN
        RETURN QUERY SELECT l.seq, l.record_id, l.request_hash, TRUE FROM ledger l
            WHERE l.idempotency_key = ANY(p_retry_keys) ORDER BY l.seq LIMIT 1;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT l.seq, l.entry_hash INTO s, prev FROM ledger l ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        s := 0;
        prev := repeat('0', 64);
    END IF;
    s := s + 1;
    h := encode(sha256(convert_to(
        prev || chr(10) || replace(p_payload, p_nonce, s::text), 'UTF8')), 'hex');
    INSERT INTO ledger (seq, record_id, subject, kind, body, recorded_at, idempotency_key,
                        request_hash, prev_hash, entry_hash)
    VALUES (s, p_record_id, p_subject, p_kind, replace(p_body, p_nonce, s::text),
            p_recorded_at, p_idempotency_key, p_request_hash, prev, h);
    IF p_expected = 0 THEN
        INSERT INTO subject_state (subject, version, state)
        VALUES (p_subject, s, replace(p_state, p_nonce, s::text))
        ON CONFLICT (subject) DO NOTHING;
    ELSE
        UPDATE subject_state SET version = s, state = replace(p_state, p_nonce, s::text)
        WHERE subject = p_subject AND version = p_expected;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'the subject changed since its state was read'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN QUERY SELECT s, p_record_id, p_request_hash, FALSE;
END $$;
-- Statement level, so that TRUNCATE (which fires no row triggers) is refused too.
CREATE OR REPLACE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
FOR EACH STATEMENT EXECUTE FUNCTION consentauthz_ledger_append_only();
CREATE OR REPLACE TRIGGER subject_state_no_delete BEFORE DELETE OR TRUNCATE ON subject_state
FOR EACH STATEMENT EXECUTE FUNCTION consentauthz_projection_no_delete();
"""

#: The identity is made with the schema, in its transaction (a database from before this
#: was so gets one when a process first opens it after the upgrade).
_IDENTIFY = """
INSERT INTO ledger_identity (id) SELECT %s WHERE NOT EXISTS (SELECT 1 FROM ledger_identity)
"""

#: The DDL above runs in one transaction, so if the triggers it creates last exist, all of
#: it does (and the identity and meta tables, which older versions made later or not at
#: all, exist). Checking first lets a role without DDL rights use a schema an admin created.
_SCHEMA_READY = """
SELECT count(*) = 2 AND to_regclass('ledger_identity') IS NOT NULL
    AND to_regclass('ledger_meta') IS NOT NULL
    AND to_regproc('consentauthz_append_v1') IS NOT NULL FROM pg_trigger
WHERE NOT tgisinternal AND (tgrelid, tgname) IN (
    (to_regclass('ledger'), 'ledger_append_only'),
    (to_regclass('subject_state'), 'subject_state_no_delete'))
"""

_HEAD = "SELECT coalesce(max(seq), 0) FROM ledger"
#: One statement: the identity and the head agree (the poller reads both each time).
_IDENTITY_AND_HEAD = ("SELECT (SELECT id FROM ledger_identity ORDER BY id LIMIT 1), "
                      "(SELECT coalesce(max(seq), 0) FROM ledger)")


@contextmanager
def _translated() -> Iterator[None]:
    """The one place where database errors become ours. The message names neither SQL
    nor subject: the driver's errors may quote both."""
    try:
        yield
    except psycopg.Error as exc:
        raise Unavailable("consent ledger unavailable") from exc


@contextmanager
def _translated_except_conflict() -> Iterator[None]:
    """As _translated, but a serialisation failure (the append function's "the subject
    changed since its state was read") passes through for the writer to retry."""
    try:
        yield
    except psycopg.errors.SerializationFailure:
        raise
    except psycopg.Error as exc:
        raise Unavailable("consent ledger unavailable") from exc


def _settled(state: SubjectState, nonce: int, seq: int) -> SubjectState:
    """The state the function stored: the nonce replaced by the sequence it got."""
    events = tuple(replace(e, sequence=seq) if e.sequence == nonce else e
                   for e in state.events)
    return replace(state, events=events, sequence=seq,
                   version=seq if state.version == nonce else state.version)


def _conninfo(dsn: str, connect_timeout: float, statement_timeout: float) -> str:
    options = conninfo_to_dict(dsn).get("options") or ""
    return make_conninfo(
        # libpq takes whole seconds and treats anything below 2 as 2.
        dsn, connect_timeout=max(2, math.ceil(connect_timeout)),
        # The server's side too: a session-level advisory lock held by a vanished writer
        # must be released within seconds, not after the kernel's two-hour default.
        options=(f"{options} -c statement_timeout={int(statement_timeout * 1000)} "
                 "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                 "-c tcp_keepalives_count=3 -c tcp_user_timeout=15000").strip(),
        tcp_user_timeout=15000,
        # A peer that vanished (network partition) is noticed within about half a minute
        # instead of the kernel's default two hours.
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)


def _identity(value: Any) -> str:
    if value is None:  # deleted, or a restore half done: nothing to tell ledgers apart by
        raise Unavailable("the consent ledger has no identity")
    return str(value)


def _configure_reader(conn: Conn) -> None:
    # Every read runs in one snapshot (head and rows agree) and can never write.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True


class PostgresLedger(LedgerTables):
    """Thread-safe. Appends go through one writer connection (they are serialised by the
    advisory lock anyway); reads use a pool."""

    PLACEHOLDER = "%s"

    def __init__(self, dsn: str, min_size: int = 1, max_size: int = 8, *,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 statement_timeout: float = STATEMENT_TIMEOUT) -> None:
        self._conninfo = _conninfo(dsn, connect_timeout, statement_timeout)
        self._write_lock = threading.RLock()
        self._closed = False
        #: How deep the current exclusive() blocks go; the session lock lives on the
        #: writer connection, so it must not be silently replaced while one is open.
        self._held = 0
        with _translated():
            self._writer: Conn = self._connect()
            try:
                self._create_schema()
                with self._append_tx() as conn:
                    self._refresh_projections(conn)
                self._pool: ConnectionPool[Conn] = ConnectionPool(
                    self._conninfo, min_size=min_size, max_size=max_size, open=False,
                    configure=_configure_reader, timeout=connect_timeout,
                    name="consent-ledger")
            except BaseException:
                self._writer.close()
                raise
            try:
                self._pool.open(wait=True, timeout=connect_timeout)
            except BaseException:
                self._pool.close()
                self._writer.close()
                raise

    def _create_schema(self) -> None:
        conn = self._writer
        with conn.transaction():
            row = conn.execute(_SCHEMA_READY).fetchone()
            if row is not None and row[0] and conn.execute(
                    "SELECT 1 FROM ledger_identity LIMIT 1").fetchone() is not None:
                return
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            # And the append lock: older versions made the identity under it.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            conn.execute(_SCHEMA)
            conn.execute(_IDENTIFY, (secrets.token_hex(8),))

    def _connect(self) -> Conn:
        # Autocommit: a single statement (an append, taking or releasing the session lock)
        # is one round trip; blocks of several statements open their transaction
        # explicitly (`conn.transaction()`).
        conn = psycopg.connect(self._conninfo, autocommit=True)
        # Not the server's default, whatever it is: under REPEATABLE READ an append would
        # read the last sequence from a snapshot taken before it got the append lock. For
        # the explicit transactions, and for the single statements' own: READ COMMITTED
        # gives each statement in the append function a new snapshot, so the one after
        # the lock sees every earlier append.
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn

    def _writer_connection(self) -> Conn:
        """The writer connection, reopened if it broke (caller holds the write lock)."""
        if self._closed:
            raise Unavailable("consent ledger unavailable")
        if self._writer.closed or self._writer.broken:
            if self._held:
                # The session lock died with the connection: another writer may already
                # have appended, so the block's ordering promise is gone.
                raise Unavailable("consent ledger unavailable")
            self._writer.close()
            self._writer = self._connect()
        return self._writer

    @contextmanager
    def _append_tx(self) -> Iterator[Conn]:
        with _translated(), self._write_lock:
            conn = self._writer_connection()
            # READ COMMITTED: each statement after the lock sees every earlier append.
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                yield conn

    @contextmanager
    def _read_tx(self) -> Iterator[Conn]:
        with _translated(), self._pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _read_one(self) -> Iterator[Conn]:
        """For a read that is one statement (its own snapshot): no BEGIN and COMMIT around
        it, one round trip instead of three. This is the cache-miss path of a Check."""
        with _translated(), self._pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    def _retried(self, conn: Connection, keys: Sequence[str]) -> Any:
        return conn.execute(
            "SELECT record_id, seq, request_hash FROM ledger "
            "WHERE idempotency_key = ANY(%s) ORDER BY seq LIMIT 1", (list(keys),)).fetchone()

    # -- appends: one statement each (consentauthz_append_v1) ----------------------------

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None) -> AppendResult:
        def build(state: SubjectState, nonce: int) -> tuple[dict[str, Any], SubjectState]:
            ev = replace(event, sequence=nonce)
            return event_to_dict(ev), apply_event(state, ev)

        return self._append_one(subject, "consent", event.record_id, event.recorded_at,
                                build, idempotency) or super().append_consent(
                                    subject, event, idempotency)

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime) -> AppendResult:
        def build(state: SubjectState, nonce: int) -> tuple[dict[str, Any], SubjectState]:
            return profile_to_dict(profile), apply_profile(state, profile, nonce)

        return self._append_one(subject, "profile", record_id, recorded_at, build,
                                None) or super().append_profile(
                                    subject, profile, record_id, recorded_at)

    def _append_one(self, subject: str, kind: str, record_id: str, recorded_at: datetime,
                    build: _Build, idempotency: Idempotency | None) -> AppendResult | None:
        """Read the subject's state (one statement), compute the entry and the new state
        with a nonce where the sequence goes, and append in one statement. None when
        another writer changed the subject in between: the caller then appends the way
        that reads the state under the lock (three more round trips, never retried)."""
        stamp = recorded_at.isoformat()
        current = self.load(subject)
        nonce = _NONCE_FLOOR + secrets.randbits(96)
        body, state = build(current, nonce)
        payload = canonical_json(entry_payload(nonce, subject, kind, record_id, stamp, body))
        args = (APPEND_LOCK, subject, kind, record_id, json.dumps(body, sort_keys=True),
                stamp, list(idempotency.all_keys) if idempotency else None,
                idempotency.key if idempotency else None,
                idempotency.request_hash if idempotency else None, payload,
                state_to_json(state), current.version, str(nonce))
        try:
            row = self._call_append(args)
        except psycopg.errors.SerializationFailure:
            return None
        seq, got_record, request_hash, replayed = int(row[0]), row[1], row[2], row[3]
        if replayed:
            assert idempotency is not None
            if request_hash != idempotency.request_hash:
                raise idempotency_conflict()
            return AppendResult(str(got_record), seq, self.load(subject), replayed=True)
        return AppendResult(record_id, seq, _settled(state, nonce, seq))

    def _call_append(self, args: tuple[Any, ...]) -> Any:
        with self._write_lock, _translated_except_conflict():
            conn = self._writer_connection()
            # One statement, its own transaction (the writer is in autocommit): one round
            # trip. Inside exclusive() the session lock this connection holds makes the
            # function's lock re-entrant, as before.
            row = conn.execute(
                "SELECT * FROM consentauthz_append_v1(%s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s)", args).fetchone()
        assert row is not None
        return row

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        with self._read_one() as conn:
            # One statement: the state and the head it is current as of agree.
            row = conn.execute(
                "SELECT (SELECT coalesce(max(seq), 0) FROM ledger), "
                "(SELECT state FROM subject_state WHERE subject = %s)", (subject,)).fetchone()
        assert row is not None
        head, stored = int(row[0]), row[1]
        return state_from_json(stored, head) if stored is not None else SubjectState(
            sequence=head)

    def load_with_key_record(self, subject: str
                             ) -> tuple[SubjectState, tuple[str | None, datetime | None] | None]:
        """load(), and the subject's row of `subject_keys` (wrapped key, destroyed at; None
        when there is none) in the same statement: one round trip, one snapshot. For
        SealingLedger, when its key store is the PostgresKeyStore of this very database
        (which creates that table)."""
        with self._read_one() as conn:
            row = conn.execute(
                "SELECT h.head, s.state, k.subject IS NOT NULL, k.wrapped, k.destroyed_at "
                "FROM (SELECT coalesce(max(seq), 0) AS head FROM ledger) h "
                "LEFT JOIN subject_state s ON s.subject = %(s)s "
                "LEFT JOIN subject_keys k ON k.subject = %(s)s", {"s": subject}).fetchone()
        assert row is not None
        head, stored, has_key, wrapped, destroyed_at = row
        state = state_from_json(stored, int(head)) if stored is not None else SubjectState(
            sequence=int(head))
        return state, ((wrapped, destroyed_at) if has_key else None)

    @property
    def conninfo(self) -> str:
        """Which database (and how): another component on the same one may share a read."""
        return self._conninfo

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        with self._read_one() as conn:
            row = conn.execute(
                "SELECT subject, min(seq) AS first FROM ledger WHERE subject = ANY(%s) "
                "GROUP BY subject ORDER BY first LIMIT 1", (list(subjects),)).fetchone()
        return str(row[0]) if row else None

    def meta(self, key: str) -> str | None:
        with self._read_one() as conn:
            return self._meta(conn, key)

    def identity(self) -> str:
        with self._read_one() as conn:
            row = conn.execute("SELECT id FROM ledger_identity ORDER BY id LIMIT 1").fetchone()
        return _identity(row[0] if row is not None else None)

    def head(self) -> int:
        with self._read_one() as conn:
            row = conn.execute(_HEAD).fetchone()
        assert row is not None
        return int(row[0])

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        with self._read_tx() as conn:
            rows = conn.execute(
                "SELECT seq, kind, body FROM ledger WHERE subject = %s AND seq <= %s "
                "ORDER BY seq", (subject, sequence)).fetchall()
        return replay(((int(seq), kind, json.loads(body)) for seq, kind, body in rows), sequence)

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]:
        with self._read_tx() as conn:
            rows = conn.execute(
                "SELECT body FROM ledger WHERE subject = %s AND kind = 'consent' AND seq > %s "
                "ORDER BY seq LIMIT %s", (subject, after_sequence, max(limit, 0))).fetchall()
        return [event_from_dict(json.loads(r[0])) for r in rows]

    def verify(self) -> ChainReport:
        """Recompute the chain, and check the projection still matches the records."""
        with self._read_tx() as conn:
            rows = conn.execute(
                "SELECT seq, record_id, subject, kind, body, recorded_at, prev_hash, entry_hash "
                "FROM ledger ORDER BY seq").fetchall()
            projections = {str(s): str(state) for s, state in conn.execute(
                "SELECT subject, state FROM subject_state")}
        return verify_entries(rows, projections)

    def changes(self, after_sequence: int, limit: int) -> Changes:
        with self._read_tx() as conn:  # REPEATABLE READ: both statements see one snapshot
            row = conn.execute(_IDENTITY_AND_HEAD).fetchone()
            rows = conn.execute(
                "SELECT seq, subject FROM ledger WHERE seq > %s ORDER BY seq LIMIT %s",
                (after_sequence, max(limit, 0))).fetchall()
        assert row is not None
        return Changes(_identity(row[0]), int(row[1]),
                       [(int(seq), str(subject)) for seq, subject in rows])

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold APPEND_LOCK at session level on the writer connection across the block.
        Appends inside it take the same lock per transaction, which succeeds at once
        (advisory locks are re-entrant within a session); every other writer, in this
        process or another replica, waits until the block ends."""
        with self._write_lock:
            with _translated():
                conn = self._writer_connection()
                conn.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK,))  # one round trip
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
                self._unlock(conn)

    def _unlock(self, conn: Conn) -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK,))
        except psycopg.Error:
            # Ending the session releases its locks for certain; the block's own outcome
            # (its appends are committed) stays what it was, so nothing is raised here.
            conn.close()

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._pool.close()
            finally:
                self._writer.close()
