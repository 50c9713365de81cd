"""The partitioned consent ledger (issue 19, docs/design/partitioned-ledger.md): each
partition its own sequence, hash chain and write order; nothing spans partitions; a ledger
from before partitions becomes one of one partition with its chain unchanged."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from consentauthz.chain import GENESIS, link
from consentauthz.cli import build_parser
from consentauthz.config import serve_config
from consentauthz.consent import Idempotency, MemoryLedger, PostgresLedger
from consentauthz.consent.codec import event_to_dict
from consentauthz.consent.ledger import (
    AppendResult,
    BatchItem,
    entry_payload,
    heads_digest,
    partition_of,
)
from consentauthz.consent.postgres import DEFAULT_PARTITIONS, PART_LOCK
from consentauthz.domain import ConsentAction
from consentauthz.errors import ConfigError, InvalidArgument, Unavailable
from tests.unit.test_ledger_contract import T0, _run_threads, event


def _admin(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def subjects_in(part: int, partitions: int, count: int, prefix: str = "s") -> list[str]:
    """`count` pseudonym-like subject names whose partition is `part`."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        name = f"k1:{prefix}{i:08x}" + "0" * 32
        if partition_of(name, partitions) == part:
            found.append(name)
        i += 1
    return found


@pytest.fixture()
def ledger(postgres_dsn: str) -> Iterator[PostgresLedger]:
    led = PostgresLedger(postgres_dsn, partitions=4)
    try:
        yield led
    finally:
        led.close()


def test_partition_of_is_the_pseudonyms_first_four_bytes_modulo_the_partitions() -> None:
    assert partition_of("k1:" + "0000000a" + "f" * 32, 16) == 10
    assert partition_of("k2:" + "ffffffff" + "0" * 32, 16) == 0xFFFFFFFF % 16
    assert partition_of("anything at all", 1) == 0
    # Not a pseudonym (tests name subjects "alice"): hashed, and stable.
    assert partition_of("alice", 16) == partition_of("alice", 16)
    assert len({partition_of(f"user-{i}", 16) for i in range(200)}) == 16


def test_the_partitions_of_a_new_ledger_come_from_the_flag_or_the_environment() -> None:
    parse = build_parser().parse_args
    assert serve_config(parse(["serve"]), {}).ledger_partitions is None
    flag = parse(["serve", "--ledger-partitions", "4"])
    assert serve_config(flag, {"CONSENTAUTHZ_LEDGER_PARTITIONS": "32"}).ledger_partitions == 4
    env = {"CONSENTAUTHZ_LEDGER_PARTITIONS": "32"}
    assert serve_config(parse(["serve"]), env).ledger_partitions == 32
    for bad in (["--ledger-partitions", "0"], ["--ledger-partitions", "1025"]):
        with pytest.raises(ConfigError, match="--ledger-partitions"):
            serve_config(parse(["serve", *bad]), {})
    for text in ("0", "x", "-3", "16.0"):
        with pytest.raises(ConfigError, match="--ledger-partitions"):
            serve_config(parse(["serve"]), {"CONSENTAUTHZ_LEDGER_PARTITIONS": text})


def test_a_new_postgres_ledger_has_the_default_partitions(postgres_dsn: str) -> None:
    led = PostgresLedger(postgres_dsn)
    try:
        assert led.partitions == DEFAULT_PARTITIONS
        assert led.heads() == (0,) * DEFAULT_PARTITIONS
    finally:
        led.close()
    again = PostgresLedger(postgres_dsn)  # an existing ledger keeps its own number
    try:
        assert again.partitions == DEFAULT_PARTITIONS
    finally:
        again.close()


def test_another_number_of_partitions_for_an_existing_ledger_is_refused(
        ledger: PostgresLedger, postgres_dsn: str) -> None:
    with pytest.raises(Unavailable, match="has 4 partitions, not 8"):
        PostgresLedger(postgres_dsn, partitions=8)


