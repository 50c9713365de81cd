"""The compiled engine decides exactly as a plain casbin.Enforcer on the same policy files.

engine/compiled.py never calls casbin at decision time: it indexes the rules (role-link
closures, candidate lists per jurisdiction, purpose and category) and walks the candidates
in priority order. These properties check that walk against pycasbin itself
(engine/reference.py): the same allow/deny, and the same rule (casbin's explain list),
for the shipped pack, for a pack with extra rules, and end to end from consent states
through derive_facts. The last test pins the shipped pack's "deny is the default".

Hypothesis runs derandomized without an example database, so CI sees the same examples on
every run.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consentauthz.app import compile_policy
from consentauthz.consent.projection import apply_event
from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    Effect,
    Reason,
    SubjectProfile,
    SubjectState,
)
from consentauthz.engine import ALWAYS, FACTS, CompiledPolicy, derive_facts
from consentauthz.engine.reference import reference_enforcer, reference_request
from consentauthz.policy.loader import split_policy_line

POLICIES = Path(__file__).resolve().parents[2] / "policies"

#: Well-formed codes (and no code at all) the shipped pack does not map: evaluated as UNKNOWN.
UNMAPPED = ("JP", "US-NY", "BR", "US-FL", "")
#: The facts a decision on consent may rest on.
CONSENT_FACTS = frozenset({"consent", "explicit_consent", "sale_opted_in",
                           "signed_authorisation"})
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
DAY = 86_400


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the reference and what we compare ------------------------------------------------


@dataclass
class Pack:
    compiled: CompiledPolicy
    enforcer: Any
    lookups: st.SearchStrategy[tuple[str, str, str, frozenset[str]]]
    states: st.SearchStrategy[tuple[CheckRequest, SubjectState]]


def _pack(compiled: CompiledPolicy, workdir: Path) -> Pack:
    return Pack(compiled, reference_enforcer(compiled.policy, workdir),
                lookups(compiled), requests_and_states(compiled))


def _casbin(pack: Pack, jurisdiction: str, purpose: str, category: str,
            facts: frozenset[str]) -> tuple[bool, list[str]]:
    allowed, explain = pack.enforcer.enforce_ex(
        *reference_request(pack.compiled, jurisdiction, purpose, category, facts))
    return bool(allowed), list(explain)


def assert_same_match(pack: Pack, jurisdiction: str, purpose: str, category: str,
                      facts: frozenset[str]) -> list[str]:
    compiled = pack.compiled
    rule = compiled.first_match(compiled.jurisdiction_token(jurisdiction), purpose, category,
                                facts)
    ours = (rule is not None and rule.effect is Effect.ALLOW,
            list(rule.fields) if rule is not None else [])
    theirs = _casbin(pack, jurisdiction, purpose, category, facts)
    assert ours == theirs, (
        f"engine and casbin disagree on ({jurisdiction!r} -> "
        f"{compiled.jurisdiction_token(jurisdiction)}, {purpose}, {category}, "
        f"{sorted(facts)}): engine {ours}, casbin {theirs}")
    return theirs[1]


def _outcome(explain: list[str]) -> str:
    """For --hypothesis-show-statistics: which kinds of rule the examples reached."""
    return f"{explain[5]} {explain[6]}" if explain else "no match"


# -- strategies -------------------------------------------------------------------------


def _jurisdictions(compiled: CompiledPolicy) -> st.SearchStrategy[str]:
    mapped = sorted(compiled.jurisdictions)
    # One code per regime, so small regimes (one US state) are not drowned by the EU.
    per_regime = sorted({regime: code for code, regime in sorted(compiled.jurisdictions.items())
                         }.values())
    return st.one_of(st.sampled_from(mapped), st.sampled_from(per_regime),
                     st.sampled_from(UNMAPPED))


def _facts() -> st.SearchStrategy[frozenset[str]]:
    vocabulary = st.sampled_from(sorted(FACTS))
    # Few facts reach the late rules (consent, the catch-alls); many exercise the early ones.
    return st.one_of(st.frozensets(vocabulary, max_size=2), st.frozensets(vocabulary))


def _keys(compiled: CompiledPolicy, kind: str) -> st.SearchStrategy[str]:
    """Any taxonomy key, or one a rule or class link names (rare keys with rules of their
    own, such as the CCPA sale purposes, would otherwise seldom come up)."""
    hier = getattr(compiled.policy.taxonomy, kind)
    field, link = {"purposes": (2, "g2"), "categories": (3, "g3")}[kind]
    named = {rule.fields[field] for rule in compiled.rules}
    named |= {line.fields[0] for line in compiled.policy.groupings if line.ptype == link}
    return st.one_of(st.sampled_from(sorted(hier.keys())),
                     st.sampled_from(sorted(k for k in named if k in hier)))


def lookups(compiled: CompiledPolicy) -> st.SearchStrategy[tuple[str, str, str,
                                                                 frozenset[str]]]:
    return st.tuples(_jurisdictions(compiled), _keys(compiled, "purposes"),
                     _keys(compiled, "categories"), _facts())


def _near(lineage: Sequence[str], everything: Sequence[str]) -> st.SearchStrategy[str]:
    """A taxonomy key that often covers the request's (it or an ancestor), sometimes any."""
    return st.one_of(st.sampled_from(list(lineage)), st.sampled_from(everything))


