"""Verification finds tampering, and names the first entry it touched.

Each tamper test works on a copy of a real log file, as an attacker with write access to
the data dir would: raw sqlite3, append-only triggers dropped first.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from consentauthz.chain import GENESIS, link
from consentauthz.decisionlog import (
    Checkpoint,
    MemoryDecisionLog,
    Problem,
    SqliteDecisionLog,
    VerifyResult,
)
from consentauthz.domain import Effect, Reason
from tests.unit.test_decisionlog import record

N = 10


@pytest.fixture()
def original(tmp_path: Path) -> Path:
    path = tmp_path / "original" / "decisions.db"
    dlog = SqliteDecisionLog(path)
    for i in range(1, N + 1, 2):
        dlog.append([record(f"d{i}", i), record(f"d{i + 1}", i + 1, subject="subj-b",
                                                  decision=Effect.DENY,
                                                  reason=Reason.NO_CONSENT)])
    dlog.close()
    return path


def tampered(original: Path, tmp_path: Path, *statements: str) -> VerifyResult:
    copy = tmp_path / "copy" / "decisions.db"
    copy.parent.mkdir(parents=True)
    shutil.copy(original, copy)
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER decisions_no_update")
    conn.execute("DROP TRIGGER decisions_no_delete")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()
    dlog = SqliteDecisionLog(copy, read_only=True)
    try:
        return dlog.verify()
    finally:
        dlog.close()


def broken(result: VerifyResult) -> tuple[int, str, Problem]:
    assert not result.ok
    assert result.broken is not None
    return result.broken.sequence, result.broken.decision_id, result.broken.problem


def test_untouched_log_verifies(original: Path) -> None:
    dlog = SqliteDecisionLog(original, read_only=True)
    result = dlog.verify()
    head = dlog.checkpoint()
    dlog.close()
    assert result.ok and result.broken is None
    assert (result.checked, result.head_sequence, result.head_hash) == (
        N, N, head.entry_hash)
    assert (result.anchor_sequence, result.anchor_hash) == (0, GENESIS)


def test_one_byte_changed_in_a_record_names_that_entry(original: Path,
                                                       tmp_path: Path) -> None:
    # '"matched_rule": "gdpr.csv:64' -> '...:65': one byte, in no indexed column.
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = replace(record, 'gdpr.csv:64', "
                      "'gdpr.csv:65') WHERE seq = 5")
    assert broken(result) == (5, "d5", Problem.CONTENT_HASH)
    assert (result.checked, result.head_sequence) == (4, 4)


def test_a_field_smuggled_into_the_json_is_caught(original: Path, tmp_path: Path) -> None:
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = json_insert(record, '$.note', 'ok') "
                      "WHERE seq = 3")
    assert broken(result) == (3, "d3", Problem.CONTENT_HASH)


def test_an_indexed_field_changed_only_inside_the_json(original: Path,
                                                       tmp_path: Path) -> None:
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = json_set(record, '$.decision', 'ALLOW') "
                      "WHERE seq = 4")
    assert broken(result)[::2] == (4, Problem.COLUMNS)


def test_the_decision_column_edited_alone(original: Path, tmp_path: Path) -> None:
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET decision = 'ALLOW' WHERE seq = 6")
    assert broken(result) == (6, "d6", Problem.COLUMNS)
    assert result.broken is not None and "decision" in result.broken.detail


@pytest.mark.parametrize("column", ["subject", "purpose", "data_category", "reason",
                                    "caller", "time"])
def test_every_indexed_column_is_compared(original: Path, tmp_path: Path,
                                          column: str) -> None:
    result = tampered(original, tmp_path,
                      f"UPDATE decisions SET {column} = {column} || 'x' WHERE seq = 7")
    assert broken(result) == (7, "d7", Problem.COLUMNS)


@pytest.mark.parametrize(("column", "problem"), [("entry_hash", Problem.CONTENT_HASH),
                                                 ("prev_hash", Problem.BROKEN_LINK)])
def test_the_hash_columns_are_the_chain(original: Path, tmp_path: Path, column: str,
                                        problem: Problem) -> None:
    # The record text is the content the entry hash covers; the two hashes are stored
    # once, in their columns, so editing one breaks the chain itself.
    result = tampered(original, tmp_path,
                      f"UPDATE decisions SET {column} = {column} || 'x' WHERE seq = 7")
    assert broken(result) == (7, "d7", problem)


def test_an_entry_with_the_hashes_inside_its_text_still_verifies(
        original: Path, tmp_path: Path) -> None:
    # How entries were stored before the hashes moved out of the text: every hash is
    # inside, equal to its column.
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = json_set(record, '$.prev_hash', "
                      "prev_hash, '$.entry_hash', entry_hash)")
    assert result.ok and result.checked == 10
    # ...and one that disagrees with its column is caught.
    result = tampered(original, tmp_path / "second",
                      "UPDATE decisions SET record = json_set(record, '$.entry_hash', "
                      "prev_hash) WHERE seq = 5")
    assert broken(result) == (5, "d5", Problem.COLUMNS)


def test_unreadable_json_is_reported_with_the_column_id(original: Path,
                                                        tmp_path: Path) -> None:
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = substr(record, 1, 40) WHERE seq = 8")
    assert broken(result) == (8, "d8", Problem.UNREADABLE)


def test_a_record_missing_a_field_is_unreadable(original: Path, tmp_path: Path) -> None:
    result = tampered(original, tmp_path,
                      "UPDATE decisions SET record = json_remove(record, '$.purpose') "
                      "WHERE seq = 2")
    assert broken(result) == (2, "d2", Problem.UNREADABLE)


def test_a_deleted_row_is_a_gap(original: Path, tmp_path: Path) -> None:
    result = tampered(original, tmp_path, "DELETE FROM decisions WHERE seq = 5")
    assert broken(result) == (6, "d6", Problem.SEQUENCE_GAP)
    assert result.broken is not None and "expected sequence 5" in result.broken.detail


def test_a_deleted_row_renumbered_over_breaks_the_link(original: Path,
                                                       tmp_path: Path) -> None:
    # Hide the gap by moving the later rows down: their records still say otherwise.
    statements = ["DELETE FROM decisions WHERE seq = 5"]
    statements += [f"UPDATE decisions SET seq = {s - 1} WHERE seq = {s}"
                   for s in range(6, N + 1)]
    assert broken(tampered(original, tmp_path, *statements))[::2] == (5, Problem.COLUMNS)


def test_two_rows_swapped_are_reported_at_the_first(original: Path, tmp_path: Path) -> None:
    columns = ("decision_id", "time", "subject", "purpose", "data_category", "decision",
               "reason", "caller", "record", "prev_hash", "entry_hash")
    sets = ", ".join(f"{c} = (SELECT {c} FROM pair WHERE pair.seq = "
                     "CASE decisions.seq WHEN 3 THEN 7 ELSE 3 END)" for c in columns)
    result = tampered(original, tmp_path,
                      "CREATE TEMP TABLE pair AS SELECT * FROM decisions WHERE seq IN (3, 7)",
                      "UPDATE decisions SET decision_id = 'tmp-' || decision_id "
                      "WHERE seq IN (3, 7)",
                      f"UPDATE decisions SET {sets} WHERE seq IN (3, 7)")
    assert broken(result) == (3, "d7", Problem.COLUMNS)
    assert result.broken is not None and "sequence" in result.broken.detail


def rewrite_from(path: Path, sequence: int, change: Callable[[dict[str, object]], None]
                 ) -> None:
    """Change one entry and re-hash everything after it: a consistent forgery."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER decisions_no_update")
    prev = GENESIS
    for seq, text in conn.execute("SELECT seq, record FROM decisions ORDER BY seq").fetchall():
        d = json.loads(text)
        if seq == sequence:
            change(d)
        d["prev_hash"] = prev
        d["entry_hash"] = link(prev, {k: v for k, v in d.items()
                                      if k not in ("prev_hash", "entry_hash")})
        prev = d["entry_hash"]
        conn.execute("UPDATE decisions SET record = ?, reason = ?, decision = ?, "
                     "prev_hash = ?, entry_hash = ? WHERE seq = ?",
                     (json.dumps(d, sort_keys=True), d["reason"], d["decision"],
                      d["prev_hash"], d["entry_hash"], seq))
    conn.commit()
    conn.close()


