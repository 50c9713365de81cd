"""Retiring a master key (issue 14, item 7; consent/rewrap.py): every live subject key
wrapped again under the current master key, compare-and-swap so an erasure meanwhile
stays an erasure, the sealed data still opening, and the old key forgotten by the ledger
only once nothing is wrapped under it. On every key store: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentauthz.consent import (
    MasterKeys,
    MemoryKeyStore,
    MemoryLedger,
    PostgresKeyStore,
    PostgresLedger,
    Sealer,
    SealingLedger,
    SqliteKeyStore,
    SqliteLedger,
)
from consentauthz.consent.fingerprints import KeyMismatch, check_key_ring
from consentauthz.consent.rewrap import key_counts, retire, rewrap
from consentauthz.errors import ConfigError, Unavailable
from tests.serve_process import BIN, ROOT, serve_command, serve_env, start_serve
from tests.unit.test_ledger_contract import event

M1, M2 = ("m1", b"\x01" * 32), ("m2", b"\x02" * 32)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """(key store, ledger) of one kind."""
    if request.param == "memory":
        yield MemoryKeyStore(), MemoryLedger()
        return
    if request.param == "sqlite":
        store: Any = SqliteKeyStore(tmp_path / "subject_keys.db")
        ledger: Any = SqliteLedger(tmp_path / "ledger.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        store, ledger = PostgresKeyStore(dsn), PostgresLedger(dsn, partitions=1)
    try:
        yield store, ledger
    finally:
        store.close()
        ledger.close()


def sealed(store: Any, ledger: Any, ring: list[tuple[str, bytes]]) -> SealingLedger:
    return SealingLedger(ledger, Sealer(MasterKeys(ring), store))


def test_keys_are_rewrapped_and_the_old_master_key_retired(stores: tuple[Any, Any]) -> None:
    store, inner = stores
    old = sealed(store, inner, [M1])
    for i in range(7):
        old.append_consent(f"s{i}", event(f"r{i}", evidence={"ip": f"192.0.2.{i}"}))
    check_key_ring(inner, "master", MasterKeys([M1]).fingerprints())
    rotated = MasterKeys([M1, M2])  # m2 now wraps new keys
    check_key_ring(inner, "master", rotated.fingerprints())
    ledger = sealed(store, inner, [M1, M2])
    ledger.append_consent("new", event("n", evidence={"ip": "198.51.100.1"}))
    old.erase("s3")  # erased: its key is gone and must stay gone
    assert key_counts(store) == {"m1": 6, "m2": 1}
    with pytest.raises(ConfigError, match="6 subject keys are still wrapped"):
        retire(store, inner, rotated, "m1")

    dry = rewrap(store, rotated, dry_run=True)
    assert (dry.rewrapped, dry.current) == (6, 1) and key_counts(store) == {"m1": 6, "m2": 1}
    report = rewrap(store, rotated)
    assert (report.rewrapped, report.current, report.changed_meanwhile) == (6, 1, 0)
    assert report.by_key == {"m2": 7}
    assert rewrap(store, rotated).rewrapped == 0  # nothing left to do

    retire(store, inner, rotated, "m1")
    # A ring without m1 is now the ledger's ring, and opens everything.
    check_key_ring(inner, "master", MasterKeys([M2]).fingerprints())
    only_new = sealed(store, inner, [M2])
    for i in (0, 6):
        opened = only_new.load(f"s{i}", evidence=True)
        assert dict(opened.events[0].evidence) == {"ip": f"192.0.2.{i}"}
    assert not only_new.load("s3", evidence=True).events[0].evidence  # still erased
    with pytest.raises(ConfigError, match="current"):
        retire(store, inner, MasterKeys([M2]), "m2")
    with pytest.raises(ConfigError, match="does not know"):
        retire(store, inner, MasterKeys([("m0", b"\x00" * 32), M2]), "m0")


def test_a_ring_lacking_a_key_not_retired_is_still_refused(stores: tuple[Any, Any]) -> None:
    store, inner = stores
    sealed(store, inner, [M1]).append_consent("s", event("r", evidence={"ip": "192.0.2.1"}))
    check_key_ring(inner, "master", MasterKeys([M1, M2]).fingerprints())
    with pytest.raises(KeyMismatch):
        check_key_ring(inner, "master", MasterKeys([M2]).fingerprints())


def test_an_erasure_between_read_and_write_wins(stores: tuple[Any, Any]) -> None:
    store, inner = stores
    sealed(store, inner, [M1]).append_consent("s", event("r", evidence={"ip": "192.0.2.1"}))
    (subject, wrapped), = list(store.wrapped_page("", 10))
    store.destroy(subject)
    assert not store.swap_wrapped(subject, wrapped, MasterKeys([M1, M2]).wrap(b"k" * 32, "s"))
    record = store.get(subject)
    assert record is not None and record.wrapped is None


def test_a_key_under_a_master_key_the_ring_lacks_stops_the_run(
        stores: tuple[Any, Any]) -> None:
    store, inner = stores
    sealed(store, inner, [M1]).append_consent("s", event("r", evidence={"ip": "192.0.2.1"}))
    with pytest.raises(Unavailable, match="unknown master key"):
        rewrap(store, MasterKeys([M2]))
    assert key_counts(store) == {"m1": 1}


def test_keys_commands_on_a_served_data_dir(tmp_path: Path) -> None:
    """The operator's path: serve with m1, add m2 to the ring, re-wrap, retire m1, and
    serve again with m2 alone."""
    data, ring = tmp_path / "data", tmp_path / "master.key"
    ring.write_text("m1:" + "11" * 32 + "\n")
    flags = ["--master-key-file", str(ring)]
    from consentauthz.v1 import consent_pb2

    def grant(subject: str) -> None:
        s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
            subject_id=subject, action=consent_pb2.CONSENT_ACTION_GRANT,
            purpose="marketing.communications.email", data_categories=["user.contact.email"],
            method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, jurisdiction="DE",
            source="web-form", notice_version="2026-01", evidence={"ip": "203.0.113.5"}))

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), "keys", *args, "--data-dir", str(data), *flags],
                              cwd=ROOT, env=serve_env(), capture_output=True, text=True,
                              timeout=60, check=False)

    s = start_serve(serve_command(data, *flags), serve_env())
    try:
        grant("a@example.com")
        grant("b@example.com")
    finally:
        s.stop()
    ring.write_text("m1:" + "11" * 32 + "\nm2:" + "22" * 32 + "\n")
    status = json.loads(keys("status").stdout)
    assert status["current"] == "m2" and status["live_subject_keys"] == {"m1": 2}
    refused = keys("retire", "m1")
    assert refused.returncode == 2 and "still wrapped" in refused.stderr
    done = keys("rewrap")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rewrapped"] == 2
    retired = keys("retire", "m1")
    assert retired.returncode == 0, retired.stderr
    ring.write_text("m2:" + "22" * 32 + "\n")
    s = start_serve(serve_command(data, *flags), serve_env())
    try:
        state = s.consent.GetConsentState(consent_pb2.GetConsentStateRequest(
            subject_id="a@example.com"))
        assert dict(state.records[0].evidence) == {"ip": "203.0.113.5"}
    finally:
        s.stop()


def test_the_keys_commands_take_the_ring_from_where_serve_does(tmp_path: Path) -> None:
    from consentauthz.cli import build_parser
    from consentauthz.config import key_store_config

    ns = build_parser().parse_args(["keys", "status"])
    env = {"CONSENTAUTHZ_DATA_DIR": str(tmp_path), "CONSENTAUTHZ_MASTER_KEY_FILE": "ring",
           "CONSENTAUTHZ_LEDGER": "postgresql://db/x"}
    config = key_store_config(ns, env)
    assert (config.data_dir, config.master_key_file, config.ledger_url) == (
        tmp_path, Path("ring"), "postgresql://db/x")
    flagged = build_parser().parse_args(["keys", "status", "--master-key-file", "other"])
    assert key_store_config(flagged, env).master_key_path == Path("other")
    assert key_store_config(ns, {"CONSENTAUTHZ_MASTER_KEY": "22" * 32}).master_key \
        == b"\x22" * 32
    with pytest.raises(ConfigError, match="MASTER_KEY must be hex"):
        key_store_config(ns, {"CONSENTAUTHZ_MASTER_KEY": "not hex"})
