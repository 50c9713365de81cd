"""The consent-ledger contract: MemoryLedger, SqliteLedger and PostgresLedger must behave
the same.

One suite, run against all three implementations, plus what only the databases can show
(durability across reopen, append-only triggers, the hash chain on disk, and for
PostgreSQL several replicas writing one ledger).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from consentauthz.chain import GENESIS, link
from consentauthz.consent import (
    AppendResult,
    Idempotency,
    Ledger,
    MemoryLedger,
    PostgresLedger,
    SqliteLedger,
)
from consentauthz.consent.ledger import entry_payload
from consentauthz.consent.postgres import PART_LOCK
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
)
from consentauthz.errors import InvalidArgument, Unavailable
from tests.pg import drop_database, fresh_database

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def event(
    record_id: str,
    action: ConsentAction = ConsentAction.GRANT,
    purpose: str = "marketing.communications.email",
    data_categories: tuple[str, ...] = ("user.contact.email",),
    method: CollectionMethod = CollectionMethod.AFFIRMATIVE,
    minutes: int = 0,
    explicit: bool = False,
    evidence: dict[str, str] | None = None,
) -> ConsentEvent:
    at = T0 + timedelta(minutes=minutes)
    is_permission = action in (ConsentAction.GRANT, ConsentAction.OPT_IN_TO_SALE)
    return ConsentEvent(
        record_id=record_id,
        sequence=0,
        action=action,
        purpose=purpose,
        data_categories=data_categories,
        explicit=explicit,
        method=method if is_permission else CollectionMethod.UNSPECIFIED,
        jurisdiction="DE",
        collected_at=at,
        expires_at=at + timedelta(days=365) if is_permission else None,
        source="web-form",
        notice_version="v3",
        recorded_at=at + timedelta(seconds=1),
        evidence=evidence if evidence is not None else {"ip": "192.0.2.1"},
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    led: Ledger
    if request.param == "memory":
        led = MemoryLedger()
    elif request.param == "sqlite":
        led = SqliteLedger(tmp_path / "ledger.db")
    else:
        led = one_partition(request.getfixturevalue("postgres_dsn"))
    try:
        yield led
    finally:
        led.close()


def one_partition(dsn: str, **options: Any) -> PostgresLedger:
    """A PostgreSQL ledger of one partition: these tests reason about one sequence
    (tests/unit/test_partitioned_ledger.py has the partitioned ones)."""
    return PostgresLedger(dsn, partitions=1, **options)


def ids(state: SubjectState) -> list[str]:
    return [e.record_id for e in state.events]


# -- sequence and head ------------------------------------------------------------------


def test_empty_ledger_has_head_zero(ledger: Ledger) -> None:
    assert ledger.head() == 0


def test_sequences_start_at_one_and_are_shared_across_subjects_and_kinds(ledger: Ledger) -> None:
    r1 = ledger.append_consent("alice", event("r1"))
    r2 = ledger.append_consent("bob", event("r2"))
    r3 = ledger.append_profile("alice", SubjectProfile("DE", date(1990, 5, 6)), "p1", T0)
    r4 = ledger.append_consent("alice", event("r4", minutes=1))
    assert [r1.sequence, r2.sequence, r3.sequence, r4.sequence] == [1, 2, 3, 4]
    assert [r1.record_id, r2.record_id, r3.record_id, r4.record_id] == ["r1", "r2", "p1", "r4"]
    assert ledger.head() == 4


def test_append_returns_state_as_of_its_sequence(ledger: Ledger) -> None:
    ledger.append_consent("bob", event("b1"))
    res = ledger.append_consent("alice", event("a1"))
    assert res.replayed is False
    assert res.state.sequence == 2
    assert res.state.version == 2
    assert ids(res.state) == ["a1"]
    assert res.state.events[0].sequence == 2


def test_events_carry_the_ledger_sequence_not_the_callers(ledger: Ledger) -> None:
    ledger.append_consent("bob", event("b1"))
    ledger.append_consent("alice", event("a1"))
    (ev,) = ledger.load("alice").events
    assert ev.sequence == 2
    assert ev == replace(event("a1"), sequence=2)


# -- load -------------------------------------------------------------------------------


def test_load_unknown_subject_is_empty_at_head(ledger: Ledger) -> None:
    assert ledger.load("nobody") == SubjectState(sequence=0)
    ledger.append_consent("alice", event("a1"))
    ledger.append_consent("bob", event("b1"))
    assert ledger.load("nobody") == SubjectState(sequence=2)
    state = ledger.load("nobody")
    assert state.events == ()
    assert state.profile == SubjectProfile()
    assert state.version == 0


def test_load_reports_head_as_sequence_and_own_latest_as_version(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("a1"))
    ledger.append_consent("bob", event("b1"))
    ledger.append_consent("bob", event("b2", purpose="analytics"))
    state = ledger.load("alice")
    assert state.sequence == 3
    assert state.version == 1
    assert ids(state) == ["a1"]


def test_loaded_event_round_trips_every_field(ledger: Ledger) -> None:
    original = event("a1", explicit=True, evidence={"ip": "192.0.2.1", "form": "f-7"},
                     data_categories=("user.contact.email", "user.contact.phone_number"))
    ledger.append_consent("alice", original)
    (loaded,) = ledger.load("alice").events
    assert loaded == replace(original, sequence=1)
    assert dict(loaded.evidence) == {"ip": "192.0.2.1", "form": "f-7"}
    assert loaded.collected_at.tzinfo is not None


# -- projection compaction --------------------------------------------------------------


def test_withdraw_with_same_scope_replaces_earlier_grant(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("g1"))
    ledger.append_consent("alice", event("w1", ConsentAction.WITHDRAW, minutes=1))
    assert ids(ledger.load("alice")) == ["w1"]


def test_same_scope_ignores_category_order(ledger: Ledger) -> None:
    cats = ("user.contact.email", "user.contact.phone_number")
    ledger.append_consent("alice", event("g1", data_categories=cats))
    ledger.append_consent("alice", event("w1", ConsentAction.WITHDRAW, minutes=1,
                                         data_categories=cats[::-1]))
    assert ids(ledger.load("alice")) == ["w1"]


def test_withdraw_with_different_category_scope_keeps_grant(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("g1"))
    ledger.append_consent("alice", event("w1", ConsentAction.WITHDRAW, minutes=1,
                                         data_categories=("user.contact.phone_number",)))
    ledger.append_consent("alice", event("w2", ConsentAction.WITHDRAW, minutes=2,
                                         data_categories=()))
    assert ids(ledger.load("alice")) == ["g1", "w1", "w2"]


def test_withdraw_with_different_purpose_keeps_grant(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("g1"))
    ledger.append_consent("alice", event("w1", ConsentAction.WITHDRAW, purpose="marketing",
                                         minutes=1))
    assert ids(ledger.load("alice")) == ["g1", "w1"]


def test_other_subjects_are_not_compacted(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("g1"))
    ledger.append_consent("bob", event("w1", ConsentAction.WITHDRAW, minutes=1))
    assert ids(ledger.load("alice")) == ["g1"]
    assert ids(ledger.load("bob")) == ["w1"]


def test_sale_channel_does_not_displace_consent_channel(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("g1", purpose="", data_categories=()))
    ledger.append_consent("alice", event("o1", ConsentAction.OPT_OUT_OF_SALE, purpose="",
                                         data_categories=(), minutes=1))
    ledger.append_consent("alice", event("o2", ConsentAction.OPT_IN_TO_SALE, purpose="",
                                         data_categories=(), minutes=2))
    assert ids(ledger.load("alice")) == ["g1", "o2"]


@pytest.mark.parametrize("method", [CollectionMethod.PRE_TICKED, CollectionMethod.IMPLIED])
@pytest.mark.parametrize("earlier_action", [ConsentAction.GRANT, ConsentAction.WITHDRAW])
def test_invalid_grant_does_not_displace_earlier_valid_choice(
        ledger: Ledger, method: CollectionMethod, earlier_action: ConsentAction) -> None:
    ledger.append_consent("alice", event("c1", earlier_action))
    ledger.append_consent("alice", event("pt", method=method, minutes=1))
    assert ids(ledger.load("alice")) == ["c1", "pt"]


def test_valid_grant_displaces_earlier_pre_ticked_grant(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("pt", method=CollectionMethod.PRE_TICKED))
    ledger.append_consent("alice", event("g1", minutes=1))
    assert ids(ledger.load("alice")) == ["g1"]


def test_pre_ticked_grant_displaces_earlier_pre_ticked_grant(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("pt1", method=CollectionMethod.PRE_TICKED))
    ledger.append_consent("alice", event("pt2", method=CollectionMethod.IMPLIED, minutes=1))
    assert ids(ledger.load("alice")) == ["pt2"]


# -- idempotency ------------------------------------------------------------------------


def test_same_idempotency_key_and_hash_replays(ledger: Ledger) -> None:
    key = Idempotency("k-1", "h-1")
    first = ledger.append_consent("alice", event("r1"), key)
    ledger.append_consent("bob", event("b1"))
    again = ledger.append_consent("alice", event("r-other", minutes=5), key)
    assert first.replayed is False
    assert again.replayed is True
    assert (again.record_id, again.sequence) == ("r1", 1)
    assert ledger.head() == 2
    assert ids(ledger.load("alice")) == ["r1"]
    assert again.state.sequence == 2
    assert ids(again.state) == ["r1"]
    assert [e.record_id for e in ledger.history("alice", 0, 100)] == ["r1"]


def test_same_idempotency_key_with_other_hash_is_rejected(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("r1"), Idempotency("k-1", "h-1"))
    with pytest.raises(InvalidArgument) as info:
        ledger.append_consent("alice", event("r2", minutes=1), Idempotency("k-1", "h-2"))
    assert [v.field for v in info.value.violations] == ["idempotency_key"]
    assert ledger.head() == 1
    assert ids(ledger.load("alice")) == ["r1"]
    # The ledger still works after the rejected write.
    assert ledger.append_consent("alice", event("r3", minutes=2)).sequence == 2


def test_distinct_idempotency_keys_append(ledger: Ledger) -> None:
    a = ledger.append_consent("alice", event("r1"), Idempotency("k-1", "h"))
    b = ledger.append_consent("alice", event("r2", purpose="analytics"), Idempotency("k-2", "h"))
    assert (a.sequence, b.sequence) == (1, 2)
    assert b.replayed is False


# -- history ----------------------------------------------------------------------------


def _history_fixture(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("a1"))                                    # 1
    ledger.append_consent("bob", event("b1"))                                      # 2
    ledger.append_profile("alice", SubjectProfile("DE"), "ap", T0)                 # 3
    ledger.append_consent("alice", event("a2", ConsentAction.WITHDRAW, minutes=1))  # 4
    ledger.append_consent("alice", event("a3", purpose="analytics", minutes=2))     # 5


def test_history_lists_subjects_consent_events_in_order(ledger: Ledger) -> None:
    _history_fixture(ledger)
    found = ledger.history("alice", 0, 100)
    # Compaction does not touch history: a1 was replaced in the projection, not here.
    assert [(e.record_id, e.sequence) for e in found] == [("a1", 1), ("a2", 4), ("a3", 5)]
    assert found[1].action is ConsentAction.WITHDRAW
    assert [e.record_id for e in ledger.history("bob", 0, 100)] == ["b1"]
    assert ledger.history("nobody", 0, 100) == []


def test_history_after_sequence_and_limit(ledger: Ledger) -> None:
    _history_fixture(ledger)
    assert [e.record_id for e in ledger.history("alice", 1, 100)] == ["a2", "a3"]
    assert [e.record_id for e in ledger.history("alice", 4, 100)] == ["a3"]
    assert ledger.history("alice", 5, 100) == []
    assert [e.record_id for e in ledger.history("alice", 0, 2)] == ["a1", "a2"]
    assert [e.record_id for e in ledger.history("alice", 2, 1)] == ["a2"]


# -- profile ----------------------------------------------------------------------------


def test_profile_upsert_shows_in_load(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("a1"))
    res = ledger.append_profile("alice", SubjectProfile("AT", date(2012, 3, 4)), "p1", T0)
    assert (res.record_id, res.sequence, res.replayed) == ("p1", 2, False)
    state = ledger.load("alice")
    assert state.profile == SubjectProfile("AT", date(2012, 3, 4))
    assert state.version == 2
    assert ids(state) == ["a1"]
    # An upsert keeps the fields it does not carry: a new jurisdiction must not erase a
    # recorded birth date (a known minor would become an adult).
    ledger.append_profile("alice", SubjectProfile("DE"), "p2", T0)
    assert ledger.load("alice").profile == SubjectProfile("DE", date(2012, 3, 4))
    assert ledger.state_at("alice", 3).profile == SubjectProfile("DE", date(2012, 3, 4))
    assert ledger.load("bob").profile == SubjectProfile()


# -- changes ----------------------------------------------------------------------------


def changed(ledger: Ledger, after: int, limit: int) -> tuple[int, list[tuple[int, str]]]:
    """(head, entries) of `changes` of a ledger of one partition, which always names the
    ledger's identity and the partition."""
    seen = ledger.changes((after,), limit)
    assert seen.identity == ledger.identity()
    assert len(seen.heads) == 1 and all(part == 0 for part, _, _ in seen.entries)
    return seen.head, [(seq, subject) for _, seq, subject in seen.entries]



