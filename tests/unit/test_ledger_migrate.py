"""`ledger migrate` (issue 19; consent/pg_migrate.py, consent/migration.py): a PostgreSQL
ledger of one partition re-laid into N, every entry keeping its position and content,
verified before and after in one transaction, and still verifiable whole afterwards
(held checkpoints from before it, the old chain, the new chains)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg
import pytest

from consentauthz.consent import Idempotency, PostgresLedger
from consentauthz.consent.ledger import BatchItem, partition_of
from consentauthz.consent.migration import MIGRATION_KEY, Migration
from consentauthz.consent.pg_migrate import (
    ARCHIVE,
    HEAD_ARCHIVE,
    MigrationRefused,
    migrate,
)
from consentauthz.consent.postgres import PART_LOCK
from consentauthz.domain import ConsentAction, SubjectProfile
from consentauthz.errors import Unavailable
from consentauthz.validation import Violations, check_token_partition
from tests.unit.test_ledger_contract import T0, event
from tests.unit.test_partitioned_ledger import _OLD_SCHEMA, subjects_in

PARTS = 4


def _admin(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def names() -> list[str]:
    """Two subjects in each of the four partitions-to-be."""
    return [s for p in range(PARTS) for s in subjects_in(p, PARTS, 2, f"m{p}")]


@pytest.fixture()
def written(postgres_dsn: str) -> Iterator[tuple[str, list[str], int]]:
    """A ledger of one partition with 30 entries for 8 subjects (grants, withdrawals, a
    profile, idempotency keys); the DSN, the subjects and the head."""
    led = PostgresLedger(postgres_dsn, partitions=1)
    subjects = names()
    try:
        for i in range(28):
            action = ConsentAction.WITHDRAW if i % 7 == 6 else ConsentAction.GRANT
            led.append_consent(subjects[(i * 3) % 8], event(f"r{i}", action, minutes=i),
                               Idempotency(f"key-{i}", f"req-{i}"))
        led.append_profile(subjects[0], SubjectProfile("DE"), "p1", T0)
        led.append_consent(subjects[5], event("r28", minutes=40))
        assert led.heads() == (30,)
    finally:
        led.close()
    yield postgres_dsn, subjects, 30


def snapshot(led: PostgresLedger, subjects: list[str], head: int) -> dict[str, Any]:
    """What replay, audit and callers read of every subject at every position."""
    return {s: ([led.state_at(s, p) for p in range(head + 1)], led.history(s, 0, 100),
                led.load(s).events) for s in subjects}


def tables(dsn: str) -> set[str]:
    with _admin(dsn) as conn:
        return {str(r[0]) for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


def test_every_entry_keeps_its_position_and_old_decisions_replay_the_same(
        written: tuple[str, list[str], int]) -> None:
    dsn, subjects, head = written
    led = PostgresLedger(dsn)
    before = snapshot(led, subjects, head)
    held = led.tips()  # a checkpoint a third party took before the migration
    old_identity = led.identity()
    led.close()

    report = migrate(dsn, PARTS)
    assert report.committed and report.before.ok and report.after.ok
    assert (report.entries, report.subjects) == (30, 8)
    assert report.migration.head == head and report.migration.head_hash == held[0][2]
    assert report.migration.from_identity == old_identity

    led = PostgresLedger(dsn)
    try:
        assert led.partitions == PARTS
        assert led.heads() == (head,) * PARTS  # every head starts at the old one
        assert led.identity() == report.new_identity != old_identity
        assert snapshot(led, subjects, head) == before
        with _admin(dsn) as conn:
            placed = conn.execute("SELECT DISTINCT subject, part FROM ledger").fetchall()
            states = conn.execute("SELECT subject, part FROM subject_state").fetchall()
        assert all(part == partition_of(s, PARTS) for s, part in placed + states)
        # Verified whole, the checkpoint from before the migration included.
        assert led.verify(held).ok
        # New entries number on from the old head in every partition, gapless.
        after = [led.append_consent(s, event(f"n{i}", minutes=60 + i))
                 for i, s in enumerate(subjects[:3])]
        assert [a.sequence for a in after] == [head + 1, head + 2, head + 1]
        batch = led.append_batch([BatchItem(subjects[6], event("b1", minutes=70)),
                                  BatchItem(subjects[7], event("b2", minutes=71))])
        assert [r.sequence for r in batch] == [head + 1, head + 2]  # type: ignore[union-attr]
        # An idempotency key from before the migration is still the same request.
        again = led.append_consent(subjects[0], event("r0", minutes=0),
                                   Idempotency("key-0", "req-0"))
        assert again.replayed and again.record_id == "r0" and again.sequence == 1
        assert led.state_at(subjects[0], head) == before[subjects[0]][0][head]
        assert led.verify(held).ok
        assert led.verify(led.tips()).ok
    finally:
        led.close()
    assert {ARCHIVE, HEAD_ARCHIVE} <= tables(dsn)


def test_a_ledger_from_before_partitions_is_migrated_directly(postgres_dsn: str) -> None:
    with _admin(postgres_dsn) as conn:
        conn.execute(_OLD_SCHEMA)
    led = PostgresLedger(postgres_dsn)  # the in-place upgrade: one partition
    for i, s in enumerate(names()):
        led.append_consent(s, event(f"r{i}", minutes=i))
    led.close()
    report = migrate(postgres_dsn, 2)
    assert report.after.ok and report.entries == 8
    led = PostgresLedger(postgres_dsn)
    try:
        assert led.partitions == 2 and led.verify().ok
        assert led.append_consent(names()[0], event("late", minutes=99)).sequence == 9
    finally:
        led.close()


def test_a_dry_run_verifies_everything_and_changes_nothing(
        written: tuple[str, list[str], int]) -> None:
    dsn, _, head = written
    had = tables(dsn)
    report = migrate(dsn, PARTS, dry_run=True)
    assert not report.committed and report.after.ok and report.entries == head
    assert tables(dsn) == had
    led = PostgresLedger(dsn)
    try:
        assert led.partitions == 1 and led.heads() == (head,)
        assert led.identity() == report.migration.from_identity
        assert led.meta(MIGRATION_KEY) is None
    finally:
        led.close()


def test_a_database_without_a_ledger_is_refused_and_left_empty(postgres_dsn: str) -> None:
    with pytest.raises(MigrationRefused, match="holds no consent ledger"):
        migrate(postgres_dsn, PARTS)
    assert not {t for t in tables(postgres_dsn) if t.startswith("ledger")}


@pytest.mark.parametrize("partitions", [1, 0, 2000])
def test_a_number_of_partitions_out_of_range_is_refused(postgres_dsn: str,
                                                        partitions: int) -> None:
    with pytest.raises(MigrationRefused):
        migrate(postgres_dsn, partitions)


def test_a_partitioned_ledger_is_not_migrated_again(postgres_dsn: str) -> None:
    PostgresLedger(postgres_dsn, partitions=4).close()
    with pytest.raises(MigrationRefused, match="already has 4 partitions"):
        migrate(postgres_dsn, 8)


def test_a_ledger_that_does_not_verify_is_not_migrated(
        written: tuple[str, list[str], int]) -> None:
    dsn, _, head = written
    with _admin(dsn) as conn:
        conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        conn.execute("UPDATE ledger SET recorded_at = %s WHERE seq = 7",
                     (T0.replace(year=2020).isoformat(),))
    with pytest.raises(MigrationRefused, match="does not verify"):
        migrate(dsn, PARTS)
    assert ARCHIVE not in tables(dsn)
    with _opened(dsn) as led:
        assert led.partitions == 1 and led.heads() == (head,)


def _opened(dsn: str) -> closing[PostgresLedger]:
    return closing(PostgresLedger(dsn))


def test_a_writer_still_appending_makes_the_migration_give_up(
        written: tuple[str, list[str], int]) -> None:
    dsn, _, head = written
    with _admin(dsn) as writer:
        writer.execute("SELECT pg_advisory_lock(%s)", (PART_LOCK,))  # an append under way
        with pytest.raises(Unavailable, match="Stop the service"):
            migrate(dsn, PARTS, lock_timeout=0.5)
    with _opened(dsn) as led:
        assert led.partitions == 1 and led.heads() == (head,)


def test_a_writer_opened_before_the_migration_is_refused_after_it(
        written: tuple[str, list[str], int]) -> None:
    """A replica left running would place subjects by the old number of partitions: every
    way it writes is refused, and nothing it tried is in the ledger."""
    dsn, subjects, _ = written
    stale = PostgresLedger(dsn)
    try:
        migrate(dsn, PARTS)
        with pytest.raises(Unavailable):
            stale.append_consent(subjects[1], event("stale1", minutes=90))
        with pytest.raises(Unavailable):
            stale.append_profile(subjects[1], SubjectProfile("FR"), "stale2", T0)
        with pytest.raises(Unavailable):
            stale.append_batch([BatchItem(subjects[1], event("stale3", minutes=91))])
    finally:
        stale.close()
    with _opened(dsn) as led:
        assert led.verify().ok
        assert not [e for e in led.history(subjects[1], 0, 100)
                    if e.record_id.startswith("stale")]


def _tamper(dsn: str, *statements: str) -> None:
    with _admin(dsn) as conn:
        conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        conn.execute("ALTER TABLE ledger_head DISABLE TRIGGER ledger_head_moves_on")
        for sql in statements:
            conn.execute(sql)


def test_a_moved_entry_removed_with_its_partition_made_consistent_is_caught(
        written: tuple[str, list[str], int]) -> None:
    """The newest moved entry of a partition deleted and the partition's head set to the
    entry before it: that partition's chain is whole again, but the old chain the moved
    entries must still make is not."""
    dsn, _, _ = written
    migrate(dsn, PARTS)
    with _admin(dsn) as conn:
        seq, prev = conn.execute("SELECT seq, prev_hash FROM ledger WHERE part = 1 "
                                 "ORDER BY seq DESC LIMIT 1").fetchone()  # type: ignore[misc]
    _tamper(dsn, f"DELETE FROM ledger WHERE part = 1 AND seq = {seq}",
            f"UPDATE ledger_head SET entry_hash = '{prev}' WHERE part = 1")
    with _opened(dsn) as led:
        report = led.verify()
    assert not report.ok
    assert "moved by the migration" in report.problem


def test_a_rewritten_migration_record_breaks_every_chain(
        written: tuple[str, list[str], int]) -> None:
    dsn, _, _ = written
    migrate(dsn, PARTS)
    with _admin(dsn) as conn:
        text = conn.execute("SELECT value FROM ledger_meta WHERE key = %s",
                            (MIGRATION_KEY,)).fetchone()[0]  # type: ignore[index]
        record = json.loads(text)
        record["head"] -= 1  # claim the last entry came later
        conn.execute("UPDATE ledger_meta SET value = %s WHERE key = %s",
                     (json.dumps(record), MIGRATION_KEY))
    with _opened(dsn) as led:
        assert not led.verify().ok
    with _admin(dsn) as conn:
        conn.execute("UPDATE ledger_meta SET value = 'not json' WHERE key = %s",
                     (MIGRATION_KEY,))
    with _opened(dsn) as led:
        report = led.verify()
    assert not report.ok and "unreadable" in report.problem


def test_a_checkpoint_from_before_the_migration_still_catches_a_rewrite(
        written: tuple[str, list[str], int]) -> None:
    dsn, _, _ = written
    with _opened(dsn) as led:
        held = led.tips()
    migrate(dsn, PARTS)
    with _opened(dsn) as led:
        assert led.verify(held).ok
        assert not led.verify([(0, held[0][1], "f" * 64)]).ok


def test_bare_tokens_up_to_the_old_head_stay_tokens_after_the_migration() -> None:
    migration = Migration("0123456789abcdef", 30, "0" * 64, PARTS, "2026-12-07T00:00:00")
    for position, ok in ((30, True), (1, True), (31, False)):
        v = Violations()
        check_token_partition(v, None, position, PARTS, migration.head)
        assert (not v.items) is ok, position
    v = Violations()
    check_token_partition(v, None, 5, PARTS)  # a ledger partitioned from the start
    assert v.items


def test_an_empty_ledger_is_migrated_and_numbers_from_one(postgres_dsn: str) -> None:
    PostgresLedger(postgres_dsn, partitions=1).close()
    report = migrate(postgres_dsn, PARTS)
    assert (report.entries, report.migration.head) == (0, 0) and report.after.ok
    with _opened(postgres_dsn) as led:
        assert led.heads() == (0,) * PARTS
        subject = names()[2]
        assert led.append_consent(subject, event("first")).sequence == 1
        assert led.verify(led.tips()).ok
