"""Issue 12: no wrong ALLOW from how consent state arrives (event time, the recorded
jurisdiction, one id per subject), over a real gRPC server."""

from __future__ import annotations

import unicodedata
from datetime import timedelta

import grpc
import pytest

from tests.conftest import Running
from tests.scenario import check, decision_name, field_violations, record, subject

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"


def outcome(resp) -> tuple[str, str]:
    return decision_name(resp), resp.reason


# -- 1. event time decides, not arrival order -----------------------------------------------

def test_a_late_grant_collected_before_a_withdrawal_does_not_undo_it(server: Running) -> None:
    withdrawal = record(server, "late-grant", "withdraw", EMAIL)
    record(server, "late-grant", "grant", EMAIL, collected_ago=timedelta(hours=1))
    resp = check(server, "late-grant", EMAIL, CONTACT_EMAIL, "DE")
    assert outcome(resp) == ("DENY", "CONSENT_WITHDRAWN")
    assert list(resp.consent_record_ids) == [withdrawal.record_id]


def test_a_withdrawal_collected_in_the_near_future_is_not_undone_by_a_grant_now(
        server: Running) -> None:
    record(server, "future-withdraw", "withdraw", EMAIL, collected_ago=timedelta(minutes=-3))
    record(server, "future-withdraw", "grant", EMAIL)
    assert outcome(check(server, "future-withdraw", EMAIL, CONTACT_EMAIL, "DE")) == (
        "DENY", "CONSENT_WITHDRAWN")


def test_a_grant_collected_in_the_near_future_counts_only_from_then(server: Running) -> None:
    record(server, "future-grant", "grant", EMAIL, collected_ago=timedelta(minutes=-3))
    assert outcome(check(server, "future-grant", EMAIL, CONTACT_EMAIL, "DE")) == (
        "DENY", "NO_CONSENT")


def test_a_late_grant_after_the_latest_record_still_counts(server: Running) -> None:
    record(server, "in-order", "withdraw", EMAIL, collected_ago=timedelta(hours=2))
    grant = record(server, "in-order", "grant", EMAIL, collected_ago=timedelta(hours=1))
    resp = check(server, "in-order", EMAIL, CONTACT_EMAIL, "DE")
    assert outcome(resp) == ("ALLOW", "CONSENT_GIVEN")
    assert list(resp.consent_record_ids) == [grant.record_id]


def test_an_opt_out_collected_after_a_late_opt_in_stands(server: Running) -> None:
    record(server, "sale", "opt_out")
    record(server, "sale", "opt_in", collected_ago=timedelta(hours=1))
    resp = check(server, "sale", "marketing.advertising.third_party.targeted",
                 "user.behavior.browsing_history", "US-CA")
    assert decision_name(resp) == "DENY"


def test_collected_at_beyond_the_clock_skew_is_invalid(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as err:
        record(server, "too-far", "grant", EMAIL, collected_ago=timedelta(minutes=-30))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "collected_at" in field_violations(err.value)


# -- 2. the recorded jurisdiction always constrains -----------------------------------------

@pytest.mark.parametrize("requested", ["SE", "BE", "DE", ""])
def test_a_recorded_jurisdiction_with_a_higher_age_constrains_the_same_regime(
        server: Running, requested: str) -> None:
    subject(server, "teen-de", "DE", age=14)
    record(server, "teen-de", "grant", EMAIL)
    resp = check(server, "teen-de", EMAIL, CONTACT_EMAIL, requested)
    assert outcome(resp) == ("DENY", "PARENTAL_CONSENT_REQUIRED")


def test_a_requested_jurisdiction_with_a_higher_age_constrains_too(server: Running) -> None:
    subject(server, "teen-se", "SE", age=14)
    record(server, "teen-se", "grant", EMAIL)
    assert outcome(check(server, "teen-se", EMAIL, CONTACT_EMAIL, "SE")) == (
        "ALLOW", "CONSENT_GIVEN")
    assert outcome(check(server, "teen-se", EMAIL, CONTACT_EMAIL, "DE")) == (
        "DENY", "PARENTAL_CONSENT_REQUIRED")


# -- 3. one subject, one id -----------------------------------------------------------------

def test_nfc_and_nfd_spellings_are_one_subject(server: Running) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    assert nfc != nfd
    record(server, nfc, "grant", EMAIL)
    assert outcome(check(server, nfd, EMAIL, CONTACT_EMAIL, "DE")) == ("ALLOW", "CONSENT_GIVEN")
    record(server, nfd, "withdraw", EMAIL)
    assert outcome(check(server, nfc, EMAIL, CONTACT_EMAIL, "DE")) == (
        "DENY", "CONSENT_WITHDRAWN")


@pytest.mark.parametrize("bad", ["B ", " B", "B\t", "\u00a0B", "B\u2028", "B\u200b"])
def test_subject_ids_with_surrounding_whitespace_or_controls_are_invalid(
        server: Running, bad: str) -> None:
    for call in (lambda: record(server, bad, "grant", EMAIL),
                 lambda: check(server, bad, EMAIL, CONTACT_EMAIL, "DE"),
                 lambda: subject(server, bad, "DE")):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "subject_id" in field_violations(err.value)
        assert bad.strip() not in err.value.details()


def test_the_clock_skew_is_configurable(tmp_path) -> None:
    from tests.conftest import start_server
    s = start_server(tmp_path / "data", clock_skew=3600.0)
    try:
        # Accepted under a one-hour skew, and counted only from its collected time.
        record(s, "skewed", "grant", EMAIL, collected_ago=timedelta(minutes=-30))
        assert outcome(check(s, "skewed", EMAIL, CONTACT_EMAIL, "DE")) == ("DENY", "NO_CONSENT")
        with pytest.raises(grpc.RpcError) as err:
            record(s, "skewed", "grant", EMAIL, collected_ago=timedelta(minutes=-90))
        assert "collected_at" in field_violations(err.value)
    finally:
        s.channel.close()
        s.app.stop(grace=None)