def test_changes_of_an_empty_ledger(ledger: Ledger) -> None:
    assert changed(ledger, 0, 10) == (0, [])


def test_changes_lists_every_entry_after_a_sequence_oldest_first(ledger: Ledger) -> None:
    _history_fixture(ledger)
    everything = [(1, "alice"), (2, "bob"), (3, "alice"), (4, "alice"), (5, "alice")]
    # Profile records are changes too (seq 3): they alter what decisions see.
    assert changed(ledger, 0, 100) == (5, everything)
    assert changed(ledger, 2, 100) == (5, everything[2:])
    assert changed(ledger, 4, 100) == (5, [(5, "alice")])
    assert changed(ledger, 5, 100) == (5, [])
    assert changed(ledger, 9, 100) == (5, [])


def test_changes_limit_keeps_the_oldest_and_head_stays_the_head(ledger: Ledger) -> None:
    _history_fixture(ledger)
    assert changed(ledger, 0, 2) == (5, [(1, "alice"), (2, "bob")])
    assert changed(ledger, 1, 2) == (5, [(2, "bob"), (3, "alice")])
    assert changed(ledger, 3, 1) == (5, [(4, "alice")])
    assert changed(ledger, 0, 0) == (5, [])


def test_changes_pages_through_the_ledger(ledger: Ledger) -> None:
    for i in range(7):
        ledger.append_consent(f"s{i % 3}", event(f"r{i}", minutes=i))
    seen: list[tuple[int, str]] = []
    after = 0
    while True:
        head, page = changed(ledger, after, 3)
        assert head == 7
        if not page:
            break
        seen += page
        after = page[-1][0]
    assert seen == [(i + 1, f"s{i % 3}") for i in range(7)]


