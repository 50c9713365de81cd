"""The shared consent ledger: one PostgreSQL database that every replica appends to.

Same tables, hash chains and contract as the SQLite ledger, in `P` partitions (chosen when
the ledger is made; docs/design/partitioned-ledger.md). What PostgreSQL adds is that
several processes write at once, so each partition's order is made explicit: an append
takes the partition's advisory lock and moves the partition's head row (`ledger_head`) by
one, which makes a partition's sequence order equal its commit order. A reader that sees
position s of a partition therefore sees every position below s of it, which is what
consistency tokens rely on. Appends to different partitions never wait for each other,
and no write spans partitions (the idempotency lookup and `first_recorded` still read all
of them, and two columns are unique across partitions: docs/design/partitioned-ledger.md
lists what a database sharded by `part` still needs). An append is one statement (the
function `consentauthz_append_v4`): one round trip.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..chain import GENESIS, ChainReport, canonical_json, link
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import SubjectErased, Unavailable
from .codec import event_from_dict, event_to_dict, profile_to_dict, state_from_json, state_to_json
from .ledger import (
    AppendResult,
    BatchItem,
    BatchResult,
    Changes,
    Idempotency,
    check_one_partition,
    check_partitions,
    entry_payload,
    idempotency_conflict,
    replay,
    verify_entries,
)
from .migration import MIGRATION_KEY, Migration
from .projection import apply_event, apply_profile
from .tables import Connection, LedgerTables

Conn: TypeAlias = psycopg.Connection[tuple[Any, ...]]
#: (current state, nonce) -> (the entry's body, the new state), the nonce as the sequence
_Build: TypeAlias = Callable[[SubjectState, int], tuple[dict[str, Any], SubjectState]]

#: Advisory lock keys (per database). PART_LOCK + p orders partition p's appends and
#: exclusive(); SCHEMA_LOCK keeps two processes from running the DDL below at the same
#: time; META_LOCK orders swap_meta. APPEND_LOCK is what releases before partitions took
#: for every append: the upgrade takes it, so it waits for their appends in flight.
APPEND_LOCK = 0x636F6E73656E74  # "consent"
SCHEMA_LOCK = APPEND_LOCK + 1
META_LOCK = APPEND_LOCK + 2
PART_LOCK = 0x636F6E7350000000  # "consP", + partition number (below 4096)

#: Partitions of a new PostgreSQL ledger unless told otherwise (docs/operations.md: sizing).
DEFAULT_PARTITIONS = 16

#: Nonces (where the sequence goes in an append's texts) are above any sequence a ledger
#: reaches, so ordering by sequence is the same with the nonce in its place.
_NONCE_FLOOR = 10**30

CONNECT_TIMEOUT = 5.0  # seconds; also bounds waiting for a pooled connection
STATEMENT_TIMEOUT = 5.0  # seconds; also bounds waiting for a partition's lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    part INT NOT NULL,
    seq BIGINT NOT NULL,
    record_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('consent', 'profile')),
    body TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    PRIMARY KEY (part, seq)
);
CREATE INDEX IF NOT EXISTS ledger_by_subject ON ledger (subject, seq);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subject_state (
    subject TEXT PRIMARY KEY,
    part INT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_identity (id TEXT NOT NULL);
"""

#: A ledger from before partitions (no `part` column) becomes a ledger of one partition,
#: its chain unchanged; releases before this one can no longer write to it (their insert
#: names no partition, and their append function is gone).
_UPGRADE = """
ALTER TABLE ledger ADD COLUMN part INT NOT NULL DEFAULT 0;
ALTER TABLE ledger ALTER COLUMN part DROP DEFAULT;
ALTER TABLE ledger DROP CONSTRAINT ledger_pkey;
ALTER TABLE ledger ADD PRIMARY KEY (part, seq);
ALTER TABLE subject_state ADD COLUMN part INT NOT NULL DEFAULT 0;
ALTER TABLE subject_state ALTER COLUMN part DROP DEFAULT;
DROP FUNCTION IF EXISTS consentauthz_append_v1;
"""

