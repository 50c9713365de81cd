"""Segment rotation and retention of the SQLite decision log, on real files."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest

from consentauthz.chain import GENESIS
from consentauthz.decisionlog import Problem, RetentionJob, SqliteDecisionLog
from consentauthz.domain import DecisionQuery, DecisionRecord
from tests.unit.test_decisionlog import T0, assert_chain, record

DAY = 24 * 60  # minutes


def sealed_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("decisions-*.db"))


def everything(dlog: SqliteDecisionLog) -> list[DecisionRecord]:
    return list(reversed(dlog.query(DecisionQuery(limit=100_000))))


# -- rotation ---------------------------------------------------------------------------


def test_default_is_one_file_as_always(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path / "decisions.db")
    dlog.append([record(f"d{i}", i) for i in range(50)])
    dlog.close()
    assert sealed_files(tmp_path) == []
    with sqlite3.connect(tmp_path / "decisions.db") as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (50,)


def test_a_directory_holds_decisions_db(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path)
    dlog.append([record("d1")])
    dlog.close()
    assert (tmp_path / "decisions.db").is_file()


def test_rotates_by_size_and_chains_across_segments(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path / "decisions.db", max_segment_bytes=40_000)
    stored = [r for i in range(60) for r in dlog.append([record(f"d{i}", i,
                                                                subject=f"s{i % 3}")])]
    sealed = sealed_files(tmp_path)
    assert len(sealed) >= 3
    # Named by the ranges they hold; the ranges tile 1..n with the active file last.
    ranges = [tuple(int(x) for x in name[len("decisions-"):-3].split("-")) for name in sealed]
    assert ranges[0][0] == 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    with sqlite3.connect(tmp_path / "decisions.db") as conn:
        active = conn.execute("SELECT min(seq), max(seq) FROM decisions").fetchone()
    if active != (None, None):  # else the last commit sealed it, and it starts empty
        ranges.append(active)
    assert ranges[-1][1] == 60
    # A segment's first entry links to the previous segment's last.
    first_of_second = stored[ranges[1][0] - 1]
    assert first_of_second.prev_hash == stored[ranges[0][1] - 1].entry_hash

    result = dlog.verify()
    assert result.ok, result.broken
    assert (result.checked, result.head_sequence) == (60, 60)
    for r in stored:
        assert dlog.get(r.decision_id) == r
    assert everything(dlog) == stored
    assert [r.decision_id for r in dlog.query(DecisionQuery(subject="s1", limit=100))] == [
        f"d{i}" for i in reversed(range(60)) if i % 3 == 1]
    dlog.close()


def test_query_pages_across_segments(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path, max_segment_bytes=1)  # every commit seals
    for i in range(12):
        dlog.append([record(f"d{i}", i)])
    assert len(sealed_files(tmp_path)) == 12
    seen, before = [], 0
    while page := dlog.query(DecisionQuery(limit=5, before_sequence=before)):
        seen.append([r.sequence for r in page])
        before = page[-1].sequence
    assert seen == [[12, 11, 10, 9, 8], [7, 6, 5, 4, 3], [2, 1]]
    start, end = T0 + timedelta(minutes=3), T0 + timedelta(minutes=6)
    assert [r.decision_id for r in dlog.query(DecisionQuery(start=start, end=end))] == [
        "d5", "d4", "d3"]
    dlog.close()


def test_reopen_continues_the_chain_in_a_new_segment(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path, max_segment_bytes=1)
    first = dlog.append([record("d1"), record("d2", 1)])
    dlog.close()

    dlog = SqliteDecisionLog(tmp_path, max_segment_bytes=1)
    (third,) = dlog.append([record("d3", 2)])
    assert (third.sequence, third.prev_hash) == (3, first[-1].entry_hash)
    assert dlog.get("d1") == first[0]
    assert_chain(everything(dlog))
    assert dlog.verify().ok
    dlog.close()
    reader = SqliteDecisionLog(tmp_path, read_only=True)
    assert reader.verify().checked == 3
    assert reader.checkpoint().entry_hash == third.entry_hash
    reader.close()


def test_sealed_segments_are_read_only_and_keep_their_triggers(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path)
    dlog.append([record("d1")])
    assert dlog.rotate()
    assert not dlog.rotate()  # nothing new to seal
    dlog.close()
    (name,) = sealed_files(tmp_path)
    path = tmp_path / name
    assert name == "decisions-000000000001-000000000001.db"
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not path.stat().st_mode & 0o077  # and this user's only
    assert not (tmp_path / (name + "-wal")).exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"decisions_no_update", "decisions_no_delete"}


def test_a_reader_holding_the_active_file_defers_sealing(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path, max_segment_bytes=1)
    dlog.append([record("d1")])
    reader = sqlite3.connect(f"{(tmp_path / 'decisions.db').as_uri()}?mode=ro", uri=True)
    reader.execute("SELECT count(*) FROM decisions").fetchone()
    try:
        dlog.append([record("d2", 1)])  # would seal; the reader's file must stay put
        assert sealed_files(tmp_path) == ["decisions-000000000001-000000000001.db"]
        assert reader.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
        assert not dlog.rotate()
    finally:
        reader.close()
    assert dlog.rotate()
    assert dlog.verify().ok
    assert [r.sequence for r in everything(dlog)] == [1, 2]
    dlog.close()


def test_read_only_sees_sealed_segments_without_an_active_file(tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path)
    dlog.append([record("d1")])
    dlog.rotate()
    dlog.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"decisions.db{suffix}").unlink(missing_ok=True)  # stopped mid-seal
    reader = SqliteDecisionLog(tmp_path, read_only=True)
    assert reader.get("d1") is not None
    assert reader.verify().ok
    reader.close()


# -- retention --------------------------------------------------------------------------


def three_segments(directory: Path, retention_days: float | None = 7
                   ) -> tuple[SqliteDecisionLog, list[list[DecisionRecord]]]:
    """Segments of decisions made on day 0, day 10 and (active) day 20."""
    dlog = SqliteDecisionLog(directory, retention_days=retention_days)
    segments = []
    for day in (0, 10, 20):
        segments.append(dlog.append([record(f"day{day}-{i}", day * DAY + i)
                                     for i in range(4)]))
        if day < 20:
            dlog.rotate()
    return dlog, segments


def test_retention_removes_whole_expired_segments_and_records_a_mark(tmp_path: Path) -> None:
    dlog, (old, mid, new) = three_segments(tmp_path)
    before = dlog.checkpoint()
    assert dlog.apply_retention(T0 + timedelta(days=7)) is None  # day 0 is not 7 days old
    mark = dlog.apply_retention(T0 + timedelta(days=15))
    assert mark is not None
    assert (mark.first_sequence, mark.prev_hash, mark.removed) == (5, old[-1].entry_hash, 4)
    expected = hashlib.sha256("".join(f"{r.entry_hash}\n" for r in old).encode()).hexdigest()
    assert mark.removed_digest == expected
    assert mark.segments == ("decisions-000000000001-000000000004.db",)
    assert sealed_files(tmp_path) == ["decisions-000000000005-000000000008.db"]
    manifest = json.loads((tmp_path / "decisions.retention.json").read_text())
    assert manifest["retention"] == [mark.to_dict()]

    assert dlog.get(old[0].decision_id) is None
    assert everything(dlog) == mid + new
    result = dlog.verify(checkpoints=[before])
    assert result.ok, result.broken
    assert (result.anchor_sequence, result.anchor_hash) == (4, old[-1].entry_hash)
    assert (result.checked, result.head_sequence) == (8, 12)
    # A checkpoint inside what was removed can no longer be confirmed, and says so.
    old_checkpoint = before.__class__(2, old[1].entry_hash, 2, old[1].time)
    at_the_cut = before.__class__(4, old[-1].entry_hash, 4, old[-1].time)
    result = dlog.verify(checkpoints=[old_checkpoint, at_the_cut])
    assert result.ok and result.expired == (old_checkpoint,)
    assert dlog.checkpoint().count == 8
    dlog.close()


def test_retention_runs_again_and_the_log_reopens_anchored(tmp_path: Path) -> None:
    dlog, (_old, _mid, new) = three_segments(tmp_path)
    dlog.apply_retention(T0 + timedelta(days=15))
    dlog.close()
    dlog = SqliteDecisionLog(tmp_path, retention_days=7)
    mark = dlog.apply_retention(T0 + timedelta(days=25))
    assert mark is not None and (mark.first_sequence, mark.removed) == (9, 4)
    assert len(dlog.retention_marks()) == 2
    (r,) = dlog.append([record("later", 30 * DAY)])
    assert (r.sequence, r.prev_hash) == (13, new[-1].entry_hash)
    result = dlog.verify()
    assert result.ok and (result.anchor_sequence, result.checked) == (8, 5)
    dlog.close()


def test_everything_sealed_removed_then_the_chain_continues_from_the_mark(
        tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(tmp_path, retention_days=1)
    old = dlog.append([record("d1"), record("d2", 1)])
    dlog.rotate()
    assert dlog.apply_retention(T0 + timedelta(days=2)) is not None
    dlog.close()
    dlog = SqliteDecisionLog(tmp_path, retention_days=1)
    head = dlog.checkpoint()
    assert (head.sequence, head.entry_hash, head.count, head.time) == (
        2, old[-1].entry_hash, 0, None)
    assert dlog.verify().ok
    (r,) = dlog.append([record("d3", 3 * DAY)])
    assert (r.sequence, r.prev_hash) == (3, old[-1].entry_hash)
    assert dlog.verify().ok
    dlog.close()


def test_an_interrupted_retention_finishes_on_open(tmp_path: Path) -> None:
    dlog, _ = three_segments(tmp_path)
    first = tmp_path / "decisions-000000000001-000000000004.db"
    kept_copy = tmp_path.parent / "copy.db"
    shutil.copy(first, kept_copy)
    dlog.apply_retention(T0 + timedelta(days=15))
    dlog.close()
    shutil.copy(kept_copy, first)  # as if the run stopped after writing its mark

    reader = SqliteDecisionLog(tmp_path, read_only=True)
    assert reader.get("day0-0") is None and reader.verify().ok
    reader.close()
    assert first.exists()
    dlog = SqliteDecisionLog(tmp_path)
    assert not first.exists()
    assert dlog.verify().ok
    dlog.close()


def test_without_retention_days_nothing_is_removed(tmp_path: Path) -> None:
    dlog, _ = three_segments(tmp_path, retention_days=None)
    assert dlog.apply_retention(T0 + timedelta(days=1000)) is None
    assert len(sealed_files(tmp_path)) == 2
    dlog.close()


def test_a_tampered_retention_mark_is_reported(tmp_path: Path) -> None:
    dlog, (_old, _, _) = three_segments(tmp_path)
    dlog.apply_retention(T0 + timedelta(days=15))
    dlog.close()
    manifest = tmp_path / "decisions.retention.json"
    doc = json.loads(manifest.read_text())

    doc["retention"][0]["removed"] = 3
    manifest.write_text(json.dumps(doc))
    result = SqliteDecisionLog(tmp_path, read_only=True).verify()
    assert not result.ok and result.broken is not None
    assert (result.broken.problem, result.broken.sequence) == (Problem.RETENTION, 5)

    doc["retention"][0]["removed"] = 4
    doc["retention"][0]["prev_hash"] = GENESIS
    manifest.write_text(json.dumps(doc))
    result = SqliteDecisionLog(tmp_path, read_only=True).verify()
    assert result.broken is not None
    assert (result.broken.problem, result.broken.sequence) == (Problem.BROKEN_LINK, 5)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_segment_bytes"):
        SqliteDecisionLog(tmp_path, max_segment_bytes=0)
    with pytest.raises(ValueError, match="retention_days"):
        SqliteDecisionLog(tmp_path, retention_days=0)


def test_tampering_inside_a_sealed_segment_is_located(tmp_path: Path) -> None:
    dlog, _ = three_segments(tmp_path)
    dlog.close()
    sealed = tmp_path / "decisions-000000000005-000000000008.db"
    os.chmod(sealed, 0o644)
    conn = sqlite3.connect(sealed)
    conn.execute("DROP TRIGGER decisions_no_update")
    conn.execute("UPDATE decisions SET record = json_set(record, '$.legal_basis', 'contract') "
                 "WHERE seq = 6")
    conn.commit()
    conn.close()
    result = SqliteDecisionLog(tmp_path, read_only=True).verify()
    assert result.broken is not None
    assert (result.broken.sequence, result.broken.decision_id, result.broken.problem) == (
        6, "day10-1", Problem.CONTENT_HASH)
    assert (result.checked, result.head_sequence) == (5, 5)


def test_retention_job_runs_when_started_and_stops_promptly(tmp_path: Path) -> None:
    dlog, _ = three_segments(tmp_path)
    job = RetentionJob(dlog, lambda: T0 + timedelta(days=15), interval=3600)
    job.start()
    deadline = time.monotonic() + 5
    while not dlog.retention_marks():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    started = time.monotonic()
    job.stop()
    assert time.monotonic() - started < 1
    assert sealed_files(tmp_path) == ["decisions-000000000005-000000000008.db"]
    dlog.close()


def test_a_failed_retention_run_is_logged_not_raised(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    dlog, _ = three_segments(tmp_path)
    dlog.close()
    reader = SqliteDecisionLog(tmp_path, read_only=True, retention_days=7)
    job = RetentionJob(reader, lambda: T0 + timedelta(days=15))
    assert job.run_once() is None
    assert "retention failed" in caplog.text
    assert len(sealed_files(tmp_path)) == 2
    reader.close()