def test_an_idempotent_replay_is_no_change(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("a1"), Idempotency("k", "h"))
    assert ledger.append_consent("alice", event("a1"), Idempotency("k", "h")).replayed
    assert changed(ledger, 0, 10) == (1, [(1, "alice")])


# -- exclusive --------------------------------------------------------------------------


def test_appends_and_reads_inside_exclusive(ledger: Ledger) -> None:
    with ledger.exclusive([0]):
        first = ledger.append_consent("alice", event("a1"))
        second = ledger.append_profile("alice", SubjectProfile("DE"), "p1", T0)
        assert ledger.load("alice").version == 2
        assert changed(ledger, 0, 10) == (2, [(1, "alice"), (2, "alice")])
    assert (first.sequence, second.sequence) == (1, 2)
    # Released: later writes go on, and the chain is whole.
    with ledger.exclusive([0]):
        pass
    assert ledger.append_consent("bob", event("b1")).sequence == 3
    assert ledger.verify().ok


def test_exclusive_is_released_when_its_block_raises(ledger: Ledger) -> None:
    ledger.append_consent("alice", event("a1"), Idempotency("k", "h-1"))
    with pytest.raises(InvalidArgument), ledger.exclusive([0]):
        ledger.append_consent("alice", event("a2"), Idempotency("k", "h-2"))
    with pytest.raises(RuntimeError, match="boom"), ledger.exclusive([0]):
        ledger.append_consent("bob", event("b1"))
        raise RuntimeError("boom")
    # The append inside the failed block was committed before the failure.
    assert ledger.head() == 2
    with ledger.exclusive([0]):
        assert ledger.append_consent("carol", event("c1")).sequence == 3