def test_each_partition_has_its_own_sequence_and_chain(ledger: PostgresLedger,
                                                       postgres_dsn: str) -> None:
    a0, b0 = subjects_in(0, 4, 2, "a")
    (c2,) = subjects_in(2, 4, 1, "c")
    assert ledger.append_consent(a0, event("r1")).sequence == 1
    assert ledger.append_consent(c2, event("r2")).sequence == 1
    assert ledger.append_consent(b0, event("r3")).sequence == 2
    assert ledger.append_consent(c2, event("r4", minutes=1)).sequence == 2
    assert ledger.heads() == (2, 0, 2, 0)
    assert ledger.head() == 4
    # A subject's state is current as of its own partition's head.
    assert ledger.load(a0).sequence == 2 and ledger.load(c2).sequence == 2
    assert ledger.load(subjects_in(1, 4, 1, "z")[0]).sequence == 0
    report = ledger.verify()
    assert report.ok and report.entries == 4 and report.head_sequence == 4
    with _admin(postgres_dsn) as conn:
        tips = [(int(p), int(s), str(h)) for p, s, h in conn.execute(
            "SELECT part, seq, entry_hash FROM ledger_head ORDER BY part")]
        rows = conn.execute("SELECT part, seq, subject, kind, record_id, recorded_at, body, "
                            "prev_hash, entry_hash FROM ledger ORDER BY part, seq").fetchall()
    # One hash over every partition's head: what a checkpoint holds.
    assert report.head_hash == heads_digest(tips)
    prev: dict[int, str] = {}
    for part, seq, subject, kind, record_id, recorded_at, body, prev_hash, entry_hash in rows:
        assert prev_hash == prev.get(part, GENESIS)  # each chain from the genesis hash
        assert entry_hash == link(prev_hash, entry_payload(
            seq, subject, kind, record_id, recorded_at, json.loads(body)))
        prev[part] = entry_hash


def test_changes_are_read_per_partition(ledger: PostgresLedger) -> None:
    a = subjects_in(1, 4, 3, "a")
    b = subjects_in(3, 4, 2, "b")
    for i, s in enumerate([a[0], b[0], a[1], b[1], a[2]]):
        ledger.append_consent(s, event(f"r{i}"))
    seen = ledger.changes((0, 1, 0, 0), 100)
    assert seen.heads == (0, 3, 0, 2)
    assert seen.entries == [(1, 2, a[1]), (1, 3, a[2]), (3, 1, b[0]), (3, 2, b[1])]
    assert ledger.changes(seen.heads, 100).entries == []
    assert len(ledger.changes((0, 0, 0, 0), 2).entries) == 2


def test_an_idempotency_key_is_one_request_across_partitions(ledger: PostgresLedger) -> None:
    (a,) = subjects_in(0, 4, 1, "a")
    (b,) = subjects_in(1, 4, 1, "b")
    first = ledger.append_consent(a, event("r1"), Idempotency("key", "hash-a"))
    again = ledger.append_consent(a, event("r2"), Idempotency("key", "hash-a"))
    assert (again.replayed, again.record_id, again.sequence) == (True, "r1", first.sequence)
    # The same key for another request (another subject, another partition): refused.
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        ledger.append_consent(b, event("r3"), Idempotency("key", "hash-b"))
    assert ledger.heads() == (1, 0, 0, 0)


@contextmanager
def key_taken_meanwhile(ledger: PostgresLedger, postgres_dsn: str, key: str) -> Iterator[None]:
    """Another partition's writer (an admin session, partition 3) holds an entry under
    `key` uncommitted while the block runs, and commits it half a second in: the block's
    appends look the key up before that, and meet it in the key's index after."""
    (b,) = subjects_in(3, 4, 1, "b")
    ledger.append_consent(b, event("b1"))  # a chain for the row below to follow
    with _admin(postgres_dsn) as other:
        other.execute("BEGIN")
        row = other.execute("SELECT entry_hash FROM ledger_head WHERE part = 3").fetchone()
        assert row is not None
        other.execute(
            "INSERT INTO ledger (part, seq, record_id, subject, kind, body, recorded_at, "
            "idempotency_key, request_hash, prev_hash, entry_hash) VALUES (3, 2, 'other', "
            "%s, 'consent', '{}', %s, %s, 'hash-b', %s, %s)",
            (b, T0.isoformat(), key, row[0], "e" * 64))
        commit = threading.Timer(0.5, other.execute, ("COMMIT",))
        commit.start()
        try:
            yield
        finally:
            commit.join()


