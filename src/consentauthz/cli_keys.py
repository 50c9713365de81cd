"""`consentauthz keys status | rewrap | retire`: the master key ring against the subject
keys it wraps (consent/rewrap.py; docs/security.md, "Master key management").

They work on the key store and ledger the servers use (the data dir's, or the shared
PostgreSQL database with `--ledger`) and may run while the service runs. The master key
ring comes from where `serve` takes it: `--master-key-file`, $CONSENTAUTHZ_MASTER_KEY, or
DATA_DIR/keys/master.key.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import config as cfg
from .errors import ConfigError


@contextmanager
def _opened(ns: argparse.Namespace) -> Iterator[tuple[Any, Any, Any]]:
    """(key store, ledger, master key ring) as `serve` would open them."""
    from .app import load_master_keys, open_key_store, open_ledger

    config = cfg.key_store_config(ns)
    url, data = config.ledger_url, config.data_dir
    if not url and not (data / "subject_keys.db").is_file():
        raise ConfigError(f"{data} holds no subject key store (subject_keys.db): give "
                          "the data dir the server uses, or --ledger")
    if url:
        from .consent.pg_migrate import ledger_exists

        if not ledger_exists(url):  # opening one would make one
            raise ConfigError("this database holds no consent ledger")
    master = load_master_keys(config)
    store = open_key_store(url, data)
    try:
        ledger = open_ledger(url, data)
        try:
            yield store, ledger, master
        finally:
            ledger.close()
    finally:
        store.close()


def cmd_status(ns: argparse.Namespace) -> int:
    from .consent.fingerprints import META_KEYS
    from .consent.rewrap import key_counts

    with _opened(ns) as (store, ledger, master):
        known = json.loads(ledger.meta(META_KEYS["master"]) or "{}")
        status = {"current": master.current, "ring": list(master.fingerprints()),
                  "ledger_knows": sorted(known), "live_subject_keys": key_counts(store)}
    print(json.dumps(status, indent=2))
    return 0


def cmd_rewrap(ns: argparse.Namespace) -> int:
    from .consent.rewrap import rewrap

    def progress(done: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done:,} subject keys", end="", file=sys.stderr, flush=True)

    with _opened(ns) as (store, _, master):
        report = rewrap(store, master, dry_run=ns.dry_run, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps({"current": master.current, "dry_run": ns.dry_run,
                      "rewrapped": report.rewrapped, "already_current": report.current,
                      "changed_meanwhile": report.changed_meanwhile,
                      "live_subject_keys": report.by_key}, indent=2))
    return 0


def cmd_retire(ns: argparse.Namespace) -> int:
    from .consent.rewrap import retire

    with _opened(ns) as (store, ledger, master):
        retire(store, ledger, master, ns.key_id)
    print(f"master key {ns.key_id} retired: servers may now start without it in their ring "
          "(keep a copy until every backup of the key store made before the re-wrap is gone)")
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the master key ring and the subject keys it wraps: "
                          "status, rewrap, retire")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    status = ksub.add_parser("status", help="live subject keys per master key id, and the "
                             "ids the ledger knows (JSON)")
    rewrap = ksub.add_parser("rewrap", help="wrap every subject key under the current master "
                             "key (safe while serving)")
    rewrap.add_argument("--dry-run", action="store_true", help="count, change nothing")
    retire = ksub.add_parser("retire", help="forget an old master key once no subject key "
                             "is wrapped under it")
    retire.add_argument("key_id", help="the master key id (the part before ':' in the ring)")
    for p, run in ((status, cmd_status), (rewrap, cmd_rewrap), (retire, cmd_retire)):
        p.add_argument("--data-dir", help=f"the server's data dir (default "
                       f"{cfg.DEFAULT_DATA_DIR}, or ${cfg.ENV_PREFIX}DATA_DIR)")
        p.add_argument("--ledger", metavar="URL", help=f"the shared postgresql:// ledger and "
                       f"key store (or ${cfg.ENV_PREFIX}LEDGER)")
        p.add_argument("--master-key-file", metavar="FILE", help=f"the master key ring (or "
                       f"${cfg.ENV_PREFIX}MASTER_KEY; default DATA_DIR/keys/master.key)")
        p.set_defaults(run=run)
