"""An Art. 15/20 export that always works (issue 14, item 3): a subject with 15,000
decisions has an export larger than one gRPC message may be. ExportSubjectStream sends it
in chunks, whatever its size (the same document ExportSubject gives for smaller ones);
ExportSubject says which RPC to use instead of failing on the transport's limit; and
`consentauthz consent export` writes it to a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from consentauthz.server.limits import MAX_MESSAGE_BYTES
from consentauthz.v1 import consent_pb2, decision_pb2
from tests.conftest import Running
from tests.scenario import record

BIN = Path(sys.executable).parent / "consentauthz"
SUBJECT = "frequent-customer@example.com"
DECISIONS = 15_000


def many_decisions(s: Running) -> None:
    record(s, SUBJECT, "grant", "marketing.communications.email",
           categories=("user.contact.email",), jurisdiction="DE",
           evidence={"ip": "203.0.113.77"})
    item = decision_pb2.CheckRequest(subject_id=SUBJECT,
                                     purpose="marketing.communications.email",
                                     data_category="user.contact.email", jurisdiction="DE")
    for _ in range(DECISIONS // 1000):
        s.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[item] * 1000))


def test_a_subject_with_many_decisions_can_always_be_exported(server: Running,
                                                               tmp_path: Path) -> None:
    many_decisions(server)
    with pytest.raises(grpc.RpcError) as err:
        server.consent.ExportSubject(consent_pb2.ExportSubjectRequest(subject_id=SUBJECT))
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ExportSubjectStream" in str(err.value.details())
    assert "consent export" in str(err.value.details())

    chunks = list(server.consent.ExportSubjectStream(
        consent_pb2.ExportSubjectRequest(subject_id=SUBJECT)))
    assert len(chunks) > 1 and all(len(c.data) <= 1 << 20 for c in chunks)
    assert chunks[0].content_type == "application/json"
    data = b"".join(c.data for c in chunks)
    assert len(data) > MAX_MESSAGE_BYTES
    doc = json.loads(data)
    assert len(doc["decisions"]) == DECISIONS
    assert doc["consent_records"][0]["evidence"] == {"ip": "203.0.113.77"}

    out = tmp_path / "export.json"
    done = subprocess.run(
        [str(BIN), "consent", "export", "--subject", SUBJECT, "--output", str(out),
         "--target", f"127.0.0.1:{server.app.port}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert len(written["decisions"]) == DECISIONS
    assert {k: v for k, v in written.items() if k != "generated_at"} == \
        {k: v for k, v in doc.items() if k != "generated_at"}


def test_a_small_export_is_the_same_document_either_way(server: Running) -> None:
    server.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=SUBJECT, jurisdiction="FR"))
    unary = json.loads(server.consent.ExportSubject(
        consent_pb2.ExportSubjectRequest(subject_id=SUBJECT)).json)
    streamed = json.loads(b"".join(c.data for c in server.consent.ExportSubjectStream(
        consent_pb2.ExportSubjectRequest(subject_id=SUBJECT))))
    unary.pop("generated_at")
    streamed.pop("generated_at")
    assert unary == streamed and unary["profile"]["jurisdiction"] == "FR"
    with pytest.raises(grpc.RpcError) as err:
        list(server.consent.ExportSubjectStream(consent_pb2.ExportSubjectRequest()))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