def test_an_idempotency_key_taken_meanwhile_in_another_partition_is_a_conflict(
        ledger: PostgresLedger, postgres_dsn: str) -> None:
    """Another partition's writer holds the key uncommitted when this append looks it up:
    the append waits on the key's index, and is refused as a conflict once that commits
    (not reported as an outage)."""
    (a,) = subjects_in(0, 4, 1, "a")
    with key_taken_meanwhile(ledger, postgres_dsn, "key"), \
            pytest.raises(InvalidArgument, match="idempotency_key"):
        ledger.append_consent(a, event("a1"), Idempotency("key", "hash-a"))
    assert ledger.heads()[0] == 0


def test_a_batch_whose_key_is_taken_meanwhile_names_that_item_and_records_the_rest(
        ledger: PostgresLedger, postgres_dsn: str) -> None:
    a1, a2 = subjects_in(0, 4, 2, "a")
    with key_taken_meanwhile(ledger, postgres_dsn, "key"):
        results = ledger.append_batch([
            BatchItem(a1, event("a1"), Idempotency("key", "hash-a")),
            BatchItem(a2, event("a2"), Idempotency("key-2", "hash-a2"))])
    assert isinstance(results[0], InvalidArgument)
    assert results[0].violations[0].field == "idempotency_key"
    assert isinstance(results[1], AppendResult) and results[1].sequence == 1
    assert ledger.heads()[0] == 1


def test_a_removed_tail_of_one_partition_is_caught(ledger: PostgresLedger,
                                                   postgres_dsn: str) -> None:
    subjects = subjects_in(2, 4, 3, "t")
    for i, s in enumerate(subjects):
        ledger.append_consent(s, event(f"r{i}"))
    ledger.append_consent(subjects_in(0, 4, 1, "o")[0], event("other"))
    assert ledger.verify().ok
    with _admin(postgres_dsn) as conn:
        conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        conn.execute("DELETE FROM ledger WHERE part = 2 AND seq = 3")
    report = ledger.verify()
    assert not report.ok
    assert report.problem.startswith("partition 2: ")


def test_projections_are_rebuilt_per_partition(ledger: PostgresLedger,
                                              postgres_dsn: str) -> None:
    subjects = [*subjects_in(0, 4, 2, "a"), *subjects_in(3, 4, 2, "b")]
    for i, s in enumerate(subjects):
        ledger.append_consent(s, event(f"r{i}"))
        ledger.append_consent(s, event(f"w{i}", ConsentAction.WITHDRAW, minutes=1))
    before = {s: ledger.load(s) for s in subjects}
    ledger.close()
    with _admin(postgres_dsn) as conn:  # as if written under other projection rules
        conn.execute("DELETE FROM ledger_meta WHERE key = 'projection_rules'")
    again = PostgresLedger(postgres_dsn, partitions=4)
    try:
        assert {s: again.load(s) for s in subjects} == before
        assert again.verify().ok
    finally:
        again.close()


