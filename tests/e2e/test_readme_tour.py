"""The README's tour, run exactly as written against `consentauthz serve` in a process."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A two-minute tour.*?```console\n(.*?)```", text, re.S)
    assert block, "README has no tour block"
    return [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    target = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := re.search(r"listening on (\S+) ", line):
            target = m.group(1)
            break
        if proc.poll() is not None:
            break
    assert target, f"server did not start: {proc.stderr.read() if proc.stderr else ''}"
    try:
        yield target
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0, "serve must exit cleanly on SIGTERM"


def test_tour_works_as_written(served: str) -> None:
    env = {**os.environ, "CONSENTAUTHZ_TARGET": served}
    outputs = []
    decision_id = ""
    for command in tour_commands():
        argv = shlex.split(command.replace("DECISION_ID", decision_id))
        assert argv[0] == ".venv/bin/consentauthz"
        done = subprocess.run([str(BIN), *argv[1:]], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
        if m := re.search(r"decision id\s+(\S+)", done.stdout):
            decision_id = m.group(1)
    grant, allow, withdraw, deny, show, history, query = outputs
    assert "recorded grant" in grant
    assert allow.startswith("ALLOW  CONSENT_GIVEN") and "gdpr.csv:64" in allow
    assert "recorded withdraw" in withdraw
    assert deny.startswith("DENY  CONSENT_WITHDRAWN")
    assert "matched gdpr.csv" in deny  # --explain
    assert decision_id in show and "CONSENT_WITHDRAWN" in show and "trace id" in show
    assert "alice@example.com" not in show
    assert "GRANT" in history and "WITHDRAW" in history and "newsletter-form" in history
    assert query.count("\n") == 2 and "CONSENT_GIVEN" in query
