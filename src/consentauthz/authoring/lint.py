"""`policy lint`: everything wrong with a pack that loading alone does not catch.

Errors: anything that stops the pack loading (unknown taxonomy keys, facts, reasons ...),
jurisdiction codes that are not ISO 3166, rules that can never match or never decide
(shadowed or contradicted by an earlier rule), regimes that no test case exercises, and
test suites that do not parse. Every finding carries `file:line`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pycountry

from ..engine import ALWAYS, UNKNOWN_JURISDICTION, CompiledPolicy, Rule
from ..errors import PolicyError
from ..policy import load_policy_set
from .suite import Suite, load_suites

#: A fact that can only hold together with another (the minimal set a rule needs).
_IMPLIES = {"explicit_consent": frozenset({"explicit_consent", "consent"})}


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    where: str
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"


def _split(problem: str) -> Finding:
    where, sep, message = problem.partition(": ")
    return Finding(where, "error", message) if sep else Finding("", "error", problem)


def _is_iso(code: str) -> bool:
    if "-" in code:
        return pycountry.subdivisions.get(code=code) is not None  # type: ignore[no-untyped-call]
    return pycountry.countries.get(alpha_2=code) is not None


def _jurisdictions(compiled: CompiledPolicy) -> list[Finding]:
    out = []
    for line in compiled.policy.groupings:
        if line.ptype == "g" and line.fields and line.fields[0] != UNKNOWN_JURISDICTION:
            code = line.fields[0]
            if code.isupper() and not _is_iso(code):
                out.append(Finding(f"{line.file}:{line.line}", "error",
                                   f"{code} is not an ISO 3166-1 or ISO 3166-2 code"))
    return out


def _needs(rule: Rule) -> frozenset[str]:
    if rule.when == ALWAYS:
        return frozenset()
    return _IMPLIES.get(rule.when, frozenset({rule.when}))


def _reachability(compiled: CompiledPolicy) -> list[Finding]:
    """For every rule, is there any request for which it is the first match?

    A rule decides for (jurisdiction, purpose, category) with the facts it needs unless an
    earlier candidate matches those facts too. Jurisdictions that reach the same rule
    regimes behave alike, so one of each kind is enough.
    """
    rule_regimes = {r.regime for r in compiled.rules}
    kinds: dict[frozenset[str], str] = {}
    for token in sorted(compiled.jurisdictions):
        closure = compiled._regime_closure.get(token, (token,))
        kinds.setdefault(frozenset(c for c in closure if c in rule_regimes), token)
    tax = compiled.policy.taxonomy
    seen: set[int] = set()
    decides: set[int] = set()
    blockers: dict[int, Counter[int]] = {}
    by_index = {r.index: r for r in compiled.rules}
    for token in kinds.values():
        for purpose in tax.purposes:
            for category in tax.categories:
                candidates = compiled.candidates(token, purpose, category)
                for pos, rule in enumerate(candidates):
                    seen.add(rule.index)
                    need = _needs(rule)
                    blocker = next((a for a in candidates[:pos]
                                    if a.when == ALWAYS or a.when in need), None)
                    if blocker is None:
                        decides.add(rule.index)
                    else:
                        blockers.setdefault(rule.index, Counter())[blocker.index] += 1
    out = []
    for rule in compiled.rules:
        where = f"{rule.source.file}:{rule.source.line}"
        if rule.index not in seen:
            out.append(Finding(where, "error", "rule can never match: no jurisdiction reaches "
                               f"regime {rule.regime!r} with this purpose and category"))
        elif rule.index not in decides:
            blocker = by_index[blockers[rule.index].most_common(1)[0][0]]
            kind = ("contradicted" if blocker.effect is not rule.effect
                    and blocker.when == rule.when else "shadowed")
            out.append(Finding(where, "error", f"rule never decides: {kind} by "
                               f"{blocker.source.file}:{blocker.source.line} "
                               f"({blocker.effect.value} {blocker.reason.value} when "
                               f"{blocker.when}), which comes first"))
    return out


def _regimes_without_tests(compiled: CompiledPolicy, suites: list[Suite]) -> list[Finding]:
    tested = set()
    for suite in suites:
        for case in suite.cases:
            token = compiled.jurisdiction_token(case.check_jurisdiction or case.jurisdiction)
            tested.add(compiled.jurisdictions[token])
    first_line: dict[str, str] = {}
    for line in compiled.policy.groupings:
        if line.ptype == "g" and len(line.fields) == 2:
            first_line.setdefault(line.fields[1], f"{line.file}:{line.line}")
    return [Finding(first_line.get(regime, ""), "error",
                    f"regime {regime!r} has no test case (add one to a *_test.yaml suite)")
            for regime in sorted(set(compiled.jurisdictions.values()) - tested)]


def lint(directory: Path) -> list[Finding]:
    try:
        compiled = CompiledPolicy(load_policy_set(directory))
    except PolicyError as exc:
        return sorted(_split(p) for p in exc.problems)
    findings = _jurisdictions(compiled) + _reachability(compiled)
    try:
        suites = load_suites(directory)
    except PolicyError as exc:
        findings += [_split(p) for p in exc.problems]
    else:
        findings += _regimes_without_tests(compiled, suites)
    return sorted(findings)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
