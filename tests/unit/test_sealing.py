"""Per-subject keys, the master key ring, and the key stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest

from consentauthz.consent import (
    Idempotency,
    KeyStore,
    MasterKeys,
    MemoryKeyStore,
    MemoryLedger,
    PostgresKeyStore,
    PostgresLedger,
    Sealer,
    SealingLedger,
    SqliteKeyStore,
    parse_master_ring,
)
from consentauthz.consent.sealing import KeyRecord
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
)
from consentauthz.errors import InvalidArgument, SubjectErased, Unavailable
from tests.pg import fresh_database

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
    # A write's state is load()'s: evidence left sealed (only the caches take it).
    assert not result.state.events[0].evidence and result.state.events[0].sealed_evidence
    assert dict(ledger.load("subj", evidence=True).events[0].evidence) == {"ip": "192.0.2.7"}
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
    key_b = sealer.key_for_write("b", holds_sealed=False)
    with pytest.raises(Unavailable):
        Sealer.open(key_b, "b", "evidence", sealed)
    key_a = sealer.key_for_write("a", holds_sealed=True)
    with pytest.raises(Unavailable):  # bound to its field too
        Sealer.open(key_a, "a", "birth_date", sealed)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(Unavailable):
        Sealer.open(key_a, "a", "evidence", tampered)


def sealed_ledger(store: KeyStore | None = None, inner: MemoryLedger | None = None
                  ) -> tuple[SealingLedger, MemoryLedger, KeyStore]:
    inner = inner if inner is not None else MemoryLedger()
    store = store if store is not None else MemoryKeyStore()
    return SealingLedger(inner, Sealer(MasterKeys([("m1", M1)]), store)), inner, store


def test_a_destroyed_key_without_the_erasure_record_reads_as_erased_never_as_an_adult() -> None:
    # EraseSubject destroyed the key, then failed before recording the erasure.
    ledger, _, store = sealed_ledger()
    ledger.append_profile("child", SubjectProfile("DE", date(2015, 1, 1)), "p1", NOW)
    store.destroy("child")
    state = ledger.load("child")
    assert state.profile.birth_date is None and state.profile.erased_at is not None
    with pytest.raises(SubjectErased):
        ledger.append_consent("child", event({}))


def test_sealed_values_without_any_key_are_unavailable_not_guessed() -> None:
    ledger, inner, _ = sealed_ledger()
    ledger.append_profile("s", SubjectProfile("DE", date(2015, 1, 1)), "p1", NOW)
    lost, _, _ = sealed_ledger(MemoryKeyStore(), inner)  # the key store was lost
    with pytest.raises(Unavailable):
        lost.load("s")
    with pytest.raises(Unavailable):  # and no new key is made over sealed values
        lost.append_consent("s", event({"ip": "192.0.2.1"}))


def test_the_ledgers_erasure_record_wins_over_a_restored_key_store() -> None:
    ledger, inner, store = sealed_ledger()
    ledger.append_consent("s", event({"ip": "192.0.2.9"}))
    restored = MemoryKeyStore()
    record = store.get("s")
    assert record is not None and record.wrapped is not None
    restored.create("s", record.wrapped)  # a backup from before the erasure
    ledger.erase("s")
    ledger.append_profile("s", SubjectProfile(erased_at=NOW), "erasure", NOW)
    again, _, _ = sealed_ledger(restored, inner)
    assert not again.load("s").events[0].evidence
    assert not again.history("s", 0, 10)[0].evidence
    with pytest.raises(SubjectErased):
        again.append_consent("s", event({}))
    gone = restored.get("s")
    assert gone is not None and gone.wrapped is None  # destroyed again on the way


def test_clear_evidence_from_before_sealing_is_hidden_once_erased() -> None:
    ledger, inner, _ = sealed_ledger()
    inner.append_consent("old", event({"ip": "192.0.2.3"}))  # written before sealing existed
    inner.append_profile("old", SubjectProfile("DE", date(1990, 1, 1)), "p", NOW)
    assert ledger.load("old").events[0].evidence  # still readable before the erasure
    ledger.erase("old")
    ledger.append_profile("old", SubjectProfile(erased_at=NOW), "erasure", NOW)
    state = ledger.load("old")
    assert not state.events[0].evidence and state.profile.birth_date is None
    assert not ledger.history("old", 0, 10)[0].evidence


def test_the_idempotency_hash_is_keyed_by_the_subjects_key() -> None:
    ledger, inner, _ = sealed_ledger()
    plain = Idempotency("idem-1", "sha256-of-the-whole-request")
    first = ledger.append_consent("s", event({"ip": "192.0.2.1"}), plain)
    again = ledger.append_consent("s", event({"ip": "192.0.2.1"}), plain)
    assert again.replayed and again.record_id == first.record_id
    with pytest.raises(InvalidArgument):
        ledger.append_consent("s", event({}), Idempotency("idem-1", "another request"))
    # What the ledger keeps is not the plain hash (which would let anyone test guesses
    # of the evidence against it).
    with pytest.raises(InvalidArgument):
        inner.append_consent("s", event({}), plain)


# -- PostgreSQL: the key record read with the state ---------------------------------------


def _refuse(subject: str) -> KeyRecord | None:
    raise AssertionError("the key store was asked separately")


def test_on_the_ledgers_own_database_the_key_comes_with_the_state_and_erasure_holds(
        postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresKeyStore(postgres_dsn)
    ledger = SealingLedger(PostgresLedger(postgres_dsn), Sealer(MasterKeys([("m1", M1)]), store))
    try:
        ledger.append_profile("child", SubjectProfile("DE", date(2015, 1, 1)), "p1", NOW)
        ledger.append_consent("adult", event({"ip": "192.0.2.1"}))
        monkeypatch.setattr(store, "get", _refuse)  # one statement reads both
        assert ledger.load("child").profile.birth_date == date(2015, 1, 1)
        assert ledger.load("adult", evidence=True).events[0].evidence == {"ip": "192.0.2.1"}
        assert ledger.load("nobody").events == ()
        # EraseSubject destroyed the key, then failed before recording the erasure.
        store.destroy("child")
        state = ledger.load("child")
        assert state.profile.birth_date is None and state.profile.erased_at is not None
        # The key store lost a key: sealed values are never guessed to be absent.
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM subject_keys WHERE subject = 'adult'")
        with pytest.raises(Unavailable):
            ledger.load("adult")
    finally:
        ledger.close()


def test_a_key_store_in_another_database_is_asked_on_its_own(
        postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_database() as other:
        store = PostgresKeyStore(other)
        ledger = SealingLedger(PostgresLedger(postgres_dsn),
                               Sealer(MasterKeys([("m1", M1)]), store))
        try:
            ledger.append_profile("child", SubjectProfile("DE", date(2015, 1, 1)), "p1", NOW)
            assert ledger.load("child").profile.birth_date == date(2015, 1, 1)
            monkeypatch.setattr(store, "get", _refuse)
            with pytest.raises(AssertionError, match="asked separately"):
                ledger.load("child")
        finally:
            ledger.close()
