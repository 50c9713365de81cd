"""No personal data in the clear in logs, spans, metrics or error messages.

A realistic session runs through a real server with Redis: a subject's profile (with a
birth date), consent granted with evidence (an IP address, a user agent) and withdrawn,
checks and batch checks (with explanations), the auditors' reads by subject and by
decision, and bad requests that carry the subject id in other fields. Everything the
service emits while doing so is captured: every log record at DEBUG from every logger
(ours, grpc, redis, psycopg; casbin's own are attached to directly, since they do not
propagate), the process's stdout and stderr (gRPC core logs there), every finished span
(names, attributes, events with their exception messages and stack traces, status), the
Prometheus exposition and the in-memory metrics, and every gRPC error (message, details,
debug string). None may contain a raw subject id, the birth date or an evidence value.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consentauthz.engine.reference import reference_enforcer
from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2
from tests.conftest import Running, start_server
from tests.redis_server import RedisServer

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"
CASBIN_LOGGERS = ("casbin", "casbin.enforcer", "casbin.policy", "casbin.role")


@pytest.fixture()
def canaries() -> dict[str, str]:
    tag = secrets.token_hex(6)
    return {
        "subject": f"pii-canary-{tag}@example.com",
        "unknown subject": f"pii-canary-unknown-{tag}@example.com",
        "birth date": "1987-11-23",
        "ip": f"198.51.100.{secrets.randbelow(200) + 20}:{secrets.randbelow(50000) + 10000}",
        "user agent": f"Mozilla/5.0 (X11; CanaryOS {tag}) Gecko/20100101",
    }


@pytest.fixture()
def casbin_records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Whatever casbin's loggers emit, whatever their propagation (levels untouched)."""
    for name in CASBIN_LOGGERS:
        logging.getLogger(name).addHandler(caplog.handler)
    try:
        yield caplog.records
    finally:
        for name in CASBIN_LOGGERS:
            logging.getLogger(name).removeHandler(caplog.handler)


