"""GPC remembered (issue 13, item 3): under CCPA 11 CCR §7025(c)(1) and (c)(5) a GPC signal
from a consumer the business knows is that consumer's opt-out, and its later absence is
not consent. Over a real gRPC server and its ledger."""

from __future__ import annotations

from pathlib import Path

from consentauthz.v1 import consent_pb2
from tests.conftest import Running, start_server
from tests.scenario import check, decision_name, record, subject

SHARING = "third_party_sharing"
EMAIL = "user.contact.email"


def outcome(resp) -> tuple[str, str]:
    return decision_name(resp), resp.reason


def gpc_records(s: Running, subject_id: str) -> list[consent_pb2.ConsentRecord]:
    events = s.consent.ListConsentEvents(
        consent_pb2.ListConsentEventsRequest(subject_id=subject_id)).events
    return [e for e in events if e.source == "gpc"]


def head(s: Running) -> int:
    return s.app.ledger.head()


def test_a_gpc_signal_from_a_known_consumer_is_their_remembered_opt_out(
        server: Running) -> None:
    subject(server, "cal", "US-CA")
    assert outcome(check(server, "cal", SHARING, EMAIL)) == ("ALLOW", "NOT_OPTED_OUT")
    assert outcome(check(server, "cal", SHARING, EMAIL, gpc="1")) == ("DENY", "GPC_OPT_OUT")
    (opt_out,) = gpc_records(server, "cal")
    assert opt_out.action == consent_pb2.CONSENT_ACTION_OPT_OUT_OF_SALE
    # §7025(c)(5): the next request without the signal is not an opt-in.
    resp = check(server, "cal", SHARING, EMAIL)
    assert outcome(resp) == ("DENY", "OPTED_OUT")
    assert list(resp.consent_record_ids) == [opt_out.record_id]
    # Once per subject: more GPC requests write nothing.
    before = head(server)
    for _ in range(3):
        assert decision_name(check(server, "cal", SHARING, EMAIL, gpc="1")) == "DENY"
    assert head(server) == before and len(gpc_records(server, "cal")) == 1


def test_an_affirmative_opt_in_after_it_is_not_undone_by_later_signals(
        server: Running, tmp_path: Path) -> None:
    subject(server, "dee", "US-CA")
    check(server, "dee", SHARING, EMAIL, gpc="1")
    record(server, "dee", "opt_in")
    assert outcome(check(server, "dee", SHARING, EMAIL)) == ("ALLOW", "CONSENT_GIVEN")
    # The request carrying the signal is still denied (§7025(c)(3)), but nothing more is
    # recorded, so the consumer's own opt-in stands for requests without it.
    before = head(server)
    assert outcome(check(server, "dee", SHARING, EMAIL, gpc="1")) == ("DENY", "GPC_OPT_OUT")
    assert head(server) == before
    assert outcome(check(server, "dee", SHARING, EMAIL)) == ("ALLOW", "CONSENT_GIVEN")


def test_a_restarted_server_does_not_record_it_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data)
    try:
        subject(first, "eve", "US-CA")
        check(first, "eve", SHARING, EMAIL, gpc="1")
        record(first, "eve", "opt_in")  # displaces the opt-out in the projection
    finally:
        first.channel.close()
        first.app.stop(grace=None)
    second = start_server(data)
    try:
        before = head(second)
        assert outcome(check(second, "eve", SHARING, EMAIL, gpc="1")) == (
            "DENY", "GPC_OPT_OUT")
        assert head(second) == before and len(gpc_records(second, "eve")) == 1
        assert outcome(check(second, "eve", SHARING, EMAIL)) == ("ALLOW", "CONSENT_GIVEN")
    finally:
        second.channel.close()
        second.app.stop(grace=None)


def test_nothing_is_recorded_for_an_unknown_consumer_an_erased_one_or_under_the_gdpr(
        server: Running) -> None:
    before = head(server)
    assert decision_name(check(server, "stranger", SHARING, EMAIL, "US-CA", gpc="1")) == "DENY"
    assert head(server) == before  # the ledger knows nothing about them: nothing to attach
    subject(server, "fritz", "DE")
    record(server, "fritz", "grant", SHARING)
    before = head(server)
    assert outcome(check(server, "fritz", SHARING, EMAIL, gpc="1")) == ("DENY", "GPC_OPT_OUT")
    assert head(server) == before  # GDPR Art. 21(5): an objection per request, not recorded
    assert outcome(check(server, "fritz", SHARING, EMAIL)) == ("ALLOW", "CONSENT_GIVEN")
    subject(server, "gone", "US-CA")
    server.consent.EraseSubject(consent_pb2.EraseSubjectRequest(subject_id="gone"))
    before = head(server)
    check(server, "gone", SHARING, EMAIL, gpc="1")
    assert head(server) == before


def test_a_batch_with_many_signals_records_one_opt_out(server: Running) -> None:
    from consentauthz.v1 import decision_pb2
    subject(server, "hal", "US-CA")
    items = [decision_pb2.CheckRequest(subject_id="hal", purpose=SHARING, data_category=EMAIL,
                                       context={"gpc": "1"}) for _ in range(20)]
    resp = server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=items))
    assert all(r.response.reason == "GPC_OPT_OUT" for r in resp.results)
    assert len(gpc_records(server, "hal")) == 1