def test_a_partition_cut_short_with_its_head_is_caught_by_a_held_checkpoint(
        ledger: PostgresLedger, postgres_dsn: str) -> None:
    subjects = subjects_in(2, 4, 3, "t")
    for i, s in enumerate(subjects):
        ledger.append_consent(s, event(f"r{i}"))
    ledger.append_consent(subjects_in(1, 4, 1, "o")[0], event("other"))
    held = ledger.tips()
    assert held[2][:2] == (2, 3) and held[1][:2] == (1, 1) and held[0][:2] == (0, 0)
    assert ledger.verify(held).ok
    ledger.append_consent(subjects_in(0, 4, 1, "n")[0], event("later"))
    assert ledger.verify(held).ok  # a later write is no tampering
    with _admin(postgres_dsn) as conn:  # a DBA cuts partition 2 short, head row and all
        conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        conn.execute("ALTER TABLE ledger_head DISABLE TRIGGER ledger_head_moves_on")
        conn.execute("ALTER TABLE subject_state DISABLE TRIGGER subject_state_no_delete")
        conn.execute("DELETE FROM ledger WHERE part = 2 AND seq = 3")
        conn.execute("DELETE FROM subject_state WHERE subject = %s", (subjects[2],))
        conn.execute("UPDATE ledger_head SET seq = 2, entry_hash = (SELECT entry_hash FROM "
                     "ledger WHERE part = 2 AND seq = 2) WHERE part = 2")
    assert ledger.verify().ok  # every chain is whole: only the held checkpoint knows
    report = ledger.verify(held)
    assert not report.ok
    assert report.problem == ("partition 2: a held checkpoint is at position 3, beyond the "
                              "head 2 (entries removed?)")
    forged = ((0, 0, GENESIS), (1, 1, "f" * 64), *held[2:])
    assert "partition 1: the held checkpoint says position 1" in ledger.verify(forged).problem


def test_a_head_row_added_later_is_refused_not_taken_for_a_partition(
        ledger: PostgresLedger, postgres_dsn: str) -> None:
    with _admin(postgres_dsn) as conn:
        conn.execute("INSERT INTO ledger_head (part, seq, entry_hash) VALUES (4, 0, %s)",
                     (GENESIS,))
    with pytest.raises(Unavailable, match="made with 4 partitions and has 5"):
        PostgresLedger(postgres_dsn)


def test_a_partitions_head_only_moves_on(ledger: PostgresLedger, postgres_dsn: str) -> None:
    ledger.append_consent(subjects_in(1, 4, 1)[0], event("r1"))
    with _admin(postgres_dsn) as conn:
        for sql in ("UPDATE ledger_head SET seq = 0 WHERE part = 1",
                    "UPDATE ledger_head SET seq = 5 WHERE part = 1",
                    "DELETE FROM ledger_head WHERE part = 1",
                    "TRUNCATE ledger_head"):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(sql)
    assert ledger.heads() == (0, 1, 0, 0)


def test_writers_to_different_partitions_never_wait_for_each_other(
        postgres_dsn: str) -> None:
    one = PostgresLedger(postgres_dsn, partitions=4)
    two = PostgresLedger(postgres_dsn, partitions=4, statement_timeout=2)
    (a,) = subjects_in(0, 4, 1, "a")
    (b,) = subjects_in(3, 4, 1, "b")
    try:
        with one.exclusive([0]):
            # Another replica's append to partition 3 goes through at once ...
            assert two.append_consent(b, event("b1")).sequence == 1
            # ... and one to the partition held waits for the block.
            done = threading.Event()

            def blocked() -> None:
                two.append_consent(a, event("a2"))
                done.set()

            thread = threading.Thread(target=blocked)
            thread.start()
            assert not done.wait(0.5)
            one.append_consent(a, event("a1"))
        thread.join(5)
        assert done.is_set()
        assert [e.record_id for e in two.history(a, 0, 10)] == ["a1", "a2"]
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("first", ["append", "batch"])
def test_a_lazy_block_holds_its_partition_from_its_first_append(
        postgres_dsn: str, first: str) -> None:
    one = PostgresLedger(postgres_dsn, partitions=4)
    two = PostgresLedger(postgres_dsn, partitions=4, statement_timeout=3)
    a, b = subjects_in(0, 4, 2, "z")
    try:
        with one.exclusive([0], lazy=True):
            # Before the block's first append nothing is held: another replica goes on.
            assert two.append_consent(b, event("b1")).sequence == 1
            if first == "append":
                one.append_consent(a, event("a1"))
            else:
                (done_a,) = one.append_batch([BatchItem(a, event("a1"))])
                assert isinstance(done_a, AppendResult)
            # From the first append to the block's end, another replica's append waits.
            done = threading.Event()

            def blocked() -> None:
                two.append_consent(b, event("b2", minutes=1))
                done.set()

            thread = threading.Thread(target=blocked)
            thread.start()
            assert not done.wait(0.5)
            # (what the block does now, e.g. the Redis write-through, is still ordered)
            assert one.heads()[0] == 2
        thread.join(5)
        assert done.is_set() and one.heads()[0] == 3
        with _admin(postgres_dsn) as conn:  # and the lock did not go back to the pool
            assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                ).fetchone() == (0,)
        assert one.verify().ok
    finally:
        one.close()
        two.close()


