"""The consent service's cache never serves a state older than a write it has seen."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from consentauthz.consent import ConsentService, LocalCache, MemoryLedger
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
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
