"""`consentauthz ledger migrate` as an operator runs it (issue 19), with real processes:
replicas of one partition serve and log decisions, the service is stopped, the ledger is
migrated into four partitions, and the service comes back. Decisions logged before the
migration still replay, a checkpoint held from before it still verifies, and the tokens
callers hold still mean what they meant."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from consentauthz.v1 import consent_pb2, decision_pb2
from consentauthz.validation import parse_token
from tests.serve_process import BIN, ROOT, Served, pg_url, serve_command, serve_env, start_serve

EMAIL = "marketing.communications.email"
CATEGORY = "user.contact.email"
SUBJECTS = [f"customer-{i}@example.com" for i in range(6)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], cwd=ROOT, env=serve_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def grant(s: Served, subject: str) -> str:
    return str(s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=consent_pb2.CONSENT_ACTION_GRANT, purpose=EMAIL,
        data_categories=[CATEGORY], method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE,
        jurisdiction="DE", source="web-form", notice_version="2026-01")).consistency_token)


def check(s: Served, subject: str, token: str) -> Any:
    return s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose=EMAIL, data_category=CATEGORY, jurisdiction="DE",
        consistency_token=token))


def test_migrate_between_two_runs_of_the_service(postgres_dsn: str, tmp_path: Path) -> None:
    data, ledger = tmp_path / "data", pg_url(postgres_dsn)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "pseudonym.key").write_text("ab" * 32 + "\n")
    (keys / "master.key").write_text("cd" * 32 + "\n")
    ring = ["--pseudonym-key-file", str(keys / "pseudonym.key")]
    served = ["--ledger", ledger, *ring, "--master-key-file", str(keys / "master.key")]
    where = ["--data-dir", str(data), "--ledger", ledger, *ring]
    s = start_serve(serve_command(data, *served, "--ledger-partitions", "1"), serve_env())
    try:
        tokens = [grant(s, subject) for subject in SUBJECTS]
        assert tokens == [str(i) for i in range(1, 7)]  # one partition: bare positions
        before = [check(s, subject, token) for subject, token in zip(SUBJECTS, tokens, strict=True)]
        assert all(r.decision == decision_pb2.DECISION_ALLOW for r in before)
    finally:
        s.stop()
    checkpoints = tmp_path / "held.jsonl"
    done = cli("audit", "checkpoint", "--append", str(checkpoints), *where)
    assert done.returncode == 0, done.stderr

    dry = cli("ledger", "migrate", "--ledger", ledger, "--partitions", "4", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["committed"] is False
    done = cli("ledger", "migrate", "--ledger", ledger, "--partitions", "4")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["committed"] and report["verified_before"] and report["verified_after"]
    assert (report["partitions"], report["entries_moved"], report["old_head"]) == (4, 6, 6)
    again = cli("ledger", "migrate", "--ledger", ledger, "--partitions", "8")
    assert again.returncode == 1 and "already has 4 partitions" in again.stderr
    status = json.loads(cli("ledger", "status", "--ledger", ledger).stdout)
    assert status["partitions"] == 4 and status["identity"] == report["identity"]
    assert [h["position"] for h in status["heads"]] == [6, 6, 6, 6]

    s = start_serve(serve_command(data, *served), serve_env())
    try:
        # The tokens callers hold: each subject's at once, as before.
        after = [check(s, subject, token) for subject, token in zip(SUBJECTS, tokens, strict=True)]
        assert all(r.decision == decision_pb2.DECISION_ALLOW for r in after)
        with pytest.raises(grpc.RpcError) as refused:
            check(s, SUBJECTS[0], "7")  # no ledger ever issued this bare position
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        new = parse_token(grant(s, SUBJECTS[0]))
        assert new is not None and new[0] is not None and new[1] == 7
    finally:
        s.stop()

    for decision in before:
        done = cli("audit", "replay", decision.decision_id, *where)
        assert done.returncode == 0, done.stdout + done.stderr
    done = cli("audit", "verify", "--checkpoint", str(checkpoints), *where)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_ledger_commands_make_no_ledger_where_there_is_none(postgres_dsn: str) -> None:
    ledger = pg_url(postgres_dsn)
    status = cli("ledger", "status", "--ledger", ledger)
    assert status.returncode == 1 and "holds no consent ledger" in status.stderr
    done = cli("ledger", "migrate", "--ledger", ledger, "--partitions", "4")
    assert done.returncode == 1 and "holds no consent ledger" in done.stderr
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass('ledger')").fetchone() == (None,)
