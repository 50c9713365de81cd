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

#: The serve and hot-reload gate's budget for the casbin cross-check, in rule evaluations.
#: A plain Enforcer evaluates its matcher once per rule for every request, and building
#: it costs about ten evaluations' worth per rule; 250,000 is about half a second on a
#: laptop core. Within the budget every case is cross-checked (the shipped pack: all of
#: them); above it the gate checks as many cases as fit, spread over the suites, and none
#: when the Enforcer alone would not fit (about 25,000 rules). `policy test` (authors, CI)
#: has no budget: it cross-checks every case of every pack. docs/policy-authoring.md.
GATE_CASBIN_BUDGET = 250_000
#: Building a plain Enforcer, in rule evaluations per rule (measured: 1.9 s to build
#: against 0.22 s per request at 100,000 rules).
_ENFORCER_BUILD_COST = 10


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
    #: how many cases were also decided by a plain casbin.Enforcer (see run_suites)
    casbin_checked: int = 0

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
        compiled, decision.decided_jurisdiction or decision.jurisdiction,
        decision.decided_purpose or case.purpose,
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


def casbin_sample(cases: int, rules: int, budget: int | None) -> list[int]:
    """Which of `cases` cases (by position) to cross-check against a plain Enforcer on a
    pack of `rules` rules, within `budget` rule evaluations (None: all of them). Evenly
    spread, always the same for the same numbers (a gate's verdict must not vary)."""
    if budget is None:
        return list(range(cases))
    per_case = max(rules, 1)
    fit = (budget - _ENFORCER_BUILD_COST * rules) // per_case
    if fit <= 0 or cases == 0:
        return []
    if fit >= cases:
        return list(range(cases))
    return sorted({i * cases // fit for i in range(fit)})


def run_suites(compiled: CompiledPolicy, suites: list[Suite], *,
               check_casbin: bool = True, casbin_budget: int | None = None) -> RunResult:
    """Run every case; with `check_casbin`, also confirm each decision against a plain
    casbin.Enforcer on the same pack, so any pack the runner loads (shipped, candidate,
    hot-reloaded) is held to the engine's equivalence with Casbin.

    `casbin_budget` (rule evaluations, see GATE_CASBIN_BUDGET) bounds that cross-check to
    the cases `casbin_sample` picks; the Enforcer is only built when some case is picked,
    and is dropped before returning. None checks every case."""
    cases = [case for suite in suites for case in suite.cases]
    checked = (frozenset(casbin_sample(len(cases), len(compiled.rules), casbin_budget))
               if check_casbin else frozenset())
    enforcer = reference_enforcer(compiled.policy) if checked else None
    results = []
    matched: set[tuple[str, int]] = set()
    regimes: set[str] = set()
    compared = 0
    for position, case in enumerate(cases):
        result = run_case(case, compiled)
        if (enforcer is not None and position in checked
                and result.decision is not None):
            compared += 1
            disagreement = casbin_disagreement(case, compiled, result.decision, enforcer)
            if disagreement:
                result = CaseResult(case, result.decision, (*result.problems, disagreement))
        results.append(result)
        if result.decision is not None:
            regimes.add(result.decision.regime)
            rule = result.decision.matched_rule
            if rule is not None:
                matched.add((rule.file, rule.line))
    # One pass over the rules at the end (no index of every rule kept for a few cases).
    covered = frozenset(r.index for r in compiled.rules
                        if (r.source.file, r.source.line) in matched)
    return RunResult(tuple(results), compiled.rules, covered, frozenset(regimes),
                     casbin_checked=compared)
