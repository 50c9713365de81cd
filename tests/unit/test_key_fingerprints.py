"""The ledger remembers which key rings it was written with, and refuses others."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest

from consentauthz.consent import (
    KeyMismatch,
    MasterKeys,
    MemoryKeyStore,
    MemoryLedger,
    Sealer,
    SealingLedger,
    check_key_ring,
)
from consentauthz.domain import SubjectProfile
from consentauthz.pseudonym import Pseudonymizer, key_fingerprint

K1, K2 = secrets.token_bytes(32), secrets.token_bytes(32)


def test_a_fingerprint_names_a_key_without_revealing_it() -> None:
    assert key_fingerprint(K1) == key_fingerprint(bytes(K1))
    assert key_fingerprint(K1) != key_fingerprint(K2)
    assert K1.hex() not in key_fingerprint(K1) and len(key_fingerprint(K1)) == 32
    # The same key under another id has the same fingerprint: the id is checked apart.
    ring = Pseudonymizer(K2, "k2", [("k1", K1)])
    assert ring.fingerprints() == {"k1": key_fingerprint(K1), "k2": key_fingerprint(K2)}
    master = MasterKeys([("m1", K1)])
    assert master.fingerprints() == {"m1": key_fingerprint(K1)}
    assert K1.hex() not in repr(ring.fingerprints()) + repr(master.fingerprints())


def test_a_new_ledger_records_the_ring_and_accepts_it_again() -> None:
    ledger = MemoryLedger()
    first = check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K1)})
    assert first.recorded == ("k1",) and not first.adopted
    again = check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K1)})
    assert again.recorded == () and not again.adopted
    # The other ring is kept apart: m1 is new to it.
    assert check_key_ring(ledger, "master", {"k1": key_fingerprint(K2)}).recorded == ("k1",)


def test_another_key_under_a_recorded_id_is_refused() -> None:
    ledger = MemoryLedger()
    check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K1)})
    with pytest.raises(KeyMismatch) as caught:
        check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K2)})
    assert (caught.value.kind, caught.value.key_id, caught.value.missing) == (
        "pseudonymisation", "k1", False)
    assert "pseudonymisation key k1" in str(caught.value)
    assert K2.hex() not in str(caught.value) and key_fingerprint(K2) not in str(caught.value)
    # Nothing was recorded by the refused ring.
    check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K1)})


def test_a_rotation_records_the_new_key_and_a_ring_without_it_is_refused_after() -> None:
    ledger = MemoryLedger()
    check_key_ring(ledger, "master", {"m1": key_fingerprint(K1)})
    rotated = {"m1": key_fingerprint(K1), "m2": key_fingerprint(K2)}
    assert check_key_ring(ledger, "master", rotated).recorded == ("m2",)
    with pytest.raises(KeyMismatch) as caught:
        check_key_ring(ledger, "master", {"m1": key_fingerprint(K1)})
    assert (caught.value.key_id, caught.value.missing) == ("m2", True)
    assert "master key m2" in str(caught.value) and "lacks" in str(caught.value)


def test_a_ledger_with_records_but_no_fingerprints_adopts_the_first_ring() -> None:
    ledger = MemoryLedger()
    ledger.append_profile("k1:someone", SubjectProfile("DE"), "p1", datetime.now(UTC))
    adopted = check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K1)})
    assert adopted.recorded == ("k1",) and adopted.adopted
    with pytest.raises(KeyMismatch):
        check_key_ring(ledger, "pseudonymisation", {"k1": key_fingerprint(K2)})


def test_the_sealing_ledger_keeps_meta_in_the_ledger_it_wraps() -> None:
    inner = MemoryLedger()
    sealing = SealingLedger(inner, Sealer(MasterKeys([("m1", K1)]), MemoryKeyStore()))
    check_key_ring(sealing, "master", {"m1": key_fingerprint(K1)})
    assert inner.meta("key_fingerprints.master") == sealing.meta("key_fingerprints.master")
    with pytest.raises(KeyMismatch):
        check_key_ring(inner, "master", {"m1": key_fingerprint(K2)})
