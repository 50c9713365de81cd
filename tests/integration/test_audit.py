"""Auditor tooling: verify, show, replay (also after a policy change), subject reports,
offline on a data dir and online against a server with the same answers."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consentauthz.v1 import audit_pb2
from tests.conftest import POLICIES, Running, start_server
from tests.scenario import check, record, subject

BIN = Path(sys.executable).parent / "consentauthz"
EMAIL = "marketing.communications.email"


def audit(*args: str, target: str = "", data_dir: Path | None = None,
          key: Path | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--data-dir", str(data_dir)] if data_dir else ["--target", target]
    if key:
        where += ["--pseudonym-key-file", str(key)]
    return subprocess.run([str(BIN), "audit", *args, *where], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    policies = Path(shutil.copytree(POLICIES, tmp_path / "policies"))
    running = start_server(tmp_path / "data", policies)
    try:
        yield running, policies
    finally:
        running.channel.close()
        running.app.stop(grace=None)


def target(s: Running) -> str:
    return f"127.0.0.1:{s.app.port}"


def test_show_tells_the_whole_story_online_and_offline(live: tuple[Running, Path],
                                                       tmp_path: Path) -> None:
    s, _ = live
    subject(s, "alice", "DE")
    grant = record(s, "alice", "grant", EMAIL, evidence={"ip": "203.0.113.7",
                                                         "form": "newsletter-v3"})
    record(s, "alice", "grant", "analytics", method="pre_ticked")
    resp = check(s, "alice", EMAIL, "user.contact.email")
    online = audit("show", resp.decision_id, target=target(s))
    assert online.returncode == 0, online.stderr
    out = online.stdout
    assert resp.decision_id in out and "CONSENT_GIVEN" in out and resp.matched_rule in out
    assert grant.record_id in out and "evidence ip: 203.0.113.7" in out
    assert "notice 2026-01, source web-form" in out
    assert "latest applicable" in out  # the engine's account, with record validity
    assert "replay: confirms the logged decision" in out
    assert "alice" not in out
    # An auditor's copy of the data dir gives the same story without the server.
    copy = Path(shutil.copytree(s.data_dir, tmp_path / "copy"))
    offline = audit("show", resp.decision_id, data_dir=copy)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout


def test_replay_confirms_decisions_made_before_a_policy_change(
        live: tuple[Running, Path]) -> None:
    s, policies = live
    postal = "user.contact.address"
    record(s, "bob", "grant", EMAIL)
    before = check(s, "bob", EMAIL, postal, "DE")
    assert before.reason == "CONSENT_GIVEN"
    # The authors now require explicit consent for e-mail marketing that uses postal
    # addresses; the new version passes its tests and goes live.
    gdpr = policies / "gdpr.csv"
    gdpr.write_text(gdpr.read_text() + (
        f"p, 605, gdpr, marketing.communications.email, {postal}, explicit_consent, allow, "
        "CONSENT_GIVEN, explicit_consent\n"
        f"p, 606, gdpr, marketing.communications.email, {postal}, always, deny, "
        "EXPLICIT_CONSENT_REQUIRED,\n"))
    attempt = s.app.reloader.reload()
    assert attempt is not None and attempt.accepted, attempt
    after = check(s, "bob", EMAIL, postal, "DE")
    assert after.reason == "EXPLICIT_CONSENT_REQUIRED"
    assert after.policy_version != before.policy_version
    # A later withdrawal must not change what the earlier decision saw either.
    record(s, "bob", "withdraw", EMAIL)
    for decision in (before, after):
        done = audit("replay", decision.decision_id, target=target(s))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("confirmed:")
    replayed = s.audit.ReplayDecision(audit_pb2.ReplayDecisionRequest(
        decision_id=before.decision_id))
    assert replayed.confirmed and replayed.replayed.reason == "CONSENT_GIVEN"
    assert replayed.record.policy_version == before.policy_version


def test_verify_and_tamper_with_the_ledger(live: tuple[Running, Path]) -> None:
    s, _ = live
    for name in ("a", "b", "c"):
        record(s, name, "grant", EMAIL)
    ok = audit("verify", target=target(s))
    assert ok.returncode == 0, ok.stdout
    assert "consent ledger: ok, 3 entries" in ok.stdout
    s.app.stop(grace=None)
    db = s.data_dir / "ledger.db"
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER ledger_no_update")
        body = conn.execute("SELECT body FROM ledger WHERE seq = 2").fetchone()[0]
        conn.execute("UPDATE ledger SET body = ? WHERE seq = 2",
                     (body.replace("AFFIRMATIVE", "PARENTAL"),))
    broken = audit("verify", data_dir=s.data_dir)
    assert broken.returncode == 1
    assert "consent ledger: BROKEN at entry #2" in broken.stdout
    assert "content does not match its hash" in broken.stdout


def test_a_tampered_projection_is_caught(live: tuple[Running, Path]) -> None:
    s, _ = live
    record(s, "dora", "withdraw", EMAIL)
    s.app.stop(grace=None)
    with sqlite3.connect(s.data_dir / "ledger.db") as conn:
        state = conn.execute("SELECT subject, state FROM subject_state").fetchone()
        conn.execute("UPDATE subject_state SET state = ? WHERE subject = ?",
                     (state[1].replace("WITHDRAW", "GRANT"), state[0]))
    broken = audit("verify", data_dir=s.data_dir)
    assert broken.returncode == 1 and "projection" in broken.stdout


def test_query_formats(live: tuple[Running, Path]) -> None:
    s, _ = live
    record(s, "erin", "grant", EMAIL)
    ids = [check(s, "erin", EMAIL, "user.contact.email", "DE").decision_id for _ in range(3)]
    check(s, "fred", EMAIL, "user.contact.email", "DE")
    jsonl = audit("query", "--subject", "erin", "--format", "jsonl", target=target(s))
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["decision_id"] for r in rows] == ids[::-1]
    csv_out = audit("query", "--decision", "deny", "--format", "csv", target=target(s))
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("time,decision_id,decision,reason") and len(lines) == 2
    assert "NO_CONSENT" in lines[1]
    assert audit("query", "--caller", "nobody", target=target(s)).stdout.strip() == \
        "no decisions"
    by_caller = audit("query", "--caller", "anonymous", "--format", "jsonl", target=target(s))
    assert len(by_caller.stdout.splitlines()) == 4


def test_subject_report(live: tuple[Running, Path], tmp_path: Path) -> None:
    s, _ = live
    record(s, "gina", "grant", EMAIL)
    check(s, "gina", EMAIL, "user.contact.email", "DE")
    check(s, "gina", EMAIL, "user.contact.email", "DE")
    check(s, "gina", "analytics", "user.device.cookie_id", "DE")
    check(s, "hal", EMAIL, "user.contact.email", "DE")
    done = audit("report", "--subject", "gina", target=target(s))
    report = json.loads(done.stdout)
    assert report["decisions"] == 3
    uses = {u["purpose"]: u for u in report["uses"]}
    assert uses[EMAIL]["allowed"] == 2 and uses[EMAIL]["legal_bases"] == ["consent"]
    assert uses[EMAIL]["callers"] == ["anonymous"]
    assert uses["analytics"] == {**uses["analytics"], "allowed": 0, "denied": 1}
    assert [r["action"] for r in report["consent_records"]] == ["GRANT"]
    page = tmp_path / "report.html"
    audit("report", "--subject", "gina", "--format", "html", "--output", str(page),
          target=target(s))
    text = page.read_text()
    assert text.startswith("<!doctype html>") and EMAIL in text and "<script" not in text


def test_decision_log_tamper_and_held_checkpoints(live: tuple[Running, Path],
                                                  tmp_path: Path) -> None:
    s, _ = live
    record(s, "ivy", "grant", EMAIL)
    ids = [check(s, "ivy", EMAIL, "user.contact.email", "DE").decision_id for _ in range(5)]
    held = tmp_path / "held.jsonl"
    cp = audit("checkpoint", "--append", str(held), target=target(s))
    assert cp.returncode == 0, cp.stderr
    kept = json.loads(held.read_text())
    assert kept["sequence"] == 5
    # And the consent ledger's head (one partition: the embedded ledger).
    assert [h[:2] for h in kept["consent_ledger"]] == [[0, 1]]
    ok = audit("verify", "--checkpoint", str(held), target=target(s))
    assert ok.returncode == 0 and "decision log: ok, 5 entries" in ok.stdout, ok.stdout
    s.app.stop(grace=None)

    # Cutting the newest entries leaves a valid prefix: only the held checkpoint sees it.
    cut = Path(shutil.copytree(s.data_dir, tmp_path / "cut"))
    with sqlite3.connect(cut / "decisions.db") as conn:
        conn.execute("DROP TRIGGER decisions_no_delete")
        conn.execute("DELETE FROM decisions WHERE seq > 3")
    assert audit("verify", data_dir=cut).returncode == 0
    caught = audit("verify", "--checkpoint", str(held), data_dir=cut)
    assert caught.returncode == 1 and "decision log: BROKEN" in caught.stdout, caught.stdout

    # Changing one byte of one entry: verify names exactly that entry.
    with sqlite3.connect(s.data_dir / "decisions.db") as conn:
        conn.execute("DROP TRIGGER decisions_no_update")
        body = conn.execute("SELECT record FROM decisions WHERE seq = 2").fetchone()[0]
        conn.execute("UPDATE decisions SET record = ? WHERE seq = 2",
                     (body.replace('"CONSENT_GIVEN"', '"CONSENT_GIVEM"'),))
    broken = audit("verify", data_dir=s.data_dir)
    assert broken.returncode == 1
    assert f"decision log: BROKEN at entry #2 ({ids[1]})" in broken.stdout, broken.stdout
