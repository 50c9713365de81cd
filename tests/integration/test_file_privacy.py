"""The data dir holds personal data and keys, so it is its user's only (issue 14, item 6):
a real `serve` process makes the dir 0700 and every file in it 0600 (the SQLite WAL and
shared-memory files included, while it runs), and a data dir left readable by others
(an earlier release's, or copied with the wrong permissions) is tightened at start."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from consentauthz.v1 import consent_pb2, decision_pb2
from tests.serve_process import Served, serve_command, serve_env, start_serve

EMAIL = "marketing.communications.email"


def use(s: Served, subject: str) -> None:
    """A write, a check (a decision-log entry) and a state read."""
    written = s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
        subject_id=subject, action=consent_pb2.CONSENT_ACTION_GRANT, purpose=EMAIL,
        data_categories=["user.contact.email"],
        method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, jurisdiction="DE",
        source="web-form", notice_version="2026-01", evidence={"ip": "203.0.113.9"}))
    s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose=EMAIL, data_category="user.contact.email",
        jurisdiction="DE", consistency_token=written.consistency_token))


def open_to_others(data: Path) -> list[str]:
    """Every path under `data` (itself included) that group or others may use."""
    return [f"{p.relative_to(data.parent)} {stat.filemode(p.lstat().st_mode)}"
            for p in (data, *data.rglob("*"))
            if not p.is_symlink() and p.lstat().st_mode & 0o077]


def test_the_data_dir_and_every_file_in_it_are_the_users_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = start_serve(serve_command(data), serve_env())
    try:
        use(s, "private-subject@example.com")
        names = {p.name for p in data.rglob("*")}
        # While it runs: the WAL and shared-memory files exist, and are private too.
        assert {"ledger.db-wal", "ledger.db-shm"} <= names, sorted(names)
        assert "master.key" in names and "pseudonym.key" in names
        assert open_to_others(data) == []
    finally:
        s.stop()
    assert open_to_others(data) == []
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_data_dir_readable_by_others_is_made_private_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = start_serve(serve_command(data), serve_env())
    try:
        use(s, "before@example.com")
    finally:
        s.stop()
    # As an earlier release left it (0755 dirs, 0644 files), or as copied by hand.
    for p in (data, *data.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    assert open_to_others(data)
    output: list[str] = []
    s = start_serve(serve_command(data), serve_env(), output)
    try:
        assert open_to_others(data) == []
        use(s, "after@example.com")  # and it still serves from what it had
        assert open_to_others(data) == []
    finally:
        s.stop()
    deadline = time.monotonic() + 5
    while not any("made private" in line for line in output) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("readable by others; made private" in line for line in output)