class Errors:
    """Every gRPC error the session got back, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.codes: list[grpc.StatusCode] = []

    def expect(self, code: grpc.StatusCode, call: Callable[[], Any]) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        err: Any = caught.value
        assert err.code() is code, err
        self.codes.append(code)
        self.texts += [err.details() or "", err.debug_error_string() or "",
                       repr(err.trailing_metadata())]
        status = rpc_status.from_call(err)
        if status is not None:
            self.texts.append(status.message)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    self.texts += [f"{v.field} {v.description}" for v in bad.field_violations]

    def slot(self, status: Any) -> None:
        self.texts += [status.message, repr(status.details)]


def session(s: Running, c: dict[str, str], errors: Errors) -> None:
    """What callers, a preference centre and an auditor do with one subject."""
    subject, unknown = c["subject"], c["unknown subject"]
    s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=subject, jurisdiction="DE", birth_date=c["birth date"]))
    granted = s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=consent_pb2.CONSENT_ACTION_GRANT, purpose=EMAIL,
        data_categories=[CONTACT_EMAIL], method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE,
        jurisdiction="DE", source="web-form", notice_version="2026-01",
        evidence={"ip": c["ip"], "user-agent": c["user agent"]},
        idempotency_key=f"signup-{subject}"))

    def check(who: str, token: str = "", **kw: Any) -> decision_pb2.CheckResponse:
        return s.decisions.Check(decision_pb2.CheckRequest(
            subject_id=who, purpose=EMAIL, data_category=CONTACT_EMAIL, jurisdiction="DE",
            consistency_token=token, **kw))

    allowed = check(subject, granted.consistency_token, explain=True)
    assert allowed.decision == decision_pb2.DECISION_ALLOW
    batch = s.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[
        decision_pb2.CheckRequest(subject_id=subject, purpose=EMAIL,
                                  data_category=CONTACT_EMAIL, explain=True),
        decision_pb2.CheckRequest(subject_id=unknown, purpose=EMAIL,
                                  data_category=CONTACT_EMAIL),
        decision_pb2.CheckRequest(subject_id=subject, purpose=subject,
                                  data_category=CONTACT_EMAIL)]))
    for result in batch.results:
        if result.WhichOneof("result") == "error":
            errors.slot(result.error)
    withdrawn = s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=consent_pb2.CONSENT_ACTION_WITHDRAW, purpose=EMAIL,
        evidence={"ip": c["ip"], "user-agent": c["user agent"]}))
    denied = check(subject, withdrawn.consistency_token, explain=True)
    assert denied.decision == decision_pb2.DECISION_DENY
    check(unknown)

    # A preference centre and an auditor.
    state = s.consent.GetConsentState(consent_pb2.GetConsentStateRequest(subject_id=subject))
    assert state.birth_date == c["birth date"]  # the subject's own data goes to the caller
    s.consent.ListConsentEvents(consent_pb2.ListConsentEventsRequest(subject_id=subject))
    s.consent.GetConsentState(consent_pb2.GetConsentStateRequest(subject_id=unknown))
    s.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(subject_id=subject))
    s.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(subject_id=unknown))
    s.audit.GetSubjectReport(audit_pb2.GetSubjectReportRequest(subject_id=subject))
    for decision_id in (allowed.decision_id, denied.decision_id):
        s.audit.GetDecision(audit_pb2.GetDecisionRequest(decision_id=decision_id))
        s.audit.ExplainDecision(audit_pb2.ExplainDecisionRequest(decision_id=decision_id))
        s.audit.ReplayDecision(audit_pb2.ReplayDecisionRequest(decision_id=decision_id))

    # Bad requests that carry personal data in the wrong places.
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for kw in ({"purpose": subject}, {"data_category": c["ip"]},
               {"jurisdiction": subject}, {"context": {subject: "1"}},
               {"context": {"gpc": subject}}, {"consistency_token": c["birth date"]}):
        bad = decision_pb2.CheckRequest(**{
            "subject_id": subject, "purpose": EMAIL, "data_category": CONTACT_EMAIL,
            "jurisdiction": "DE", **kw})
        errors.expect(invalid, lambda: s.decisions.Check(bad))  # noqa: B023 - called at once
    errors.expect(invalid, lambda: s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject + "\x00", purpose=EMAIL, data_category=CONTACT_EMAIL)))
    errors.expect(invalid, lambda: s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=consent_pb2.CONSENT_ACTION_GRANT, purpose=subject,
        data_categories=[c["ip"]], jurisdiction=c["user agent"], source=subject + "\n",
        method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, notice_version="v1",
        evidence={c["ip"]: c["user agent"]}, idempotency_key=subject + "\x01")))
    errors.expect(invalid, lambda: s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=99, purpose=subject, evidence={"ip": c["ip"]})))
    errors.expect(invalid, lambda: s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=subject, birth_date=c["birth date"] + "T00:00")))
    errors.expect(invalid, lambda: s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=subject, jurisdiction=subject, birth_date="2999-01-01")))
    errors.expect(invalid, lambda: s.consent.GetConsentState(
        consent_pb2.GetConsentStateRequest(subject_id=subject, consistency_token=subject)))
    errors.expect(invalid, lambda: s.consent.ListConsentEvents(
        consent_pb2.ListConsentEventsRequest(subject_id=subject, page_token=subject)))
    errors.expect(invalid, lambda: s.audit.QueryDecisions(audit_pb2.QueryDecisionsRequest(
        subject_id=subject, caller=subject * 4, page_token=subject)))
    errors.expect(grpc.StatusCode.NOT_FOUND, lambda: s.audit.GetDecision(
        audit_pb2.GetDecisionRequest(decision_id=subject)))
    errors.expect(grpc.StatusCode.UNAVAILABLE, lambda: check(subject, "9" * 18))
    raw = s.channel.unary_unary("/consentauthz.v1.DecisionService/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    bad_utf8 = decision_pb2.CheckRequest(subject_id=subject, purpose="PROBE").SerializeToString()
    errors.expect(invalid, lambda: raw(bad_utf8.replace(b"PROBE", b"\xff\xfe\xfd\xfc\xfb")))


def test_no_personal_data_in_logs_spans_metrics_or_errors(
        tmp_path: Path, redis_server: RedisServer, canaries: dict[str, str],
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
        spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader,
        casbin_records: list[logging.LogRecord]) -> None:
    caplog.set_level(logging.DEBUG)
    errors = Errors()
    s = start_server(tmp_path / "data", redis_url=redis_server.url)
    try:
        session(s, canaries, errors)
        # casbin itself, asked about the canaries (pycasbin logs every request tuple).
        enforcer = reference_enforcer(s.app.policy().policy)
        enforcer.enforce(canaries["subject"], EMAIL, CONTACT_EMAIL, canaries["ip"])
        enforcer.enforce(canaries["subject"], canaries["ip"], canaries["user agent"], "x")
    finally:
        s.channel.close()
        s.app.stop(grace=None)

    assert len(errors.codes) >= 15
    out, err = capfd.readouterr()
    finished = spans.get_finished_spans()
    assert {"server.Check", "engine.Check", "consent.Get", "server.GetConsentState",
            "server.QueryDecisions", "server.ExplainDecision"} <= {x.name for x in finished}
    assert caplog.records, "no log records were captured at all"
    emitted = {
        "log records": [_record_text(r) for r in caplog.records],
        "stdout/stderr": [out, err],
        "spans": [_span_text(x) for x in finished],
        "prometheus": [prometheus_client.generate_latest().decode()],
        "metrics": [metric_reader.get_metrics_data().to_json()],  # type: ignore[union-attr]
        "grpc errors": errors.texts,
    }
    for where, texts in emitted.items():
        for text in texts:
            for what, value in canaries.items():
                assert value not in text, f"{what} in the clear in {where}: {text[:2000]}"
    assert not [r for r in casbin_records if r.name.startswith("casbin")], (
        "casbin logged: " + "; ".join(r.getMessage() for r in casbin_records
                                      if r.name.startswith("casbin")))
    for name in CASBIN_LOGGERS:
        logger = logging.getLogger(name)
        assert logger.disabled or not logger.isEnabledFor(logging.CRITICAL), name


def _record_text(r: logging.LogRecord) -> str:
    parts = [r.name, r.getMessage(), repr(r.args), str(r.msg)]
    if r.exc_info:
        parts.append(logging.Formatter().formatException(r.exc_info))
    if r.exc_text:
        parts.append(r.exc_text)
    if r.stack_info:
        parts.append(r.stack_info)
    return "\n".join(parts)


def _span_text(span: Any) -> str:
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
    for event in span.events:
        parts += [event.name, repr(dict(event.attributes or {}))]
    for link in span.links:
        parts.append(repr(dict(link.attributes or {})))
    return "\n".join(parts)
