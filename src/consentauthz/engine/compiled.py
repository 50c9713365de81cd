"""Compile a PolicySet into an index that decides exactly as casbin.Enforcer would.

The model must be the canonical consentauthz model (checked against pycasbin's own parse
of model.conf). For that model an Enforcer walks the rules in priority order and takes
the first whose regime, purpose and category are reachable through the role links and
whose `when` holds. We precompute the role-link closures and, per (jurisdiction,
purpose, category), the candidate rules in the same order, so a decision touches a few
rules however many the pack has. tests/property proves the equivalence.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import date, datetime
from types import MappingProxyType

from casbin.model import Model

from ..domain import CheckRequest, Decision, Effect, LegalBasis, MatchedRule, Reason, SubjectState
from ..errors import PolicyError
from ..policy import Hierarchy, PolicyLine, PolicySet, paused_gc
from .facts import ALWAYS, FACTS, Facts, derive_facts

_MODEL_SECTIONS = """\
[request_definition]
r = jurisdiction, purpose, category, facts

[policy_definition]
p = priority, regime, purpose, category, when, eft, reason, basis

[role_definition]
g = _, _
g2 = _, _
g3 = _, _

[policy_effect]
e = priority(p.eft) || deny

[matchers]
"""
CANONICAL_MODEL = _MODEL_SECTIONS + (
    'm = g(r.jurisdiction, p.regime) &&(p.purpose == "*" || g2(r.purpose, p.purpose)) '
    '&&(p.category == "*" || g3(r.category, p.category)) '
    '&&(p.when == "always" || (p.when in r.facts))\n')
#: The matcher as packs wrote it before it was made to parse in node-casbin too: the same
#: decisions in pycasbin, so such a pack still loads (policies/model.conf says why the
#: canonical form is written as it is).
_EARLIER_MODEL = _MODEL_SECTIONS + (
    'm = g(r.jurisdiction, p.regime) && (p.purpose == "*" || g2(r.purpose, p.purpose)) '
    '&& (p.category == "*" || g3(r.category, p.category)) '
    '&& (p.when == "always" || p.when in r.facts)\n')

#: The jurisdiction token for codes the pack does not map; the pack must map it (fail-closed).
UNKNOWN_JURISDICTION = "UNKNOWN"
#: pycasbin's role manager follows at most this many levels (max_hierarchy_level).
_CASBIN_LEVELS = 10
_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?\Z")
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    priority: int
    regime: str
    purpose: str
    category: str
    when: str
    effect: Effect
    reason: Reason
    basis: str
    source: MatchedRule
    fields: tuple[str, ...]


def _model_signature(text: str) -> tuple[tuple[str, ...], ...]:
    loaded = Model()
    loaded.load_model_from_text(text)
    # Model is not a mapping (`in` on it loops forever); use its section dict.
    sections: dict[str, dict[str, object]] = loaded.model

    def tokens(sec: str, key: str) -> tuple[str, ...]:
        ast = sections.get(sec, {}).get(key)
        return tuple(getattr(ast, "tokens", None) or ()) if ast is not None else ()

    def value(sec: str, key: str) -> str:
        ast = sections.get(sec, {}).get(key)
        return " ".join(str(getattr(ast, "value", "")).split()) if ast is not None else ""

    roles = tuple(sorted(f"{k}={value('g', k)}" for k in sections.get("g", {})))
    return (tokens("r", "r"), tokens("p", "p"), (value("e", "e"), value("m", "m")), roles)


_CANONICAL_SIGNATURES = frozenset(
    {_model_signature(CANONICAL_MODEL), _model_signature(_EARLIER_MODEL)})


def _closure(edges: Mapping[str, set[str]], node: str) -> tuple[tuple[str, ...], int]:
    """Everything pycasbin's has_link(node, x) is true for, and the deepest level used."""
    seen = {node}
    frontier = {node}
    depth = 0
    while frontier:
        nxt = {p for n in frontier for p in edges.get(n, ()) if p not in seen}
        if not nxt:
            break
        depth += 1
        seen |= nxt
        frontier = nxt
    return tuple(seen), depth


