"""The checker in-process: no answer without a log entry, and failures never allow."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from consentauthz.checker import Checker
from consentauthz.consent import ConsentService, LocalCache, MemoryLedger
from consentauthz.decisionlog import MemoryDecisionLog
from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    DecisionQuery,
    DecisionRecord,
    Effect,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.errors import InvalidArgument, Unavailable
from consentauthz.pseudonym import Pseudonymizer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EMAIL = "marketing.communications.email"


class FailingLog(MemoryDecisionLog):
    """A real in-memory log whose disk is full."""

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        raise Unavailable("decision log unavailable")


class FailingLedger(MemoryLedger):
    def load(self, subject: str):  # type: ignore[no-untyped-def]
        raise Unavailable("consent ledger unavailable")


def build(policy: CompiledPolicy, ledger: MemoryLedger | None = None,
          log: MemoryDecisionLog | None = None) -> tuple[Checker, ConsentService,
                                                          MemoryDecisionLog]:
    pseudonymize = Pseudonymizer(b"x" * 32)
    consent = ConsentService(ledger or MemoryLedger(), LocalCache(100), pseudonymize,
                             lambda: policy.policy.taxonomy, lambda: NOW)
    log = log or MemoryDecisionLog()
    return Checker(consent, lambda: policy, log, lambda: NOW), consent, log


def grant(consent: ConsentService, subject: str) -> None:
    consent.record(ConsentWrite(subject_id=subject, action=ConsentAction.GRANT, purpose=EMAIL,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))


def request(subject: str = "alice", **kw: object) -> CheckRequest:
    fields: dict[str, object] = {"purpose": EMAIL, "data_category": "user.contact.email",
                                 "jurisdiction": "DE", **kw}
    return CheckRequest(subject_id=subject, **fields)  # type: ignore[arg-type]


def test_outcome_carries_its_logged_record(shipped_policy: CompiledPolicy) -> None:
    checker, consent, log = build(shipped_policy)
    grant(consent, "alice")
    outcome = checker.check(request(), caller="crm")
    assert outcome.decision.effect is Effect.ALLOW
    assert log.get(outcome.record.decision_id) == outcome.record
    assert outcome.record.caller == "crm" and outcome.record.sequence == 1
    assert outcome.record.subject != "alice"


def test_no_answer_when_the_log_refuses(shipped_policy: CompiledPolicy) -> None:
    checker, consent, _ = build(shipped_policy, log=FailingLog())
    grant(consent, "alice")
    with pytest.raises(Unavailable):
        checker.check(request(), caller="crm")
    with pytest.raises(Unavailable):
        checker.check_batch([request(), request("bob")], caller="crm")


def test_unreadable_consent_state_never_allows(shipped_policy: CompiledPolicy) -> None:
    checker, _, log = build(shipped_policy, ledger=FailingLedger())
    with pytest.raises(Unavailable):
        checker.check(request(), caller="crm")
    assert log.query(DecisionQuery()) == []


def test_batch_keeps_order_and_isolates_bad_items(shipped_policy: CompiledPolicy) -> None:
    checker, consent, log = build(shipped_policy)
    grant(consent, "alice")
    results = checker.check_batch(
        [request(), request(purpose="nope"), request("bob")], caller="crm")
    assert [type(r).__name__ for r in results] == ["CheckOutcome", "InvalidArgument",
                                                   "CheckOutcome"]
    bad = results[1]
    assert isinstance(bad, InvalidArgument)
    assert [v.field for v in bad.violations] == ["items[1].purpose"]
    assert [r.decision.effect for r in results if not isinstance(r, InvalidArgument)] == [
        Effect.ALLOW, Effect.DENY]
    assert len(log.query(DecisionQuery())) == 2


def test_consistency_token_ahead_of_ledger_is_unavailable(
        shipped_policy: CompiledPolicy) -> None:
    checker, consent, _ = build(shipped_policy)
    grant(consent, "alice")
    assert checker.check(request(consistency_token=1), caller="crm").record.consistency_token == 1
    with pytest.raises(Unavailable):
        checker.check(request(consistency_token=2), caller="crm")


def test_trace_sampling_never_affects_the_log(shipped_policy: CompiledPolicy) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    checker, _, log = build(shipped_policy)
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    unsampled = SpanContext(trace_id=trace_id, span_id=0x00F067AA0BA902B7, is_remote=True,
                            trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with trace.use_span(NonRecordingSpan(unsampled)):
        outcome = checker.check(request(), caller="crm")
    assert log.get(outcome.record.decision_id) == outcome.record
    assert outcome.record.trace_id == format(trace_id, "032x")
    assert outcome.record.span_id and outcome.record.span_id != format(0x00F067AA0BA902B7,
                                                                       "016x")


class CountingLedger(MemoryLedger):
    """A real in-memory ledger that counts the consent appends asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0

    def append_consent(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.appends += 1
        return super().append_consent(*args, **kwargs)


def test_what_the_checker_knows_of_recorded_gpc_opt_outs_ends_with_the_cache_epoch(
        shipped_policy: CompiledPolicy) -> None:
    from datetime import timedelta

    from consentauthz.domain import SubjectUpsert
    now = [NOW]
    ledger = CountingLedger()
    consent = ConsentService(ledger, LocalCache(100), Pseudonymizer(b"x" * 32),
                             lambda: shipped_policy.policy.taxonomy, lambda: now[0])
    checker = Checker(consent, lambda: shipped_policy, MemoryDecisionLog(), lambda: now[0])
    consent.upsert_subject(SubjectUpsert("cal", "US-CA"))
    gpc = request("cal", purpose="third_party_sharing", jurisdiction="US-CA",
                  context={"gpc": "1"})
    checker.check(gpc, caller="crm")
    assert ledger.appends == 1  # the opt-out
    now[0] += timedelta(minutes=1)
    consent.record(ConsentWrite(subject_id="cal", action=ConsentAction.OPT_IN_TO_SALE,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))  # displaces it in the projection
    checker.check(gpc, caller="crm")
    assert ledger.appends == 2  # only the opt-in: known to be recorded, nothing asked
    consent._cache.reset(ledger.head())  # the poller found the ledger went back
    checker.check(gpc, caller="crm")
    assert ledger.appends == 3  # asked again (a keyed no-op here: the record is there)
    assert ledger.head() == 3