# -- first_recorded: which of a subject's pseudonyms came first ---------------------------


def test_first_recorded_is_the_pseudonym_with_the_oldest_entry(ledger: Ledger) -> None:
    assert ledger.first_recorded(["k1:x", "k2:x"]) is None
    assert ledger.first_recorded([]) is None
    ledger.append_consent("other", event("o1"))
    assert ledger.first_recorded(["k1:x", "k2:x"]) is None
    ledger.append_profile("k2:x", SubjectProfile("DE"), "p1", T0)  # a profile counts too
    assert ledger.first_recorded(["k1:x", "k2:x"]) == "k2:x"
    # Entries recorded later, under either pseudonym, never change the answer.
    ledger.append_consent("k1:x", event("a1"))
    ledger.append_consent("k2:x", event("a2", minutes=1))
    assert ledger.first_recorded(["k1:x", "k2:x"]) == "k2:x"
    assert ledger.first_recorded(["k2:x", "k1:x"]) == "k2:x"
    assert ledger.first_recorded(["k1:x"]) == "k1:x"


# -- ledger_meta ------------------------------------------------------------------------


def test_meta_is_unset_until_swapped_in(ledger: Ledger) -> None:
    assert ledger.meta("a") is None
    assert ledger.swap_meta("a", None, "1") is True
    assert ledger.meta("a") == "1"
    assert ledger.meta("b") is None


def test_swap_meta_changes_nothing_unless_the_value_is_the_expected_one(
        ledger: Ledger) -> None:
    assert ledger.swap_meta("a", None, "1")
    assert ledger.swap_meta("a", None, "2") is False  # set already
    assert ledger.swap_meta("a", "0", "2") is False  # not what it is
    assert ledger.swap_meta("b", "1", "2") is False  # not set at all
    assert (ledger.meta("a"), ledger.meta("b")) == ("1", None)
    assert ledger.swap_meta("a", "1", "2") is True
    assert ledger.meta("a") == "2"
    # Not part of the ledger's records: no entry, no change of head.
    assert ledger.head() == 0 and ledger.verify().ok


# -- SQLite only ------------------------------------------------------------------------


def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    led = SqliteLedger(path)
    led.append_consent("alice", event("a1"), Idempotency("k-1", "h-1"))
    led.append_profile("alice", SubjectProfile("DE", date(2000, 1, 1)), "p1", T0)
    led.append_consent("alice", event("a2", ConsentAction.WITHDRAW, minutes=1))
    before = led.load("alice")
    led.close()

    led = SqliteLedger(path)
    try:
        assert led.head() == 3
        assert led.load("alice") == before
        assert ids(before) == ["a2"]
        assert before.profile == SubjectProfile("DE", date(2000, 1, 1))
        assert [e.record_id for e in led.history("alice", 0, 10)] == ["a1", "a2"]
        replay = led.append_consent("alice", event("x"), Idempotency("k-1", "h-1"))
        assert (replay.replayed, replay.record_id, replay.sequence) == (True, "a1", 1)
        with pytest.raises(InvalidArgument):
            led.append_consent("alice", event("x"), Idempotency("k-1", "h-2"))
        assert led.append_consent("bob", event("b1")).sequence == 4
    finally:
        led.close()


@pytest.mark.parametrize("statement", [
    "UPDATE ledger SET subject = 'mallory' WHERE seq = 1",
    "UPDATE ledger SET body = '{}'",
    "DELETE FROM ledger WHERE seq = 1",
    "DELETE FROM ledger",
])
def test_sqlite_ledger_table_is_append_only(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "ledger.db"
    led = SqliteLedger(path)
    led.append_consent("alice", event("a1"))
    led.close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.Error, match="append-only"):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT count(*), min(subject) FROM ledger").fetchone() == (
            1, "alice")
    finally:
        conn.close()


def test_sqlite_hash_chain_links_every_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    led = SqliteLedger(path)
    led.append_consent("alice", event("a1", evidence={"note": "grüße"}))
    led.append_consent("bob", event("b1"), Idempotency("k", "h"))
    led.append_profile("alice", SubjectProfile("DE", date(2001, 2, 3)), "p1", T0)
    led.append_consent("alice", event("a2", ConsentAction.WITHDRAW, minutes=1))
    led.close()

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash "
            "FROM ledger ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[2] for r in rows] == ["consent", "consent", "profile", "consent"]
    prev = GENESIS
    assert prev == "0" * 64
    for seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash in rows:
        assert prev_hash == prev
        expected = link(prev_hash, entry_payload(seq, subject, kind, record_id, recorded_at,
                                                 json.loads(body)))
        assert entry_hash == expected
        assert len(entry_hash) == 64
        prev = entry_hash
    assert len({r[7] for r in rows}) == 4


def test_sqlite_hash_chain_detects_a_changed_body(tmp_path: Path) -> None:
    """The check above can fail: a tampered body no longer matches its entry_hash."""
    path = tmp_path / "ledger.db"
    led = SqliteLedger(path)
    led.append_consent("alice", event("a1"))
    led.close()
    conn = sqlite3.connect(path)
    try:
        seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash = conn.execute(
            "SELECT seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash "
            "FROM ledger").fetchone()
    finally:
        conn.close()
    tampered = json.loads(body) | {"action": "WITHDRAW"}
    assert link(prev_hash, entry_payload(seq, subject, kind, record_id, recorded_at,
                                         tampered)) != entry_hash


