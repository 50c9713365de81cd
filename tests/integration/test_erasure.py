"""Encryption at rest, erasure by crypto-shredding, and export, through a real server.

Evidence and birth dates never reach the disk in the clear; EraseSubject destroys the
subject's key so they can never be read again, while both hash chains still verify;
afterwards checks deny with SUBJECT_ERASED except on a legal obligation.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2
from tests.conftest import Running
from tests.scenario import check, decision_name, record, subject

EMAIL = "marketing.communications.email"
IP = "203.0.113.99"
AGENT = "CanaryBrowser/7.7"
BIRTH = "1987-06-05"
SUBJECT = "erase-me@example.com"


def disk_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def grant_with_evidence(s: Running) -> str:
    subject(s, SUBJECT, "DE")
    s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(subject_id=SUBJECT,
                                                             birth_date=BIRTH))
    return str(record(s, SUBJECT, "grant", EMAIL, categories=("user.contact.email",),
                      evidence={"ip": IP, "user_agent": AGENT}).consistency_token)


def export(s: Running) -> dict[str, object]:
    resp = s.consent.ExportSubject(consent_pb2.ExportSubjectRequest(subject_id=SUBJECT))
    assert resp.content_type == "application/json"
    doc: dict[str, object] = json.loads(resp.json)
    return doc


def test_evidence_and_birth_date_never_reach_the_disk_in_the_clear(server: Running) -> None:
    grant_with_evidence(server)
    state = server.consent.GetConsentState(
        consent_pb2.GetConsentStateRequest(subject_id=SUBJECT))
    assert state.birth_date == BIRTH
    assert dict(state.records[0].evidence) == {"ip": IP, "user_agent": AGENT}
    raw = disk_bytes(server.data_dir)
    for secret in (IP, AGENT, BIRTH, SUBJECT):
        assert secret.encode() not in raw, f"{secret} is on disk in the clear"


def test_erasure_shreds_evidence_denies_checks_and_keeps_the_chains(
        server: Running) -> None:
    grant_with_evidence(server)
    assert decision_name(check(server, SUBJECT, EMAIL, "user.contact.email", "DE")) == "ALLOW"
    before = export(server)
    records = before["consent_records"]
    assert isinstance(records, list) and records[0]["evidence"] == {
        "ip": IP, "user_agent": AGENT}
    assert before["profile"] == {"jurisdiction": "DE", "birth_date": BIRTH, "erased_at": None,
                                 "erased_by": None}
    assert len(before["decisions"]) == 1  # type: ignore[arg-type]
    with sqlite3.connect(server.data_dir / "subject_keys.db") as db:
        wrapped = [row[0] for row in db.execute("SELECT wrapped FROM subject_keys")]
    assert len(wrapped) == 1 and wrapped[0]

    erased = server.consent.EraseSubject(consent_pb2.EraseSubjectRequest(subject_id=SUBJECT))
    assert erased.erased_at.seconds > 0

    # Checks: denied, except on a legal obligation.
    resp = server.decisions.Check(decision_pb2.CheckRequest(
        subject_id=SUBJECT, purpose=EMAIL, data_category="user.contact.email",
        jurisdiction="DE", consistency_token=erased.consistency_token))
    assert (decision_name(resp), resp.reason) == ("DENY", "SUBJECT_ERASED")
    legal = check(server, SUBJECT, "essential.legal_obligation", "user.name", "DE")
    assert (decision_name(legal), legal.reason) == ("ALLOW", "LEGAL_OBLIGATION")

    # The evidence and the birth date can no longer be read, by anyone.
    state = server.consent.GetConsentState(
        consent_pb2.GetConsentStateRequest(subject_id=SUBJECT))
    assert state.birth_date == "" and state.erased_at.seconds > 0
    assert all(not r.evidence for r in state.records)
    history = server.consent.ListConsentEvents(
        consent_pb2.ListConsentEventsRequest(subject_id=SUBJECT))
    assert history.events and all(not e.evidence for e in history.events)
    after = export(server)
    assert after["profile"]["birth_date"] is None  # type: ignore[index]
    assert after["profile"]["erased_at"]  # type: ignore[index]
    # Who asked: with no callers configured, every call is the reserved `anonymous`.
    assert after["profile"]["erased_by"] == "anonymous"  # type: ignore[index]
    assert all(r["evidence"] is None for r in after["consent_records"])  # type: ignore[union-attr]
    # The wrapped key itself is gone from the key store's files (database and WAL).
    assert wrapped[0].encode() not in disk_bytes(server.data_dir)

    # Both hash chains still verify: erasure changed no ledger or decision-log entry.
    report = server.audit.VerifyChains(audit_pb2.VerifyChainsRequest())
    assert report.chains and all(c.ok for c in report.chains), report

    # Nothing more is recorded about them; erasing again changes nothing.
    for write in (lambda: record(server, SUBJECT, "grant", EMAIL),
                  lambda: subject(server, SUBJECT, "FR")):
        with pytest.raises(grpc.RpcError) as err:
            write()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    again = server.consent.EraseSubject(consent_pb2.EraseSubjectRequest(subject_id=SUBJECT))
    assert again.consistency_token == erased.consistency_token


def test_erasing_an_unknown_subject_refuses_later_writes(server: Running) -> None:
    server.consent.EraseSubject(consent_pb2.EraseSubjectRequest(subject_id="never-seen"))
    with pytest.raises(grpc.RpcError) as err:
        record(server, "never-seen", "grant", EMAIL)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("rpc", ["EraseSubject", "ExportSubject"])
def test_bad_subject_id_is_invalid_argument(server: Running, rpc: str) -> None:
    request = (consent_pb2.EraseSubjectRequest if rpc == "EraseSubject"
               else consent_pb2.ExportSubjectRequest)(subject_id="")
    with pytest.raises(grpc.RpcError) as err:
        getattr(server.consent, rpc)(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
