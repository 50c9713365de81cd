"""Small helpers that speak the public gRPC API the way a caller would."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from consentauthz.v1 import consent_pb2, decision_pb2

from .conftest import Running

ACTIONS = {
    "grant": consent_pb2.CONSENT_ACTION_GRANT,
    "withdraw": consent_pb2.CONSENT_ACTION_WITHDRAW,
    "object": consent_pb2.CONSENT_ACTION_OBJECT,
    "opt_out": consent_pb2.CONSENT_ACTION_OPT_OUT_OF_SALE,
    "opt_in": consent_pb2.CONSENT_ACTION_OPT_IN_TO_SALE,
    "limit": consent_pb2.CONSENT_ACTION_LIMIT_SENSITIVE,
}
METHODS = {
    "affirmative": consent_pb2.COLLECTION_METHOD_AFFIRMATIVE,
    "pre_ticked": consent_pb2.COLLECTION_METHOD_PRE_TICKED,
    "implied": consent_pb2.COLLECTION_METHOD_IMPLIED,
    "parental": consent_pb2.COLLECTION_METHOD_PARENTAL,
}


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def record(s: Running, subject: str, action: str, purpose: str = "", *,
           categories: tuple[str, ...] = (), method: str = "affirmative",
           explicit: bool = False, expires_in: timedelta | None = None,
           collected_ago: timedelta | None = None,
           **extra: object) -> consent_pb2.RecordConsentResponse:
    now = datetime.now(UTC)
    req = consent_pb2.RecordConsentRequest(
        subject_id=subject, purpose=purpose, data_categories=list(categories),
        action=ACTIONS[action], explicit=explicit,
        method=METHODS[method] if action in ("grant", "opt_in") else 0,
        source="web-form" if action in ("grant", "opt_in") else "",
        notice_version="2026-01" if action in ("grant", "opt_in") else "", **extra)
    if collected_ago is not None:
        req.collected_at.CopyFrom(ts(now - collected_ago))
    if expires_in is not None:
        req.expires_at.CopyFrom(ts(now + expires_in))
    return s.consent.RecordConsent(req)


def subject(s: Running, subject_id: str, jurisdiction: str = "", age: int | None = None) -> str:
    birth = ""
    if age is not None:
        today = date.today()
        birth = today.replace(year=today.year - age).isoformat() if not (
            today.month == 2 and today.day == 29) else date(today.year - age, 2, 28).isoformat()
    resp = s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=subject_id, jurisdiction=jurisdiction, birth_date=birth))
    return str(resp.consistency_token)


def check(s: Running, subject_id: str, purpose: str, category: str, jurisdiction: str = "",
          **context: str) -> decision_pb2.CheckResponse:
    return s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject_id, purpose=purpose, data_category=category,
        jurisdiction=jurisdiction, context=context))


def decision_name(resp: decision_pb2.CheckResponse) -> str:
    return str(decision_pb2.Decision.Name(resp.decision)).removeprefix("DECISION_")


def field_violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out
