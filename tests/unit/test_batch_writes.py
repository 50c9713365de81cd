"""Consent writes in batches (issue 19: a write of many events for one partition is one
transaction): ConsentService.record_batch over the three ledgers, sealed like single
writes, each bad write refused on its own, retries recognised."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consentauthz.consent import (
    ConsentService,
    LocalCache,
    MemoryLedger,
    PostgresLedger,
    SqliteLedger,
)
from consentauthz.consent.freshness import LedgerPoller
from consentauthz.consent.ledger import BatchItem, Ledger
from consentauthz.consent.sealing import (
    MasterKeys,
    PostgresKeyStore,
    Sealer,
    SealingLedger,
)
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    WriteResult,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.errors import InvalidArgument, SubjectErased, Unavailable
from consentauthz.pseudonym import Pseudonymizer
from tests.unit.test_ledger_contract import event

EMAIL = "marketing.communications.email"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PSEUDONYMS = Pseudonymizer(b"b" * 32)


def write(subject: str, action: ConsentAction = ConsentAction.GRANT, purpose: str = EMAIL,
          key: str = "", evidence: dict[str, str] | None = None) -> ConsentWrite:
    return ConsentWrite(
        subject, action, purpose=purpose, data_categories=("user.contact.email",),
        method=CollectionMethod.AFFIRMATIVE if action is ConsentAction.GRANT
        else CollectionMethod.UNSPECIFIED, source="crm-import", notice_version="v1",
        idempotency_key=key, evidence=evidence or {"row": subject})


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    led: Ledger
    if request.param == "memory":
        led = MemoryLedger()
    elif request.param == "sqlite":
        led = SqliteLedger(tmp_path / "ledger.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        led = SealingLedger(PostgresLedger(dsn, partitions=4),
                            Sealer(MasterKeys([("m1", b"m" * 32)]), PostgresKeyStore(dsn)))
    try:
        yield led
    finally:
        led.close()


def service(ledger: Ledger, policy: CompiledPolicy) -> ConsentService:
    return ConsentService(ledger, LocalCache(1000, watermark=ledger.heads()), PSEUDONYMS,
                          lambda: policy.policy.taxonomy, lambda: NOW)


def test_a_batch_records_every_good_write_and_refuses_each_bad_one(
        ledger: Ledger, shipped_policy: CompiledPolicy) -> None:
    svc = service(ledger, shipped_policy)
    writes = [write(f"crm-{i}@example.com", key=f"row-{i}") for i in range(40)]
    writes[7] = write("crm-7@example.com", purpose="no.such.purpose")
    writes[21] = write("crm-3@example.com", ConsentAction.WITHDRAW)  # a later row, same person
    results = svc.record_batch(writes)
    assert len(results) == 40
    bad = results[7]
    assert isinstance(bad, InvalidArgument) and bad.violations[0].field == "purpose"
    good = [r for r in results if isinstance(r, WriteResult)]
    assert len(good) == 39
    assert ledger.head() == 39
    for i, w in enumerate(writes):
        if i == 7:
            continue
        state = svc.get_state(w.subject_id)
        if w.subject_id == "crm-3@example.com":
            # In the batch's order: the grant (row 3), then the withdrawal (row 21).
            assert [e.action for e in state.events] == [ConsentAction.WITHDRAW]
        else:
            (event,) = state.events
            assert event.record_id == results[i].record_id  # type: ignore[union-attr]
            assert dict(event.evidence) == {"row": w.subject_id}  # sealed, and opened
    assert ledger.verify().ok


def test_a_batch_sent_again_is_recognised_row_by_row(ledger: Ledger,
                                                     shipped_policy: CompiledPolicy) -> None:
    svc = service(ledger, shipped_policy)
    writes = [write(f"resume-{i}@example.com", key=f"export-1:{i}") for i in range(12)]
    first = svc.record_batch(writes[:8])  # an import stopped part-way
    again = svc.record_batch(writes)  # and resumed from the start
    assert [r.record_id for r in again[:8]] == [r.record_id for r in first]  # type: ignore[union-attr]
    assert ledger.head() == 12
    # The same key for another row: refused on its own, nothing written for it.
    other = svc.record_batch([write("someone-else@example.com", key="export-1:3"),
                              write("fresh@example.com", key="export-1:99")])
    assert isinstance(other[0], InvalidArgument)
    assert other[0].violations[0].field == "idempotency_key"
    assert isinstance(other[1], WriteResult)
    assert ledger.head() == 13


def test_an_erased_subjects_rows_are_refused_and_the_rest_recorded(
        postgres_dsn: str, shipped_policy: CompiledPolicy) -> None:
    led = SealingLedger(PostgresLedger(postgres_dsn, partitions=4),
                        Sealer(MasterKeys([("m1", b"m" * 32)]), PostgresKeyStore(postgres_dsn)))
    try:
        svc = ConsentService(led, LocalCache(100, watermark=led.heads()), PSEUDONYMS,
                             lambda: shipped_policy.policy.taxonomy, lambda: NOW,
                             shredder=led)
        svc.record(write("gone@example.com"))
        svc.erase("gone@example.com")
        results = svc.record_batch([write("gone@example.com"), write("here@example.com")])
        assert isinstance(results[0], SubjectErased)
        assert isinstance(results[1], WriteResult)
        assert svc.get_state("gone@example.com").profile.erased_at is not None
        assert len(svc.get_state("gone@example.com").events) == 1  # nothing after erasure
    finally:
        led.close()


def _sealed_replica(dsn: str, policy: CompiledPolicy) -> tuple[SealingLedger, ConsentService]:
    """A replica of a shared ledger without Redis (its writes take no cross-replica
    order: issue 19)."""
    led = SealingLedger(PostgresLedger(dsn, partitions=4),
                        Sealer(MasterKeys([("m1", b"m" * 32)]), PostgresKeyStore(dsn)))
    cache = LocalCache(1000, watermark=led.heads())
    return led, ConsentService(led, cache, PSEUDONYMS, lambda: policy.policy.taxonomy,
                               lambda: NOW, freshness=LedgerPoller(led, cache, 5.0),
                               shredder=led)


@pytest.mark.parametrize("how", ["one", "batch"])
def test_nothing_is_recorded_after_an_erasure_another_replica_made_meanwhile(
        postgres_dsn: str, shipped_policy: CompiledPolicy, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica A reads the subject (not erased), replica B erases it, then A appends:
    refused, from what A reads under the partition's order."""
    la, a = _sealed_replica(postgres_dsn, shipped_policy)
    lb, b = _sealed_replica(postgres_dsn, shipped_policy)
    try:
        a.record(write("x@example.com"))
        for name in ("_write_key", "_write_keys"):
            original = getattr(la, name)

            def racing(arg: Any, original: Any = original) -> Any:
                got = original(arg)
                b.erase("x@example.com")  # between A's read and A's append
                return got

            monkeypatch.setattr(la, name, racing)
        if how == "one":
            with pytest.raises(SubjectErased):
                a.record(write("x@example.com", key="late"))
        else:
            (result,) = a.record_batch([write("x@example.com", key="late")])
            assert isinstance(result, SubjectErased)
        subject = a.subject_key("x@example.com")
        kinds = [e.action for e in lb.history(subject, 0, 10)]
        assert kinds == [ConsentAction.GRANT]  # and the erasure marker: nothing after it
        assert lb.load(subject).profile.erased_at is not None
        assert lb.verify().ok
    finally:
        la.close()
        lb.close()


