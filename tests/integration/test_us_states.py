"""The US state laws (issue 13, item 1) end to end, over a real gRPC server and its ledger.

Before the states were regimes of their own, every state but California was unmapped and
answered under every regime: what the GDPR or the CCPA allows with consent was allowed in
Maryland and Oregon too (a wrong ALLOW), and what the states allow until an opt-out was
denied (analytics in Virginia, e-mail marketing in Connecticut, sensitive data in Utah).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from consentauthz.v1 import consent_pb2
from tests.conftest import Running
from tests.scenario import check, decision_name, record, subject

SHARING = "third_party_sharing"
TARGETED = "marketing.advertising.third_party.targeted"
HEALTH = "user.health_and_medical"
PRECISE = "user.location.precise"
COOKIE = "user.device.cookie_id"
EMAIL = "user.contact.email"


def outcome(resp) -> tuple[str, str, str]:
    return decision_name(resp), resp.reason, resp.legal_basis


def test_maryland_forbids_selling_sensitive_data_whatever_the_consent(server: Running) -> None:
    # Md. Com. Law §14-4707(a)(2). Explicit consent would allow it under the GDPR and an
    # opt-in under the CCPA: the answer this pack gave before Maryland was a regime.
    subject(server, "mia", "US-MD")
    record(server, "mia", "grant", SHARING, explicit=True)
    record(server, "mia", "opt_in")
    resp = check(server, "mia", SHARING, HEALTH)
    assert outcome(resp) == ("DENY", "PROHIBITED", "")
    assert resp.regime == "us_md" and resp.matched_rule.startswith("regimes/us_md/us_md.csv:")
    # §14-4707(a)(1): not even with consent for anything but what is strictly necessary
    # for the product or service the consumer requested.
    assert outcome(check(server, "mia", "personalize", HEALTH))[:2] == ("DENY", "PROHIBITED")
    assert outcome(check(server, "mia", "essential.service.payment_processing", HEALTH)) == (
        "ALLOW", "EXEMPT_PURPOSE", "statutory_exemption")


def test_maryland_forbids_targeted_advertising_to_a_17_year_old(server: Running) -> None:
    # §14-4707(a)(4): under 18, whatever the consent; at 18 the opt-out regime applies.
    subject(server, "max", "US-MD", age=17)
    record(server, "max", "grant", TARGETED)
    assert outcome(check(server, "max", TARGETED, COOKIE))[:2] == ("DENY", "PROHIBITED")
    subject(server, "may", "US-MD", age=18)
    assert outcome(check(server, "may", TARGETED, COOKIE)) == (
        "ALLOW", "NOT_OPTED_OUT", "opt_out_not_exercised")


def test_oregon_forbids_targeted_advertising_to_under_16s_and_selling_precise_location(
        server: Running) -> None:
    subject(server, "olly", "US-OR", age=15)
    record(server, "olly", "grant", TARGETED)
    assert outcome(check(server, "olly", TARGETED, COOKIE))[:2] == ("DENY", "PROHIBITED")
    subject(server, "ora", "US-OR")
    record(server, "ora", "grant", SHARING)
    assert outcome(check(server, "ora", SHARING, PRECISE))[:2] == ("DENY", "PROHIBITED")
    assert outcome(check(server, "ora", SHARING, EMAIL))[:2] == ("ALLOW", "CONSENT_GIVEN")


@pytest.mark.parametrize(("jurisdiction", "purpose"), [
    ("US-VA", "analytics"),
    ("US-CT", "marketing.communications.email"),
    ("US-TX", SHARING),
    ("US-NJ", TARGETED),
])
def test_the_states_allow_ordinary_processing_until_the_consumer_opts_out(
        server: Running, jurisdiction: str, purpose: str) -> None:
    name = f"nobody-{jurisdiction}"
    subject(server, name, jurisdiction)
    category = COOKIE if purpose == TARGETED else EMAIL
    assert outcome(check(server, name, purpose, category)) == (
        "ALLOW", "NOT_OPTED_OUT", "opt_out_not_exercised")
    if purpose in (SHARING, TARGETED):
        opt_out = record(server, name, "opt_out")
        resp = check(server, name, purpose, category)
        assert outcome(resp) == ("DENY", "OPTED_OUT", "")
        assert list(resp.consent_record_ids) == [opt_out.record_id]


def test_sensitive_data_needs_consent_in_virginia_and_notice_and_opt_out_in_utah(
        server: Running) -> None:
    subject(server, "vic", "US-VA")
    assert outcome(check(server, "vic", "personalize", HEALTH))[:2] == ("DENY", "NO_CONSENT")
    grant = record(server, "vic", "grant", "personalize")  # affirmative, not explicit
    resp = check(server, "vic", "personalize", HEALTH)
    assert outcome(resp) == ("ALLOW", "CONSENT_GIVEN", "consent")
    assert list(resp.consent_record_ids) == [grant.record_id]
    subject(server, "uma", "US-UT")
    assert outcome(check(server, "uma", "personalize", HEALTH)) == (
        "ALLOW", "NOT_OPTED_OUT", "opt_out_not_exercised")
    record(server, "uma", "limit")
    assert outcome(check(server, "uma", "personalize", HEALTH))[:2] == (
        "DENY", "SENSITIVE_USE_LIMITED")


def test_a_known_child_needs_a_parent_in_every_state(server: Running) -> None:
    subject(server, "kid", "US-TN", age=11)
    assert outcome(check(server, "kid", "analytics", EMAIL))[:2] == (
        "DENY", "PARENTAL_CONSENT_REQUIRED")
    record(server, "kid", "grant", "analytics")
    assert outcome(check(server, "kid", "analytics", EMAIL))[:2] == (
        "DENY", "PARENTAL_CONSENT_REQUIRED")
    record(server, "kid", "grant", "analytics", method="parental")
    assert outcome(check(server, "kid", "analytics", EMAIL)) == (
        "ALLOW", "CONSENT_GIVEN", "consent")


def test_colorado_remembers_a_gpc_signal_and_virginia_does_not_act_on_it(
        server: Running) -> None:
    # C.R.S. §6-1-1306(1)(a)(IV): a universal opt-out mechanism, from 2024-07-01; the
    # VCDPA has none.
    subject(server, "cole", "US-CO")
    assert outcome(check(server, "cole", SHARING, EMAIL, gpc="1"))[:2] == (
        "DENY", "GPC_OPT_OUT")
    events = server.consent.ListConsentEvents(
        consent_pb2.ListConsentEventsRequest(subject_id="cole")).events
    (opt_out,) = [e for e in events if e.source == "gpc"]
    resp = check(server, "cole", SHARING, EMAIL)
    assert outcome(resp)[:2] == ("DENY", "OPTED_OUT")
    assert list(resp.consent_record_ids) == [opt_out.record_id]
    subject(server, "val", "US-VA")
    before = server.app.ledger.head()
    assert outcome(check(server, "val", SHARING, EMAIL, gpc="1")) == (
        "ALLOW", "NOT_OPTED_OUT", "opt_out_not_exercised")
    assert server.app.ledger.head() == before


def test_washington_sells_consumer_health_data_only_on_a_signed_authorisation(
        server: Running) -> None:
    # RCW 19.373.070: a signed authorisation, separate, expiring within a year.
    subject(server, "wes", "US-WA")
    record(server, "wes", "grant", SHARING)
    assert outcome(check(server, "wes", SHARING, HEALTH))[:2] == (
        "DENY", "AUTHORISATION_REQUIRED")
    # A blanket explicit grant is not it: the authorisation names the data (.070(2)(a)).
    record(server, "wes", "grant", SHARING, explicit=True, expires_in=timedelta(days=360))
    assert outcome(check(server, "wes", SHARING, HEALTH))[:2] == (
        "DENY", "AUTHORISATION_REQUIRED")
    record(server, "wes", "grant", SHARING, categories=(HEALTH,), explicit=True,
           expires_in=timedelta(days=360))
    assert outcome(check(server, "wes", SHARING, HEALTH)) == (
        "ALLOW", "CONSENT_GIVEN", "signed_authorisation")


def test_the_bare_us_is_answered_as_strictly_as_maryland(server: Running) -> None:
    # State unknown: evaluated under every regime, so Maryland's prohibition holds.
    subject(server, "sam", "US")
    record(server, "sam", "grant", SHARING, explicit=True)
    record(server, "sam", "opt_in")
    resp = check(server, "sam", SHARING, HEALTH)
    assert outcome(resp)[:2] == ("DENY", "PROHIBITED")
    assert resp.regime == "us_md"