_FUNCTIONS = """
CREATE TABLE IF NOT EXISTS ledger_head (
    part INT PRIMARY KEY,
    seq BIGINT NOT NULL,
    entry_hash TEXT NOT NULL
);
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
-- A partition's head only ever moves on, to the partition's newest entry (the chain's
-- tip: its position and hash), and is never removed.
CREATE OR REPLACE FUNCTION consentauthz_head_moves_on() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.part <> OLD.part OR NEW.seq <= OLD.seq
            OR NOT EXISTS (SELECT 1 FROM ledger l WHERE l.part = NEW.part
                           AND l.seq = NEW.seq AND l.entry_hash = NEW.entry_hash)
            OR EXISTS (SELECT 1 FROM ledger l WHERE l.part = NEW.part AND l.seq > NEW.seq)
    THEN
        RAISE EXCEPTION 'a ledger partition''s head only moves on, to its newest entry';
    END IF;
    RETURN NEW;
END $$;
-- One append in one statement (one round trip): the partition's lock, the retry lookup,
-- the partition's next sequence and chain link, the entry, the head moved on, and the
-- projection replaced if it is still the version the writer computed the new state from
-- (else SQLSTATE 40001, and the writer reads again). The writer marks where the sequence
-- goes (in the hashed payload, the body and the state) with a random nonce that no
-- subject data can forge; the hash is chain.link over the payload with the nonce
-- replaced, exactly as Python computes it.
-- p_hold: also take the partition's lock at session level, for the writer to keep across
-- what it does after the append (exclusive(..., lazy=True): one round trip fewer).
-- p_partitions: how many partitions the writer placed the subject among; a writer that
-- opened the ledger before `ledger migrate` changed the number is refused.
DROP FUNCTION IF EXISTS consentauthz_append_v2;
DROP FUNCTION IF EXISTS consentauthz_append_v3;
CREATE OR REPLACE FUNCTION consentauthz_append_v4(
    p_lock BIGINT, p_hold BOOLEAN, p_partitions INT, p_part INT, p_subject TEXT, p_kind TEXT,
    p_record_id TEXT, p_body TEXT, p_recorded_at TEXT, p_retry_keys TEXT[],
    p_idempotency_key TEXT, p_request_hash TEXT, p_payload TEXT, p_state TEXT,
    p_expected BIGINT, p_nonce TEXT)
RETURNS TABLE (seq BIGINT, record_id TEXT, request_hash TEXT, replayed BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT;
    prev TEXT;
    h TEXT;
    n INT;
BEGIN
    IF p_hold THEN
        PERFORM pg_advisory_lock(p_lock);
    END IF;
    PERFORM pg_advisory_xact_lock(p_lock);
    IF (SELECT m.value FROM ledger_meta m WHERE m.key = 'partitions')
            IS DISTINCT FROM p_partitions::text THEN
        RAISE EXCEPTION 'the ledger''s partitions changed (ledger migrate): restart the writer';
    END IF;
    IF p_retry_keys IS NOT NULL THEN
        RETURN QUERY SELECT l.seq, l.record_id, l.request_hash, TRUE FROM ledger l
            WHERE l.idempotency_key = ANY(p_retry_keys) ORDER BY l.part, l.seq LIMIT 1;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    SELECT hd.seq, hd.entry_hash INTO s, prev FROM ledger_head hd WHERE hd.part = p_part;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the ledger has no such partition';
    END IF;
    s := s + 1;
    h := encode(sha256(convert_to(
        prev || chr(10) || replace(p_payload, p_nonce, s::text), 'UTF8')), 'hex');
    INSERT INTO ledger (part, seq, record_id, subject, kind, body, recorded_at,
                        idempotency_key, request_hash, prev_hash, entry_hash)
    VALUES (p_part, s, p_record_id, p_subject, p_kind, replace(p_body, p_nonce, s::text),
            p_recorded_at, p_idempotency_key, p_request_hash, prev, h);
    UPDATE ledger_head hd SET seq = s, entry_hash = h WHERE hd.part = p_part;
    IF p_expected = 0 THEN
        INSERT INTO subject_state (subject, part, version, state)
        VALUES (p_subject, p_part, s, replace(p_state, p_nonce, s::text))
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
CREATE OR REPLACE TRIGGER ledger_head_moves_on BEFORE UPDATE OR DELETE ON ledger_head
FOR EACH ROW EXECUTE FUNCTION consentauthz_head_moves_on();
CREATE OR REPLACE TRIGGER ledger_head_no_truncate BEFORE TRUNCATE ON ledger_head
FOR EACH STATEMENT EXECUTE FUNCTION consentauthz_ledger_append_only();
"""

