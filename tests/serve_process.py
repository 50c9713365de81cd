"""`consentauthz serve` as a real process: started, talked to over gRPC, stopped, or
watched refusing to start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from consentauthz.v1 import consent_pb2_grpc, decision_pb2, decision_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "consentauthz"


def pg_url(dsn: str) -> str:
    """The --ledger URL of a tests/pg.py database."""
    return "postgresql://postgres@127.0.0.1:5432/" + dsn.rsplit("dbname=", 1)[1]


def serve_command(data_dir: Path, *extra: str) -> list[str]:
    return [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
            "--no-watch", *extra]


def serve_env(**env: str) -> dict[str, str]:
    """This environment without any CONSENTAUTHZ_ setting, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTAUTHZ_")}
    return base | env


@dataclass
class Served:
    proc: subprocess.Popen[str]
    channel: grpc.Channel
    decisions: decision_pb2_grpc.DecisionServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        assert self.proc.wait(timeout=20) == 0, "serve did not exit cleanly"


def start_serve(command: list[str], env: dict[str, str],
                output: list[str] | None = None) -> Served:
    """Start `command` and wait until it serves; fail (and kill it) if it does not.
    Every line the process writes is kept in `output` (a new list if none is given)."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    target = ""
    seen: list[str] = output if output is not None else []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        seen.append(line)
        if m := re.search(r"serving on port (\d+)", line):
            target = f"127.0.0.1:{m.group(1)}"
            break
    if not target:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError("serve did not start:\n" + "".join(seen))

    def drain() -> None:  # so that it never blocks on a full pipe
        seen.extend(proc.stdout or ())

    threading.Thread(target=drain, daemon=True).start()
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    return Served(proc, channel, decision_pb2_grpc.DecisionServiceStub(channel),
                  consent_pb2_grpc.ConsentServiceStub(channel), seen)


def refused(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command`, which must refuse to serve: (exit code, stderr). A server that starts
    instead is stopped at once and fails the test."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "listening on ..." once it serves; "" when it exits
    if first:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        raise AssertionError(f"serve started where it must refuse: {first}{err}")
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not log records (the CLI's `error: ...`)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def position(token: str) -> int:
    """The position a consistency token names in its subject's ledger partition (tokens
    are `<partition>.<position>`, or a bare position from a ledger of one partition)."""
    return int(token.rpartition(".")[2] or 0)


def decide(s: Served, subject: str, token: str = "") -> str:
    """ALLOW or DENY for e-mail marketing to `subject` in Germany, seeing `token`."""
    resp = s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose="marketing.communications.email",
        data_category="user.contact.email", jurisdiction="DE",
        consistency_token=token), timeout=10)
    return str(decision_pb2.Decision.Name(resp.decision)).removeprefix("DECISION_")
