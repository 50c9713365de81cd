"""The consent service's cache never serves a state older than a write it has seen."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from consentauthz.consent import ConsentService, LocalCache, MemoryLedger
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    SubjectProfile,
    SubjectState,
    SubjectUpsert,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.pseudonym import Pseudonymizer

EMAIL = "marketing.communications.email"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


class SlowLedger(MemoryLedger):
    """A real in-memory ledger whose reads of one subject can be held mid-flight."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: str | None = None
        self.reading = threading.Event()
        self.release = threading.Event()

    def load(self, subject: str) -> SubjectState:
        state = super().load(subject)
        if subject == self.hold:
            self.reading.set()
            self.release.wait(timeout=10)
        return state


def test_a_read_overtaken_by_a_write_is_not_cached(shipped_policy: CompiledPolicy) -> None:
    ledger = SlowLedger()
    service = ConsentService(ledger, LocalCache(1), Pseudonymizer(b"p" * 32),
                             lambda: shipped_policy.policy.taxonomy, lambda: NOW)
    service.record(ConsentWrite("s1", ConsentAction.GRANT, purpose=EMAIL,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))
    s1 = service.subject_key("s1")
    service.upsert_subject(SubjectUpsert("s2", "DE"))  # evicts s1 from the 1-entry cache
    ledger.hold = s1
    stale: list[SubjectState] = []
    reader = threading.Thread(target=lambda: stale.append(service.state_of(s1)))
    reader.start()
    assert ledger.reading.wait(timeout=10)  # the reader has the pre-withdrawal state
    service.record(ConsentWrite("s1", ConsentAction.WITHDRAW, purpose=EMAIL))
    service.state_of(service.subject_key("s2"))  # evicts s1's fresh entry again
    ledger.hold = None
    ledger.release.set()
    reader.join(timeout=10)
    assert [e.action for e in stale[0].events] == [ConsentAction.GRANT]  # it read early...
    # ...but that state must not have been cached and served as current.
    assert [e.action for e in service.state_of(s1).events] == [ConsentAction.WITHDRAW]


def test_a_subject_looked_up_before_its_first_record_follows_where_it_is_recorded(
        shipped_policy: CompiledPolicy) -> None:
    """Issue 12: replica B has rotated to k2, replica A still pseudonymises with k1 (a
    rolling restart). B looking a new subject up first must not make B keep the k2
    pseudonym once A records the subject under k1: every replica, and B itself when
    restarted, then finds the subject under k1."""
    k1, k2 = b"1" * 32, b"2" * 32
    ledger = MemoryLedger()

    def replica(ring: Pseudonymizer) -> ConsentService:
        return ConsentService(ledger, LocalCache(100), ring,
                              lambda: shipped_policy.policy.taxonomy, lambda: NOW)

    a = replica(Pseudonymizer(k1, "k1"))
    b = replica(Pseudonymizer(k2, "k2", [("k1", k1)]))
    assert b.subject_key("s").startswith("k2:")  # nothing recorded yet
    a.record(ConsentWrite("s", ConsentAction.GRANT, purpose=EMAIL,
                          method=CollectionMethod.AFFIRMATIVE, source="web",
                          notice_version="v1"))
    assert b.subject_key("s") == a.subject_key("s")
    token = b.record(ConsentWrite("s", ConsentAction.WITHDRAW, purpose=EMAIL)).consistency_token
    restarted = replica(Pseudonymizer(k2, "k2", [("k1", k1)]))
    for r in (a, b, restarted):
        state = r.state_of(r.subject_key("s"), min_sequence=token)
        assert [e.action for e in state.events] == [ConsentAction.WITHDRAW]


def test_the_first_recorded_pseudonym_wins_whatever_the_order_of_the_ring(
        shipped_policy: CompiledPolicy) -> None:
    """A subject recorded under the current key and later (by a replica that did not know
    the new key) under an older one stays where it was first recorded, on every replica."""
    k1, k2 = b"1" * 32, b"2" * 32
    ledger = MemoryLedger()
    new = ConsentService(ledger, LocalCache(100), Pseudonymizer(k2, "k2", [("k1", k1)]),
                         lambda: shipped_policy.policy.taxonomy, lambda: NOW)
    new.upsert_subject(SubjectUpsert("s", "DE"))
    first = new.subject_key("s")
    assert first.startswith("k2:")
    ledger.append_profile(Pseudonymizer(k1, "k1")("s"), SubjectProfile("FR"), "late", NOW)
    for ring in (Pseudonymizer(k2, "k2", [("k1", k1)]), Pseudonymizer(k1, "k1", [("k2", k2)])):
        fresh = ConsentService(ledger, LocalCache(100), ring,
                               lambda: shipped_policy.policy.taxonomy, lambda: NOW)
        assert fresh.subject_key("s") == first
    assert new.subject_key("s") == first
