"""`consentauthz serve` with no OTLP endpoint records no spans of its own, yet a decision
still names the caller's trace when the caller sent one (W3C traceparent)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import grpc

from consentauthz.v1 import audit_pb2, audit_pb2_grpc, decision_pb2, decision_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_a_decision_carries_the_callers_trace_context(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var"),
         "--no-watch"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    target = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not target and proc.poll() is None:
        if m := re.search(r"listening on (\S+) ", proc.stdout.readline()):
            target = m.group(1)
    try:
        assert target, proc.stderr.read() if proc.stderr else ""
        request = decision_pb2.CheckRequest(
            subject_id="trace-probe", purpose="marketing.communications.email",
            data_category="user.contact.email", jurisdiction="DE")
        with grpc.insecure_channel(target) as channel:
            decisions = decision_pb2_grpc.DecisionServiceStub(channel)
            audit = audit_pb2_grpc.AuditServiceStub(channel)
            traced = decisions.Check(request, timeout=10, metadata=(
                ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
            untraced = decisions.Check(request, timeout=10)
            got = audit.GetDecision(audit_pb2.GetDecisionRequest(
                decision_id=traced.decision_id), timeout=10)
            plain = audit.GetDecision(audit_pb2.GetDecisionRequest(
                decision_id=untraced.decision_id), timeout=10)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0, "serve must exit cleanly on SIGTERM"
    assert (got.trace_id, got.span_id) == (TRACE_ID, PARENT_ID)
    assert (plain.trace_id, plain.span_id) == ("", "")
