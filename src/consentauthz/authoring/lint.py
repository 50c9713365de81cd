"""`policy lint`: everything wrong with a pack that loading alone does not catch.

Errors: anything that stops the pack loading (unknown taxonomy keys, facts, reasons ...),
jurisdiction codes that are not ISO 3166, rules that can never match or never decide
(shadowed or contradicted by an earlier rule), regimes that no test case exercises, and
test suites that do not parse. Every finding carries `file:line`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Set
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


def _kinds(keys: Iterable[str], closure: Callable[[str], tuple[str, ...]],
           named: Set[str]) -> Counter[tuple[str, ...]]:
    """Keys that reach the same rule keys behave alike: each kind, with how many keys."""
    return Counter(tuple(sorted(k for k in closure(key) if k in named)) for key in keys)


def _candidate_lists(compiled: CompiledPolicy) -> Counter[tuple[int, ...]]:
    """Every distinct candidate list `compiled.candidates` can give, with how many
    (jurisdiction kind, purpose, category) requests give it.

    Equivalent to calling `candidates` for one jurisdiction of each kind and every
    purpose and category of the taxonomy, without the cost (or the memo entries) of
    doing so: purposes and categories are grouped into kinds like jurisdictions, and the
    categories that reach no rule of their own share the list of the `*` rules."""
    rules = compiled.rules
    rule_regimes = {r.regime for r in rules}
    rule_purposes = {r.purpose for r in rules} - {"*"}
    rule_categories = {r.category for r in rules} - {"*"}
    regime_kinds: dict[frozenset[str], str] = {}
    for token in sorted(compiled.jurisdictions):
        closure = compiled.regime_closure(token)
        regime_kinds.setdefault(frozenset(c for c in closure if c in rule_regimes), token)
    tax = compiled.policy.taxonomy
    purpose_kinds = _kinds(tax.purposes, compiled.purpose_closure, rule_purposes)
    category_kinds = _kinds(tax.categories, compiled.category_closure, rule_categories)
    all_categories = sum(category_kinds.values())
    kinds_with: dict[str, list[tuple[str, ...]]] = {}
    for kind in category_kinds:
        for category in kind:
            kinds_with.setdefault(category, []).append(kind)
    # (regime, purpose) -> category -> positions, from the engine's own index
    by_pair: dict[tuple[str, str], dict[str, list[int]]] = {}
    for (regime, purpose, category), positions in compiled.rules_by_triple().items():
        by_pair.setdefault((regime, purpose), {}).setdefault(category, []).extend(positions)

    lists: Counter[tuple[int, ...]] = Counter()
    for token in regime_kinds.values():
        regimes = compiled.regime_closure(token)
        for purpose_kind, purposes in purpose_kinds.items():
            reached: dict[str, list[int]] = {}
            for regime in regimes:
                for purpose in (*purpose_kind, "*"):
                    for category, positions in by_pair.get((regime, purpose), {}).items():
                        reached.setdefault(category, []).extend(positions)
            star = reached.pop("*", [])
            own = {kind for category in reached for kind in kinds_with.get(category, ())}
            others = all_categories - sum(category_kinds[kind] for kind in own)
            if others:
                lists[tuple(sorted(star))] += purposes * others
            for kind in own:
                positions = star + [i for c in kind for i in reached.get(c, ())]
                lists[tuple(sorted(positions))] += purposes * category_kinds[kind]
    return lists


def _reachability(compiled: CompiledPolicy) -> list[Finding]:
    """For every rule, is there any request for which it is the first match?

    A rule decides for (jurisdiction, purpose, category) with the facts it needs unless an
    earlier candidate matches those facts too. Jurisdictions that reach the same rule
    regimes behave alike, so one of each kind is enough. A blocker is reported by how
    many requests it blocks the rule for (the earlier rule on a tie).
    """
    rules = compiled.rules
    seen: set[int] = set()
    decides: set[int] = set()
    blockers: dict[int, Counter[int]] = {}
    for positions, requests in _candidate_lists(compiled).items():
        # the first earlier candidate with each `when`: a blocker is the first of those
        # whose `when` is always or one the rule needs
        first: dict[str, int] = {}
        for pos in positions:
            rule = rules[pos]
            seen.add(pos)
            found = [first[w] for w in (ALWAYS, *_needs(rule)) if w in first]
            if found:
                blockers.setdefault(pos, Counter())[min(found)] += requests
            else:
                decides.add(pos)
            first.setdefault(rule.when, pos)
    out = []
    for pos, rule in enumerate(rules):
        where = f"{rule.source.file}:{rule.source.line}"
        if pos not in seen:
            out.append(Finding(where, "error", "rule can never match: no jurisdiction reaches "
                               f"regime {rule.regime!r} with this purpose and category"))
        elif pos not in decides:
            counts = blockers[pos]
            blocker = rules[min(counts, key=lambda b: (-counts[b], b))]
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
    try:
        suites = load_suites(directory)
    except PolicyError as exc:
        return lint_compiled(compiled, exc)
    return lint_compiled(compiled, suites)


def lint_compiled(compiled: CompiledPolicy, suites: list[Suite] | PolicyError) -> list[Finding]:
    """`lint` on a pack already compiled, with its suites already loaded (or why they did
    not load): what the hot-reload gate runs, without loading the pack a second time."""
    findings = _jurisdictions(compiled) + _reachability(compiled)
    if isinstance(suites, PolicyError):
        findings += [_split(p) for p in suites.problems]
    else:
        findings += _regimes_without_tests(compiled, suites)
    return sorted(findings)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
