"""Per-subject keys, the master key ring, and the key stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from consentauthz.consent import (
    KeyStore,
    MasterKeys,
    MemoryKeyStore,
    MemoryLedger,
    PostgresKeyStore,
    Sealer,
    SealingLedger,
    SqliteKeyStore,
    parse_master_ring,
)
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
)
from consentauthz.errors import SubjectErased, Unavailable

NOW = datetime(2026, 6, 1, tzinfo=UTC)
M1, M2 = b"\x01" * 32, b"\x02" * 32


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "memory":
        s: KeyStore = MemoryKeyStore()
    elif request.param == "sqlite":
        s = SqliteKeyStore(tmp_path / "keys.db")
    else:
        s = PostgresKeyStore(request.getfixturevalue("postgres_dsn"))
    try:
        yield s
    finally:
        s.close()


def event(evidence: dict[str, str]) -> ConsentEvent:
    return ConsentEvent(
        record_id="r1", sequence=0, action=ConsentAction.GRANT,
        purpose="marketing.communications.email", data_categories=("user.contact.email",),
        explicit=False, method=CollectionMethod.AFFIRMATIVE, jurisdiction="DE",
        collected_at=NOW, expires_at=None, source="web", notice_version="v1", recorded_at=NOW,
        evidence=evidence)


def test_key_store_contract(store: KeyStore) -> None:
    assert store.get("s") is None
    assert store.create("s", "w1").wrapped == "w1"
    assert store.create("s", "w2").wrapped == "w1"  # the first key stays
    store.destroy("s")
    got = store.get("s")
    assert got is not None and got.wrapped is None
    assert store.create("s", "w3").wrapped is None  # a destroyed key never comes back
    store.destroy("never-had-one")
    gone = store.get("never-had-one")
    assert gone is not None and gone.wrapped is None


def test_master_ring_rotation_unwraps_old_and_wraps_with_the_newest() -> None:
    old = MasterKeys([("m1", M1)])
    wrapped = old.wrap(b"k" * 32, "subj")
    ring = parse_master_ring(f"# rotated\nm1:{M1.hex()}\nm2:{M2.hex()}\n")
    assert ring.unwrap(wrapped, "subj") == b"k" * 32
    assert ring.wrap(b"k" * 32, "subj").startswith("m2:")
    assert "01" not in repr(ring)
    with pytest.raises(Unavailable):  # bound to its subject
        ring.unwrap(wrapped, "other")
    with pytest.raises(Unavailable):
        MasterKeys([("m2", M2)]).unwrap(wrapped, "subj")
    with pytest.raises(ValueError):
        parse_master_ring("m1:abcd")


def test_sealing_ledger_seals_in_and_opens_out_until_erased() -> None:
    inner = MemoryLedger()
    ledger = SealingLedger(inner, Sealer(MasterKeys([("m1", M1)]), MemoryKeyStore()))
    result = ledger.append_consent("subj", event({"ip": "192.0.2.7"}))
    assert dict(result.state.events[0].evidence) == {"ip": "192.0.2.7"}
    ledger.append_profile("subj", SubjectProfile("DE", date(1990, 1, 2)), "p1", NOW)
    stored = inner.load("subj")  # what is kept: sealed only
    assert not stored.events[0].evidence and stored.events[0].sealed_evidence
    assert stored.profile.birth_date is None and stored.profile.sealed_birth_date
    opened = ledger.load("subj")
    assert opened.profile.birth_date == date(1990, 1, 2)
    assert dict(ledger.history("subj", 0, 10)[0].evidence) == {"ip": "192.0.2.7"}

    ledger.erase("subj")
    shredded = ledger.load("subj")
    assert shredded.profile.birth_date is None and not shredded.events[0].evidence
    assert ledger.state_at("subj", 2).profile.birth_date is None
    with pytest.raises(SubjectErased):
        ledger.append_consent("subj", event({}))
    assert ledger.verify().ok


def test_a_sealed_value_moved_to_another_subject_does_not_open() -> None:
    inner = MemoryLedger()
    sealer = Sealer(MasterKeys([("m1", M1)]), MemoryKeyStore())
    ledger = SealingLedger(inner, sealer)
    ledger.append_consent("a", event({"ip": "192.0.2.7"}))
    sealed = inner.load("a").events[0].sealed_evidence
    key_b = sealer.key_for_write("b")
    with pytest.raises(Unavailable):
        Sealer.open(key_b, "b", "evidence", sealed)
    key_a = sealer.key_for_read("a")
    assert key_a is not None
    with pytest.raises(Unavailable):  # bound to its field too
        Sealer.open(key_a, "a", "birth_date", sealed)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(Unavailable):
        Sealer.open(key_a, "a", "evidence", tampered)
