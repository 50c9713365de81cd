"""The rules of shared/LEGAL.md as end-to-end scenarios over a real gRPC server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import Running
from tests.scenario import check, decision_name, record, subject

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"
#: A sale of personal information (§1798.140(ad)); fideslang's `sales` is outreach, not a sale.
SHARING = "third_party_sharing"


def expect(resp, decision: str, reason: str, basis: str = "") -> None:
    assert (decision_name(resp), resp.reason, resp.legal_basis) == (decision, reason, basis), (
        resp.matched_rule)


# -- GDPR consent lifecycle ---------------------------------------------------------------

def test_grant_allows_and_names_the_record(server: Running) -> None:
    rec = record(server, "alice", "grant", EMAIL)
    resp = check(server, "alice", EMAIL, CONTACT_EMAIL, "DE")
    expect(resp, "ALLOW", "CONSENT_GIVEN", "consent")
    assert list(resp.consent_record_ids) == [rec.record_id]  # Art. 7(1): demonstrable
    assert resp.regime == "gdpr" and resp.jurisdiction == "DE"
    assert resp.matched_rule.startswith("gdpr.csv:")
    assert len(resp.policy_version) == 64 and resp.decision_id


def test_withdrawal_denies_at_once(server: Running) -> None:
    record(server, "alice", "grant", EMAIL)
    expect(check(server, "alice", EMAIL, CONTACT_EMAIL, "FR"), "ALLOW", "CONSENT_GIVEN",
           "consent")
    withdrawal = record(server, "alice", "withdraw", EMAIL)
    resp = check(server, "alice", EMAIL, CONTACT_EMAIL, "FR")
    expect(resp, "DENY", "CONSENT_WITHDRAWN")
    assert list(resp.consent_record_ids) == [withdrawal.record_id]
    assert int(resp.consistency_token) >= int(withdrawal.consistency_token)


def test_no_consent_denies(server: Running) -> None:
    expect(check(server, "nobody", EMAIL, CONTACT_EMAIL, "DE"), "DENY", "NO_CONSENT")


@pytest.mark.parametrize("method", ["pre_ticked", "implied"])
def test_pre_ticked_or_implied_is_never_consent(server: Running, method: str) -> None:
    rec = record(server, "bob", "grant", EMAIL, method=method)
    resp = check(server, "bob", EMAIL, CONTACT_EMAIL, "DE")
    expect(resp, "DENY", "CONSENT_INVALID")
    assert list(resp.consent_record_ids) == [rec.record_id]  # kept as evidence


def test_consent_is_specific_to_the_purpose(server: Running) -> None:
    record(server, "carol", "grant", EMAIL)
    expect(check(server, "carol", "marketing.communications.sms", "user.contact.phone_number",
                 "DE"), "DENY", "NO_CONSENT")
    expect(check(server, "carol", "analytics", CONTACT_EMAIL, "DE"), "DENY", "NO_CONSENT")


def test_grant_for_parent_purpose_covers_descendants(server: Running) -> None:
    record(server, "dan", "grant", "marketing.communications")
    expect(check(server, "dan", EMAIL, CONTACT_EMAIL, "IT"), "ALLOW", "CONSENT_GIVEN", "consent")
    record(server, "dan", "withdraw", "marketing")
    expect(check(server, "dan", EMAIL, CONTACT_EMAIL, "IT"), "DENY", "CONSENT_WITHDRAWN")


def test_grant_limited_to_categories(server: Running) -> None:
    record(server, "erin", "grant", EMAIL, categories=(CONTACT_EMAIL,))
    expect(check(server, "erin", EMAIL, CONTACT_EMAIL, "DE"), "ALLOW", "CONSENT_GIVEN", "consent")
    expect(check(server, "erin", EMAIL, "user.contact.phone_number", "DE"), "DENY",
           "NO_CONSENT")


def test_expired_consent_denies(server: Running) -> None:
    record(server, "fay", "grant", EMAIL, collected_ago=timedelta(days=10),
           expires_in=timedelta(seconds=-1))
    expect(check(server, "fay", EMAIL, CONTACT_EMAIL, "DE"), "DENY", "CONSENT_EXPIRED")


def test_default_consent_lifetime_applies(server: Running) -> None:
    record(server, "gus", "grant", EMAIL, collected_ago=timedelta(days=800))
    expect(check(server, "gus", EMAIL, CONTACT_EMAIL, "DE"), "DENY", "CONSENT_EXPIRED")


# -- Special categories, automated decisions ------------------------------------------------

def test_special_category_needs_explicit_consent(server: Running) -> None:
    record(server, "hana", "grant", "personalize", categories=("user.health_and_medical",))
    expect(check(server, "hana", "personalize", "user.health_and_medical", "DE"), "DENY",
           "EXPLICIT_CONSENT_REQUIRED")
    rec = record(server, "hana", "grant", "personalize",
                 categories=("user.health_and_medical",), explicit=True)
    resp = check(server, "hana", "personalize", "user.health_and_medical.genetic", "DE")
    expect(resp, "ALLOW", "CONSENT_GIVEN", "explicit_consent")
    assert list(resp.consent_record_ids) == [rec.record_id]


def test_special_category_not_opened_by_contract(server: Running) -> None:
    expect(check(server, "ivan", "essential.service", "user.demographic.religious_belief", "DE"),
           "DENY", "EXPLICIT_CONSENT_REQUIRED")
    expect(check(server, "ivan", "essential.service", CONTACT_EMAIL, "DE"), "ALLOW", "CONTRACT",
           "contract")


def test_criminal_data_needs_lawful_authority(server: Running) -> None:
    record(server, "jo", "grant", "personalize", explicit=True)
    expect(check(server, "jo", "personalize", "user.criminal_history", "DE"), "DENY",
           "LAWFUL_AUTHORITY_REQUIRED")
    expect(check(server, "jo", "essential.legal_obligation", "user.criminal_history", "DE"),
           "ALLOW", "LEGAL_OBLIGATION", "legal_obligation")


def test_automated_decision_needs_explicit_consent(server: Running) -> None:
    purpose = "functional.service.automated_decision"
    record(server, "kim", "grant", purpose)
    expect(check(server, "kim", purpose, "user.financial", "NL"), "DENY",
           "EXPLICIT_CONSENT_REQUIRED")
    record(server, "kim", "grant", purpose, explicit=True)
    expect(check(server, "kim", purpose, "user.financial", "NL"), "ALLOW", "CONSENT_GIVEN",
           "explicit_consent")


# -- Objection, legitimate interest, legal obligation ----------------------------------------

def test_objection_to_direct_marketing_is_absolute(server: Running) -> None:
    record(server, "lea", "grant", EMAIL)
    record(server, "lea", "object", "marketing")
    expect(check(server, "lea", EMAIL, CONTACT_EMAIL, "DE"), "DENY", "OBJECTED")


def test_fraud_prevention_survives_reject_all(server: Running) -> None:
    for purpose in ("marketing", "analytics", "personalize", "functional"):
        record(server, "max", "withdraw", purpose)
    expect(check(server, "max", "essential.fraud_detection", "user.device.ip_address", "DE"),
           "ALLOW", "LEGITIMATE_INTEREST", "legitimate_interests")
    expect(check(server, "max", "analytics", "user.device.ip_address", "DE"), "DENY",
           "CONSENT_WITHDRAWN")


def test_objection_stops_legitimate_interest(server: Running) -> None:
    record(server, "ned", "object", "essential.fraud_detection")
    expect(check(server, "ned", "essential.fraud_detection", "user.device.ip_address", "DE"),
           "DENY", "OBJECTED")


def test_withdrawal_blocks_switch_to_legitimate_interest(server: Running) -> None:
    record(server, "ola", "grant", "analytics.reporting.system")
    record(server, "ola", "withdraw", "analytics.reporting.system")
    expect(check(server, "ola", "analytics.reporting.system", "user.device.ip_address", "DE"),
           "DENY", "CONSENT_WITHDRAWN")


def test_legal_obligation_stands_against_objection(server: Running) -> None:
    record(server, "pia", "object", "essential")
    expect(check(server, "pia", "essential.legal_obligation", CONTACT_EMAIL, "DE"), "ALLOW",
           "LEGAL_OBLIGATION", "legal_obligation")


# -- Children (Art. 8) -----------------------------------------------------------------------

def test_child_needs_parental_consent(server: Running) -> None:
    subject(server, "quin", "DE", age=14)
    record(server, "quin", "grant", "personalize")
    expect(check(server, "quin", "personalize", "user.behavior.browsing_history"), "DENY",
           "PARENTAL_CONSENT_REQUIRED")
    rec = record(server, "quin", "grant", "personalize", method="parental")
    resp = check(server, "quin", "personalize", "user.behavior.browsing_history")
    expect(resp, "ALLOW", "CONSENT_GIVEN", "consent")
    assert list(resp.consent_record_ids) == [rec.record_id]


def test_digital_consent_age_varies_by_member_state(server: Running) -> None:
    subject(server, "rui", "PT", age=14)  # PT: 13
    record(server, "rui", "grant", "personalize")
    expect(check(server, "rui", "personalize", "user.behavior.browsing_history"), "ALLOW",
           "CONSENT_GIVEN", "consent")
    # The same person checked under FR (15) is a child.
    expect(check(server, "rui", "personalize", "user.behavior.browsing_history", "FR"), "DENY",
           "PARENTAL_CONSENT_REQUIRED")


# -- Jurisdiction -----------------------------------------------------------------------------

@pytest.mark.parametrize("jurisdiction", ["", "JP", "US-NY"])
def test_unknown_jurisdiction_gets_the_strictest_regime(server: Running,
                                                        jurisdiction: str) -> None:
    resp = check(server, "sam", "third_party_sharing", CONTACT_EMAIL, jurisdiction)
    expect(resp, "DENY", "NO_CONSENT")  # under CCPA this would be allowed
    assert resp.regime == "gdpr"


def test_recorded_jurisdiction_is_the_default(server: Running) -> None:
    subject(server, "tia", "US-CA")
    resp = check(server, "tia", "third_party_sharing", CONTACT_EMAIL)
    expect(resp, "ALLOW", "NOT_OPTED_OUT", "ccpa_opt_out_not_exercised")
    assert (resp.jurisdiction, resp.regime) == ("US-CA", "ccpa")
    # An explicit jurisdiction on the request wins.
    expect(check(server, "tia", "third_party_sharing", CONTACT_EMAIL, "DE"), "DENY",
           "NO_CONSENT")


def test_uk_follows_gdpr_rules_with_its_own_regime(server: Running) -> None:
    subject(server, "uma", "GB", age=13)  # UK digital consent age: 13
    record(server, "uma", "grant", EMAIL)
    resp = check(server, "uma", EMAIL, CONTACT_EMAIL)
    expect(resp, "ALLOW", "CONSENT_GIVEN", "consent")
    assert resp.regime == "uk_gdpr"


# -- CCPA / CPRA ------------------------------------------------------------------------------

def test_ccpa_sale_allowed_until_opt_out(server: Running) -> None:
    expect(check(server, "vic", SHARING, CONTACT_EMAIL, "US-CA"), "ALLOW", "NOT_OPTED_OUT",
           "ccpa_opt_out_not_exercised")
    record(server, "vic", "opt_out")
    expect(check(server, "vic", SHARING, CONTACT_EMAIL, "US-CA"), "DENY", "OPTED_OUT")
    expect(check(server, "vic", "marketing.advertising.third_party.targeted",
                 "user.device.cookie_id", "US-CA"), "DENY", "OPTED_OUT")
    # First-party contextual advertising is not a sale or share.
    expect(check(server, "vic", "marketing.advertising.first_party.contextual",
                 "user.device.cookie_id", "US-CA"), "ALLOW", "NOT_OPTED_OUT",
           "ccpa_opt_out_not_exercised")
    record(server, "vic", "opt_in")
    expect(check(server, "vic", SHARING, CONTACT_EMAIL, "US-CA"), "ALLOW", "CONSENT_GIVEN",
           "consent")


def test_gpc_is_an_opt_out_that_wins_over_opt_in(server: Running) -> None:
    record(server, "wes", "opt_in")
    expect(check(server, "wes", SHARING, CONTACT_EMAIL, "US-CA", gpc="1"), "DENY",
           "GPC_OPT_OUT")
    # 11 CCR §7025(c)(3), (c)(5): the signal wins over the earlier opt-in and is the
    # consumer's remembered opt-out; its absence later is not consent.
    expect(check(server, "wes", SHARING, CONTACT_EMAIL, "US-CA", gpc="0"), "DENY",
           "OPTED_OUT")
    record(server, "wes", "opt_in")  # an affirmative act opts in again
    expect(check(server, "wes", SHARING, CONTACT_EMAIL, "US-CA", gpc="0"),
           "ALLOW", "CONSENT_GIVEN", "consent")


def test_gpc_objects_to_sale_under_gdpr_too(server: Running) -> None:
    record(server, "xia", "grant", "third_party_sharing")
    expect(check(server, "xia", "third_party_sharing", CONTACT_EMAIL, "DE", gpc="1"), "DENY",
           "GPC_OPT_OUT")


def test_ccpa_minors(server: Running) -> None:
    subject(server, "yan", "US-CA", age=14)
    expect(check(server, "yan", SHARING, CONTACT_EMAIL), "DENY", "MINOR_OPT_IN_REQUIRED")
    record(server, "yan", "opt_in")
    expect(check(server, "yan", SHARING, CONTACT_EMAIL), "ALLOW", "CONSENT_GIVEN", "consent")

    subject(server, "zoe", "US-CA", age=12)
    record(server, "zoe", "opt_in")  # the child's own opt-in is not enough
    expect(check(server, "zoe", SHARING, CONTACT_EMAIL), "DENY", "PARENTAL_CONSENT_REQUIRED")
    record(server, "zoe", "opt_in", method="parental")
    expect(check(server, "zoe", SHARING, CONTACT_EMAIL), "ALLOW", "CONSENT_GIVEN", "consent")


def test_limit_sensitive_keeps_only_permitted_uses(server: Running) -> None:
    subject(server, "abe", "US-CA")
    expect(check(server, "abe", "personalize", "user.location.precise"), "ALLOW",
           "NOT_OPTED_OUT", "ccpa_opt_out_not_exercised")
    record(server, "abe", "limit")
    expect(check(server, "abe", "personalize", "user.location.precise"), "DENY",
           "SENSITIVE_USE_LIMITED")
    # §1798.121(a), 11 CCR §7027(m): the statute's permission, not a GDPR basis.
    expect(check(server, "abe", "essential.service", "user.location.precise"), "ALLOW",
           "SENSITIVE_PERMITTED_USE", "ccpa_sensitive_permitted_use")
    expect(check(server, "abe", "essential.fraud_detection", "user.government_id"), "ALLOW",
           "SENSITIVE_PERMITTED_USE", "ccpa_sensitive_permitted_use")
    # Non-sensitive data is unaffected.
    expect(check(server, "abe", "personalize", "user.location.imprecise"), "ALLOW",
           "NOT_OPTED_OUT", "ccpa_opt_out_not_exercised")
