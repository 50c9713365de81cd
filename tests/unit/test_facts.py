"""derive_facts: a subject's consent state -> the facts policy rules test (shipped settings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
)
from consentauthz.engine import FACTS, CompiledPolicy, Facts, derive_facts

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EMAIL_MARKETING = "marketing.communications.email"
EMAIL = "user.contact.email"
HEALTH = "user.health_and_medical"

GRANT = ConsentAction.GRANT
WITHDRAW = ConsentAction.WITHDRAW
OBJECT = ConsentAction.OBJECT
OPT_OUT = ConsentAction.OPT_OUT_OF_SALE
OPT_IN = ConsentAction.OPT_IN_TO_SALE
LIMIT = ConsentAction.LIMIT_SENSITIVE
AFFIRMATIVE = CollectionMethod.AFFIRMATIVE
PARENTAL = CollectionMethod.PARENTAL
PRE_TICKED = CollectionMethod.PRE_TICKED
IMPLIED = CollectionMethod.IMPLIED

_SALE_AND_LIMIT = (OPT_OUT, OPT_IN, LIMIT)

#: derive(state, purpose=..., category=..., jurisdiction=..., context=..., now=...)
Derive = Callable[..., Facts]


def ev(
    record_id: str,
    action: ConsentAction = GRANT,
    purpose: str | None = None,
    categories: tuple[str, ...] = (),
    method: CollectionMethod = AFFIRMATIVE,
    explicit: bool = False,
    days_ago: float = 10,
    expires_at: datetime | None = None,
) -> ConsentEvent:
    if purpose is None:
        purpose = "" if action in _SALE_AND_LIMIT else EMAIL_MARKETING
    at = NOW - timedelta(days=days_ago)
    return ConsentEvent(
        record_id=record_id, sequence=0, action=action, purpose=purpose,
        data_categories=categories, explicit=explicit,
        method=method if action in (GRANT, OPT_IN) else CollectionMethod.UNSPECIFIED,
        jurisdiction="", collected_at=at, expires_at=expires_at, source="web-form",
        notice_version="v1", recorded_at=at)


def state(*events: ConsentEvent, birth: date | None = None,
          jurisdiction: str = "") -> SubjectState:
    numbered = tuple(replace(e, sequence=i) for i, e in enumerate(events, start=1))
    return SubjectState(profile=SubjectProfile(jurisdiction, birth), events=numbered,
                        sequence=len(events), version=len(events))


@pytest.fixture()
def facts_for(shipped_policy: CompiledPolicy) -> Derive:
    policy = shipped_policy.policy

    def derive(st: SubjectState, purpose: str = EMAIL_MARKETING, category: str = EMAIL,
               jurisdiction: str = "DE", context: Mapping[str, str] | None = None,
               now: datetime = NOW) -> Facts:
        facts = derive_facts(st, purpose, category, jurisdiction, now, context or {},
                             policy.taxonomy, policy.settings)
        assert facts.tokens <= set(FACTS), "only documented facts"
        assert set(facts.records) <= facts.tokens
        return facts

    return derive


def born(years: int, *, days: int = 30) -> date:
    """A birth date making the subject `years` old at NOW (birthday `days` ago)."""
    d = (NOW - timedelta(days=days)).date()
    return d.replace(year=d.year - years)


# -- GDPR consent channel ---------------------------------------------------------------


def test_no_events_is_no_consent(facts_for: Derive) -> None:
    facts = facts_for(state())
    assert facts.tokens == {"no_consent"}
    assert facts.records == {}


def test_valid_grant_is_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1")))
    assert facts.tokens == {"consent"}
    assert facts.records["consent"] == ("g1",)


def test_parental_grant_is_consent(facts_for: Derive) -> None:
    assert facts_for(state(ev("g1", method=PARENTAL))).tokens == {"consent"}


def test_explicit_grant_adds_explicit_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", explicit=True)))
    assert facts.tokens == {"consent", "explicit_consent"}
    assert facts.records["explicit_consent"] == ("g1",)


def test_grant_for_other_purpose_is_no_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", purpose="analytics")))
    assert facts.tokens == {"no_consent"}


def test_grant_for_parent_purpose_covers_child(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", purpose="marketing")))
    assert facts.tokens == {"consent"}
    assert facts.records["consent"] == ("g1",)


def test_grant_for_child_purpose_does_not_cover_parent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1")), purpose="marketing.communications")
    assert facts.tokens == {"no_consent"}


def test_grant_restricted_to_a_category(facts_for: Derive) -> None:
    st = state(ev("g1", categories=(EMAIL,)))
    assert facts_for(st, category=EMAIL).tokens == {"consent"}
    assert facts_for(st, category="user.contact.phone_number").tokens == {"no_consent"}
    # A key covers its descendants, not its ancestors.
    assert facts_for(st, category="user.contact").tokens == {"no_consent"}


def test_grant_for_parent_category_covers_descendants(facts_for: Derive) -> None:
    st = state(ev("g1", categories=("user.contact",)))
    assert facts_for(st, category=EMAIL).tokens == {"consent"}
    assert facts_for(st, category="user.contact.address.city").tokens == {"consent"}
    assert facts_for(st, category="user.device.cookie_id").tokens == {"no_consent"}


def test_grant_with_several_categories_covers_each(facts_for: Derive) -> None:
    st = state(ev("g1", categories=(EMAIL, "user.contact.phone_number")))
    assert facts_for(st, category="user.contact.phone_number").tokens == {"consent"}
    assert facts_for(st, category="user.contact.url").tokens == {"no_consent"}


def test_withdraw_after_grant(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", days_ago=10), ev("w1", WITHDRAW, days_ago=5)))
    assert facts.tokens == {"consent_withdrawn"}
    assert facts.records["consent_withdrawn"] == ("w1",)


def test_broader_withdraw_after_narrow_grant(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1"), ev("w1", WITHDRAW, purpose="marketing")))
    assert facts.tokens == {"consent_withdrawn"}
    assert facts.records["consent_withdrawn"] == ("w1",)


def test_grant_after_withdraw(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", days_ago=10), ev("w1", WITHDRAW, days_ago=5),
                            ev("g2", days_ago=1)))
    assert facts.tokens == {"consent"}
    assert facts.records["consent"] == ("g2",)


@pytest.mark.parametrize("method", [PRE_TICKED, IMPLIED])
def test_invalid_grant_alone_is_consent_invalid(facts_for: Derive,
                                                 method: CollectionMethod) -> None:
    facts = facts_for(state(ev("pt", method=method, explicit=True)))
    assert facts.tokens == {"consent_invalid"}
    assert facts.records["consent_invalid"] == ("pt",)


def test_pre_ticked_after_valid_grant_is_still_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", days_ago=10), ev("pt", method=PRE_TICKED, days_ago=1)))
    assert facts.tokens == {"consent"}
    assert facts.records["consent"] == ("g1",)


def test_pre_ticked_after_withdraw_is_still_withdrawn(facts_for: Derive) -> None:
    facts = facts_for(state(ev("w1", WITHDRAW), ev("pt", method=PRE_TICKED, days_ago=1)))
    assert facts.tokens == {"consent_withdrawn"}
    assert facts.records["consent_withdrawn"] == ("w1",)


def test_valid_grant_after_pre_ticked_is_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("pt", method=PRE_TICKED, days_ago=10), ev("g1", days_ago=1)))
    assert facts.tokens == {"consent"}
    assert facts.records["consent"] == ("g1",)


def test_expired_via_expires_at(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", expires_at=NOW - timedelta(seconds=1))))
    assert facts.tokens == {"consent_expired"}
    assert facts.records["consent_expired"] == ("g1",)
    # Expiry is exclusive of the instant itself: at expires_at the grant is gone.
    assert facts_for(state(ev("g1", expires_at=NOW))).tokens == {"consent_expired"}
    assert facts_for(state(ev("g1", expires_at=NOW + timedelta(seconds=1)))).tokens == {
        "consent"}


def test_expired_via_default_lifetime(facts_for: Derive,
                                      shipped_policy: CompiledPolicy) -> None:
    lifetime = shipped_policy.policy.settings.consent_lifetime
    assert lifetime == timedelta(days=730)
    assert facts_for(state(ev("g1", days_ago=731))).tokens == {"consent_expired"}
    assert facts_for(state(ev("g1", days_ago=730))).tokens == {"consent_expired"}
    assert facts_for(state(ev("g1", days_ago=729))).tokens == {"consent"}


def test_explicit_expires_at_overrides_default_lifetime(facts_for: Derive) -> None:
    st = state(ev("g1", days_ago=1000, expires_at=NOW + timedelta(days=1)))
    assert facts_for(st).tokens == {"consent"}


def test_expired_explicit_grant_is_not_explicit_consent(facts_for: Derive) -> None:
    st = state(ev("g1", explicit=True, expires_at=NOW - timedelta(days=1)))
    assert facts_for(st).tokens == {"consent_expired"}


def test_objection(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", days_ago=10), ev("o1", OBJECT, days_ago=1)))
    assert facts.tokens == {"objected"}
    assert facts.records["objected"] == ("o1",)


def test_objection_for_other_purpose_does_not_apply(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", days_ago=10), ev("o1", OBJECT, purpose="analytics")))
    assert facts.tokens == {"consent"}


# -- children (GDPR Art. 8) -------------------------------------------------------------


def test_child_below_consent_age_without_parental_grant(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1"), birth=born(14)), jurisdiction="DE")
    assert "child_without_parental_consent" in facts.tokens
    assert "consent" not in facts.tokens
    assert facts.records["child_without_parental_consent"] == ("g1",)


def test_child_with_parental_grant_is_consent(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1", method=PARENTAL), birth=born(14)), jurisdiction="DE")
    assert "consent" in facts.tokens
    assert "child_without_parental_consent" not in facts.tokens
    assert facts.records["consent"] == ("g1",)


def test_consent_age_depends_on_jurisdiction(facts_for: Derive) -> None:
    st = state(ev("g1"), birth=born(14))
    assert "consent" in facts_for(st, jurisdiction="AT").tokens           # AT: 14
    assert "child_without_parental_consent" in facts_for(st, jurisdiction="FR").tokens  # 15
    # Unmapped or missing jurisdiction: the conservative default, 16.
    assert "child_without_parental_consent" in facts_for(st, jurisdiction="").tokens
    assert "child_without_parental_consent" in facts_for(st, jurisdiction="JP").tokens


def test_consent_age_in_great_britain_is_13(facts_for: Derive) -> None:
    assert "consent" in facts_for(state(ev("g1"), birth=born(13)), jurisdiction="GB").tokens
    assert "child_without_parental_consent" in facts_for(
        state(ev("g1"), birth=born(12)), jurisdiction="GB").tokens


def test_age_turns_on_the_birthday(facts_for: Derive) -> None:
    today = born(16, days=0)
    tomorrow = born(16, days=-1)
    assert "consent" in facts_for(state(ev("g1", days_ago=0), birth=today)).tokens
    assert "child_without_parental_consent" in facts_for(
        state(ev("g1", days_ago=0), birth=tomorrow)).tokens


def test_a_childs_own_consent_does_not_become_valid_on_a_birthday(facts_for: Derive) -> None:
    # Given ten days before the 16th birthday, checked on it: still the child's own consent.
    facts = facts_for(state(ev("g1", days_ago=10), birth=born(16, days=0)))
    assert "child_without_parental_consent" in facts.tokens
    assert "consent" not in facts.tokens


def test_child_rule_does_not_hide_withdrawal(facts_for: Derive) -> None:
    facts = facts_for(state(ev("g1"), ev("w1", WITHDRAW, days_ago=1), birth=born(10)))
    assert "consent_withdrawn" in facts.tokens
    assert "child_without_parental_consent" not in facts.tokens


# -- request context --------------------------------------------------------------------


def test_gpc_signal(facts_for: Derive) -> None:
    assert "gpc" in facts_for(state(), context={"gpc": "1"}).tokens
    assert "gpc" not in facts_for(state(), context={"gpc": "0"}).tokens
    assert "gpc" not in facts_for(state()).tokens


# -- CCPA sale and share ----------------------------------------------------------------


def test_opt_out_of_sale(facts_for: Derive) -> None:
    facts = facts_for(state(ev("oo", OPT_OUT)), purpose="sales", jurisdiction="US-CA")
    assert "sale_opted_out" in facts.tokens
    assert "sale_opted_in" not in facts.tokens
    assert facts.records["sale_opted_out"] == ("oo",)
    # The sale channel is separate from consent.
    assert "no_consent" in facts.tokens


def test_later_opt_in_wins(facts_for: Derive) -> None:
    facts = facts_for(state(ev("oo", OPT_OUT, days_ago=10), ev("oi", OPT_IN, days_ago=1)),
                      purpose="sales", jurisdiction="US-CA")
    assert "sale_opted_in" in facts.tokens
    assert "sale_opted_out" not in facts.tokens
    assert facts.records["sale_opted_in"] == ("oi",)


def test_later_opt_out_wins(facts_for: Derive) -> None:
    facts = facts_for(state(ev("oi", OPT_IN, days_ago=10), ev("oo", OPT_OUT, days_ago=1)),
                      purpose="sales", jurisdiction="US-CA")
    assert "sale_opted_out" in facts.tokens
    assert facts.records["sale_opted_out"] == ("oo",)


def test_pre_ticked_opt_in_does_not_undo_opt_out(facts_for: Derive) -> None:
    facts = facts_for(state(ev("oo", OPT_OUT, days_ago=10),
                            ev("oi", OPT_IN, method=PRE_TICKED, days_ago=1)),
                      purpose="sales", jurisdiction="US-CA")
    assert "sale_opted_out" in facts.tokens
    assert "sale_opted_in" not in facts.tokens
    assert facts.records["sale_opted_out"] == ("oo",)


def test_under_13_needs_parental_opt_in(facts_for: Derive) -> None:
    kid = born(12)
    none = facts_for(state(birth=kid), purpose="sales", jurisdiction="US-CA")
    assert "sale_parental_authorisation_required" in none.tokens
    assert "sale_minor_opt_in_required" not in none.tokens
    own = facts_for(state(ev("oi", OPT_IN), birth=kid), purpose="sales", jurisdiction="US-CA")
    assert "sale_parental_authorisation_required" in own.tokens
    assert own.records["sale_parental_authorisation_required"] == ("oi",)
    parent = facts_for(state(ev("oi", OPT_IN, method=PARENTAL), birth=kid),
                       purpose="sales", jurisdiction="US-CA")
    assert "sale_parental_authorisation_required" not in parent.tokens
    assert "sale_opted_in" in parent.tokens
    assert parent.records["sale_opted_in"] == ("oi",)


def test_13_to_15_needs_own_opt_in(facts_for: Derive) -> None:
    teen = born(14)
    none = facts_for(state(birth=teen), purpose="sales", jurisdiction="US-CA")
    assert "sale_minor_opt_in_required" in none.tokens
    assert "sale_parental_authorisation_required" not in none.tokens
    own = facts_for(state(ev("oi", OPT_IN), birth=teen), purpose="sales",
                    jurisdiction="US-CA")
    assert "sale_minor_opt_in_required" not in own.tokens
    assert own.records["sale_opted_in"] == ("oi",)
    ticked = facts_for(state(ev("oi", OPT_IN, method=PRE_TICKED), birth=teen),
                       purpose="sales", jurisdiction="US-CA")
    assert "sale_minor_opt_in_required" in ticked.tokens
    out = facts_for(state(ev("oi", OPT_IN, days_ago=5), ev("oo", OPT_OUT, days_ago=1),
                          birth=teen), purpose="sales", jurisdiction="US-CA")
    assert {"sale_minor_opt_in_required", "sale_opted_out"} <= out.tokens


def test_ccpa_age_boundaries(facts_for: Derive) -> None:
    at13 = facts_for(state(birth=born(13)), purpose="sales", jurisdiction="US-CA").tokens
    assert "sale_minor_opt_in_required" in at13
    assert "sale_parental_authorisation_required" not in at13
    at16 = facts_for(state(birth=born(16)), purpose="sales", jurisdiction="US-CA").tokens
    assert not at16 & {"sale_minor_opt_in_required", "sale_parental_authorisation_required"}
    unknown_age = facts_for(state(), purpose="sales", jurisdiction="US-CA").tokens
    assert not unknown_age & {"sale_minor_opt_in_required",
                              "sale_parental_authorisation_required"}


def test_limit_sensitive(facts_for: Derive) -> None:
    facts = facts_for(state(ev("ls", LIMIT)), purpose="analytics",
                      category="user.location.precise", jurisdiction="US-CA")
    assert "sensitive_limited" in facts.tokens
    assert facts.records["sensitive_limited"] == ("ls",)
    assert "sensitive_limited" not in facts_for(state(), purpose="analytics",
                                                category="user.location.precise").tokens


def test_limit_sensitive_for_other_category_does_not_apply(facts_for: Derive) -> None:
    st = state(ev("ls", LIMIT, categories=("user.financial",)))
    assert "sensitive_limited" in facts_for(st, category="user.financial.bank_account").tokens
    assert "sensitive_limited" not in facts_for(st, category="user.location.precise").tokens


# -- US states: age bands, parental age, signed authorisation ------------------------------


@pytest.mark.parametrize(("years", "bands"), [
    (12, {"known_child", "minor_under_16", "minor_under_17", "minor_under_18"}),
    (13, {"minor_under_16", "minor_under_17", "minor_under_18"}),
    (15, {"minor_under_16", "minor_under_17", "minor_under_18"}),
    (16, {"minor_under_17", "minor_under_18"}),
    (17, {"minor_under_18"}),
    (18, set()),
])
def test_age_bands_follow_the_recorded_birth_date_today(facts_for: Derive, years: int,
                                                        bands: set[str]) -> None:
    all_bands = {"known_child", "minor_under_16", "minor_under_17", "minor_under_18"}
    assert facts_for(state(birth=born(years)), jurisdiction="US-VA").tokens & all_bands == bands
    # The day before the birthday the subject is still the younger age.
    younger = facts_for(state(birth=born(years, days=-1)), jurisdiction="US-VA").tokens
    assert younger & all_bands == (bands | {b for b, below in (
        ("known_child", 13), ("minor_under_16", 16), ("minor_under_17", 17),
        ("minor_under_18", 18)) if years == below})


def test_no_birth_date_is_no_age_band(facts_for: Derive) -> None:
    assert not facts_for(state(), jurisdiction="US-VA").tokens & {
        "known_child", "minor_under_16", "minor_under_17", "minor_under_18"}


def test_a_us_state_takes_coppas_age_for_parental_consent(facts_for: Derive) -> None:
    # regimes/us_va/settings.yaml: under 13 a parent consents; a 13-year-old's own grant is
    # consent there, and not where the GDPR default (16) applies.
    st = state(ev("g1"), birth=born(13))
    assert "consent" in facts_for(st, jurisdiction="US-VA").tokens
    assert "child_without_parental_consent" in facts_for(st, jurisdiction="US").tokens
    child = state(ev("g1"), birth=born(12))
    assert "child_without_parental_consent" in facts_for(child, jurisdiction="US-VA").tokens
    assert "consent" in facts_for(state(ev("g1", method=PARENTAL), birth=born(12)),
                                  jurisdiction="US-VA").tokens


def test_signed_authorisation_is_an_explicit_grant_that_expires_within_a_year(
        facts_for: Derive) -> None:
    signed = NOW - timedelta(days=10)
    health = ("user.health_and_medical",)
    within = ev("a1", explicit=True, categories=health,
                expires_at=signed + timedelta(days=365))
    facts = facts_for(state(within), jurisdiction="US-WA", category=HEALTH)
    assert "signed_authorisation" in facts.tokens
    assert facts.records["signed_authorisation"] == ("a1",)
    for record in (
            ev("a2", explicit=True, categories=health,
               expires_at=signed + timedelta(days=367)),  # more than a year
            ev("a3", explicit=True, categories=health),  # no expiry: not an authorisation
            ev("a4", categories=health, expires_at=signed + timedelta(days=30)),  # implicit
            ev("a6", explicit=True, expires_at=signed + timedelta(days=30))):  # no data named
        tokens = facts_for(state(record), jurisdiction="US-WA", category=HEALTH).tokens
        assert "signed_authorisation" not in tokens and "consent" in tokens
    # Expired, withdrawn: no longer an authorisation.
    expired = ev("a5", explicit=True, categories=health, days_ago=400,
                 expires_at=NOW - timedelta(days=40))
    assert "signed_authorisation" not in facts_for(
        state(expired), jurisdiction="US-WA", category=HEALTH).tokens
    revoked = state(within, ev("w1", WITHDRAW, days_ago=1))
    assert "signed_authorisation" not in facts_for(
        revoked, jurisdiction="US-WA", category=HEALTH).tokens


def test_from_the_parental_age_only_a_us_consumers_own_grant_is_consent(
        facts_for: Derive) -> None:
    parent_now = state(ev("p1", method=PARENTAL), birth=born(15))
    assert "consent" not in facts_for(parent_now, jurisdiction="US-CO").tokens
    # Under the GDPR a parent's consent below the digital consent age stays valid
    # (EDPB Guidelines 05/2020): DE's age is 16.
    assert "consent" in facts_for(parent_now, jurisdiction="DE").tokens
    # A parent's grant from when the consumer was 11 does not stand for them at 15.
    parent_then = state(ev("p1", method=PARENTAL, days_ago=4 * 365), birth=born(15))
    assert "consent" not in facts_for(parent_then, jurisdiction="US-NJ").tokens
    # The consumer's own grant, given at 13 or older, is.
    own = state(ev("p1", method=PARENTAL, days_ago=20), ev("o1", days_ago=5), birth=born(15))
    facts = facts_for(own, jurisdiction="US-NJ")
    assert facts.records["consent"] == ("o1",)
    # An unmapped jurisdiction takes the stricter reading.
    assert "consent" not in facts_for(parent_now, jurisdiction="US").tokens


def test_a_limit_is_lifted_only_by_later_grants_that_name_the_data(facts_for: Derive) -> None:
    limit = ev("l1", LIMIT, days_ago=5)
    named = ev("g1", purpose="analytics", categories=(HEALTH,), days_ago=1)
    blanket = ev("g2", purpose="analytics", days_ago=1)
    earlier = ev("g3", purpose="analytics", categories=(HEALTH,), days_ago=9)

    def limited(*events: ConsentEvent, birth: date | None = None) -> bool:
        return "sensitive_limited" in facts_for(
            state(*events, birth=birth), purpose="analytics", category=HEALTH,
            jurisdiction="US-UT").tokens

    assert not limited(limit, named)
    assert limited(limit, blanket)
    assert limited(earlier, limit)
    # A child's own grant after the limit does not revive the parent's from before it.
    parent = ev("p1", purpose="analytics", method=PARENTAL, categories=(HEALTH,), days_ago=9)
    assert limited(parent, limit, named, birth=born(10))
    fresh_parent = ev("p2", purpose="analytics", method=PARENTAL, categories=(HEALTH,),
                      days_ago=1)
    assert not limited(parent, limit, fresh_parent, birth=born(10))


def test_an_authorisation_signed_on_29_february_runs_to_28_february(facts_for: Derive) -> None:
    signed = datetime(2024, 2, 29, 9, 0, tzinfo=UTC)
    now = datetime(2024, 12, 1, tzinfo=UTC)
    for expires, ok in ((datetime(2025, 2, 28, 23, 0, tzinfo=UTC), True),
                        (datetime(2025, 3, 1, 0, 30, tzinfo=UTC), False)):
        grant = replace(ev("a1", explicit=True, categories=(HEALTH,), expires_at=expires),
                        collected_at=signed, recorded_at=signed)
        tokens = facts_for(state(grant), jurisdiction="US-WA", category=HEALTH, now=now).tokens
        assert ("signed_authorisation" in tokens) is ok, expires
