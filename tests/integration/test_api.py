"""The gRPC contract: batch semantics, bad input, idempotency, reads, audit, health."""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from consentauthz.server import SERVICE_NAMES
from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2
from consentauthz.validation import MAX_BATCH
from tests.conftest import Running
from tests.scenario import check, decision_name, field_violations, record

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"


def rows(s: Running, db: str, table: str) -> int:
    with sqlite3.connect(s.data_dir / db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def item(subject: str = "alice", purpose: str = EMAIL, category: str = CONTACT_EMAIL,
         **kw: object) -> decision_pb2.CheckRequest:
    return decision_pb2.CheckRequest(subject_id=subject, purpose=purpose,
                                     data_category=category, **kw)


def test_batch_returns_one_result_per_item_in_order(server: Running) -> None:
    record(server, "alice", "grant", EMAIL)
    resp = server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[
        item(jurisdiction="DE"),
        item(purpose="no.such.purpose"),
        item(subject="bob", jurisdiction="DE"),
        item(consistency_token="abc"),
    ]))
    assert len(resp.results) == 4
    first, bad, third, bad_token = resp.results
    assert first.WhichOneof("result") == "response"
    assert decision_name(first.response) == "ALLOW"
    assert bad.WhichOneof("result") == "error"
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "items[1].purpose" in bad.error.message
    assert decision_name(third.response) == "DENY"
    assert bad_token.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "items[3].consistency_token" in bad_token.error.message
    # Only the two valid items were decided, and both were logged.
    assert rows(server, "decisions.db", "decisions") == 2
    assert first.response.decision_id != third.response.decision_id


def test_batch_size_is_enforced(server: Running) -> None:
    items = [item(subject=f"s{i}") for i in range(MAX_BATCH + 1)]
    with pytest.raises(grpc.RpcError) as err:
        server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=items))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "items" in field_violations(err.value)
    assert rows(server, "decisions.db", "decisions") == 0


def test_batch_of_maximum_size_is_served(server: Running) -> None:
    items = [item(subject=f"s{i}", jurisdiction="US-CA") for i in range(MAX_BATCH)]
    resp = server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=items))
    assert len(resp.results) == MAX_BATCH
    assert rows(server, "decisions.db", "decisions") == MAX_BATCH


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"subject_id": ""}, "subject_id"),
    ({"subject_id": "   "}, "subject_id"),
    ({"subject_id": "x" * 257}, "subject_id"),
    ({"subject_id": "a\nb"}, "subject_id"),
    ({"purpose": "marketing.bogus"}, "purpose"),
    ({"purpose": ""}, "purpose"),
    ({"data_category": "user.bogus"}, "data_category"),
    ({"jurisdiction": "de"}, "jurisdiction"),
    ({"jurisdiction": "Germany"}, "jurisdiction"),
    ({"context": {"Sec-GPC": "1"}}, "context"),
    ({"context": {"utm": "x"}}, "context"),
    ({"context": {"gpc": "yes"}}, "context[gpc]"),
    ({"consistency_token": "-1"}, "consistency_token"),
    ({"consistency_token": "9" * 40}, "consistency_token"),
    ({"consistency_token": "9" * 19}, "consistency_token"),
])
def test_bad_check_input_is_invalid_argument(server: Running, kwargs: dict[str, object],
                                             field: str) -> None:
    base: dict[str, object] = {"subject_id": "alice", "purpose": EMAIL,
                               "data_category": CONTACT_EMAIL}
    base.update(kwargs)
    with pytest.raises(grpc.RpcError) as err:
        server.decisions.Check(decision_pb2.CheckRequest(**base))  # type: ignore[arg-type]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err.value)
    assert "alice" not in (err.value.details() or "")
    assert rows(server, "decisions.db", "decisions") == 0


def _write(**kw: object) -> consent_pb2.RecordConsentRequest:
    base: dict[str, object] = {
        "subject_id": "alice", "purpose": EMAIL, "action": consent_pb2.CONSENT_ACTION_GRANT,
        "method": consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, "source": "web-form",
        "notice_version": "v1"}
    base.update(kw)
    return consent_pb2.RecordConsentRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"subject_id": ""}, "subject_id"),
    ({"purpose": ""}, "purpose"),
    ({"purpose": "nope"}, "purpose"),
    ({"action": consent_pb2.CONSENT_ACTION_UNSPECIFIED}, "action"),
    ({"action": 99}, "action"),
    ({"method": consent_pb2.COLLECTION_METHOD_UNSPECIFIED}, "method"),
    ({"data_categories": ["user.contact.email", "nope"]}, "data_categories[1]"),
    ({"data_categories": ["user.contact.email", "user.contact.email"]}, "data_categories"),
    ({"notice_version": ""}, "notice_version"),
    ({"source": ""}, "source"),
    ({"source": "s" * 500}, "source"),
    ({"evidence": {"ip": "1" * 5000}}, "evidence"),
    ({"evidence": {"bad key": "x"}}, "evidence"),
    ({"jurisdiction": "XXX"}, "jurisdiction"),
    ({"idempotency_key": "k" * 500}, "idempotency_key"),
])
def test_bad_consent_write_changes_nothing(server: Running, kwargs: dict[str, object],
                                           field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.consent.RecordConsent(_write(**kwargs))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err.value)
    assert rows(server, "ledger.db", "ledger") == 0