def test_a_row_repeated_in_one_batch_is_recorded_once(ledger: Ledger,
                                                      shipped_policy: CompiledPolicy) -> None:
    svc = service(ledger, shipped_policy)
    row = write("twice@example.com", key="export-2:1")
    results = svc.record_batch([row, write("other@example.com", key="export-2:2"), row])
    assert isinstance(results[0], WriteResult) and isinstance(results[2], WriteResult)
    assert results[2].record_id == results[0].record_id
    assert ledger.head() == 2
    assert ledger.verify().ok


def test_a_batch_is_one_transaction_per_partition(postgres_dsn: str,
                                                  shipped_policy: CompiledPolicy) -> None:
    """A chunk's rows commit together: a row the database refuses (here a record id
    that already exists) leaves none of its chunk behind, and the chain stays whole."""
    led = PostgresLedger(postgres_dsn, partitions=1)
    try:
        svc = service(led, shipped_policy)
        (first,) = svc.record_batch([write("a@example.com")])
        assert isinstance(first, WriteResult)
        items = [BatchItem(PSEUDONYMS("b@example.com"), event("new-1")),
                 BatchItem(PSEUDONYMS("c@example.com"), event(first.record_id))]
        with pytest.raises(Unavailable):
            led.append_batch(items)
        assert led.head() == 1 and led.verify().ok
        assert led.load(PSEUDONYMS("b@example.com")).version == 0
    finally:
        led.close()


def test_when_the_ledger_fails_part_way_each_unrecorded_write_says_so(
        shipped_policy: CompiledPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = MemoryLedger(partitions=4)
    svc = service(ledger, shipped_policy)
    calls = []
    original = ledger.append_batch

    def failing(items: Any) -> Any:
        calls.append(len(items))
        if len(calls) == 2:
            raise Unavailable("consent ledger unavailable")
        return original(items)

    monkeypatch.setattr(ledger, "append_batch", failing)
    writes = [write(f"p-{i}@example.com", key=f"row-{i}") for i in range(40)]
    results = svc.record_batch(writes)
    recorded = [r for r in results if isinstance(r, WriteResult)]
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(calls) == 2  # nothing more tried once the ledger failed
    assert len(recorded) == calls[0] == ledger.head()
    assert len(recorded) + len(refused) == 40
    # Sent again, the refused ones are recorded and the others recognised as retries.
    monkeypatch.setattr(ledger, "append_batch", original)
    again = svc.record_batch(writes)
    assert all(isinstance(r, WriteResult) for r in again) and ledger.head() == 40
