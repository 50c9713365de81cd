"""Impact analysis replays logged decisions with the consent state each one saw."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consentauthz.app import compile_policy
from consentauthz.authoring.diff import diff, format_report, report_json
from consentauthz.checker import Checker
from consentauthz.consent import ConsentService, LocalCache, MemoryLedger, SqliteLedger
from consentauthz.decisionlog import MemoryDecisionLog
from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    DecisionQuery,
    Effect,
    SubjectUpsert,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.pseudonym import Pseudonymizer
from tests.conftest import POLICIES

EMAIL = "marketing.communications.email"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def world(policy: CompiledPolicy, ledger: MemoryLedger | SqliteLedger):
    clock = Clock()
    pseudonymize = Pseudonymizer(b"z" * 32)
    consent = ConsentService(ledger, LocalCache(10), pseudonymize,
                             lambda: policy.policy.taxonomy, clock)
    log = MemoryDecisionLog()
    return Checker(consent, lambda: policy, log, clock), consent, log


def grant(consent: ConsentService, subject: str, purpose: str = EMAIL) -> None:
    consent.record(ConsentWrite(subject, ConsentAction.GRANT, purpose=purpose,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))


def withdraw(consent: ConsentService, subject: str, purpose: str = EMAIL) -> None:
    consent.record(ConsentWrite(subject, ConsentAction.WITHDRAW, purpose=purpose))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_state_at_rebuilds_the_past(tmp_path: Path, kind: str,
                                    shipped_policy: CompiledPolicy) -> None:
    ledger = MemoryLedger() if kind == "memory" else SqliteLedger(tmp_path / "l.db")
    _, consent, _ = world(shipped_policy, ledger)
    subject = Pseudonymizer(b"z" * 32)("alice")
    grant(consent, "alice")                                   # 1
    consent.upsert_subject(SubjectUpsert("alice", "DE"))      # 2
    grant(consent, "bob")                                     # 3
    withdraw(consent, "alice")                                # 4
    assert [e.action for e in ledger.state_at(subject, 1).events] == [ConsentAction.GRANT]
    assert ledger.state_at(subject, 1).profile.jurisdiction == ""
    at3 = ledger.state_at(subject, 3)
    assert at3.profile.jurisdiction == "DE" and at3.sequence == 3
    assert [e.action for e in ledger.state_at(subject, 4).events] == [ConsentAction.WITHDRAW]
    assert ledger.state_at(subject, 4) == ledger.load(subject)
    assert ledger.state_at(subject, 0).events == ()


def test_diff_finds_exactly_the_decisions_a_change_flips(tmp_path: Path,
                                                         shipped_policy: CompiledPolicy) -> None:
    checker, consent, log = world(shipped_policy, MemoryLedger())
    grant(consent, "alice")
    allowed = checker.check(CheckRequest("alice", EMAIL, "user.contact.email", "DE"), "crm")
    withdraw(consent, "alice")
    # Same subject after the withdrawal: stays DENY under any email-consent change.
    denied = checker.check(CheckRequest("alice", EMAIL, "user.contact.email", "DE"), "crm")
    checker.check(CheckRequest("bob", "essential.service", "user.contact.email", "DE"), "crm")
    assert (allowed.decision.effect, denied.decision.effect) == (Effect.ALLOW, Effect.DENY)

    same = diff(log, consent._ledger, shipped_policy)
    assert (same.replayed, same.unchanged, same.flips) == (3, 3, [])

    candidate = tmp_path / "candidate"
    shutil.copytree(POLICIES, candidate)
    gdpr = candidate / "gdpr.csv"
    # The author decides e-mail marketing needs explicit consent.
    gdpr.write_text(gdpr.read_text().replace(
        "p, 610, gdpr, gdpr_consent_required, *, consent,",
        "p, 605, gdpr, marketing.communications.email, *, explicit_consent, allow, "
        "CONSENT_GIVEN, explicit_consent\n"
        "p, 606, gdpr, marketing.communications.email, *, always, deny, "
        "EXPLICIT_CONSENT_REQUIRED,\n"
        "p, 610, gdpr, gdpr_consent_required, *, consent,"))
    report = diff(log, consent._ledger, compile_policy(candidate))
    assert report.replayed == 3
    assert [c.record.decision_id for c in report.flips] == [allowed.record.decision_id]
    flip = report.flips[0]
    assert flip.direction == "ALLOW->DENY" and flip.now.reason.value == \
        "EXPLICIT_CONSENT_REQUIRED"
    assert report.unchanged == 2
    text = format_report(report)
    assert "would flip: 1 (ALLOW->DENY 1)" in text and allowed.record.decision_id in text
    assert "purpose marketing.communications.email" in text and "regime gdpr" in text
    assert report_json(report)["groups"] == [{
        "direction": "ALLOW->DENY", "purpose": EMAIL, "regime": "gdpr",
        "old_rule": "gdpr.csv:64", "new_rule": flip.new_rule, "count": 1}]

    only_bob = diff(log, consent._ledger, compile_policy(candidate),
                    DecisionQuery(purpose="essential.service"))
    assert only_bob.replayed == 1 and not only_bob.flips
    assert diff(log, consent._ledger, compile_policy(candidate),
                limit=1).replayed == 1