def _birth_dates() -> st.SearchStrategy[date | None]:
    # Exactly `age` years old on NOW: born up to 364 days before the age-th birthday
    # (offset 0 is the birthday itself, the boundary).
    born = st.builds(lambda age, offset: date(NOW.year - age, NOW.month, NOW.day)
                     - timedelta(days=offset),
                     st.integers(5, 60), st.integers(0, 364))
    return st.one_of(st.none(), born)


def _seconds_ago(lifetime_days: int) -> st.SearchStrategy[int]:
    boundary = lifetime_days * DAY
    return st.one_of(st.integers(-DAY, (lifetime_days + 90) * DAY),
                     st.sampled_from([0, boundary - 1, boundary, boundary + 1]))


def requests_and_states(compiled: CompiledPolicy) -> st.SearchStrategy[
        tuple[CheckRequest, SubjectState]]:
    tax = compiled.policy.taxonomy
    purposes = sorted(tax.purposes.keys())
    categories = sorted(tax.categories.keys())
    jurisdictions = _jurisdictions(compiled)
    named_purposes, named_categories = _keys(compiled, "purposes"), _keys(compiled, "categories")
    lifetime_days = compiled.policy.settings.consent_lifetime.days
    # Every action and method, grants and valid methods more often (they reach the
    # consent rules; a withdrawal or objection in most states would shadow the rest).
    actions = st.one_of(st.just(ConsentAction.GRANT), st.sampled_from(list(ConsentAction)))
    methods = st.one_of(st.just(CollectionMethod.AFFIRMATIVE),
                        st.sampled_from(list(CollectionMethod)))

    @st.composite
    def build(draw: st.DrawFn) -> tuple[CheckRequest, SubjectState]:
        purpose = draw(named_purposes)
        category = draw(named_categories)
        near_purpose = _near(tax.purposes.lineage(purpose), purposes)
        near_category = _near(tax.categories.lineage(category), categories)
        events: list[ConsentEvent] = []
        sequence = 0
        for i in range(draw(st.integers(0, 5))):
            action = draw(actions)
            if action in (ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT):
                event_purpose = draw(near_purpose)
            else:
                event_purpose = draw(st.one_of(st.just(""), near_purpose))
            collected = (events[-1].collected_at if events and draw(st.integers(0, 5)) == 0
                         else NOW - timedelta(seconds=draw(_seconds_ago(lifetime_days))))
            expires = draw(st.one_of(
                st.none(),
                st.builds(lambda s: NOW + timedelta(seconds=s),
                          st.one_of(st.integers(-400 * DAY, 400 * DAY), st.just(0)))))
            sequence += draw(st.integers(1, 5))
            events.append(ConsentEvent(
                record_id=f"rec-{i}", sequence=sequence, action=action,
                purpose=event_purpose,
                data_categories=tuple(draw(st.lists(near_category, max_size=3))),
                explicit=draw(st.booleans()),
                method=draw(methods),
                jurisdiction=draw(st.one_of(st.just(""), jurisdictions)),
                collected_at=collected, expires_at=expires, source="property-test",
                notice_version="v1", recorded_at=max(collected, NOW - timedelta(days=1000))))
        profile = SubjectProfile(
            jurisdiction=draw(jurisdictions), birth_date=draw(_birth_dates()),
            erased_at=NOW - timedelta(days=1) if draw(st.integers(0, 9)) == 0 else None)
        # Through the projection, in ledger (arrival) order: collected_at is drawn
        # independently of the sequence, so records arrive out of event order, and ties
        # between a permission and a restriction occur (the same instant drawn twice).
        state = SubjectState(profile=profile)
        for ev in events:
            state = apply_event(state, ev)
        state = replace(state, sequence=sequence, version=sequence)
        context = draw(st.sampled_from([{}, {"gpc": "0"}, {"gpc": "1"}]))
        request = CheckRequest(
            subject_id="subject-1", purpose=purpose, data_category=category,
            jurisdiction=draw(st.one_of(st.just(""), jurisdictions)), context=context,
            consistency_token=sequence, explain=draw(st.booleans()))
        return request, state

    return build()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    return _pack(compile_policy(POLICIES), tmp_path_factory.mktemp("reference-shipped"))


