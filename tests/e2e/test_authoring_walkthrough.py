"""docs/policy-authoring.md's walkthrough, run with the CLI as a policy author would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from consentauthz.v1 import decision_pb2
from tests.conftest import POLICIES, start_server

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"
DOC = (ROOT / "docs" / "policy-authoring.md").read_text()
PURPOSE = "analytics.reporting.campaign_insights"


def block(after: str, lang: str) -> str:
    """The first fenced block of `lang` after the text `after` in the walkthrough."""
    start = DOC.index("## Walkthrough")
    found = re.search(re.escape(after) + r".*?```" + lang + r"\n(.*?)```", DOC[start:], re.S)
    assert found, f"no {lang} block after {after!r}"
    return "\n".join(line[3:] if line.startswith("   ") else line
                     for line in found.group(1).splitlines()) + "\n"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_walkthrough(tmp_path: Path) -> None:
    # Some history to diff against: a server on the shipped pack answered a few checks.
    data = tmp_path / "var"
    running = start_server(data)
    try:
        for subject in ("ana", "ben"):
            running.decisions.Check(decision_pb2.CheckRequest(
                subject_id=subject, purpose=PURPOSE,
                data_category="user.behavior.purchase_history", jurisdiction="DE"))
        running.decisions.Check(decision_pb2.CheckRequest(
            subject_id="ana", purpose="essential.service", data_category="user.contact.email",
            jurisdiction="DE"))
    finally:
        running.channel.close()
        running.app.stop(grace=None)

    candidate = Path(shutil.copytree(POLICIES, tmp_path / "candidate"))
    # 1. the test first
    (candidate / "tests" / "campaign_insights_test.yaml").write_text(
        block("1. **Write the test**", "yaml"))
    # 2. see it fail, as the doc shows
    failing = cli("policy", "test", str(candidate))
    assert failing.returncode == 1
    shown = block("2. **See it fail**", "").strip().splitlines()
    for line in shown:
        assert line.strip() in failing.stdout, (line, failing.stdout)
    assert re.search(r"^\d+ passed, 1 failed$", failing.stdout, re.M)
    # 3. the fix
    rule = block("3. **Fix it**", "")
    gdpr = candidate / "gdpr.csv"
    gdpr.write_text(gdpr.read_text() + rule)
    passing = cli("policy", "test", str(candidate), "--coverage")
    assert passing.returncode == 0, passing.stdout
    assert "(100.0%)" in passing.stdout
    # 4. lint
    linted = cli("policy", "lint", str(candidate))
    assert linted.returncode == 0 and "0 error(s)" in linted.stdout, linted.stdout
    shadowed_dir = Path(shutil.copytree(candidate, tmp_path / "shadowed"))
    (shadowed_dir / "gdpr.csv").write_text(gdpr.read_text().replace("p, 504,", "p, 700,"))
    shadowed = cli("policy", "lint", str(shadowed_dir))
    assert shadowed.returncode == 1
    assert "rule never decides: contradicted by gdpr.csv:65 (DENY NO_CONSENT when always)" in \
        shadowed.stdout
    # 5. the consequence on past decisions
    diffed = cli("policy", "diff", "--candidate", str(candidate), "--data-dir", str(data))
    assert diffed.returncode == 0, diffed.stderr
    assert "would flip: 2 (DENY->ALLOW 2)" in diffed.stdout, diffed.stdout
    assert f"purpose {PURPOSE}  regime gdpr  rule gdpr.csv:65 -> gdpr.csv:" in diffed.stdout
    assert "unchanged: 1" in diffed.stdout
