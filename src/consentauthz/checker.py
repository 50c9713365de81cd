"""The callers' use case: state from consent/, decide with engine/, append to decisionlog/.

No decision leaves this module unless its decision-log entry was accepted first, and a
failure anywhere on the way (consent state, policy, engine, decision log) is raised,
never turned into an answer: the server maps it to UNAVAILABLE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from opentelemetry.util.types import AttributeValue

from .consent import ConsentService
from .decisionlog import DecisionLog
from .domain import (
    GPC_SOURCE,
    CheckOutcome,
    CheckRequest,
    ConsentAction,
    DecisionRecord,
    SubjectState,
    new_id,
)
from .engine import CompiledPolicy
from .errors import ConsentAuthzError, InvalidArgument, TokenAhead, Unavailable
from .metrics import NO_METRICS, Metrics, Rpc
from .telemetry import (
    ATTR_BATCH_SIZE,
    ATTR_CALLER,
    ATTR_CATEGORY,
    ATTR_CONSENT_RECORDS,
    ATTR_CONSISTENCY_TOKEN,
    ATTR_DECISION,
    ATTR_DECISION_ID,
    ATTR_JURISDICTION,
    ATTR_LEGAL_BASIS,
    ATTR_POLICY_VERSION,
    ATTR_PURPOSE,
    ATTR_REASON,
    ATTR_REGIME,
    ATTR_RULE,
    ATTR_SUBJECT,
    child_span,
    current_ids,
    open_span,
)
from .validation import validate_batch_size, validate_check

#: Bound on the subjects remembered as having their GPC opt-out recorded.
_MAX_GPC_MEMO = 100_000
#: A batch item's result: an answer, its own bad input, or its own unavailability.
ItemResult = CheckOutcome | InvalidArgument | Unavailable


class Checker:
    def __init__(self, consent: ConsentService, policy: Callable[[], CompiledPolicy],
                 log: DecisionLog,
                 clock: Callable[[], datetime], metrics: Metrics = NO_METRICS) -> None:
        self._consent = consent
        self._policy = policy
        self._log = log
        self._clock = clock
        self._metrics = metrics
        #: Subjects whose GPC opt-out is known to be recorded (bounded; forgetting costs
        #: one keyed no-op write, never a second record), as of the caches' epoch: a
        #: ledger that went back may have lost the record.
        self._gpc_recorded: set[str] = set()
        self._gpc_epoch = consent.cache_epoch

    def check(self, request: CheckRequest, caller: str) -> CheckOutcome:
        result = self._run([request], caller, prefix=False)[0]
        if not isinstance(result, CheckOutcome):
            raise result
        return result

    def check_batch(self, requests: Sequence[CheckRequest | InvalidArgument],
                    caller: str) -> list[ItemResult]:
        """One result per item, in order; an item that already failed conversion at the
        edge is passed in as its InvalidArgument and comes back unchanged. An item whose
        consistency_token is ahead of what the consent ledger holds comes back as its own
        Unavailable while the other items are answered. Any other failure fails the whole
        batch: a ledger that is down would fail every item, each after its own timeout."""
        return self._run(requests, caller, prefix=True)

    def _run(self, requests: Sequence[CheckRequest | InvalidArgument], caller: str,
             prefix: bool) -> list[ItemResult]:
        try:
            return self._run_unguarded(requests, caller, prefix)
        except (InvalidArgument, Unavailable):
            raise
        except ConsentAuthzError as exc:
            # Any other error of ours on the way (a policy that cannot be had, ...) means
            # no decision can be made now: that is unavailability, never an answer.
            # Unexpected exceptions (bugs) pass as they are, for the server to log.
            raise Unavailable("no decision can be made now") from exc

    def _run_unguarded(self, requests: Sequence[CheckRequest | InvalidArgument], caller: str,
                       prefix: bool) -> list[ItemResult]:
        if prefix:
            validate_batch_size(len(requests))
        compiled = self._policy()  # one policy version for the whole batch
        rpc: Rpc = "BatchCheck" if prefix else "Check"
        taxonomy = compiled.policy.taxonomy
        results: list[ItemResult | None] = [None] * len(requests)
        pending: list[tuple[int, CheckOutcome]] = []
        # One engine span for the call, however many items: a span per item would cost
        # more than deciding it. Each item's log entry names this span (so it is opened
        # even when it is not recorded, as long as spans are on at all).
        with open_span("engine.Check") as span:
            trace_id, span_id = current_ids()
            started = time.perf_counter()
            for i, request in enumerate(requests):
                if isinstance(request, InvalidArgument):
                    results[i] = request
                    continue
                try:
                    validate_check(request, taxonomy, f"items[{i}]." if prefix else "",
                                   self._consent.partitions, self._consent.bare_until)
                except InvalidArgument as exc:
                    results[i] = exc
                    continue
                field = (f"items[{i}]." if prefix else "") + "consistency_token"
                try:
                    pending.append((i, self._decide(request, caller, compiled,
                                                    trace_id, span_id, field)))
                except (TokenAhead, InvalidArgument) as exc:
                    # The item's own: a token of another subject's partition, or one the
                    # ledger does not hold yet (anything else is an outage).
                    results[i] = exc
            if pending:
                self._metrics.check_duration(time.perf_counter() - started, rpc)
            if span.is_recording():
                if prefix:
                    span.set_attributes({ATTR_CALLER: caller, ATTR_BATCH_SIZE: len(requests)})
                elif pending:
                    span.set_attributes(_attributes(pending[0][1].record))
        if pending:
            with child_span("decisionlog.Append") as span:
                if span.is_recording():
                    span.set_attribute(ATTR_BATCH_SIZE, len(pending))
                logged = self._log.append([outcome.record for _, outcome in pending])
            for (i, outcome), record in zip(pending, logged, strict=True):
                results[i] = replace(outcome, record=record)
                # Counted only now: a decision whose log entry was refused is never answered.
                self._metrics.decision(outcome.decision, record.purpose)
        done = [r for r in results if r is not None]
        if len(done) != len(requests):
            # Never an answer for some items and silence for others.
            raise Unavailable("a batch item was left without a result")
        return done

    def _decide(self, request: CheckRequest, caller: str, compiled: CompiledPolicy,
                trace_id: str, span_id: str, token_field: str) -> CheckOutcome:
        subject = self._consent.subject_key(request.subject_id)
        self._consent.check_token(subject, request.token_partition, request.consistency_token,
                                  token_field)
        state = self._consent.state_of(subject, request.consistency_token)
        now = self._clock()
        if request.context.get("gpc") == "1":
            state = self._remember_gpc(request, subject, state, compiled, now)
        decision = compiled.decide(request, state, now)
        record = DecisionRecord(
            decision_id=new_id(), time=now, caller=caller, subject=subject,
            purpose=request.purpose, data_category=request.data_category,
            jurisdiction=decision.jurisdiction, regime=decision.regime,
            decision=decision.effect, reason=decision.reason,
            legal_basis=decision.legal_basis,
            matched_rule=str(decision.matched_rule) if decision.matched_rule else "",
            policy_version=decision.policy_version,
            consent_record_ids=decision.consent_record_ids,
            consistency_token=state.sequence, trace_id=trace_id, span_id=span_id,
            context=dict(request.context))
        return CheckOutcome(decision, record, self._consent.token_of(subject, state.sequence))


    def _remember_gpc(self, request: CheckRequest, subject: str, state: SubjectState,
                      compiled: CompiledPolicy, now: datetime) -> SubjectState:
        """CCPA 11 CCR §7025(c)(1), (c)(5) and the states' universal opt-out rules: a GPC
        signal from a consumer the business knows is that consumer's opt-out, and its later
        absence is not consent. Recorded once per subject (the ledger keys the write by
        subject), durably, before the answer; a subject this replica has seen recorded, or
        whose state shows the record, costs nothing more."""
        epoch = self._consent.cache_epoch
        if epoch != self._gpc_epoch:
            self._gpc_recorded, self._gpc_epoch = set(), epoch
        if (state.version == 0 or state.profile.erased_at is not None
                or subject in self._gpc_recorded):
            # No record at all: a consumer the business does not know. Erased: nothing
            # more is recorded about them.
            return state
        jurisdictions = [request.jurisdiction or state.profile.jurisdiction]
        if request.jurisdiction and state.profile.jurisdiction:
            jurisdictions.append(state.profile.jurisdiction)
        if not compiled.remembers_gpc(jurisdictions, now.date()):
            return state
        if not any(e.source == GPC_SOURCE and e.action is ConsentAction.OPT_OUT_OF_SALE
                   for e in state.events):
            written = self._consent.remember_gpc(request.subject_id, jurisdictions[0])
            state = self._consent.state_of(subject, written.consistency_token)
        if len(self._gpc_recorded) >= _MAX_GPC_MEMO:
            self._gpc_recorded.clear()
        self._gpc_recorded.add(subject)
        return state


def _attributes(r: DecisionRecord) -> dict[str, AttributeValue]:
    """One decision, as span attributes (a Check's engine span carries them)."""
    return {
        ATTR_DECISION_ID: r.decision_id,
        ATTR_CALLER: r.caller,
        ATTR_SUBJECT: r.subject,
        ATTR_PURPOSE: r.purpose,
        ATTR_CATEGORY: r.data_category,
        ATTR_JURISDICTION: r.jurisdiction,
        ATTR_REGIME: r.regime,
        ATTR_DECISION: r.decision.value,
        ATTR_REASON: r.reason.value,
        ATTR_LEGAL_BASIS: r.legal_basis,
        ATTR_RULE: r.matched_rule,
        ATTR_POLICY_VERSION: r.policy_version,
        ATTR_CONSENT_RECORDS: list(r.consent_record_ids),
        ATTR_CONSISTENCY_TOKEN: r.consistency_token,
    }