def test_exclusive_holds_several_partitions_in_order(ledger: PostgresLedger,
                                                     postgres_dsn: str) -> None:
    with ledger.exclusive([3, 1]), _admin(postgres_dsn) as conn:
        held = {int(r[0]) for r in conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted")}
        assert {(PART_LOCK + 1) & 0xFFFFFFFF, (PART_LOCK + 3) & 0xFFFFFFFF} <= held
    with _admin(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            ).fetchone() == (0,)


def test_a_lock_timeout_part_way_leaves_no_partition_held(postgres_dsn: str) -> None:
    led = PostgresLedger(postgres_dsn, partitions=4, statement_timeout=0.3)
    try:
        with _admin(postgres_dsn) as blocker:
            blocker.execute("SELECT pg_advisory_lock(%s)", (PART_LOCK + 3,))
            # Partition 1 is had at once, 3 never: the block is refused ...
            with pytest.raises(Unavailable), led.exclusive([1, 3]):
                raise AssertionError("got a partition another session holds")
            # ... and the pooled connection did not keep partition 1's lock.
            held = blocker.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid <> "
                "pg_backend_pid()").fetchone()
            assert held == (0,)
        (a,) = subjects_in(1, 4, 1, "a")
        with led.exclusive([1]):
            assert led.append_consent(a, event("a1")).sequence == 1
    finally:
        led.close()


def test_replicas_appending_at_once_keep_every_partition_gapless(postgres_dsn: str) -> None:
    replicas = [PostgresLedger(postgres_dsn, partitions=4) for _ in range(2)]
    try:
        names = [f"k1:{i:08x}" + "0" * 32 for i in range(16)]

        def writer(led: PostgresLedger, w: int) -> None:
            for i in range(12):
                subject = names[(w * 5 + i) % len(names)]
                with led.exclusive([partition_of(subject, 4)]):
                    led.append_consent(subject, event(f"w{w}-{i}", minutes=i))

        _run_threads(*[lambda led=replicas[w % 2], w=w: writer(led, w) for w in range(6)])
        report = replicas[0].verify()
        assert report.ok, report
        assert report.entries == 72
        assert sum(replicas[1].heads()) == 72
    finally:
        for led in replicas:
            led.close()


# -- a ledger from before partitions -----------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE ledger (
    seq BIGINT PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, subject TEXT NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL, recorded_at TEXT NOT NULL,
    idempotency_key TEXT UNIQUE, request_hash TEXT, prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL);
CREATE TABLE subject_state (subject TEXT PRIMARY KEY, version BIGINT NOT NULL,
                            state TEXT NOT NULL);
