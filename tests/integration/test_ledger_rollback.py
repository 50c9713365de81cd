"""A ledger that went back is noticed: `consentauthz serve` processes sharing one PostgreSQL
ledger and one Redis while the database is restored from a `pg_dump` taken earlier, or
dropped and recreated (docs/operations.md).

Replica B connects as a PostgreSQL role of its own, so that B alone can be cut off from
the database for a while (a network partition, a maintenance window) and let back in. While
it is cut off, B still hears of a grant through Redis and answers from it, but its poller
never sees it: B has applied a ledger position its polls never saw. That is the replica the
old poller missed, since it compared the head with its own last poll.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consentauthz.v1 import decision_pb2
from tests.integration.test_replicas import (
    CATEGORY,
    EMAIL,
    Replica,
    grant,
    start_replica,
    until,
)
from tests.pg import (
    CutOffRole,
    create_database,
    drop_database,
    dump,
    fresh_database,
    restore,
    url_for,
)
from tests.redis_server import RedisServer
from tests.scenario import decision_name, record
from tests.serve_process import position

#: B's staleness bound (the other replica's is test_replicas.py's 1 s): room to warm its
#: cache from Redis while it is cut off, before its last poll's proof runs out.
B_STALENESS = 4.0
LEDGER = "consentauthz.ledger"


@dataclass
class Pair:
    a: Replica
    b: Replica
    redis: RedisServer
    database: str
    role: CutOffRole
    workdir: Path
    a_output: list[str] = field(default_factory=list)
    b_output: list[str] = field(default_factory=list)
    #: every process started, to stop at the end (A may be restarted)
    started: list[Replica] = field(default_factory=list)

    def start_a(self) -> Replica:
        self.a = start_replica("a", self.workdir, url_for(self.database), self.redis.url,
                               output=self.a_output)
        self.started.append(self.a)
        return self.a

    def stop_a(self) -> None:
        self.a.channel.close()
        self.a.proc.terminate()
        assert self.a.proc.wait(timeout=20) == 0, "replica a did not exit cleanly"


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[Pair]:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        with fresh_database() as dsn, CutOffRole() as role:
            name = dsn.rsplit("dbname=", 1)[1]
            p = Pair(None, None, redis_server, name, role, tmp_path)  # type: ignore[arg-type]
            try:
                p.start_a()  # first: it makes the schema (and the ledger's identity)
                p.b = start_replica("b", tmp_path, url_for(name, role.name), redis_server.url,
                                    "127.0.0.1:0", "--max-staleness", str(B_STALENESS),
                                    output=p.b_output)
                p.started.append(p.b)
                yield p
            finally:
                for r in p.started:
                    r.channel.close()
                    if r.proc.poll() is None:
                        r.proc.terminate()
                for r in p.started:
                    assert r.proc.wait(timeout=20) == 0, f"replica {r.name} did not exit cleanly"
    finally:
        redis_server.kill()


def check(r: Replica, subject: str, token: str = "") -> decision_pb2.CheckResponse:
    resp: decision_pb2.CheckResponse = r.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose=EMAIL, data_category=CATEGORY, jurisdiction="DE",
        consistency_token=token), timeout=10)
    return resp


def grant_record(r: Replica, subject: str) -> tuple[str, str]:
    """(record id, consistency token) of a new grant."""
    resp = record(r, subject, "grant", EMAIL, categories=(CATEGORY,),  # type: ignore[arg-type]
                  jurisdiction="DE")
    return str(resp.record_id), str(resp.consistency_token)


def critical_lines(output: list[str]) -> list[str]:
    return [line for line in list(output) if " CRITICAL " in line]


def warm_while_cut_off(p: Pair, subject: str) -> tuple[str, int]:
    """Cut B off from PostgreSQL, grant `subject` on A and have B allow it (from Redis, with
    the grant's token; B caches it): B has applied the grant's position, and its poller
    never saw it. Returns the grant's record id and position (in the subject's ledger
    partition)."""
    p.role.cut_off()
    record_id, token = grant_record(p.a, subject)
    resp = check(p.b, subject, token)
    assert decision_name(resp) == "ALLOW" and list(resp.consent_record_ids) == [record_id]
    # B's polls fail meanwhile: nothing about the grant reaches B's poller.
    until(lambda: not p.b.serving(LEDGER), 30)
    return record_id, position(token)


def let_b_back_in(p: Pair) -> None:
    """Let B reach PostgreSQL again, and wait for a poll of B's to have succeeded."""
    p.role.let_in()
    until(lambda: p.b.serving(LEDGER), 60)