# Loaded before ccpa.csv and gdpr.csv (files load in path order), so its equal-priority
# rules come first in casbin's stable sort.
EXTRA_FIRST = """\
# Equal priority to gdpr.csv's 610 consent rule, loaded earlier: wins for analytics.
p, 610, gdpr, analytics, *, consent, allow, CONSENT_GIVEN, explicit_consent
# A country-specific rule (the regime field names a jurisdiction) ahead of the GDPR.
p, 50, DE, marketing.communications.email, *, consent, allow, CONSENT_GIVEN, consent
# Leading zero: the same priority as 50 to both sides, its text kept as written.
p, 050, DE, marketing, *, always, deny, NO_CONSENT,
# New purpose classes, one nested in another, and a new data-category class.
g2, analytics.reporting, my_class
g2, my_class, my_outer_class
g2, essential.service.notifications, my_outer_class
g3, user.device, my_category_class
g3, user.contact.email, my_category_class
p, 120, uk_gdpr, my_class, *, no_consent, deny, NO_CONSENT,
p, 205, gdpr, my_outer_class, my_category_class, gpc, deny, GPC_OPT_OUT,
p, 140, ccpa, *, my_category_class, sale_opted_out, deny, OPTED_OUT,
p, 60, UNKNOWN, train_ai_system, *, always, deny, LAWFUL_AUTHORITY_REQUIRED,
p, 0, US-CA, personalize, *, sensitive_limited, deny, SENSITIVE_USE_LIMITED,
"""
# Appended to the shipped files, so they come last among equal priorities.
EXTRA_APPENDED = {
    "gdpr.csv": """
# Equal priority to the 610 consent rule above and loaded after it: always shadowed.
p, 610, gdpr, marketing, *, consent, deny, OBJECTED,
p, 619, gdpr, functional, *, always, allow, LEGITIMATE_INTEREST, legitimate_interests
""",
    "ccpa.csv": """
p, 310, ccpa, my_outer_class, *, no_consent, allow, NOT_OPTED_OUT, ccpa_opt_out_not_exercised
# Four digits: after the 900 catch-all by number, before it as text. Never decides.
p, 1000, ccpa, *, *, always, deny, NO_CONSENT,
""",
    "regimes.csv": """
# A jurisdiction two links from its regime, and one more under the CCPA.
g, CH, uk_gdpr
g, JP, ccpa
""",
}


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    root = tmp_path_factory.mktemp("extended-pack") / "policies"
    shutil.copytree(POLICIES, root)
    (root / "aa_extra.csv").write_text(EXTRA_FIRST)
    for name, text in EXTRA_APPENDED.items():
        with (root / name).open("a") as f:
            f.write(text)
    compiled = compile_policy(root)
    assert {"CH", "JP"} <= set(compiled.jurisdictions)
    assert {"my_class", "my_outer_class"} <= compiled.purpose_classes
    return _pack(compiled, tmp_path_factory.mktemp("reference-extended"))


# -- 1. lookups on the shipped pack ---------------------------------------------------


@_settings(2500)
@given(data=st.data())
def test_first_match_equals_casbin_on_the_shipped_pack(shipped: Pack, data: st.DataObject
                                                       ) -> None:
    event(_outcome(assert_same_match(shipped, *data.draw(shipped.lookups, label="lookup"))))


# -- 2. end to end from consent states ------------------------------------------------