CREATE TABLE ledger_identity (id TEXT NOT NULL);
CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO ledger_identity VALUES ('0123456789abcdef');
CREATE FUNCTION consentauthz_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the consent ledger is append-only'; END $$;
CREATE FUNCTION consentauthz_projection_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'projections are only ever replaced, never deleted'; END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
FOR EACH STATEMENT EXECUTE FUNCTION consentauthz_ledger_append_only();
CREATE TRIGGER subject_state_no_delete BEFORE DELETE OR TRUNCATE ON subject_state
FOR EACH STATEMENT EXECUTE FUNCTION consentauthz_projection_no_delete();
-- The previous release's append (its signature; what it did does not matter here).
CREATE FUNCTION consentauthz_append_v1(
    p_lock BIGINT, p_subject TEXT, p_kind TEXT, p_record_id TEXT, p_body TEXT,
    p_recorded_at TEXT, p_retry_keys TEXT[], p_idempotency_key TEXT, p_request_hash TEXT,
    p_payload TEXT, p_state TEXT, p_expected BIGINT, p_nonce TEXT)
RETURNS TABLE (seq BIGINT, record_id TEXT, request_hash TEXT, replayed BOOLEAN)
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the previous release'; END $$;
"""


def test_a_ledger_from_before_partitions_becomes_one_of_one_partition(
        postgres_dsn: str) -> None:
    # Written the way the previous release wrote it: one global sequence and chain.
    memory = MemoryLedger()
    names = ["alice", "bob", "alice"]
    for i, name in enumerate(names):
        memory.append_consent(name, event(f"r{i}", minutes=i))
    with _admin(postgres_dsn) as conn:
        conn.execute(_OLD_SCHEMA)
        prev = GENESIS
        for seq, name in enumerate(names, start=1):
            ev = next(e for e in memory.history(name, 0, 10) if e.sequence == seq)
            body = event_to_dict(ev)
            h = link(prev, entry_payload(seq, name, "consent", ev.record_id,
                                         ev.recorded_at.isoformat(), body))
            conn.execute("INSERT INTO ledger VALUES (%s, %s, %s, 'consent', %s, %s, NULL, "
                         "NULL, %s, %s)", (seq, ev.record_id, name,
                                           json.dumps(body, sort_keys=True),
                                           ev.recorded_at.isoformat(), prev, h))
            prev = h
    led = PostgresLedger(postgres_dsn)  # the default is for new ledgers only
    try:
        assert led.partitions == 1
        assert led.heads() == (3,)
        assert led.identity() == "0123456789abcdef"
        report = led.verify()
        assert report.ok and report.head_hash == prev  # the old chain, unchanged
        assert [e.record_id for e in led.history("alice", 0, 10)] == ["r0", "r2"]
        assert [e.record_id for e in led.load("alice").events] == ["r2"]
        assert led.append_consent("bob", event("r3", minutes=5)).sequence == 4
        assert led.verify().ok
        # The previous release can no longer write: its append function is gone, and its
        # insert names no partition.
        with _admin(postgres_dsn) as conn:
            assert conn.execute("SELECT to_regproc('consentauthz_append_v1')").fetchone() \
                == (None,)
        with _admin(postgres_dsn) as conn, pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("INSERT INTO ledger (seq, record_id, subject, kind, body, "
                         "recorded_at, prev_hash, entry_hash) VALUES (9, 'x', 'alice', "
                         "'consent', '{}', %s, 'p', 'h')", (T0.isoformat(),))
    finally:
        led.close()


def test_a_stuck_partition_is_unavailable_after_the_statement_timeout(
        postgres_dsn: str) -> None:
    led = PostgresLedger(postgres_dsn, partitions=2, statement_timeout=0.3)
    (a,) = subjects_in(1, 2, 1, "a")
    (b,) = subjects_in(0, 2, 1, "b")
    try:
        with _admin(postgres_dsn) as blocker:
            blocker.execute("SELECT pg_advisory_lock(%s)", (PART_LOCK + 1,))
            started = time.monotonic()
            with pytest.raises(Unavailable):
                led.append_consent(a, event("a1"))
            assert time.monotonic() - started < 3
            assert led.append_consent(b, event("b1")).sequence == 1  # not partition 0
        assert led.append_consent(a, event("a1")).sequence == 1
    finally:
        led.close()