#: A new ledger's partitions, each at position 0 (a ledger from before partitions: its one
#: partition at its head).
_HEADS = """
INSERT INTO ledger_head (part, seq, entry_hash)
SELECT 0, l.seq, l.entry_hash FROM ledger l ORDER BY l.seq DESC LIMIT 1
"""
_EMPTY_HEADS = """
INSERT INTO ledger_head (part, seq, entry_hash)
SELECT g, 0, %s FROM generate_series(0, %s - 1) g
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
SELECT count(*) = 4 AND to_regclass('ledger_identity') IS NOT NULL
    AND to_regclass('ledger_meta') IS NOT NULL
    AND to_regproc('consentauthz_append_v4') IS NOT NULL FROM pg_trigger
WHERE NOT tgisinternal AND (tgrelid, tgname) IN (
    (to_regclass('ledger'), 'ledger_append_only'),
    (to_regclass('subject_state'), 'subject_state_no_delete'),
    (to_regclass('ledger_head'), 'ledger_head_moves_on'),
    (to_regclass('ledger_head'), 'ledger_head_no_truncate'))
"""

_HAS_PART = """
SELECT count(*) FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'ledger' AND column_name = 'part'
"""

_HEADS_NOW = "SELECT array_agg(seq ORDER BY part) FROM ledger_head"
#: One statement: the identity and the heads agree (the poller reads both each time).
_IDENTITY_AND_HEADS = ("SELECT (SELECT id FROM ledger_identity ORDER BY id LIMIT 1), "
                       "(SELECT array_agg(seq ORDER BY part) FROM ledger_head)")
#: The entries after a position per partition, by partition and oldest first.
_CHANGES = """
SELECT l.part, l.seq, l.subject
FROM unnest(%(after)s::bigint[]) WITH ORDINALITY AS a(after, i),
LATERAL (SELECT part, seq, subject FROM ledger
         WHERE part = a.i - 1 AND seq > a.after ORDER BY seq LIMIT %(limit)s) l
ORDER BY l.part, l.seq LIMIT %(limit)s
"""


def writer_connection(dsn: str, statement_timeout: float = STATEMENT_TIMEOUT) -> Conn:
    """One writer connection, configured as the pool's are (the caller closes it)."""
    try:
        conn = psycopg.connect(_conninfo(dsn, CONNECT_TIMEOUT, statement_timeout))
    except psycopg.Error as exc:
        raise Unavailable("consent ledger unavailable") from exc
    _configure_writer(conn)
    return conn


def create_tables(conn: Conn) -> None:
    """The tables, functions and triggers, where they do not exist (`ledger migrate`
    makes the new ledger's with this, in its transaction)."""
    conn.execute(_SCHEMA)
    conn.execute(_FUNCTIONS)