def assert_denied_without_it(p: Pair, subject: str, vanished: str) -> None:
    """B answers DENY for `subject` (within its staleness bound: its first successful poll
    has already been made) and never cites the record the ledger lost."""
    deadline = time.monotonic() + 3 * B_STALENESS
    while True:
        resp = check(p.b, subject)
        assert vanished not in resp.consent_record_ids, (
            f"B cites {vanished}, a record the ledger no longer holds "
            f"({decision_name(resp)}, {resp.reason})")
        if decision_name(resp) == "DENY":
            break
        assert time.monotonic() < deadline, "B still answers from its old cache"
        time.sleep(0.05)
    assert resp.reason == "NO_CONSENT"
    # And it stays so (each of these is answered from B's caches, refilled from the ledger).
    for _ in range(5):
        again = check(p.b, subject)
        assert decision_name(again) == "DENY" and vanished not in again.consent_record_ids


def assert_one_critical_line(output: list[str], subject: str) -> None:
    # A few more of B's polls: the incident is logged once, not once per poll.
    time.sleep(2 * B_STALENESS / 4 + 0.5)
    lines = critical_lines(output)
    assert len(lines) == 1, lines
    assert "consent ledger" in lines[0] and subject not in lines[0]


def test_a_restored_dump_is_noticed_and_the_vanished_grant_is_denied(pair: Pair) -> None:
    p = pair
    for i in range(5):
        grant(p.a, f"before-dump-{i}")
    backup = p.workdir / "ledger.dump"
    dump(p.database, backup)

    vanished, _ = warm_while_cut_off(p, "granted-after-dump")
    restore(p.database, backup)  # the ledger is back at the dump: the grant is gone
    p.redis.client().flushall()  # as the restore procedure says
    let_b_back_in(p)

    assert_denied_without_it(p, "granted-after-dump", vanished)
    assert_one_critical_line(p.b_output, "granted-after-dump")
    assert len(critical_lines(p.a_output)) == 1  # A, which polled the grant, noticed too
    # What the dump holds is still answered, and new writes are honoured on B.
    assert decision_name(check(p.b, "before-dump-3")) == "ALLOW"
    record_id, token = grant_record(p.a, "granted-after-restore")
    resp = check(p.b, "granted-after-restore", token)
    assert decision_name(resp) == "ALLOW" and list(resp.consent_record_ids) == [record_id]


def test_a_dropped_and_recreated_database_is_noticed_though_its_head_passed_the_old(
        pair: Pair) -> None:
    p = pair
    grant(p.a, "before-drop")
    vanished, old_head = warm_while_cut_off(p, "granted-before-drop")

    # Drop and recreate the database while the replicas run; A is restarted on the empty
    # one (a new ledger, with a new identity) and writes past the old head of the subject's
    # partition before B is back (records of another purpose: the e-mail answer is NO_CONSENT).
    drop_database(p.database)
    create_database(p.database)
    p.stop_a()
    p.start_a()
    for i in range(old_head + 3):
        grant(p.a, f"after-recreate-{i}")
        head = position(record(p.a, "granted-before-drop", "grant", "analytics",
                               jurisdiction="DE").consistency_token)
    assert head > old_head
    let_b_back_in(p)

    assert_denied_without_it(p, "granted-before-drop", vanished)
    assert_one_critical_line(p.b_output, "granted-before-drop")
    # B serves the new ledger: its writes are honoured there, through the new ledger's keys.
    assert decision_name(check(p.b, "after-recreate-1")) == "ALLOW"
    record_id, token = grant_record(p.a, "granted-before-drop")
    resp = check(p.b, "granted-before-drop", token)
    assert decision_name(resp) == "ALLOW" and list(resp.consent_record_ids) == [record_id]
