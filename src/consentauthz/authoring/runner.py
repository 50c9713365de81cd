"""Run policy test suites with the engine the server uses, and measure rule coverage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..consent.projection import apply_event, apply_profile
from ..domain import (
    CheckRequest,
    ConsentEvent,
    Decision,
    Effect,
    SubjectProfile,
    SubjectState,
)
from ..engine import CompiledPolicy, Rule
from ..engine.reference import reference_enforcer, reference_request
from ..errors import InvalidArgument
from ..validation import Violations, check_category, check_purpose, validate_check
from .suite import Case, Suite

_RECORDED = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    decision: Decision | None
    #: Why the case failed (empty when it passed).
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class RunResult:
    results: tuple[CaseResult, ...]
    rules: tuple[Rule, ...]
    covered: frozenset[int]
    #: regimes (direct, as reported in decisions) that at least one case exercised
    regimes: frozenset[str]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def uncovered(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.index not in self.covered)

    @property
    def coverage(self) -> float:
        return 100.0 * (len(self.rules) - len(self.uncovered)) / len(self.rules) \
            if self.rules else 100.0


def state_for(case: Case) -> SubjectState:
    """The subject's state as the ledger would project it from the case's records."""
    state = apply_profile(SubjectState(), SubjectProfile(
        case.jurisdiction, case.birth_date,
        erased_at=case.now - timedelta(days=1) if case.erased else None), 1)
    for i, spec in enumerate(case.events, start=2):
        state = apply_event(state, ConsentEvent(
            record_id=f"record-{i - 1}", sequence=i, action=spec.action, purpose=spec.purpose,
            data_categories=spec.categories, explicit=spec.explicit, method=spec.method,
            jurisdiction="", collected_at=spec.collected_at, expires_at=spec.expires_at,
            source="policy-test", notice_version="test", recorded_at=_RECORDED))
    return state


def _input_problems(case: Case, compiled: CompiledPolicy, request: CheckRequest) -> list[str]:
    tax = compiled.policy.taxonomy
    try:
        validate_check(request, tax)
    except InvalidArgument as exc:
        return [f"bad check: {exc}"]
    v = Violations()
    for i, spec in enumerate(case.events):
        if spec.purpose:
            check_purpose(v, tax, spec.purpose, f"consent[{i}].purpose")
        for cat in spec.categories:
            check_category(v, tax, cat, f"consent[{i}].categories")
    return [f"bad consent record: {x.field}: {x.description}" for x in v.items]


def run_case(case: Case, compiled: CompiledPolicy) -> CaseResult:
    request = CheckRequest(subject_id="policy-test", purpose=case.purpose,
                           data_category=case.data_category,
                           jurisdiction=case.check_jurisdiction, context=case.context,
                           explain=True)
    bad = _input_problems(case, compiled, request)
    if bad:
        return CaseResult(case, None, tuple(bad))
    decision = compiled.decide(request, state_for(case), case.now)
    exp = case.expect
    problems = []
    if (decision.effect, decision.reason) != (exp.decision, exp.reason):
        problems.append(f"expected {exp.decision.value} {exp.reason.value}, got "
                        f"{decision.effect.value} {decision.reason.value}")
    if exp.legal_basis is not None and decision.legal_basis != exp.legal_basis:
        problems.append(f"expected legal basis {exp.legal_basis or '(none)'}, got "
                        f"{decision.legal_basis or '(none)'}")
    if exp.rule is not None:
        got = (f"{decision.matched_rule.file}:{decision.matched_rule.line}"
               if decision.matched_rule else "")
        if got != exp.rule:
            problems.append(f"expected rule {exp.rule or '(none)'}, got {got or '(none)'}")
    return CaseResult(case, decision, tuple(problems))


def casbin_disagreement(case: Case, compiled: CompiledPolicy, decision: Decision,
                        enforcer: Any) -> str:
    """Empty when a plain casbin.Enforcer on the same pack picks the same rule."""
    # Casbin is asked about the combination that decided (a broader request is decided
    # by the first denied key under it).
    allowed, explain = enforcer.enforce_ex(*reference_request(
        compiled, decision.jurisdiction, decision.decided_purpose or case.purpose,
        decision.decided_category or case.data_category, frozenset(decision.facts)))
    ours = list(_rule_fields(compiled, decision))
    if list(explain) != ours or allowed != (decision.effect is Effect.ALLOW):
        return (f"the engine's index and plain casbin disagree (engine {ours or 'no rule'}, "
                f"casbin {list(explain) or 'no rule'}): report this as a bug")
    return ""


def _rule_fields(compiled: CompiledPolicy, decision: Decision) -> tuple[str, ...]:
    rule = decision.matched_rule
    if rule is None:
        return ()
    return next(r.fields for r in compiled.rules
                if (r.source.file, r.source.line) == (rule.file, rule.line))


def run_suites(compiled: CompiledPolicy, suites: list[Suite], *,
               check_casbin: bool = True) -> RunResult:
    """Run every case; with `check_casbin`, also confirm each decision against a plain
    casbin.Enforcer on the same pack, so any pack the runner loads (shipped, candidate,
    hot-reloaded) is held to the engine's equivalence with Casbin."""
    by_source = {(r.source.file, r.source.line): r.index for r in compiled.rules}
    enforcer = reference_enforcer(compiled.policy) if check_casbin else None
    results = []
    covered: set[int] = set()
    regimes: set[str] = set()
    for suite in suites:
        for case in suite.cases:
            result = run_case(case, compiled)
            if enforcer is not None and result.decision is not None:
                disagreement = casbin_disagreement(case, compiled, result.decision, enforcer)
                if disagreement:
                    result = CaseResult(case, result.decision,
                                        (*result.problems, disagreement))
            results.append(result)
            if result.decision is not None:
                regimes.add(result.decision.regime)
                rule = result.decision.matched_rule
                if rule is not None:
                    covered.add(by_source[(rule.file, rule.line)])
    return RunResult(tuple(results), compiled.rules, frozenset(covered), frozenset(regimes))