def _reference_decision(pack: Pack, request: CheckRequest, state: SubjectState,
                        now: datetime) -> tuple[Effect, Reason, str, list[str], frozenset[str],
                                                str]:
    """Casbin decides each (jurisdiction, purpose, category); the API's contract on top:
    a key covers its descendants (every combination under the requested keys must be
    allowed) and a recorded jurisdiction other than the requested one is evaluated too. The first
    denial decides, otherwise the requested keys' own answer."""
    policy = pack.compiled.policy
    jurisdictions = [request.jurisdiction or state.profile.jurisdiction]
    recorded = state.profile.jurisdiction
    if request.jurisdiction and recorded and recorded != request.jurisdiction:
        jurisdictions.append(recorded)
    own = None
    # A jurisdiction the pack does not map: under UNKNOWN's regime and every other regime a
    # code maps to (a regime name as casbin's jurisdiction reaches exactly its rules).
    regimes = sorted(set(pack.compiled.jurisdictions.values())
                     - {pack.compiled.jurisdictions["UNKNOWN"]})
    evaluations = [(j, t) for j in jurisdictions
                   for t in ([j] if j in pack.compiled.jurisdictions and j != "UNKNOWN"
                             else ["UNKNOWN", *regimes])]
    for jurisdiction, token in evaluations:
        for purpose in policy.taxonomy.purposes.subtree(request.purpose):
            for category in policy.taxonomy.categories.subtree(request.data_category):
                facts = derive_facts(state, purpose, category, jurisdiction, now,
                                     request.context, policy.taxonomy, policy.settings)
                allowed, explain = _casbin(pack, token, purpose, category, facts.tokens)
                reason = Reason(explain[6]) if explain else Reason.NO_MATCHING_RULE
                result = (Effect.ALLOW if allowed else Effect.DENY, reason,
                          explain[7] if allowed else "", explain, facts.tokens, token)
                own = own or result
                if not allowed:
                    return result
    assert own is not None
    return own


@_settings(600)
@given(data=st.data())
def test_decide_equals_casbin_end_to_end(shipped: Pack, data: st.DataObject) -> None:
    request, state = data.draw(shipped.states, label="request, state")
    decision = shipped.compiled.decide(request, state, NOW)
    effect, reason, basis, explain, facts, deciding = _reference_decision(shipped, request,
                                                                          state, NOW)
    event(_outcome(explain))
    assert (decision.effect, decision.reason, decision.legal_basis) == (effect, reason, basis), (
        f"facts {sorted(facts)}; casbin matched {explain}; engine matched "
        f"{decision.matched_rule}")
    matched = (split_policy_line(decision.matched_rule.text)[1:]
               if decision.matched_rule is not None else [])
    assert matched == explain
    assert decision.facts == tuple(sorted(facts))
    assert decision.regime == shipped.compiled.regime_of(deciding)
    assert decision.decided_jurisdiction == deciding
    assert bool(decision.explanation) == request.explain


# -- 3. the same equivalence for a different pack ------------------------------------------


@_settings(600)
@given(data=st.data())
def test_first_match_equals_casbin_on_an_extended_pack(extended: Pack, data: st.DataObject
                                                       ) -> None:
    event(_outcome(assert_same_match(extended, *data.draw(extended.lookups, label="lookup"))))