def verify_in(conn: Conn, partitions: int,
              held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
    """PostgresLedger.verify, in the caller's transaction (`ledger migrate` verifies what it
    made before it commits)."""
    rows = conn.execute(
        "SELECT part, seq, record_id, subject, kind, body, recorded_at, prev_hash, "
        "entry_hash FROM ledger ORDER BY part, seq").fetchall()
    heads = {int(p): (int(s), str(h)) for p, s, h in conn.execute(
        "SELECT part, seq, entry_hash FROM ledger_head")}
    projections = {str(s): str(state) for s, state in conn.execute(
        "SELECT subject, state FROM subject_state")}
    found = conn.execute("SELECT value FROM ledger_meta WHERE key = %s",
                         (MIGRATION_KEY,)).fetchone()
    try:
        migration = Migration.from_json(str(found[0])) if found else None
    except (ValueError, KeyError, TypeError):
        return ChainReport("consent ledger", False, len(rows), 0, GENESIS, None, "",
                           "the migration's record in ledger_meta is unreadable")
    return verify_entries(rows, projections, partitions, heads, held, migration)


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
    changed since its state was read") passes through for the writer to retry, and a
    unique violation (an idempotency key another partition's writer took meanwhile) for
    it to name."""
    try:
        yield
    except (psycopg.errors.SerializationFailure, psycopg.errors.UniqueViolation):
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


def _configure_writer(conn: Conn) -> None:
    # Autocommit: a single statement (an append, taking or releasing a session lock) is one
    # round trip; blocks of several statements open their transaction explicitly
    # (`conn.transaction()`). Not the server's default isolation, whatever it is: READ
    # COMMITTED gives each statement in the append function a new snapshot, so the one
    # after the partition's lock sees every earlier append to it.
    conn.autocommit = True
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")


class PostgresLedger(LedgerTables):
    """Thread-safe. Appends go through a pool of writer connections (a partition's appends
    are ordered by its lock; other partitions' go on at once); reads use another pool.
    `partitions`: for a new ledger, how many it gets (DEFAULT_PARTITIONS when None); for an
    existing one, None or the number it has."""

    PLACEHOLDER = "%s"

    def __init__(self, dsn: str, min_size: int = 1, max_size: int = 8, *,
                 partitions: int | None = None, writers: int = 16,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 statement_timeout: float = STATEMENT_TIMEOUT) -> None:
        self._conninfo = _conninfo(dsn, connect_timeout, statement_timeout)
        self._closed = False
        #: The writer connection this thread holds partitions' session locks on, inside
        #: exclusive(): its appends must go through it (another connection would wait for
        #: the locks this one holds).
        self._bound = threading.local()
        with _translated():
            conn = psycopg.connect(self._conninfo)
            try:
                _configure_writer(conn)
                self._partitions = self._create_schema(conn, partitions)
                with conn.transaction():
                    self._lock_all(conn, xact=True)
                    self._refresh_projections(conn)
            finally:
                conn.close()
            self._writers: ConnectionPool[Conn] = ConnectionPool(
                self._conninfo, min_size=1, max_size=max(writers, 1), open=False,
                configure=_configure_writer, timeout=connect_timeout,
                name="consent-ledger-writers")
            self._pool: ConnectionPool[Conn] = ConnectionPool(
                self._conninfo, min_size=min_size, max_size=max_size, open=False,
                configure=_configure_reader, timeout=connect_timeout,
                name="consent-ledger")
            try:
                self._writers.open(wait=True, timeout=connect_timeout)
                self._pool.open(wait=True, timeout=connect_timeout)
            except BaseException:
                self._pool.close()
                self._writers.close()
                raise

    @property
    def partitions(self) -> int:
        return self._partitions

    @staticmethod
    def _create_schema(conn: Conn, partitions: int | None) -> int:
        """Make (or upgrade) the schema; the number of partitions the ledger has."""
        if partitions is not None:
            check_partitions(partitions)
        with conn.transaction():
            row = conn.execute(_SCHEMA_READY).fetchone()
            ready = row is not None and bool(row[0]) and conn.execute(
                "SELECT 1 FROM ledger_identity LIMIT 1").fetchone() is not None
            if not ready:
                # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                # And the lock every append took before partitions: an older release's
                # append in flight ends before the upgrade.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                existed = conn.execute("SELECT to_regclass('ledger') IS NOT NULL"
                                       ).fetchone()
                conn.execute(_SCHEMA)
                has_part = conn.execute(_HAS_PART).fetchone()
                upgrading = bool(existed and existed[0]) and not (has_part and has_part[0])
                if upgrading:
                    conn.execute(_UPGRADE)
                conn.execute(_FUNCTIONS)
                if conn.execute("SELECT 1 FROM ledger_head LIMIT 1").fetchone() is None:
                    if conn.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is not None:
                        conn.execute(_HEADS)  # a ledger from before partitions: one
                    else:
                        count = partitions or DEFAULT_PARTITIONS
                        if upgrading:
                            count = 1
                        conn.execute(_EMPTY_HEADS, (GENESIS, count))
                conn.execute(_IDENTIFY, (secrets.token_hex(8),))
            # What the heads must number from now on (a head row added or removed later is
            # refused at the next start, not taken for a new partition); every write checks
            # it against the number its writer placed subjects by (`ledger migrate`).
            conn.execute("INSERT INTO ledger_meta (key, value) SELECT 'partitions', "
                         "count(*)::text FROM ledger_head ON CONFLICT (key) DO NOTHING")
            found = conn.execute(
                "SELECT count(*), (SELECT value FROM ledger_meta WHERE key = 'partitions') "
                "FROM ledger_head").fetchone()
        have = int(found[0]) if found else 0
        made = found[1] if found else None
        if made is not None and str(made) != str(have):
            raise Unavailable(f"the consent ledger was made with {made} partitions and has "
                              f"{have} partition heads: its ledger_head table was changed")
        if partitions is not None and have != partitions:
            raise Unavailable(f"the consent ledger has {have} partitions, not {partitions}: "
                              "the number is fixed when a ledger is made")
        return have

    @staticmethod
    def _lock_keys(parts: Iterable[int]) -> list[int]:
        return [PART_LOCK + p for p in sorted(set(parts))]

    def _lock_all(self, conn: Conn, xact: bool) -> None:
        """Every partition's lock, in order (never a deadlock with another locker)."""
        fn = "pg_advisory_xact_lock" if xact else "pg_advisory_lock"
        conn.execute(f"SELECT {fn}(k) FROM unnest(%s::bigint[]) k ORDER BY k",  # noqa: S608
                     (self._lock_keys(range(self._partitions)),))

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("consent ledger unavailable")

    @contextmanager
    def _writer(self) -> Iterator[Conn]:
        """A writer connection: the one this thread holds session locks on, or a pooled
        one. (Errors are the caller's to translate.)"""
        self._check_open()
        bound: Conn | None = getattr(self._bound, "conn", None)
        if bound is not None:
            if bound.closed or bound.broken:
                # The session locks died with the connection: another writer may already
                # have appended, so the block's ordering promise is gone.
                raise Unavailable("consent ledger unavailable")
            yield bound
            return
        with self._writers.connection() as conn:
            yield conn

    def _take_pending(self, key: int) -> bool:
        """Inside a lazy exclusive() of partition lock `key` not taken yet: it is to be
        taken now, by the statement about to run (and is held from here on, whatever that
        statement's outcome: a session lock survives its transaction's rollback)."""
        if getattr(self._bound, "conn", None) is None or self._bound.pending != key:
            return False
        self._bound.pending = None
        self._bound.held = True
        return True

    @contextmanager
    def _append_tx(self, part: int | None) -> Iterator[Conn]:
        with _translated(), self._writer() as conn:
            if part is not None and self._take_pending(PART_LOCK + part):
                # A lazy exclusive() block's first append: its lock, kept past the commit.
                conn.execute("SELECT pg_advisory_lock(%s)", (PART_LOCK + part,))
            with conn.transaction():
                # READ COMMITTED: each statement after the lock sees every earlier append.
                if part is None:
                    self._lock_all(conn, xact=True)
                else:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PART_LOCK + part,))
                yield conn

    def _last(self, conn: Connection, part: int) -> tuple[int, str]:
        # With the number of partitions, in the same round trip: a writer that opened the
        # ledger before `ledger migrate` changed it would place subjects wrongly.
        row = conn.execute("SELECT h.seq, h.entry_hash, (SELECT m.value FROM ledger_meta m "
                           "WHERE m.key = 'partitions') FROM ledger_head h WHERE h.part = %s",
                           (part,)).fetchone()
        if row is None:
            raise Unavailable("the consent ledger has no such partition")
        if row[2] != str(self._partitions):
            raise Unavailable("the consent ledger's partitions changed (ledger migrate): "
                              "restart this process")
        return int(row[0]), str(row[1])

    def _advance(self, conn: Connection, part: int, seq: int, entry_hash: str) -> None:
        conn.execute("UPDATE ledger_head SET seq = %s, entry_hash = %s WHERE part = %s",
                     (seq, entry_hash, part))

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
            "WHERE idempotency_key = ANY(%s) ORDER BY part, seq LIMIT 1",
            (list(keys),)).fetchone()

    # -- appends: one statement each (consentauthz_append_v4) ----------------------------

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None, *,
                       read: SubjectState | None = None) -> AppendResult:
        def build(state: SubjectState, nonce: int) -> tuple[dict[str, Any], SubjectState]:
            ev = replace(event, sequence=nonce)
            return event_to_dict(ev), apply_event(state, ev)

        return self._append_one(subject, "consent", event.record_id, event.recorded_at,
                                build, idempotency, read) or super().append_consent(
                                    subject, event, idempotency)

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime, *,
                       read: SubjectState | None = None) -> AppendResult:
        def build(state: SubjectState, nonce: int) -> tuple[dict[str, Any], SubjectState]:
            return profile_to_dict(profile), apply_profile(state, profile, nonce)

        return self._append_one(subject, "profile", record_id, recorded_at, build,
                                None, read) or super().append_profile(
                                    subject, profile, record_id, recorded_at)

    def _append_one(self, subject: str, kind: str, record_id: str, recorded_at: datetime,
                    build: _Build, idempotency: Idempotency | None,
                    read: SubjectState | None) -> AppendResult | None:
        """Read the subject's state (one statement, unless the caller just did: `read`),
        compute the entry and the new state with a nonce where the sequence goes, and
        append in one statement. None when another writer changed the subject in between:
        the caller then appends the way that reads the state under the lock (three more
        round trips, never retried)."""
        stamp = recorded_at.isoformat()
        current = read if read is not None else self.load(subject)
        nonce = _NONCE_FLOOR + secrets.randbits(96)
        body, state = build(current, nonce)
        part = self._part(subject)
        payload = canonical_json(entry_payload(nonce, subject, kind, record_id, stamp, body))
        args = (PART_LOCK + part, part, subject, kind, record_id,  # p_hold: _call_append
                json.dumps(body, sort_keys=True), stamp,
                list(idempotency.all_keys) if idempotency else None,
                idempotency.key if idempotency else None,
                idempotency.request_hash if idempotency else None, payload,
                state_to_json(state), current.version, str(nonce))
        try:
            row = self._call_append(args)
        except psycopg.errors.SerializationFailure:
            return None
        except psycopg.errors.UniqueViolation as exc:
            # The idempotency key is taken in another partition: another subject's write.
            if idempotency is not None:
                raise idempotency_conflict() from exc
            raise Unavailable("consent ledger unavailable") from exc
        seq, got_record, request_hash, replayed = int(row[0]), row[1], row[2], row[3]
        if replayed:
            assert idempotency is not None
            if request_hash != idempotency.request_hash:
                raise idempotency_conflict()
            return AppendResult(str(got_record), seq, self.load(subject), replayed=True)
        return AppendResult(record_id, seq, _settled(state, nonce, seq))

    def append_batch(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        """One transaction and a handful of statements for the whole batch: the retry
        lookup for every key, the partition's head and the subjects' states (read under
        the partition's lock), then every entry (COPY), the head moved on, and every
        projection replaced; the chain is linked here, as chain.link does for one.

        Should another partition's writer take one of the batch's idempotency keys
        between the lookup and the COPY (nothing was written then), the batch is made
        again item by item, which names that item's conflict and records the rest."""
        try:
            return self._append_batch_at_once(items)
        except Unavailable as exc:
            if not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise
            return super().append_batch(items)

    def _append_batch_at_once(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        if not items:
            return []
        part = check_one_partition(items, self._partitions)
        results: list[BatchResult | None] = [None] * len(items)
        replays: list[tuple[int, str, str, int]] = []
        with self._append_tx(part) as conn:
            keys = [k for item in items if item.idempotency
                    for k in item.idempotency.all_keys]
            seen: dict[str, tuple[str, int, str]] = {
                str(k): (str(rid), int(seq), str(rh)) for k, rid, seq, rh in conn.execute(
                    "SELECT idempotency_key, record_id, seq, request_hash FROM ledger "
                    "WHERE idempotency_key = ANY(%s)", (keys,))} if keys else {}
            seq, prev = self._last(conn, part)
            states = {str(s): state_from_json(st, 0) for s, st in conn.execute(
                "SELECT subject, state FROM subject_state WHERE subject = ANY(%s)",
                (sorted({item.subject for item in items}),))}
            rows: list[tuple[Any, ...]] = []
            changed: set[str] = set()
            for i, item in enumerate(items):
                if item.subject in states and states[item.subject].profile.erased_at:
                    # Erased since the caller read it (the read under this lock says so).
                    results[i] = SubjectErased(
                        "the subject was erased; nothing more is recorded about them")
                    continue
                idem = item.idempotency
                hit = next((seen[k] for k in idem.all_keys if k in seen), None) \
                    if idem else None
                if hit is not None:
                    assert idem is not None
                    if hit[2] != idem.request_hash:
                        results[i] = idempotency_conflict()
                    else:
                        replays.append((i, item.subject, hit[0], hit[1]))
                    continue
                seq += 1
                ev = replace(item.event, sequence=seq)
                body = event_to_dict(ev)
                stamp = ev.recorded_at.isoformat()
                entry_hash = link(prev, entry_payload(seq, item.subject, "consent",
                                                      ev.record_id, stamp, body))
                rows.append((part, seq, ev.record_id, item.subject, "consent",
                             json.dumps(body, sort_keys=True), stamp,
                             idem.key if idem else None,
                             idem.request_hash if idem else None, prev, entry_hash))
                prev = entry_hash
                state = apply_event(states.get(item.subject, SubjectState()), ev)
                states[item.subject] = state
                changed.add(item.subject)
                if idem is not None:  # a retry later in the same batch
                    seen[idem.key] = (ev.record_id, seq, idem.request_hash)
                results[i] = AppendResult(ev.record_id, seq, replace(state, sequence=seq))
            if rows:
                with conn.cursor().copy(
                        "COPY ledger (part, seq, record_id, subject, kind, body, "
                        "recorded_at, idempotency_key, request_hash, prev_hash, entry_hash) "
                        "FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                self._advance(conn, part, seq, prev)
                conn.cursor().executemany(
                    "INSERT INTO subject_state (subject, part, version, state) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO UPDATE "
                    "SET version = excluded.version, state = excluded.state",
                    [(s, part, states[s].version, state_to_json(states[s]))
                     for s in sorted(changed)])
        for i, subject, record_id, at in replays:
            results[i] = AppendResult(record_id, at, replace(
                states.get(subject, SubjectState()), sequence=seq), replayed=True)
        return [r for r in results if r is not None]

    def _call_append(self, args: tuple[Any, ...]) -> Any:
        with _translated_except_conflict(), self._writer() as conn:
            # One statement, its own transaction (the writer is in autocommit): one round
            # trip. Inside exclusive() the session lock this connection holds makes the
            # function's lock re-entrant; inside a lazy one the function takes it.
            hold = self._take_pending(args[0])
            row = conn.execute(
                "SELECT * FROM consentauthz_append_v4(%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s)",
                (args[0], hold, self._partitions, *args[1:])).fetchone()
        assert row is not None
        return row

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        with self._read_one() as conn:
            # One statement: the state and the head it is current as of agree.
            row = conn.execute(
                "SELECT (SELECT seq FROM ledger_head WHERE part = %s), "
                "(SELECT state FROM subject_state WHERE subject = %s)",
                (self._part(subject), subject)).fetchone()
        assert row is not None
        head, stored = int(row[0] or 0), row[1]
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
                "SELECT h.seq, s.state, k.subject IS NOT NULL, k.wrapped, k.destroyed_at "
                "FROM ledger_head h "
                "LEFT JOIN subject_state s ON s.subject = %(s)s "
                "LEFT JOIN subject_keys k ON k.subject = %(s)s WHERE h.part = %(p)s",
                {"s": subject, "p": self._part(subject)}).fetchone()
        if row is None:
            raise Unavailable("the consent ledger has no such partition")
        head, stored, has_key, wrapped, destroyed_at = row
        state = state_from_json(stored, int(head)) if stored is not None else SubjectState(
            sequence=int(head))
        return state, ((wrapped, destroyed_at) if has_key else None)

    def load_many_with_key_records(
            self, subjects: Sequence[str]
    ) -> dict[str, tuple[SubjectState, tuple[str | None, datetime | None] | None]]:
        """load_with_key_record for many subjects, in one statement (one snapshot)."""
        with self._read_one() as conn:
            rows = conn.execute(
                "SELECT u.s, h.seq, st.state, k.subject IS NOT NULL, k.wrapped, "
                "k.destroyed_at FROM unnest(%s::text[], %s::int[]) AS u(s, p) "
                "JOIN ledger_head h ON h.part = u.p "
                "LEFT JOIN subject_state st ON st.subject = u.s "
                "LEFT JOIN subject_keys k ON k.subject = u.s",
                (list(subjects), [self._part(s) for s in subjects])).fetchall()
        out: dict[str, tuple[SubjectState, tuple[str | None, datetime | None] | None]] = {}
        for subject, head, stored, has_key, wrapped, destroyed_at in rows:
            state = state_from_json(stored, int(head)) if stored is not None else SubjectState(
                sequence=int(head))
            out[str(subject)] = (state, (wrapped, destroyed_at) if has_key else None)
        if len(out) != len(set(subjects)):
            raise Unavailable("the consent ledger has no such partition")
        return out

    @property
    def conninfo(self) -> str:
        """Which database (and how): another component on the same one may share a read."""
        return self._conninfo

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        """Within one partition the position decides. Across partitions there is no
        commit order, so the earliest `recorded_at` does (replicas' clocks may differ);
        but ConsentService holds the write order of every candidate's partition while it
        records a subject not yet in the ledger, so only one of a subject's pseudonyms
        ever gets records, and this only decides between pseudonyms of a subject split
        before that (all in the one partition of a ledger from before partitions)."""
        with self._read_one() as conn:
            rows = conn.execute(
                "SELECT subject, min(part), min(seq), min(recorded_at) FROM ledger "
                "WHERE subject = ANY(%s) GROUP BY subject", (list(subjects),)).fetchall()
        if not rows:
            return None
        if len({int(r[1]) for r in rows}) == 1:  # one partition: its order decides
            return str(min(rows, key=lambda r: int(r[2]))[0])
        return str(min(rows, key=lambda r: (str(r[3]), str(r[0])))[0])

    def meta(self, key: str) -> str | None:
        with self._read_one() as conn:
            return self._meta(conn, key)

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        # Under its own lock: one replica's swap is over before another's begins.
        with _translated(), self._writer() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (META_LOCK,))
            if expected is None:
                cur = conn.execute("INSERT INTO ledger_meta (key, value) VALUES (%s, %s) "
                                   "ON CONFLICT (key) DO NOTHING", (key, value))
            else:
                cur = conn.execute("UPDATE ledger_meta SET value = %s "
                                   "WHERE key = %s AND value = %s", (value, key, expected))
            return int(cur.rowcount) == 1

    def identity(self) -> str:
        with self._read_one() as conn:
            row = conn.execute("SELECT id FROM ledger_identity ORDER BY id LIMIT 1").fetchone()
        return _identity(row[0] if row is not None else None)

    def heads(self) -> tuple[int, ...]:
        with self._read_one() as conn:
            row = conn.execute(_HEADS_NOW).fetchone()
        assert row is not None
        return tuple(int(h) for h in row[0] or ())

    def head(self) -> int:
        return sum(self.heads())

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

    def tips(self) -> tuple[tuple[int, int, str], ...]:
        with self._read_one() as conn:
            return tuple((int(p), int(s), str(h)) for p, s, h in conn.execute(
                "SELECT part, seq, entry_hash FROM ledger_head ORDER BY part"))

    def verify(self, held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
        """Recompute every partition's chain, check it ends at the partition's stored head
        and holds every held checkpoint's head, and check the projections still match the
        records."""
        with self._read_tx() as conn:
            return verify_in(conn, self._partitions, held)

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        with self._read_tx() as conn:  # REPEATABLE READ: both statements see one snapshot
            row = conn.execute(_IDENTITY_AND_HEADS).fetchone()
            rows = conn.execute(_CHANGES, {"after": list(after),
                                           "limit": max(limit, 0)}).fetchall()
        assert row is not None
        return Changes(_identity(row[0]), tuple(int(h) for h in row[1] or ()),
                       [(int(p), int(seq), str(subject)) for p, seq, subject in rows])

    @contextmanager
    def exclusive(self, partitions: Iterable[int], lazy: bool = False) -> Iterator[None]:
        """Hold these partitions' locks at session level on a writer connection across the
        block, and make it this thread's writer: appends inside it take the same locks per
        transaction, which succeeds at once (advisory locks are re-entrant within a
        session); every other writer to these partitions, in this process or another
        replica, waits until the block ends. Others go on. `lazy` (one partition): the
        block's first append takes the lock (in its own statement, one round trip fewer),
        so the order holds from that append to the block's end."""
        keys = self._lock_keys(partitions)
        self._check_open()
        with _translated():
            lease = self._writers.connection()
            conn = lease.__enter__()
        try:
            self._bound.held = not (lazy and len(keys) == 1)
            self._bound.pending = None if self._bound.held else keys[0]
            if self._bound.held:
                try:
                    with _translated():
                        conn.execute("SELECT pg_advisory_lock(k) FROM unnest(%s::bigint[]) "
                                     "k ORDER BY k", (keys,))  # one round trip
                except Unavailable:
                    # Timed out part-way: the locks it got are the session's, not the
                    # statement's; none may go back to the pool with the connection.
                    self._unlock(conn)
                    raise
            self._bound.conn = conn
            try:
                yield
            finally:
                self._bound.conn = None
                self._bound.pending = None
                if self._bound.held:
                    self._unlock(conn)
        finally:
            lease.__exit__(None, None, None)

    @staticmethod
    def _unlock(conn: Conn) -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            # Ending the session releases its locks for certain; the block's own outcome
            # (its appends are committed) stays what it was, so nothing is raised here.
            conn.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.close()
        finally:
            self._writers.close()