class CompiledPolicy:
    """An immutable, validated policy ready to decide. Thread-safe."""

    def __init__(self, policy: PolicySet) -> None:
        with paused_gc():  # see policy.paused_gc: compiling allocates per rule, no cycles
            self._compile(policy)

    def _compile(self, policy: PolicySet) -> None:
        self.policy = policy
        self.version = policy.version
        problems: list[str] = []
        if _model_signature(policy.model_text) not in _CANONICAL_SIGNATURES:
            problems.append(
                "model.conf: must be the consentauthz model (request, policy, roles, effect "
                "and matcher as in docs/policy-authoring.md); the engine's index reproduces "
                "exactly that matcher")
            raise PolicyError(problems)
        tax = policy.taxonomy
        for key in policy.settings.direct_marketing_purposes:
            if key not in tax.purposes:
                problems.append(f"settings.yaml: gdpr.direct_marketing_purposes: {key!r} is "
                                "not a purpose of the taxonomy")
        purpose_edges = self._tree_edges(tax.purposes)
        category_edges = self._tree_edges(tax.categories)
        regime_edges: dict[str, set[str]] = {}
        purpose_classes: set[str] = set()
        category_classes: set[str] = set()
        regimes: set[str] = set()
        nested: list[tuple[str, str, str, set[str]]] = []
        for line in policy.groupings:
            where = f"{line.file}:{line.line}"
            if len(line.fields) != 2:
                problems.append(f"{where}: a grouping line has exactly two fields")
                continue
            child, parent = line.fields
            if line.ptype == "g":
                if not _CLASS_NAME.match(parent):
                    problems.append(f"{where}: regime {parent!r} must be a lower-case name")
                if not (_JURISDICTION.match(child) or child == UNKNOWN_JURISDICTION
                        or _CLASS_NAME.match(child)):
                    problems.append(f"{where}: {child!r} is neither a jurisdiction code "
                                    "(DE, US-CA) nor a regime name")
                regimes.add(parent)
                regime_edges.setdefault(child, set()).add(parent)
            elif line.ptype in ("g2", "g3"):
                hier, edges, classes, kind = (
                    (tax.purposes, purpose_edges, purpose_classes, "purpose")
                    if line.ptype == "g2"
                    else (tax.categories, category_edges, category_classes, "data category"))
                if child not in hier:
                    # Only a class that is itself declared (as some line's right side) may
                    # nest here; anything else is a typo that would silently drop a key
                    # out of a class (say `sale` for `sales`) and could turn a deny into
                    # an allow. Checked once all lines are read.
                    nested.append((where, kind, child, classes))
                if parent in hier or not _CLASS_NAME.match(parent):
                    problems.append(f"{where}: {parent!r} must be a class name (lower_case), "
                                    f"not a taxonomy key: the {kind} hierarchy comes from "
                                    "fideslang and taxonomy.yaml")
                classes.add(parent)
                edges.setdefault(child, set()).add(parent)
            else:
                problems.append(f"{where}: unknown grouping type {line.ptype!r}")

        for where, kind, child, classes in nested:
            if child not in classes:
                problems.append(f"{where}: unknown {kind} {child!r} (neither a taxonomy key "
                                "nor a declared class)")

        self._regime_closure: dict[str, tuple[str, ...]] = {}
        self._purpose_closure: dict[str, tuple[str, ...]] = {}
        self._category_closure: dict[str, tuple[str, ...]] = {}
        for edges, out, label in ((regime_edges, self._regime_closure, "g"),
                                  (purpose_edges, self._purpose_closure, "g2"),
                                  (category_edges, self._category_closure, "g3")):
            nodes = set(edges) | {p for ps in edges.values() for p in ps}
            for node in nodes:
                closure, depth = _closure(edges, node)
                if depth >= _CASBIN_LEVELS:
                    problems.append(f"{label}: hierarchy above {node!r} is deeper than "
                                    f"casbin follows ({_CASBIN_LEVELS - 1} links)")
                out[node] = closure

        #: jurisdiction code -> its own regime (the direct link), for reporting
        self.jurisdictions: dict[str, str] = {}
        for code, parents in regime_edges.items():
            if _JURISDICTION.match(code) or code == UNKNOWN_JURISDICTION:
                if len(parents) != 1:
                    problems.append(f"g: jurisdiction {code} maps to {len(parents)} regimes")
                self.jurisdictions[code] = sorted(parents)[0]
        if UNKNOWN_JURISDICTION not in self.jurisdictions:
            problems.append(f"g: the pack must map {UNKNOWN_JURISDICTION} to the strictest "
                            "regime (unknown jurisdictions are never left undecided)")

        self.rules: tuple[Rule, ...] = tuple(sorted(
            self._rules(policy.rules, purpose_classes, category_classes, regimes, problems),
            key=lambda r: r.priority))  # stable, like casbin's sort_policies_by_priority
        for regime in policy.settings.gpc_remembered_from:
            if regime not in regimes:
                folder = f"regimes/{regime}/settings.yaml"
                where = (f"{folder}: gpc_remembered_from" if folder in policy.files
                         else "settings.yaml: gpc.remembered_opt_out")
                problems.append(f"{where}: {regime!r} is not a regime of the pack (a regime "
                                "folder is named for the regime its rules define)")
        if problems:
            raise PolicyError(problems)
        self.purpose_classes = frozenset(purpose_classes)
        self.category_classes = frozenset(category_classes)
        self.regimes = frozenset(regimes)
        # A jurisdiction the pack does not map is answered as strictly as any regime in the
        # pack would answer it: UNKNOWN's own regime first (it names the answer when all
        # allow), then every other regime a jurisdiction maps to, by name. A regime name
        # as the token reaches exactly that regime's rules (casbin links a name to itself).
        unknown_regime = self.jurisdictions[UNKNOWN_JURISDICTION]
        self.unknown_tokens: tuple[str, ...] = (UNKNOWN_JURISDICTION, *sorted(
            set(self.jurisdictions.values()) - {unknown_regime}))
        self._by_triple: dict[tuple[str, str, str], list[int]] = {}
        for pos, rule in enumerate(self.rules):
            self._by_triple.setdefault((rule.regime, rule.purpose, rule.category), []).append(pos)
        self._candidates: dict[tuple[str, str, str], tuple[Rule, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _tree_edges(hier: Hierarchy) -> dict[str, set[str]]:
        return {k: {p} for k, p in hier.parents.items() if p is not None} | {
            k: set() for k, p in hier.parents.items() if p is None}

    def _rules(self, lines: Iterable[PolicyLine], purpose_classes: set[str],
               category_classes: set[str], regimes: set[str],
               problems: list[str]) -> list[Rule]:
        tax = self.policy.taxonomy
        # Looked up once, not per line: a large pack has hundreds of thousands of lines.
        known_regimes = regimes | self._regime_closure.keys()
        purposes = tax.purposes.parents.keys() | purpose_classes | {"*"}
        categories = tax.categories.parents.keys() | category_classes | {"*"}
        whens = FACTS.keys() | {ALWAYS}
        reasons = {name: Reason(name) for name in Reason.__members__}
        bases = frozenset(b.value for b in LegalBasis)
        effects = {"allow": Effect.ALLOW, "deny": Effect.DENY}
        out: list[Rule] = []
        for index, line in enumerate(lines):
            fields = line.fields
            if line.ptype == "p" and len(fields) == 8:
                prio, regime, purpose, category, when, eft, reason, basis = fields
                if (prio.isascii() and prio.isdigit() and regime in known_regimes
                        and purpose in purposes and category in categories and when in whens
                        and reason in reasons
                        and (basis in bases if eft == "allow" else eft == "deny" and not basis)):
                    out.append(Rule(
                        index=index, priority=int(prio), regime=regime, purpose=purpose,
                        category=category, when=when, effect=effects[eft],
                        reason=reasons[reason], basis=basis,
                        source=MatchedRule(line.file, line.line, line.text), fields=fields))
                    continue
            self._rule_problems(line, known_regimes, purposes, categories, problems)
        return out

    @staticmethod
    def _rule_problems(line: PolicyLine, regimes: Set[str], purposes: Set[str],
                       categories: Set[str], problems: list[str]) -> None:
        """Everything wrong with a rule line that did not compile."""
        where = f"{line.file}:{line.line}"
        if line.ptype != "p":
            problems.append(f"{where}: unknown rule type {line.ptype!r}")
            return
        if len(line.fields) != 8:
            problems.append(f"{where}: a rule has 8 fields (priority, regime, purpose, "
                            f"category, when, eft, reason, basis), found {len(line.fields)}")
            return
        prio, regime, purpose, category, when, eft, reason, basis = line.fields
        if not (prio.isascii() and prio.isdigit()):
            problems.append(f"{where}: priority {prio!r} must be a whole number")
        if regime not in regimes:
            problems.append(f"{where}: unknown regime {regime!r}")
        if purpose not in purposes:
            problems.append(f"{where}: unknown purpose {purpose!r}")
        if category not in categories:
            problems.append(f"{where}: unknown data category {category!r}")
        if when != ALWAYS and when not in FACTS:
            problems.append(f"{where}: unknown fact {when!r} (known: always, "
                            f"{', '.join(sorted(FACTS))})")
        if eft not in ("allow", "deny"):
            problems.append(f"{where}: eft must be allow or deny, not {eft!r}")
        if reason not in Reason.__members__:
            problems.append(f"{where}: unknown reason code {reason!r}")
        if eft == "allow" and basis not in {b.value for b in LegalBasis}:
            problems.append(f"{where}: an allow rule must name its legal basis "
                            f"({', '.join(b.value for b in LegalBasis)})")
        if eft == "deny" and basis:
            problems.append(f"{where}: a deny rule has no legal basis")

    # -- the index, for authoring tools ------------------------------------------------

    def regime_closure(self, token: str) -> tuple[str, ...]:
        """Every regime (and the token itself) a jurisdiction token reaches."""
        return self._regime_closure.get(token, (token,))

    def purpose_closure(self, purpose: str) -> tuple[str, ...]:
        """Every key and class a purpose reaches (itself, its ancestors, their classes)."""
        return self._purpose_closure.get(purpose, (purpose,))

    def category_closure(self, category: str) -> tuple[str, ...]:
        return self._category_closure.get(category, (category,))

    def rules_by_triple(self) -> Mapping[tuple[str, str, str], Sequence[int]]:
        """(regime, purpose, category) as written -> positions in `rules`, in order."""
        return MappingProxyType(self._by_triple)

    # -- deciding ---------------------------------------------------------------------

    def jurisdiction_token(self, jurisdiction: str) -> str:
        """The token a jurisdiction code is matched with: itself when the pack maps it,
        UNKNOWN otherwise. A regime name (what an unknown jurisdiction is also evaluated
        as) is its own token; request validation never lets a caller send one."""
        if jurisdiction in self.jurisdictions or jurisdiction in self.regimes:
            return jurisdiction
        return UNKNOWN_JURISDICTION

    def tokens_for(self, jurisdiction: str) -> tuple[str, ...]:
        """Every token a jurisdiction is evaluated under: its own, or for one the pack does
        not map, every regime (the strictest answer wins)."""
        token = self.jurisdiction_token(jurisdiction)
        return self.unknown_tokens if token == UNKNOWN_JURISDICTION else (token,)

    def regime_of(self, token: str) -> str:
        return self.jurisdictions.get(token) or token

    def remembers_gpc(self, jurisdictions: Iterable[str], on: date) -> bool:
        """Whether a GPC signal is the consumer's own opt-out, to be recorded, under the law
        of any of these jurisdictions (an unknown one: under any regime's) on this day."""
        since = self.policy.settings.gpc_remembered_from
        return any(
            regime in since and on >= since[regime]
            for jurisdiction in jurisdictions for token in self.tokens_for(jurisdiction)
            for regime in self.regime_closure(token))

    def candidates(self, jurisdiction_token: str, purpose: str, category: str) -> tuple[Rule, ...]:
        key = (jurisdiction_token, purpose, category)
        found = self._candidates.get(key)
        if found is not None:
            return found
        regimes = self._regime_closure.get(jurisdiction_token, (jurisdiction_token,))
        purposes = (*self._purpose_closure.get(purpose, (purpose,)), "*")
        categories = (*self._category_closure.get(category, (category,)), "*")
        positions: set[int] = set()
        for r in regimes:
            for p in purposes:
                for c in categories:
                    positions.update(self._by_triple.get((r, p, c), ()))
        found = tuple(self.rules[i] for i in sorted(positions))
        with self._lock:
            self._candidates[key] = found
        return found

    def first_match(self, jurisdiction_token: str, purpose: str, category: str,
                    facts: frozenset[str]) -> Rule | None:
        for rule in self.candidates(jurisdiction_token, purpose, category):
            if rule.when == ALWAYS or rule.when in facts:
                return rule
        return None

    def decide(self, request: CheckRequest, state: SubjectState, now: datetime) -> Decision:
        """Decide the request; a key covers its descendants, so the answer for a broader
        purpose or category is ALLOW only if every purpose and category under it would be
        allowed. When the caller's jurisdiction and the subject's recorded one differ, both
        are evaluated and the stricter answer wins (fail closed).
        The first denial found decides; otherwise the requested keys' own answer does."""
        tax = self.policy.taxonomy
        jurisdictions = [request.jurisdiction or state.profile.jurisdiction]
        recorded = state.profile.jurisdiction
        if request.jurisdiction and recorded and recorded != request.jurisdiction:
            # Whenever they differ, not only when their regimes do: inside one regime the
            # rules that depend on where the subject is (Art. 8 ages, member-state rules)
            # differ too, and the caller's word must never loosen what was recorded.
            jurisdictions.append(recorded)
        purposes = tax.purposes.subtree(request.purpose)
        categories = tax.categories.subtree(request.data_category)
        evaluations = [(j, token) for j in jurisdictions for token in self.tokens_for(j)]
        combinations = len(evaluations) * len(purposes) * len(categories)
        own: Decision | None = None
        # The facts depend on the jurisdiction, not on the regime evaluated: one derivation
        # serves every regime an unknown jurisdiction is evaluated under.
        memo: dict[tuple[str, str, str], Facts] = {}
        for jurisdiction, token in evaluations:
            for purpose in purposes:
                for category in categories:
                    decision = self._decide_one(request, state, now, jurisdiction, purpose,
                                                category, token, memo=memo)
                    own = own or decision
                    if decision.effect is Effect.DENY:
                        return self._explained(request, state, now, decision, jurisdiction,
                                               purpose, category, combinations, token)
        assert own is not None
        return self._explained(request, state, now, own, evaluations[0][0], request.purpose,
                               request.data_category, combinations, evaluations[0][1])

    def _explained(self, request: CheckRequest, state: SubjectState, now: datetime,
                   decision: Decision, jurisdiction: str, purpose: str, category: str,
                   combinations: int, token: str) -> Decision:
        if not request.explain:
            return decision
        lines = list(self._decide_one(request, state, now, jurisdiction, purpose, category,
                                      token, explain=True).explanation)
        if combinations > 1:
            lines.insert(0, f"the request covers {combinations} combinations of jurisdiction, "
                            f"purpose and data category (a key covers its descendants; a "
                            f"recorded jurisdiction other than the requested one counts "
                            f"too, and one the policy does not map counts under every "
                            f"regime); each "
                            f"must be allowed. Deciding: {jurisdiction or '(none)'}, "
                            f"{purpose}, {category}")
        return replace(decision, explanation=tuple(lines))

    def _decide_one(self, request: CheckRequest, state: SubjectState, now: datetime,
                    jurisdiction: str, purpose: str, category: str, token: str,
                    explain: bool = False,
                    memo: dict[tuple[str, str, str], Facts] | None = None) -> Decision:
        regime = self.regime_of(token)
        key = (jurisdiction, purpose, category)
        facts = memo.get(key) if memo is not None else None
        if facts is None:
            facts = derive_facts(state, purpose, category, jurisdiction, now,
                                 request.context, self.policy.taxonomy, self.policy.settings,
                                 explain=explain)
            if memo is not None:
                memo[key] = facts
        rule = self.first_match(token, purpose, category, facts.tokens)
        explanation = (self._explain(purpose, category, jurisdiction, token, regime, facts,
                                     rule) if explain else ())
        if rule is None:
            return Decision(
                effect=Effect.DENY, reason=Reason.NO_MATCHING_RULE, legal_basis="",
                regime=regime, jurisdiction=jurisdiction, policy_version=self.version,
                matched_rule=None, facts=tuple(sorted(facts.tokens)), explanation=explanation,
                decided_purpose=purpose, decided_category=category, decided_jurisdiction=token)
        return Decision(
            effect=rule.effect, reason=rule.reason,
            legal_basis=rule.basis if rule.effect is Effect.ALLOW else "",
            regime=regime, jurisdiction=jurisdiction, policy_version=self.version,
            matched_rule=rule.source,
            consent_record_ids=facts.records.get(rule.when, ()),
            facts=tuple(sorted(facts.tokens)), explanation=explanation,
            decided_purpose=purpose, decided_category=category, decided_jurisdiction=token)

    def _explain(self, purpose: str, category: str, jurisdiction: str, token: str, regime: str,
                 facts: Facts, matched: Rule | None) -> tuple[str, ...]:
        lines = [
            f"jurisdiction {jurisdiction or '(none recorded)'}"
            + (" is not mapped by the policy: evaluated under every regime of the policy, "
               f"the strictest answer wins (here: {token})" if token != jurisdiction
               else "") + f" -> regime {regime}",
            f"purpose {purpose}, data category {category}",
            *facts.notes,
            f"facts: {', '.join(sorted(facts.tokens)) or '(none)'}",
        ]
        for rule in self.candidates(token, purpose, category):
            if rule is matched:
                lines.append(f"matched {rule.source} -> {rule.effect.value} {rule.reason.value}")
                break
            lines.append(f"skipped {rule.source.file}:{rule.source.line} "
                         f"(needs fact {rule.when!r})")
        if matched is None:
            lines.append("no rule matched: DENY NO_MATCHING_RULE (deny is the default)")
        return tuple(lines)