def test_bad_timestamps_are_rejected(server: Running) -> None:
    req = _write()
    req.collected_at.seconds = 4_000_000_000  # year 2096: in the future
    with pytest.raises(grpc.RpcError) as err:
        server.consent.RecordConsent(req)
    assert "collected_at" in field_violations(err.value)
    req = _write()
    req.collected_at.seconds = 1_700_000_000
    req.expires_at.seconds = 1_600_000_000
    with pytest.raises(grpc.RpcError) as err:
        server.consent.RecordConsent(req)
    assert "expires_at" in field_violations(err.value)
    req = _write()
    req.expires_at.seconds = 253_402_300_800 * 10  # beyond year 9999
    with pytest.raises(grpc.RpcError) as err:
        server.consent.RecordConsent(req)
    assert "expires_at" in field_violations(err.value)
    assert rows(server, "ledger.db", "ledger") == 0


def test_bad_birth_date_is_rejected(server: Running) -> None:
    for value in ("2010-13-01", "01/02/2010", "2999-01-01"):
        with pytest.raises(grpc.RpcError) as err:
            server.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
                subject_id="alice", birth_date=value))
        assert "birth_date" in field_violations(err.value)
    assert rows(server, "ledger.db", "ledger") == 0


def test_idempotent_writes(server: Running) -> None:
    first = server.consent.RecordConsent(_write(idempotency_key="form-123"))
    again = server.consent.RecordConsent(_write(idempotency_key="form-123"))
    assert (again.record_id, again.consistency_token) == (first.record_id,
                                                          first.consistency_token)
    assert rows(server, "ledger.db", "ledger") == 1
    with pytest.raises(grpc.RpcError) as err:
        server.consent.RecordConsent(_write(idempotency_key="form-123", notice_version="v2"))
    assert "idempotency_key" in field_violations(err.value)
    assert rows(server, "ledger.db", "ledger") == 1


def test_consistency_tokens(server: Running) -> None:
    token = record(server, "alice", "grant", EMAIL).consistency_token
    resp = server.decisions.Check(item(jurisdiction="DE", consistency_token=token))
    assert decision_name(resp) == "ALLOW" and int(resp.consistency_token) >= int(token)
    with pytest.raises(grpc.RpcError) as err:
        server.decisions.Check(item(consistency_token=str(int(token) + 100)))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert rows(server, "decisions.db", "decisions") == 1


def test_state_and_history(server: Running) -> None:
    server.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id="alice", jurisdiction="DE", birth_date="1990-05-17"))
    grant = record(server, "alice", "grant", EMAIL, evidence={"ip": "203.0.113.7"})
    withdraw = record(server, "alice", "withdraw", EMAIL)
    record(server, "alice", "grant", "analytics")
    record(server, "bob", "grant", "analytics")
    state = server.consent.GetConsentState(consent_pb2.GetConsentStateRequest(
        subject_id="alice"))
    assert (state.jurisdiction, state.birth_date) == ("DE", "1990-05-17")
    # The withdrawal superseded the grant for the same scope.
    assert state.records[0].record_id == withdraw.record_id
    assert grant.record_id not in [r.record_id for r in state.records]
    page1 = server.consent.ListConsentEvents(consent_pb2.ListConsentEventsRequest(
        subject_id="alice", page_size=2))
    assert [e.record_id for e in page1.events][:2] == [grant.record_id, withdraw.record_id]
    assert page1.events[0].evidence["ip"] == "203.0.113.7"
    assert page1.events[0].source == "web-form" and page1.events[0].notice_version == "2026-01"
    page2 = server.consent.ListConsentEvents(consent_pb2.ListConsentEventsRequest(
        subject_id="alice", page_size=2, page_token=page1.next_page_token))
    assert len(page2.events) == 1 and not page2.next_page_token


