"""`consentauthz ledger migrate`: re-lay a PostgreSQL ledger of one partition into N.

Run with the service stopped (docs/operations.md). One transaction does all of it, so it
either happens whole or not at all:

1. take every lock a writer or schema change takes (writers still running wait, then find
   the ledger changed under them and are refused: their number of partitions is stale);
2. verify the ledger as `audit verify` does (refused if it is not intact);
3. keep the old tables as `ledger_before_migration` and `ledger_head_before_migration`
   (still append-only; the operator drops them when satisfied);
4. copy every entry, oldest first, into its subject's partition with its position and
   content unchanged, chained from the partition's anchor (consent/migration.py);
5. start every partition's head at the old head, move each projection to its subject's
   partition, record the migration and the number of partitions in `ledger_meta`, and
   give the ledger a new identity (every replica's caches and Redis keys start afresh);
6. verify the new ledger, old chain included, before committing.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from ..chain import ChainReport, link
from ..errors import Unavailable
from .ledger import check_partitions, entry_payload, partition_of
from .migration import MIGRATION_KEY, Migration
from .postgres import (
    APPEND_LOCK,
    META_LOCK,
    PART_LOCK,
    SCHEMA_LOCK,
    Conn,
    PostgresLedger,
    create_tables,
    verify_in,
    writer_connection,
)

#: Where the old tables are kept.
ARCHIVE = "ledger_before_migration"
HEAD_ARCHIVE = "ledger_head_before_migration"

_CHUNK = 5_000
_COLUMNS = ("part, seq, record_id, subject, kind, body, recorded_at, idempotency_key, "
            "request_hash, prev_hash, entry_hash")


_BUSY = ("the ledger's locks were not free within the lock timeout: is a consentauthz "
         "process still writing? Stop the service first")


class MigrationRefused(Exception):
    """The ledger cannot be migrated as asked; nothing was changed."""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    migration: Migration
    new_identity: str
    entries: int
    subjects: int
    #: (partition, head, head hash) of every partition afterwards.
    tips: tuple[tuple[int, int, str], ...]
    before: ChainReport
    after: ChainReport
    seconds: float
    #: False for a dry run (everything done and verified, then rolled back).
    committed: bool


def migrate(dsn: str, partitions: int, *, dry_run: bool = False,
            lock_timeout: float = 30.0,
            clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> MigrationReport:
    """Migrate the ledger at `dsn` into `partitions` partitions (see the module's text).
    MigrationRefused when it cannot be; Unavailable when the database cannot be reached or
    its locks not taken within `lock_timeout` seconds (a writer still running)."""
    try:
        check_partitions(partitions)
    except ValueError as exc:
        raise MigrationRefused(str(exc)) from None
    if partitions < 2:
        raise MigrationRefused("a migration is into 2 or more partitions")
    started = time.monotonic()
    if not ledger_exists(dsn):
        raise MigrationRefused("this database holds no consent ledger")
    # Bring the schema up to date first (a ledger from before partitions is one of one).
    try:
        PostgresLedger(dsn, writers=1, statement_timeout=lock_timeout).close()
    except Unavailable as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            raise Unavailable(_BUSY) from exc
        raise
    conn = writer_connection(dsn, lock_timeout)
    try:
        with conn.transaction() as tx:
            report = _migrate_in(conn, partitions, clock)
            if dry_run:
                raise psycopg.Rollback(tx)
        return MigrationReport(report.migration, report.new_identity, report.entries,
                               report.subjects, report.tips, report.before, report.after,
                               time.monotonic() - started, not dry_run)
    except psycopg.errors.QueryCanceled as exc:
        raise Unavailable(_BUSY) from exc
    except psycopg.Error as exc:  # the driver's text may quote values: not repeated
        raise Unavailable(f"the migration failed ({type(exc).__name__}); nothing was "
                          "changed") from exc
    finally:
        conn.close()


def ledger_exists(dsn: str) -> bool:
    """Whether the database holds a consent ledger (opening PostgresLedger would make one:
    the commands that only look at or move a ledger must not)."""
    conn = writer_connection(dsn)
    try:
        row = conn.execute("SELECT to_regclass('ledger') IS NOT NULL").fetchone()
    except psycopg.Error as exc:
        raise Unavailable("consent ledger unavailable") from exc
    finally:
        conn.close()
    return bool(row and row[0])


def _migrate_in(conn: Conn, partitions: int,
                clock: Callable[[], datetime]) -> MigrationReport:
    for key in (SCHEMA_LOCK, META_LOCK, APPEND_LOCK):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
    had = _meta_partitions(conn)
    conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) k ORDER BY k",
                 ([PART_LOCK + p for p in range(had)],))
    # The locks are held; what follows may take long on a big ledger.
    conn.execute("SET LOCAL statement_timeout = 0")
    if had != 1:
        raise MigrationRefused(f"the ledger already has {had} partitions: ledger migrate "
                               "re-lays a ledger of one partition")
    for table in (ARCHIVE, HEAD_ARCHIVE):
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if found and found[0] is not None:
            raise MigrationRefused(f"a table named {table} exists already")
    before = verify_in(conn, 1)
    if not before.ok:
        raise MigrationRefused(f"the ledger does not verify, so it is not migrated: "
                               f"{before.problem}")
    old_identity = _one(conn, "SELECT id FROM ledger_identity ORDER BY id LIMIT 1")
    head_row = conn.execute("SELECT seq, entry_hash FROM ledger_head WHERE part = 0"
                            ).fetchone()
    assert head_row is not None
    migration = Migration(old_identity, int(head_row[0]), str(head_row[1]), partitions,
                          clock().astimezone(UTC).isoformat(timespec="seconds"))
    _archive(conn)
    create_tables(conn)
    tips = {p: migration.anchor(p) for p in range(partitions)}
    entries = _copy_entries(conn, partitions, tips)
    conn.execute("INSERT INTO ledger_head (part, seq, entry_hash) "
                 "SELECT u.p, %s, u.h FROM unnest(%s::int[], %s::text[]) u(p, h)",
                 (migration.head, list(tips), list(tips.values())))
    subjects = _move_projections(conn, partitions)
    conn.execute("UPDATE ledger_meta SET value = %s WHERE key = 'partitions'",
                 (str(partitions),))
    conn.execute("INSERT INTO ledger_meta (key, value) VALUES (%s, %s)",
                 (MIGRATION_KEY, migration.to_json()))
    new_identity = _new_identity(conn, old_identity)
    after = verify_in(conn, partitions)
    if not after.ok:
        raise MigrationRefused(f"the migrated ledger did not verify, so nothing was "
                               f"changed: {after.problem}")
    return MigrationReport(
        migration, new_identity, entries, subjects,
        tuple((p, migration.head, h) for p, h in sorted(tips.items())), before, after, 0.0,
        True)


def _one(conn: Conn, sql: str) -> str:
    row = conn.execute(sql).fetchone()
    if row is None or row[0] is None:
        raise MigrationRefused(f"the ledger is incomplete ({sql!r} found nothing)")
    return str(row[0])


def _meta_partitions(conn: Conn) -> int:
    return int(_one(conn, "SELECT value FROM ledger_meta WHERE key = 'partitions'"))


def _archive(conn: Conn) -> None:
    """Rename the old tables and their indexes (index names are the schema's, so the new
    tables could not have theirs otherwise); their triggers go with them."""
    for table, archive in (("ledger", ARCHIVE), ("ledger_head", HEAD_ARCHIVE)):
        conn.execute(f"ALTER TABLE {table} RENAME TO {archive}")
        for (index,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = %s", (archive,)).fetchall():
            conn.execute(f'ALTER INDEX "{index}" RENAME TO "{archive}_{index}"')


def _copy_entries(conn: Conn, partitions: int, tips: dict[int, str]) -> int:
    """Every old entry into its subject's partition, oldest first, chained on from
    `tips` (which ends holding each partition's head hash); how many."""
    after, count = 0, 0
    while True:
        # `part = 0` (the one partition): the primary key (part, seq) then serves each
        # chunk, instead of a scan of the whole table per chunk.
        rows = conn.execute(
            f"SELECT seq, record_id, subject, kind, body, recorded_at, "  # noqa: S608
            f"idempotency_key, request_hash FROM {ARCHIVE} WHERE part = 0 AND seq > %s "
            f"ORDER BY seq LIMIT %s", (after, _CHUNK)).fetchall()
        if not rows:
            return count
        out = []
        for seq, record_id, subject, kind, body, recorded_at, key, request_hash in rows:
            part = partition_of(str(subject), partitions)
            prev = tips[part]
            tips[part] = link(prev, entry_payload(int(seq), str(subject), str(kind),
                                                  str(record_id), str(recorded_at),
                                                  json.loads(body)))
            out.append((part, seq, record_id, subject, kind, body, recorded_at, key,
                        request_hash, prev, tips[part]))
        with conn.cursor().copy(f"COPY ledger ({_COLUMNS}) FROM STDIN") as copy:
            for row in out:
                copy.write_row(row)
        after = int(rows[-1][0])
        count += len(rows)


def _move_projections(conn: Conn, partitions: int) -> int:
    subjects = [str(r[0]) for r in conn.execute("SELECT subject FROM subject_state")]
    for i in range(0, len(subjects), _CHUNK):
        chunk = subjects[i:i + _CHUNK]
        conn.execute("UPDATE subject_state s SET part = u.p "
                     "FROM unnest(%s::text[], %s::int[]) u(s, p) WHERE s.subject = u.s",
                     (chunk, [partition_of(s, partitions) for s in chunk]))
    return len(subjects)


def _new_identity(conn: Conn, old: str) -> str:
    new = secrets.token_hex(8)
    while new == old:  # pragma: no cover - 1 in 2**64
        new = secrets.token_hex(8)
    conn.execute("UPDATE ledger_identity SET id = %s", (new,))
    return new
