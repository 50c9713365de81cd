"""`consentauthz ledger status | migrate`: the shared PostgreSQL ledger's layout, offline.

Neither talks to a running server: they open the database the servers share
(`--ledger` or $CONSENTAUTHZ_LEDGER). `migrate` runs with the service stopped
(docs/operations.md, "Re-laying a ledger into partitions").
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import config as cfg
from .chain import GENESIS
from .consent.ledger import heads_digest
from .consent.migration import MIGRATION_KEY, Migration
from .consent.pg_migrate import ARCHIVE, HEAD_ARCHIVE, MigrationRefused, ledger_exists, migrate
from .consent.postgres import PostgresLedger
from .errors import ConfigError


def _url(ns: argparse.Namespace) -> str:
    url = cfg.shared_ledger(ns)
    if url is None:
        raise ConfigError("--ledger postgresql://... is required: the embedded SQLite ledger "
                          "has one partition and one writer, and is never partitioned")
    return url


def cmd_status(ns: argparse.Namespace) -> int:
    url = _url(ns)
    if not ledger_exists(url):
        print("error: this database holds no consent ledger", file=sys.stderr)
        return 1
    ledger = PostgresLedger(url, writers=1)
    try:
        tips = ledger.tips()
        migrated = ledger.meta(MIGRATION_KEY)
        status: dict[str, Any] = {
            "identity": ledger.identity(), "partitions": ledger.partitions,
            "heads": [{"partition": p, "position": s, "entry_hash": h} for p, s, h in tips],
            "heads_digest": heads_digest(tips) if tips else GENESIS,
            "migration": json.loads(migrated) if migrated else None,
        }
    finally:
        ledger.close()
    print(json.dumps(status, indent=2))
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    try:
        report = migrate(_url(ns), ns.partitions, dry_run=ns.dry_run,
                         lock_timeout=ns.lock_timeout)
    except MigrationRefused as exc:
        print(f"error: {exc} (nothing was changed)", file=sys.stderr)
        return 1
    m: Migration = report.migration
    print(json.dumps({
        "committed": report.committed,
        "from_identity": m.from_identity, "identity": report.new_identity,
        "partitions": m.partitions, "entries_moved": report.entries,
        "subjects": report.subjects, "old_head": m.head, "old_head_hash": m.head_hash,
        "verified_before": report.before.ok, "verified_after": report.after.ok,
        "heads_digest": report.after.head_hash, "seconds": round(report.seconds, 3),
        "archived_as": [ARCHIVE, HEAD_ARCHIVE] if report.committed else [],
    }, indent=2))
    if not report.committed:
        print("dry run: everything was done and verified, then rolled back",
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    ledger = sub.add_parser("ledger", help="the shared PostgreSQL ledger's partitions: "
                            "status, migrate")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    status = lsub.add_parser("status", help="identity, partitions, every partition's head, "
                             "and the migration that made them (JSON)")
    migrate_p = lsub.add_parser(
        "migrate", help="re-lay a ledger of one partition into N (service stopped; "
        "verified before and after, in one transaction)")
    migrate_p.add_argument("--partitions", type=int, required=True, metavar="N",
                           help="partitions after the migration (2 to 1024)")
    migrate_p.add_argument("--dry-run", action="store_true",
                           help="do and verify everything, then roll it back")
    migrate_p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                           help="give up when a writer still holds the ledger this long "
                           "(default 30)")
    for p, run in ((status, cmd_status), (migrate_p, cmd_migrate)):
        p.add_argument("--ledger", metavar="URL", help=f"the postgresql:// ledger (or "
                       f"${cfg.ENV_PREFIX}LEDGER)")
        p.set_defaults(run=run)
