"""A server killed mid-traffic (SIGKILL) has lost no answered decision.

Every decision a client got an answer for must be retrievable after a restart on the same
data dir, and the log's chain must still verify. This holds for direct appends (a commit
precedes the answer) and for the queued writer in block mode (the answer waits for the
commit); drop mode would fail it by design.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

from consentauthz.decisionlog import SqliteDecisionLog
from consentauthz.v1 import audit_pb2, audit_pb2_grpc, decision_pb2, decision_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"
CLIENTS = 6
TRAFFIC_SECONDS = 1.5


@contextmanager
def serve(data_dir: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with open(log, "a") as stderr:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--no-watch"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert proc.stdout is not None
        target = ""
        deadline = time.monotonic() + 30
        while not target and time.monotonic() < deadline and proc.poll() is None:
            if m := re.search(r"listening on (\S+) ", proc.stdout.readline()):
                target = m.group(1)
        assert target, log.read_text()
        yield proc, target
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def drive(target: str, client: int, answered: list[str], lock: threading.Lock,
          stop: threading.Event) -> None:
    """Check until the server goes away; keep the id of every answered decision."""
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        i = 0
        while not stop.is_set():
            request = decision_pb2.CheckRequest(
                subject_id=f"s{client}-{i}", purpose="marketing.communications.email",
                data_category="user.contact.email", jurisdiction="DE")
            try:
                response = stub.Check(request, timeout=5)
            except grpc.RpcError:
                return  # killed: whatever was not answered may be lost
            with lock:
                answered.append(response.decision_id)
            i += 1


def test_every_answered_decision_survives_sigkill(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    answered: list[str] = []
    lock, stop = threading.Lock(), threading.Event()
    with serve(data_dir, log) as (proc, target):
        clients = [threading.Thread(target=drive, args=(target, c, answered, lock, stop),
                                    daemon=True) for c in range(CLIENTS)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + TRAFFIC_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
        with lock:
            before_kill = len(answered)
        os.kill(proc.pid, signal.SIGKILL)  # mid-traffic: no shutdown, no flush
        assert proc.wait(timeout=10) == -signal.SIGKILL
        stop.set()
        for t in clients:
            t.join(timeout=10)
            assert not t.is_alive()
    assert before_kill > 50, "too little traffic to mean anything"

    with serve(data_dir, log) as (_, target), grpc.insecure_channel(target) as channel:
        audit = audit_pb2_grpc.AuditServiceStub(channel)

        def lookup(decision_id: str) -> str:
            try:
                found = audit.GetDecision(
                    audit_pb2.GetDecisionRequest(decision_id=decision_id), timeout=10)
            except grpc.RpcError as exc:
                return f"{decision_id}: {exc.code().name}"
            return "" if found.decision_id == decision_id else f"{decision_id}: mismatch"

        with ThreadPoolExecutor(8) as pool:
            missing = [m for m in pool.map(lookup, answered) if m]
        assert missing == [], f"{len(missing)} of {len(answered)} answered decisions lost"

        reader = SqliteDecisionLog(data_dir / "decisions.db", read_only=True)
        try:
            result = reader.verify()
        finally:
            reader.close()
        assert result.ok, result.broken
        assert result.checked >= len(answered)