def test_every_decision_is_logged_and_readable(server: Running) -> None:
    grant = record(server, "alice", "grant", EMAIL)
    resp = check(server, "alice", EMAIL, CONTACT_EMAIL, "DE", gpc="0")
    got = server.audit.GetDecision(audit_pb2.GetDecisionRequest(decision_id=resp.decision_id))
    assert got.decision == decision_pb2.DECISION_ALLOW
    assert (got.purpose, got.data_category, got.jurisdiction, got.regime) == (
        EMAIL, CONTACT_EMAIL, "DE", "gdpr")
    assert (got.reason, got.legal_basis, got.matched_rule) == (
        resp.reason, resp.legal_basis, resp.matched_rule)
    assert list(got.consent_record_ids) == [grant.record_id]
    assert got.policy_version == resp.policy_version
    assert got.consistency_token == resp.consistency_token
    assert got.caller == "anonymous"
    assert len(got.trace_id) == 32 and len(got.span_id) == 16
    assert dict(got.context) == {"gpc": "0"}
    assert got.subject_pseudonym.startswith("k1:") and "alice" not in got.subject_pseudonym
    assert got.entry_hash and got.sequence == 1

    with pytest.raises(grpc.RpcError) as err:
        server.audit.GetDecision(audit_pb2.GetDecisionRequest(decision_id="nope"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_query_decisions(server: Running) -> None:
    record(server, "alice", "grant", EMAIL)
    ids = [check(server, "alice", EMAIL, CONTACT_EMAIL, "DE").decision_id for _ in range(3)]
    check(server, "bob", EMAIL, CONTACT_EMAIL, "DE")
    by_subject = server.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
        subject_id="alice", page_size=2))
    assert [d.decision_id for d in by_subject.decisions] == ids[::-1][:2]  # newest first
    rest = server.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
        subject_id="alice", page_size=2, page_token=by_subject.next_page_token))
    assert [d.decision_id for d in rest.decisions] == [ids[0]]
    denies = server.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
        decision=decision_pb2.DECISION_DENY))
    assert [d.reason for d in denies.decisions] == ["NO_CONSENT"]
    by_purpose = server.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
        purpose="analytics"))
    assert not by_purpose.decisions


def test_explain(server: Running) -> None:
    record(server, "alice", "grant", EMAIL, method="pre_ticked")
    resp = server.decisions.Check(item(jurisdiction="JP", explain=True))
    text = "\n".join(resp.explanation)
    assert "not mapped by the policy" in text and "regime gdpr" in text
    assert "not valid consent" in text
    assert "matched gdpr.csv:" in text and "CONSENT_INVALID" in text
    assert not check(server, "alice", EMAIL, CONTACT_EMAIL).explanation


def test_health_and_reflection(server: Running) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for name in ("", *SERVICE_NAMES):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")]))
    listed = {s.name for r in responses for s in r.list_services_response.service}
    assert set(SERVICE_NAMES) <= listed


def test_no_raw_subject_id_in_spans_or_log(server: Running, spans, tmp_path) -> None:
    subject_id = "person-7f3a9c@example.org"
    record(server, subject_id, "grant", EMAIL)
    check(server, subject_id, EMAIL, CONTACT_EMAIL, "DE")
    # Not in the local cache: its state is read through, in a consent.Get span.
    check(server, subject_id + ".unknown", EMAIL, CONTACT_EMAIL, "DE")
    server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[
        item(subject=subject_id), item(subject=subject_id, purpose="bad")]))
    finished = spans.get_finished_spans()
    names = {s.name for s in finished}
    assert {"server.Check", "engine.Check", "consent.Get", "decisionlog.Append",
            "server.BatchCheck", "server.RecordConsent"} <= names
    engine_span = next(s for s in finished if s.name == "engine.Check")
    assert engine_span.attributes["consentauthz.purpose"] == EMAIL
    assert engine_span.attributes["consentauthz.decision"] in ("ALLOW", "DENY")
    assert str(engine_span.attributes["consentauthz.subject"]).startswith("k1:")
    for s in finished:
        blob = repr(s.attributes) + repr([e.attributes for e in s.events]) + s.name
        assert subject_id not in blob
    for db in ("decisions.db", "ledger.db"):
        raw = b"".join(p.read_bytes() for p in server.data_dir.glob(db + "*"))
        assert subject_id.encode() not in raw


def test_out_of_range_page_tokens_are_invalid_argument(server: Running) -> None:
    for call in (
        lambda: server.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
            page_token="9" * 19)),
        lambda: server.consent.ListConsentEvents(consent_pb2.ListConsentEventsRequest(
            subject_id="alice", page_token="9" * 19)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(err.value)