def test_idempotency_key_is_found_under_an_older_key(ledger: Ledger) -> None:
    first = ledger.append_consent("alice", event("a1"), Idempotency("k1:idem", "h"))
    # After a key rotation the same caller key pseudonymises differently; the ledger is
    # given both and must still recognise the retry.
    again = ledger.append_consent("alice", event("a2"), Idempotency("k2:idem", "h",
                                                                    ("k1:idem",)))
    assert (again.record_id, again.sequence, again.replayed) == (first.record_id, 1, True)
    assert ledger.head() == 1


def test_sqlite_projection_rows_cannot_be_deleted_and_their_loss_is_caught(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    ledger.append_consent("alice", event("a1"))
    ledger.close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM subject_state")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER subject_state_no_delete")
        conn.execute("DELETE FROM subject_state")
    report = SqliteLedger(path, read_only=True).verify()
    assert not report.ok and "no projection" in report.problem


# -- PostgreSQL only --------------------------------------------------------------------


def _run_threads(*targets: Callable[[], None]) -> None:
    """Run targets concurrently; re-raise the first failure here."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def _admin(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A superuser session on the ledger's database, outside the ledger's code paths."""
    return psycopg.connect(dsn, autocommit=True)


def test_postgres_survives_close_and_reopen(postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    led.append_consent("alice", event("a1"), Idempotency("k-1", "h-1"))
    led.append_profile("alice", SubjectProfile("DE", date(2000, 1, 1)), "p1", T0)
    led.append_consent("alice", event("a2", ConsentAction.WITHDRAW, minutes=1))
    before = led.load("alice")
    led.close()
    led.close()  # closing twice is harmless

    led = one_partition(postgres_dsn)
    try:
        assert led.head() == 3
        assert led.load("alice") == before
        assert ids(before) == ["a2"]
        assert before.profile == SubjectProfile("DE", date(2000, 1, 1))
        assert [e.record_id for e in led.history("alice", 0, 10)] == ["a1", "a2"]
        replay = led.append_consent("alice", event("x"), Idempotency("k-1", "h-1"))
        assert (replay.replayed, replay.record_id, replay.sequence) == (True, "a1", 1)
        with pytest.raises(InvalidArgument):
            led.append_consent("alice", event("x"), Idempotency("k-1", "h-2"))
        assert led.append_consent("bob", event("b1")).sequence == 4
        assert led.verify().ok
    finally:
        led.close()


def test_postgres_hash_chain_links_every_row_and_stores_the_hashed_body(
        postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    led.append_consent("alice", event("a1", evidence={"note": "grüße"}))
    led.append_consent("bob", event("b1"), Idempotency("k", "h"))
    led.append_profile("alice", SubjectProfile("DE", date(2001, 2, 3)), "p1", T0)
    led.close()
    with _admin(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash "
            "FROM ledger ORDER BY seq").fetchall()
    prev = GENESIS
    for seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash in rows:
        assert isinstance(body, str)
        assert body == json.dumps(json.loads(body), sort_keys=True)
        assert prev_hash == prev
        assert entry_hash == link(prev, entry_payload(seq, subject, kind, record_id,
                                                      recorded_at, json.loads(body)))
        prev = entry_hash
    assert [r[0] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("statement", [
    "UPDATE ledger SET subject = 'mallory' WHERE seq = 1",
    "UPDATE ledger SET body = '{}'",
    "DELETE FROM ledger WHERE seq = 1",
    "DELETE FROM ledger",
    "TRUNCATE ledger",
])
def test_postgres_ledger_table_is_append_only(postgres_dsn: str, statement: str) -> None:
    led = one_partition(postgres_dsn)
    led.append_consent("alice", event("a1"))
    led.close()
    with _admin(postgres_dsn) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*), min(subject) FROM ledger").fetchone() == (
            1, "alice")


def test_postgres_verify_detects_a_changed_body(postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    try:
        led.append_consent("alice", event("a1"))
        led.append_consent("bob", event("b1"))
        assert led.verify().ok
        with _admin(postgres_dsn) as conn:
            (body,) = conn.execute("SELECT body FROM ledger WHERE seq = 1").fetchone() or ()
            tampered = json.dumps(json.loads(body) | {"action": "WITHDRAW"}, sort_keys=True)
            # Only a superuser can switch the append-only triggers off like this.
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE ledger SET body = %s WHERE seq = 1", (tampered,))
        report = led.verify()
        assert not report.ok
        assert (report.broken_sequence, report.broken_id) == (1, "a1")
        assert report.problem == "content does not match its hash"
    finally:
        led.close()


def test_postgres_projection_rows_cannot_be_deleted_and_their_loss_is_caught(
        postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    try:
        led.append_consent("alice", event("a1"))
        with _admin(postgres_dsn) as conn:
            for statement in ("DELETE FROM subject_state", "TRUNCATE subject_state"):
                with pytest.raises(psycopg.errors.RaiseException, match="never deleted"):
                    conn.execute(statement)
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM subject_state")
        report = led.verify()
        assert not report.ok and "no projection" in report.problem
    finally:
        led.close()


def test_postgres_replicas_opening_a_new_database_at_once_all_work(postgres_dsn: str) -> None:
    opened: list[PostgresLedger] = []
    try:
        # Each one finds no schema and creates it; the schema lock keeps them apart.
        _run_threads(*[lambda: opened.append(one_partition(postgres_dsn))] * 4)
        for i, led in enumerate(opened):
            assert led.append_consent(f"s{i}", event(f"r{i}")).sequence == i + 1
        assert opened[0].verify().ok
    finally:
        for led in opened:
            led.close()


def test_postgres_replicas_appending_at_once_build_one_gapless_chain(
        postgres_dsn: str) -> None:
    with _admin(postgres_dsn) as conn:
        # An operator's default must not change the append path: under REPEATABLE READ an
        # append would read the last sequence from before it got the append lock.
        conn.execute(f'ALTER DATABASE "{conninfo_to_dict(postgres_dsn)["dbname"]}" '
                     "SET default_transaction_isolation = 'repeatable read'")
    replicas = [one_partition(postgres_dsn), one_partition(postgres_dsn)]
    results: dict[str, list[AppendResult]] = {}

    def writer(led: PostgresLedger, name: str) -> Callable[[], None]:
        def run() -> None:
            got = results.setdefault(name, [])
            for i in range(25):
                if i % 5 == 4:
                    got.append(led.append_profile(name, SubjectProfile("DE"), f"{name}-{i}",
                                                  T0))
                else:
                    got.append(led.append_consent(name, event(f"{name}-{i}", minutes=i)))
        return run

    try:
        _run_threads(*(writer(led, f"r{r}t{t}") for r, led in enumerate(replicas)
                       for t in range(4)))
        seqs = sorted(res.sequence for got in results.values() for res in got)
        assert seqs == list(range(1, 201))
        for got in results.values():
            # Each thread saw its own appends in order, and the state they returned was
            # the state as of that append.
            assert [r.sequence for r in got] == sorted(r.sequence for r in got)
            assert [r.state.version for r in got] == [r.sequence for r in got]
        for led in replicas:
            assert led.head() == 200
            report = led.verify()
            assert report.ok, report
            assert report.entries == 200
        head, listed = changed(replicas[1], 0, 1000)
        assert head == 200 and [s for s, _ in listed] == list(range(1, 201))
    finally:
        for led in replicas:
            led.close()


def test_postgres_replicas_appending_for_one_subject_at_once_lose_nothing(
        postgres_dsn: str) -> None:
    """The one-statement append replaces the projection only if it is still the version
    the writer read; two replicas writing for the same subject make it fail, and the
    writer then appends under the lock. Nothing is lost, the chain is whole, and the
    projection is the records' replay."""
    replicas = [one_partition(postgres_dsn), one_partition(postgres_dsn)]
    results: list[AppendResult] = []

    def writer(led: PostgresLedger, name: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(20):
                results.append(led.append_consent("shared", event(
                    f"{name}-{i}", purpose="marketing.communications.email",
                    minutes=i)))
        return run

    try:
        _run_threads(*(writer(led, f"r{r}t{t}") for r, led in enumerate(replicas)
                       for t in range(3)))
        assert sorted(r.sequence for r in results) == list(range(1, 121))
        for led in replicas:
            report = led.verify()  # the chain, and the projection against the records
            assert report.ok, report
        state = replicas[0].load("shared")
        assert state.version == 120
        assert state == replicas[0].state_at("shared", 120)
        # Every record the subject has is in the ledger's history for it.
        assert {e.record_id for e in replicas[1].history("shared", 0, 1000)} == {
            r.record_id for r in results}
    finally:
        for led in replicas:
            led.close()


def test_postgres_entry_hashes_made_in_sql_are_python_chain_links(postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    try:
        # Text the SQL side must hash byte for byte as Python does: non-ASCII, quotes,
        # backslashes, digits that look like a sequence.
        led.append_consent("zoë \"q\" \\ 12345", event("a1", evidence={"note": "ü 1 \n 2"}))
        led.append_profile("zoë \"q\" \\ 12345", SubjectProfile("FR", date(2011, 2, 3)),
                           "p1", T0)
        with _admin(postgres_dsn) as conn:
            rows = conn.execute("SELECT seq, subject, kind, record_id, recorded_at, body, "
                                "prev_hash, entry_hash FROM ledger ORDER BY seq").fetchall()
        prev = GENESIS
        for seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash in rows:
            assert prev_hash == prev
            assert entry_hash == link(prev, entry_payload(
                seq, subject, kind, record_id, recorded_at, json.loads(body)))
            assert json.loads(body).get("sequence", seq) == seq
            prev = entry_hash
        assert led.load("zoë \"q\" \\ 12345").events[0].sequence == 1
    finally:
        led.close()


def test_postgres_a_database_from_before_the_append_function_gets_it(postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    led.append_consent("alice", event("a1"))
    led.close()
    with _admin(postgres_dsn) as conn:
        conn.execute("DROP FUNCTION consentauthz_append_v4")
    led = one_partition(postgres_dsn)
    try:
        assert led.append_consent("alice", event("a2", minutes=1)).sequence == 2
        assert led.verify().ok
    finally:
        led.close()


def test_postgres_replicas_racing_one_idempotency_key_append_once(postgres_dsn: str) -> None:
    replicas = [one_partition(postgres_dsn), one_partition(postgres_dsn)]
    results: list[AppendResult] = []

    def retry(led: PostgresLedger) -> Callable[[], None]:
        return lambda: results.append(led.append_consent(
            "alice", event("a1"), Idempotency("k", "h")))

    try:
        _run_threads(*(retry(led) for led in replicas for _ in range(4)))
        assert sorted(r.replayed for r in results) == [False] + [True] * 7
        assert {(r.record_id, r.sequence) for r in results} == {("a1", 1)}
        assert replicas[0].head() == 1
    finally:
        for led in replicas:
            led.close()


def _wait_for_advisory_waiter(dsn: str) -> None:
    """Return once some session of this database is queued on an advisory lock."""
    with _admin(dsn) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database())").fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("nobody waited for the append lock")


def test_postgres_exclusive_holds_off_appends_of_another_replica(postgres_dsn: str) -> None:
    one, two = one_partition(postgres_dsn), one_partition(postgres_dsn)
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with one.exclusive([0]):
            one.append_consent("alice", event("a1"))
            inside.set()
            assert release.wait(10)
            order.append("write-through of a1")  # what the caller does after its append

    def other_replica() -> None:
        assert inside.wait(10)
        res = two.append_consent("bob", event("b1"))
        order.append(f"append of b1 at {res.sequence}")

    try:
        threads = [threading.Thread(target=holder), threading.Thread(target=other_replica)]
        for t in threads:
            t.start()
        assert inside.wait(10)
        _wait_for_advisory_waiter(postgres_dsn)
        # Blocked, not merely slow: after a short bounded wait it still has not appended.
        threads[1].join(0.2)
        assert threads[1].is_alive()
        assert order == []
        assert two.head() == 1
        release.set()
        for t in threads:
            t.join(10)
        assert order == ["write-through of a1", "append of b1 at 2"]
        assert one.verify().ok
    finally:
        release.set()
        one.close()
        two.close()


def test_postgres_exclusive_is_released_for_other_replicas_after_an_error(
        postgres_dsn: str) -> None:
    one, two = one_partition(postgres_dsn), one_partition(postgres_dsn, statement_timeout=2)
    try:
        with pytest.raises(RuntimeError), one.exclusive([0]):
            one.append_consent("alice", event("a1"))
            raise RuntimeError("write-through failed")
        assert two.append_consent("bob", event("b1")).sequence == 2
        with two.exclusive([0]):  # the session lock itself is free too
            pass
    finally:
        one.close()
        two.close()


def test_postgres_unreachable_server_is_unavailable_without_hanging() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        PostgresLedger("host=127.0.0.1 port=1 user=postgres dbname=postgres")
    assert time.monotonic() - started < 10
    assert str(info.value) == "consent ledger unavailable"
    assert isinstance(info.value.__cause__, psycopg.Error)


def test_postgres_a_database_that_goes_away_is_unavailable(postgres_dsn: str) -> None:
    # connect_timeout also bounds the wait for a pooled connection (verify, below).
    led = one_partition(postgres_dsn, connect_timeout=0.5)
    try:
        led.append_consent("alice-pseudonym", event("a1"))
        drop_database(str(conninfo_to_dict(postgres_dsn)["dbname"]))
        for call in (lambda: led.load("alice-pseudonym"),
                     lambda: led.append_consent("alice-pseudonym", event("a2")),
                     lambda: led.append_consent("alice-pseudonym", event("a3")),
                     led.verify):
            with pytest.raises(Unavailable) as info:
                call()
            assert str(info.value) == "consent ledger unavailable"
    finally:
        led.close()


def test_postgres_a_stuck_database_is_unavailable_after_the_statement_timeout(
        postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn, statement_timeout=0.3)
    try:
        led.append_consent("alice", event("a1"))
        with _admin(postgres_dsn) as blocker:
            # Something else holds every lock the ledger needs: appends and reads stall.
            blocker.execute("SELECT pg_advisory_lock(%s)", (PART_LOCK,))
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE ledger, subject_state IN ACCESS EXCLUSIVE MODE")
            def enter_exclusive() -> None:
                with led.exclusive([0]):
                    raise AssertionError("got the append lock another session holds")

            for call in (lambda: led.append_consent("alice", event("a2")),
                         lambda: led.load("alice"), enter_exclusive):
                started = time.monotonic()
                with pytest.raises(Unavailable):
                    call()
                assert time.monotonic() - started < 3
            blocker.execute("ROLLBACK")
        # Once the database moves again, so does the ledger (same writer connection).
        assert led.append_consent("alice", event("a2")).sequence == 2
        assert led.load("alice").sequence == 2
    finally:
        led.close()


def test_identity_is_stable_for_a_ledger_and_differs_between_ledgers(
        ledger: Ledger, tmp_path: Path) -> None:
    first = ledger.identity()
    assert first and ledger.identity() == first
    ledger.append_profile("s", SubjectProfile("DE"), "p1", T0)
    assert ledger.identity() == first
    assert MemoryLedger().identity() != first


def test_sqlite_meta_survives_reopen(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "ledger.db")
    assert led.swap_meta("a", None, "1")
    led.close()
    again = SqliteLedger(tmp_path / "ledger.db")
    try:
        assert again.meta("a") == "1"
    finally:
        again.close()


def test_postgres_meta_survives_reopen_and_a_database_from_before_it_gets_the_table(
        postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    assert led.swap_meta("a", None, "1")
    led.close()
    with _admin(postgres_dsn) as admin:
        admin.execute("DROP TABLE ledger_meta")  # as made by a version without it
    again = one_partition(postgres_dsn)
    try:
        assert again.meta("a") is None
        assert again.swap_meta("a", None, "2") and again.meta("a") == "2"
    finally:
        again.close()
    reopened = one_partition(postgres_dsn)
    try:
        assert reopened.meta("a") == "2"
    finally:
        reopened.close()


def test_postgres_replicas_swapping_meta_at_once_one_wins(postgres_dsn: str) -> None:
    replicas = [one_partition(postgres_dsn) for _ in range(4)]
    won: dict[int, bool] = {}
    start = threading.Barrier(len(replicas))

    def swap(i: int) -> None:
        start.wait()
        won[i] = replicas[i].swap_meta("a", None, str(i))

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(len(replicas))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [i for i, w in won.items() if w]
        assert len(won) == len(replicas) and len(winners) == 1
        assert {r.meta("a") for r in replicas} == {str(winners[0])}
    finally:
        for r in replicas:
            r.close()


def test_sqlite_identity_survives_reopen(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "ledger.db")
    first = led.identity()
    led.close()
    again = SqliteLedger(tmp_path / "ledger.db")
    try:
        assert again.identity() == first
    finally:
        again.close()


def test_identity_is_made_with_the_ledger_and_every_poll_names_it(ledger: Ledger) -> None:
    # Asked for nothing yet: changes() (what the poller reads) already carries it.
    first = ledger.changes((0,), 10).identity
    assert first and ledger.identity() == first
    ledger.append_consent("alice", event("a1"))
    assert ledger.changes((0,), 10).identity == first


def test_sqlite_identity_is_in_the_file_from_its_creation(tmp_path: Path) -> None:
    SqliteLedger(tmp_path / "ledger.db").close()
    with sqlite3.connect(tmp_path / "ledger.db") as raw:
        rows = raw.execute("SELECT id FROM ledger_identity").fetchall()
    assert len(rows) == 1 and len(rows[0][0]) == 16
    readonly = SqliteLedger(tmp_path / "ledger.db", read_only=True)  # reads, never makes
    try:
        assert readonly.identity() == rows[0][0]
    finally:
        readonly.close()


def test_postgres_identity_is_made_once_with_the_schema(postgres_dsn: str) -> None:
    made: list[PostgresLedger] = []
    _run_threads(*(lambda: made.append(one_partition(postgres_dsn)) for _ in range(3)))
    try:
        with _admin(postgres_dsn) as admin:
            rows = admin.execute("SELECT id FROM ledger_identity").fetchall()
        assert len(rows) == 1
        assert {led.identity() for led in made} == {rows[0][0]}
        with fresh_database() as other:  # a database made anew is another ledger
            again = one_partition(other)
            try:
                assert again.identity() != rows[0][0]
            finally:
                again.close()
    finally:
        for led in made:
            led.close()


def test_postgres_a_ledger_without_identity_is_unavailable_until_reopened(
        postgres_dsn: str) -> None:
    led = one_partition(postgres_dsn)
    try:
        led.append_consent("alice", event("a1"))
        with _admin(postgres_dsn) as admin:  # a restore half done, or a careless hand
            admin.execute("DROP TABLE ledger_identity")
        with pytest.raises(Unavailable):
            led.changes((0,), 10)
        with pytest.raises(Unavailable):
            led.identity()
        with _admin(postgres_dsn) as admin:
            admin.execute("CREATE TABLE ledger_identity (id TEXT NOT NULL)")
        with pytest.raises(Unavailable):
            led.changes((0,), 10)
        # Opening it again (as a database from before identities were made with the
        # schema is opened after an upgrade) gives it one.
        reopened = one_partition(postgres_dsn)
        try:
            assert reopened.identity() == led.identity() == led.changes((0,), 10).identity
        finally:
            reopened.close()
    finally:
        led.close()


# -- event order (issue 12) and projections written by an earlier release -------------------


def test_a_record_collected_earlier_but_appended_later_does_not_displace_a_later_one(
        ledger: Ledger) -> None:
    ledger.append_consent("alice", event("w", ConsentAction.WITHDRAW, minutes=60))
    ledger.append_consent("alice", event("g", minutes=0))
    assert ids(ledger.load("alice")) == ["w"]
    ledger.append_consent("alice", event("g2", minutes=61))
    assert ids(ledger.load("alice")) == ["g2"]
    assert ledger.verify().ok


def _projection_of_release_one(subject: str) -> str:
    """What an earlier release stored after withdraw(t+60) then grant(t): arrival order
    let the late grant displace the withdrawal."""
    from consentauthz.consent.codec import state_to_json
    return state_to_json(SubjectState(events=(replace(event("g"), sequence=2),), version=2))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_projections_of_an_earlier_release_are_rebuilt_on_open(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    def open_ledger() -> Ledger:
        if kind == "sqlite":
            return SqliteLedger(tmp_path / "ledger.db")
        return one_partition(request.getfixturevalue("postgres_dsn"))

    led = open_ledger()
    led.append_consent("alice", event("w", ConsentAction.WITHDRAW, minutes=60))
    led.append_consent("alice", event("g", minutes=0))
    led.close()
    # Make the database look like one an earlier release wrote.
    if kind == "sqlite":
        conn: Any = sqlite3.connect(tmp_path / "ledger.db")
    else:
        conn = psycopg.connect(request.getfixturevalue("postgres_dsn"), autocommit=True)
    mark = "?" if kind == "sqlite" else "%s"
    conn.execute(f"UPDATE subject_state SET state = {mark} WHERE subject = 'alice'",
                 (_projection_of_release_one("alice"),))
    conn.execute("DELETE FROM ledger_meta")
    if kind == "sqlite":
        conn.commit()
    conn.close()

    led = open_ledger()
    try:
        assert ids(led.load("alice")) == ["w"]
        assert led.verify().ok
    finally:
        led.close()
