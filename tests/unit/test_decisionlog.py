"""The decision-log contract (memory and SQLite), its hash chain, and the golden record."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from consentauthz.chain import GENESIS
from consentauthz.decisionlog import (
    DecisionLog,
    MemoryDecisionLog,
    QueuedDecisionLog,
    SqliteDecisionLog,
    VerifiableLog,
    entry_hash,
    record_from_dict,
    record_to_dict,
)
from consentauthz.domain import DecisionQuery, DecisionRecord, Effect, Reason
from consentauthz.errors import Unavailable

GOLDEN = Path(__file__).parent / "golden" / "decision_record.json"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def record(
    decision_id: str,
    minutes: int = 0,
    subject: str = "subj-a",
    purpose: str = "marketing.communications.email",
    decision: Effect = Effect.ALLOW,
    reason: Reason = Reason.CONSENT_GIVEN,
    data_category: str = "user.contact.email",
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        time=T0 + timedelta(minutes=minutes),
        caller="crm",
        subject=subject,
        purpose=purpose,
        data_category=data_category,
        jurisdiction="DE",
        regime="gdpr",
        decision=decision,
        reason=reason,
        legal_basis="consent" if decision is Effect.ALLOW else "",
        matched_rule="gdpr.csv:64: p, 610, ...",
        policy_version="ab" * 32,
        consent_record_ids=("rec-1",) if decision is Effect.ALLOW else (),
        consistency_token=7,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        context={"gpc": "0"},
    )


def make_log(kind: str, tmp_path: Path) -> DecisionLog:
    if kind == "memory":
        return MemoryDecisionLog()
    if kind == "sqlite":
        return SqliteDecisionLog(tmp_path / "d.db")
    if kind == "segmented":  # every commit seals its segment: every read spans segments
        return SqliteDecisionLog(tmp_path, max_segment_bytes=1)
    if kind == "queued":
        return QueuedDecisionLog(MemoryDecisionLog(), max_queue=8, max_batch=3)
    assert kind == "queued-sqlite"
    return QueuedDecisionLog(SqliteDecisionLog(tmp_path / "d.db"))


@pytest.fixture(params=["memory", "sqlite", "segmented", "queued", "queued-sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DecisionLog]:
    dlog = make_log(request.param, tmp_path)
    try:
        yield dlog
    finally:
        dlog.close()


def verifiable(log: DecisionLog) -> VerifiableLog:
    sink = log.sink if isinstance(log, QueuedDecisionLog) else log
    assert isinstance(sink, MemoryDecisionLog | SqliteDecisionLog)
    return sink


def assert_chain(records: list[DecisionRecord], start_seq: int = 1,
                 start_hash: str = GENESIS) -> None:
    prev = start_hash
    for i, r in enumerate(records):
        assert r.sequence == start_seq + i
        assert r.prev_hash == prev
        assert r.entry_hash == entry_hash(r.prev_hash, replace(r, entry_hash=""))
        assert len(r.entry_hash) == 64
        prev = r.entry_hash


# -- append and chain -------------------------------------------------------------------


def test_append_numbers_and_chains(log: DecisionLog) -> None:
    first = log.append([record("d1"), record("d2", 1)])
    second = log.append([record("d3", 2)])
    assert [r.decision_id for r in first + second] == ["d1", "d2", "d3"]
    assert first[0].prev_hash == "0" * 64
    assert_chain(first + second)
    assert len({r.entry_hash for r in first + second}) == 3


def test_append_keeps_the_callers_fields(log: DecisionLog) -> None:
    original = record("d1")
    (stored,) = log.append([original])
    assert replace(stored, sequence=0, prev_hash="", entry_hash="") == original


def test_append_nothing_is_a_no_op(log: DecisionLog) -> None:
    assert log.append([]) == []
    (r,) = log.append([record("d1")])
    assert (r.sequence, r.prev_hash) == (1, GENESIS)


def test_entry_hash_covers_content_and_sequence(log: DecisionLog) -> None:
    (r,) = log.append([record("d1")])
    blank = replace(r, entry_hash="")
    assert entry_hash(r.prev_hash, replace(blank, reason=Reason.NO_CONSENT)) != r.entry_hash
    assert entry_hash(r.prev_hash, replace(blank, sequence=2)) != r.entry_hash
    assert entry_hash("1" * 64, blank) != r.entry_hash


def test_appended_chain_verifies_up_to_the_checkpoint(log: DecisionLog) -> None:
    empty = verifiable(log).verify()
    assert (empty.ok, empty.checked, empty.head_sequence, empty.head_hash) == (
        True, 0, 0, GENESIS)
    stored = log.append([record("d1"), record("d2", 1)]) + log.append([record("d3", 2)])
    result = verifiable(log).verify()
    assert result.ok and result.broken is None
    assert (result.checked, result.head_sequence, result.head_hash) == (
        3, 3, stored[-1].entry_hash)
    head = verifiable(log).checkpoint()
    assert (head.sequence, head.entry_hash, head.count, head.time) == (
        3, stored[-1].entry_hash, 3, stored[-1].time)
    assert verifiable(log).verify(checkpoints=[head]).ok


def test_get_by_id(log: DecisionLog) -> None:
    stored = log.append([record("d1"), record("d2", 1, subject="subj-b")])
    assert log.get("d2") == stored[1]
    assert log.get("d1") == stored[0]
    assert log.get("unknown") is None


# -- query ------------------------------------------------------------------------------


@pytest.fixture()
def populated(log: DecisionLog) -> DecisionLog:
    log.append([
        record("d1", 0, subject="subj-a"),
        record("d2", 10, subject="subj-b", purpose="analytics",
               decision=Effect.DENY, reason=Reason.NO_CONSENT),
        record("d3", 20, subject="subj-a", decision=Effect.DENY,
               reason=Reason.CONSENT_WITHDRAWN),
        record("d4", 30, subject="subj-a", purpose="analytics",
               data_category="user.device.cookie_id"),
    ])
    log.append([record("d5", 40, subject="subj-b", decision=Effect.DENY,
                       reason=Reason.NO_CONSENT)])
    return log


def found(log: DecisionLog, **kwargs: object) -> list[str]:
    return [r.decision_id for r in log.query(DecisionQuery(**kwargs))]  # type: ignore[arg-type]


def test_query_all_is_newest_first(populated: DecisionLog) -> None:
    assert found(populated) == ["d5", "d4", "d3", "d2", "d1"]
    assert_chain(list(reversed(populated.query(DecisionQuery()))))


def test_query_by_subject(populated: DecisionLog) -> None:
    assert found(populated, subject="subj-a") == ["d4", "d3", "d1"]
    assert found(populated, subject="subj-b") == ["d5", "d2"]
    assert found(populated, subject="subj-x") == []


def test_query_by_purpose_and_category(populated: DecisionLog) -> None:
    assert found(populated, purpose="analytics") == ["d4", "d2"]
    assert found(populated, data_category="user.device.cookie_id") == ["d4"]
    assert found(populated, subject="subj-a", purpose="analytics") == ["d4"]


def test_query_by_decision_and_reason(populated: DecisionLog) -> None:
    assert found(populated, decision=Effect.DENY) == ["d5", "d3", "d2"]
    assert found(populated, decision=Effect.ALLOW) == ["d4", "d1"]
    assert found(populated, reason="NO_CONSENT") == ["d5", "d2"]
    assert found(populated, reason="CONSENT_WITHDRAWN") == ["d3"]
    assert found(populated, decision=Effect.ALLOW, reason="NO_CONSENT") == []


def test_query_time_range_start_inclusive_end_exclusive(populated: DecisionLog) -> None:
    t10, t30 = T0 + timedelta(minutes=10), T0 + timedelta(minutes=30)
    assert found(populated, start=t10, end=t30) == ["d3", "d2"]
    assert found(populated, start=t10) == ["d5", "d4", "d3", "d2"]
    assert found(populated, end=t10) == ["d1"]
    assert found(populated, start=t10 + timedelta(microseconds=1), end=t30) == ["d3"]
    assert found(populated, start=t30, end=t30) == []


def test_query_time_range_in_another_time_zone(populated: DecisionLog) -> None:
    cet = timezone(timedelta(hours=1))
    start = (T0 + timedelta(minutes=10)).astimezone(cet)
    end = (T0 + timedelta(minutes=30)).astimezone(cet)
    assert found(populated, start=start, end=end) == ["d3", "d2"]


def test_query_limit_and_before_sequence_paging(populated: DecisionLog) -> None:
    assert found(populated, limit=2) == ["d5", "d4"]
    assert found(populated, limit=2, before_sequence=4) == ["d3", "d2"]
    assert found(populated, limit=2, before_sequence=2) == ["d1"]
    assert found(populated, limit=2, before_sequence=1) == []
    assert found(populated, subject="subj-a", limit=1, before_sequence=4) == ["d3"]


def test_query_pages_through_everything(populated: DecisionLog) -> None:
    seen: list[str] = []
    before = 0
    while True:
        page = populated.query(DecisionQuery(limit=2, before_sequence=before))
        if not page:
            break
        seen += [r.decision_id for r in page]
        before = page[-1].sequence
    assert seen == ["d5", "d4", "d3", "d2", "d1"]


# -- SQLite only ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 2_500])  # 2,500 rows: more than one statement
def test_sqlite_writes_an_append_all_or_nothing(tmp_path: Path, size: int) -> None:
    dlog = SqliteDecisionLog(tmp_path / "d.db")
    dlog.append([record("first")])
    batch = [record(f"b{i}", i % 50) for i in range(size)]
    stored = dlog.append(batch)
    assert [r.sequence for r in stored] == list(range(2, size + 2))
    assert dlog.get(f"b{size - 1}") == stored[-1]
    # A batch whose last row cannot be written (its id is taken) leaves no row behind.
    bad = [record(f"c{i}") for i in range(size - 1)] + [record("first")]
    with pytest.raises(Unavailable):
        dlog.append(bad)
    assert dlog.get("c0") is None
    (after,) = dlog.append([record("after")])
    assert after.sequence == size + 2
    assert dlog.verify().ok and dlog.verify().checked == size + 2
    dlog.close()


def test_sqlite_survives_reopen_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    dlog = SqliteDecisionLog(path)
    first = dlog.append([record("d1"), record("d2", 1)])
    dlog.close()

    dlog = SqliteDecisionLog(path)
    try:
        assert dlog.get("d2") == first[1]
        (third,) = dlog.append([record("d3", 2)])
        assert third.sequence == 3
        assert third.prev_hash == first[1].entry_hash
        everything = list(reversed(dlog.query(DecisionQuery())))
        assert_chain(everything)
        assert everything[:2] == first
    finally:
        dlog.close()


@pytest.mark.parametrize("statement", [
    "UPDATE decisions SET decision = 'ALLOW'",
    "UPDATE decisions SET record = '{}' WHERE seq = 1",
    "DELETE FROM decisions WHERE seq = 1",
    "DELETE FROM decisions",
])
def test_sqlite_decisions_table_is_append_only(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "d.db"
    dlog = SqliteDecisionLog(path)
    dlog.append([record("d1", decision=Effect.DENY, reason=Reason.NO_CONSENT)])
    dlog.close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.Error, match="append-only"):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT count(*), min(decision) FROM decisions").fetchone() == (
            1, "DENY")
    finally:
        conn.close()


# -- record format ----------------------------------------------------------------------


def golden_record() -> DecisionRecord:
    return DecisionRecord(
        decision_id="0194b3c2-6a1e-7c3d-9f00-1234567890ab",
        time=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        caller="email-sender",
        subject="hmac:3f1d2c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff00",
        purpose="marketing.communications.email",
        data_category="user.contact.email",
        jurisdiction="DE",
        regime="gdpr",
        decision=Effect.ALLOW,
        reason=Reason.CONSENT_GIVEN,
        legal_basis="consent",
        matched_rule="gdpr.csv:64: p, 610, gdpr, gdpr_consent_required, *, consent, allow, "
                     "CONSENT_GIVEN, consent",
        policy_version="b50202d70b35a437ef0cdfc9fbe5f91cc4eff9a409e7008460e08ac59f1cf7c0",
        consent_record_ids=("0194b3c1-0000-7000-8000-000000000001",),
        consistency_token=42,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        context={"gpc": "0"},
    )


def test_record_matches_golden_file() -> None:
    (stored,) = MemoryDecisionLog().append([golden_record()])
    actual = record_to_dict(stored)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(actual, sort_keys=True, indent=2, ensure_ascii=False)
                          + "\n", encoding="utf-8")
    assert actual == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_golden_record_is_the_first_link_of_a_chain() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["sequence"] == 1
    assert golden["prev_hash"] == GENESIS
    assert golden["entry_hash"] == entry_hash(GENESIS, replace(record_from_dict(golden),
                                                               entry_hash=""))


def test_record_round_trips_through_dict() -> None:
    (stored,) = MemoryDecisionLog().append([golden_record()])
    assert record_from_dict(record_to_dict(stored)) == stored
    unchained = golden_record()
    assert record_from_dict(record_to_dict(unchained)) == unchained
    through_json = json.loads(json.dumps(record_to_dict(stored)))
    assert record_from_dict(through_json) == stored


def test_record_time_is_written_in_utc_with_microseconds() -> None:
    cet = timezone(timedelta(hours=1))
    r = replace(golden_record(), time=datetime(2026, 1, 2, 4, 4, 5, tzinfo=cet))
    assert record_to_dict(r)["time"] == "2026-01-02T03:04:05.000000+00:00"
    assert record_from_dict(record_to_dict(r)) == r