def test_a_held_checkpoint_exposes_rewritten_history(original: Path, tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(original, read_only=True)
    held = Checkpoint.from_json(dlog.checkpoint().to_json())  # as a third party keeps it
    middle = Checkpoint(4, dlog.get("d4").entry_hash, 4, None)  # type: ignore[union-attr]
    dlog.close()
    copy = tmp_path / "forged.db"
    shutil.copy(original, copy)

    def allow(d: dict[str, object]) -> None:
        d["decision"], d["reason"] = "ALLOW", "CONSENT_GIVEN"

    rewrite_from(copy, 2, allow)
    forged = SqliteDecisionLog(copy, read_only=True)
    assert forged.get("d2").decision is Effect.ALLOW  # type: ignore[union-attr]
    assert forged.verify().ok, "a consistent forgery passes without a checkpoint"
    result = forged.verify(checkpoints=[held])
    assert broken(result) == (N, f"d{N}", Problem.CHECKPOINT)
    assert broken(forged.verify(checkpoints=[middle, held])) == (4, "d4", Problem.CHECKPOINT)
    forged.close()
    dlog = SqliteDecisionLog(original, read_only=True)
    assert dlog.verify(checkpoints=[middle, held]).ok
    dlog.close()


def test_a_held_checkpoint_exposes_a_cut_off_end(original: Path, tmp_path: Path) -> None:
    dlog = SqliteDecisionLog(original, read_only=True)
    held = dlog.checkpoint()
    dlog.close()
    result = tampered(original, tmp_path, f"DELETE FROM decisions WHERE seq > {N - 2}")
    assert result.ok, "a shorter chain is intact in itself"
    copy = SqliteDecisionLog(tmp_path / "copy" / "decisions.db", read_only=True)
    result = copy.verify(checkpoints=[held])
    copy.close()
    assert broken(result) == (N, "", Problem.CHECKPOINT)
    assert result.broken is not None and "beyond the head" in result.broken.detail


def test_checkpoint_json_round_trip_and_rejects() -> None:
    dlog = MemoryDecisionLog()
    assert dlog.checkpoint() == Checkpoint(0, GENESIS, 0, None)
    assert Checkpoint.from_json(dlog.checkpoint().to_json()) == dlog.checkpoint()
    dlog.append([record("d1")])
    head = dlog.checkpoint()
    assert Checkpoint.from_json(head.to_json()) == head
    assert json.loads(head.to_json())["sequence"] == 1
    for bad in ("[]", "{}", "not json", '{"sequence": 1, "entry_hash": "ab", "count": 1}'):
        with pytest.raises(ValueError, match="checkpoint"):
            Checkpoint.from_json(bad)


def test_a_checkpoint_keeps_the_consent_ledgers_heads() -> None:
    heads = ((0, 3, "a" * 64), (1, 0, GENESIS))
    cp = Checkpoint(1, "b" * 64, 1, None, heads)
    assert json.loads(cp.to_json())["consent_ledger"] == [[0, 3, "a" * 64], [1, 0, GENESIS]]
    assert Checkpoint.from_json(cp.to_json()) == cp
    # One from before the heads were kept still reads (and holds none).
    old = '{"sequence": 1, "entry_hash": "' + "b" * 64 + '", "count": 1, "time": null}'
    assert Checkpoint.from_json(old).ledger == ()
    for bad in ([[1, 3, "a" * 64]], [[0, -1, "a" * 64]], [[0, 3, "A" * 64]], [[0, 3]],
                [[0, 1, "a" * 64], [0, 1, "a" * 64]]):
        text = json.dumps({**json.loads(old), "consent_ledger": bad})
        with pytest.raises(ValueError, match="checkpoint"):
            Checkpoint.from_json(text)


def test_memory_log_verifies_checkpoints_too() -> None:
    dlog = MemoryDecisionLog()
    dlog.append([record(f"d{i}", i) for i in range(5)])
    head = dlog.checkpoint()
    assert dlog.verify(checkpoints=[head]).ok
    wrong = Checkpoint(3, "f" * 64, 3, None)
    assert broken(dlog.verify(checkpoints=[wrong])) == (3, "d2", Problem.CHECKPOINT)
    result = dlog.verify(checkpoints=[Checkpoint(9, "f" * 64, 9, None)])
    assert broken(result) == (9, "", Problem.CHECKPOINT)


def test_result_serialises_for_reports(original: Path, tmp_path: Path) -> None:
    result = tampered(original, tmp_path, "UPDATE decisions SET caller = 'x' WHERE seq = 2")
    d = result.to_dict()
    assert d["ok"] is False
    assert d["broken"] == {"sequence": 2, "decision_id": "d2",
                           "problem": "indexed columns disagree with the JSON record",
                           "detail": "column(s) caller differ from the record"}
    report = result.to_chain_report()
    assert (report.name, report.ok, report.entries, report.broken_sequence,
            report.broken_id) == ("decision log", False, 1, 2, "d2")
