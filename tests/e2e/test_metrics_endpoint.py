"""`consentauthz serve --metrics-listen` in a process: Prometheus can scrape it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from consentauthz.v1 import decision_pb2, decision_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"


def test_serve_exposes_prometheus_metrics(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "var"), "--no-watch"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    target = metrics_url = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not metrics_url and proc.poll() is None:
        line = proc.stdout.readline()
        if m := re.search(r"listening on (\S+) ", line):
            target = m.group(1)
        if m := re.search(r"metrics on (http://\S+)", line):
            metrics_url = m.group(1)
    try:
        assert target and metrics_url, proc.stderr.read() if proc.stderr else ""
        with grpc.insecure_channel(target) as channel:
            decision_pb2_grpc.DecisionServiceStub(channel).Check(decision_pb2.CheckRequest(
                subject_id="endpoint-probe", purpose="marketing.communications.email",
                data_category="user.contact.email", jurisdiction="DE"), timeout=10)
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0, "serve must exit cleanly on SIGTERM"
    assert re.search(r'consentauthz_decisions_total\{[^}]*decision="DENY"[^}]*'
                     r'reason="NO_CONSENT"[^}]*\} 1\.0', text), text
    assert "consentauthz_check_duration_seconds_bucket" in text
    assert 'consentauthz_consent_cache_total{' in text
    assert "consentauthz_decisionlog_queue_depth" in text
    assert 'service_name="consentauthz"' in text  # target_info: the resource
    assert "endpoint-probe" not in text