@pytest.mark.parametrize(("jurisdiction", "purpose", "category", "facts", "fields"), [
    # The country rule outranks the GDPR consent rule (610) for Germany only, and ties
    # with "050" (which always matches here) but is loaded first.
    ("DE", "marketing.communications.email", "user.contact.email", {"consent"},
     "50, DE, marketing.communications.email, *, consent, allow, CONSENT_GIVEN, consent"),
    ("FR", "marketing.communications.email", "user.contact.email", {"consent"},
     "610, gdpr, gdpr_consent_required, *, consent, allow, CONSENT_GIVEN, consent"),
    # "050" is priority 50: ahead of every GDPR rule, its text kept as written.
    ("DE", "marketing.communications.sms", "user.contact.email", {"consent"},
     "050, DE, marketing, *, always, deny, NO_CONSENT,"),
    # Equal priorities keep load order: aa_extra.csv before gdpr.csv before its appendix.
    ("FR", "analytics.reporting", "user.behavior", {"consent"},
     "610, gdpr, analytics, *, consent, allow, CONSENT_GIVEN, explicit_consent"),
    ("FR", "marketing.advertising", "user.behavior", {"consent"},
     "610, gdpr, gdpr_consent_required, *, consent, allow, CONSENT_GIVEN, consent"),
    # Nested classes, and a jurisdiction two links from its regime.
    ("CH", "analytics.reporting.system", "user.contact", {"no_consent"},
     "120, uk_gdpr, my_class, *, no_consent, deny, NO_CONSENT,"),
    ("IT", "essential.service.notifications.sms", "user.device.cookie_id", {"gpc"},
     "205, gdpr, my_outer_class, my_category_class, gpc, deny, GPC_OPT_OUT,"),
    ("JP", "essential.service.notifications", "user.name", {"no_consent"},
     "310, ccpa, my_outer_class, *, no_consent, allow, NOT_OPTED_OUT, "
     "ccpa_opt_out_not_exercised"),
    ("US-NY", "train_ai_system", "user", {"consent"},
     "60, UNKNOWN, train_ai_system, *, always, deny, LAWFUL_AUTHORITY_REQUIRED,"),
    # Priorities compare as numbers, not text ("60" < "200", "900" < "1000").
    ("", "train_ai_system", "user", {"objected"},
     "60, UNKNOWN, train_ai_system, *, always, deny, LAWFUL_AUTHORITY_REQUIRED,"),
    ("DE", "marketing.communications.email", "user.name", {"objected", "consent"},
     "50, DE, marketing.communications.email, *, consent, allow, CONSENT_GIVEN, consent"),
    ("JP", "essential.service", "user.name", set(),
     "900, ccpa, *, *, always, allow, NOT_OPTED_OUT, ccpa_opt_out_not_exercised"),
])
def test_extended_pack_pins(extended: Pack, jurisdiction: str, purpose: str, category: str,
                            facts: set[str], fields: str) -> None:
    """The extra rules are reachable, so the property above exercises them."""
    assert _casbin(extended, jurisdiction, purpose, category, frozenset(facts))[1] == [
        f.strip() for f in fields.split(",")]
    assert_same_match(extended, jurisdiction, purpose, category, frozenset(facts))


# -- 4. deny is the default -------------------------------------------------------------

#: Root categories, every special category and a few ordinary leaves.
SAMPLE_CATEGORIES = ("user", "system", "user.contact.email", "user.device.cookie_id",
                     "user.financial", "user.location.precise", "user.health_and_medical",
                     "user.biometric", "user.demographic.political_opinion",
                     "user.criminal_history", "user.government_id", "user.behavior")


def test_consent_given_rests_on_a_consent_fact(shipped_policy: CompiledPolicy) -> None:
    for rule in shipped_policy.rules:
        if rule.reason is Reason.CONSENT_GIVEN:
            assert rule.when in CONSENT_FACTS and rule.effect is Effect.ALLOW, rule.source


@pytest.mark.parametrize("facts", [frozenset(), frozenset({"no_consent"})],
                         ids=["no-facts", "no-consent"])
def test_no_consent_allow_without_a_consent_fact(shipped_policy: CompiledPolicy,
                                                 facts: frozenset[str]) -> None:
    categories = [c for c in SAMPLE_CATEGORIES if c in shipped_policy.policy.taxonomy.categories]
    assert len(categories) == len(SAMPLE_CATEGORIES)
    seen: Counter[Effect] = Counter()
    for jurisdiction in sorted(shipped_policy.jurisdictions):
        token = shipped_policy.jurisdiction_token(jurisdiction)
        for purpose in sorted(shipped_policy.policy.taxonomy.purposes.keys()):
            for category in categories:
                rule = shipped_policy.first_match(token, purpose, category, facts)
                if rule is None:
                    continue  # deny, NO_MATCHING_RULE
                assert rule.when == ALWAYS or rule.when in facts
                assert rule.reason is not Reason.CONSENT_GIVEN, (
                    f"{jurisdiction}, {purpose}, {category} with facts {sorted(facts)}: "
                    f"allowed on consent by {rule.source}")
                seen[rule.effect] += 1
    # The sweep reached both outcomes (a vacuous pass would prove nothing).
    assert seen[Effect.ALLOW] and seen[Effect.DENY]
