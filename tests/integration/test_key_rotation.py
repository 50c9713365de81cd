"""Rotating the pseudonymisation key never splits a subject's history or hides it from
auditors; the key never appears in logs."""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from consentauthz.pseudonym import Pseudonymizer, parse_key_ring
from consentauthz.v1 import audit_pb2
from tests.conftest import Running, start_server
from tests.pg import fresh_database
from tests.scenario import check, decision_name, record
from tests.serve_process import (
    Served,
    decide,
    error_lines,
    pg_url,
    position,
    refused,
    serve_command,
    serve_env,
    start_serve,
)

EMAIL = "marketing.communications.email"
BIN = Path(sys.executable).parent / "consentauthz"



def serve(data: Path, key_file: Path) -> Running:
    return start_server(data, key_file=key_file)


def stop(s: Running) -> None:
    s.channel.close()
    s.app.stop(grace=None)


def test_key_ring_parsing() -> None:
    a, b = secrets.token_hex(32), secrets.token_hex(32)
    ring = parse_key_ring(f"# keys\n{a}\nk2:{b}\n")
    assert ring.key_id == "k2"
    assert ring("x").startswith("k2:") and ring.all("x")[1].startswith("k1:")
    assert ring.all("x")[1] == Pseudonymizer(bytes.fromhex(a))("x")
    for bad in ("", "k1:zz", f"k1:{a}\nk1:{b}", "k1:00"):
        with pytest.raises(ValueError):
            parse_key_ring(bad)
    assert a not in repr(ring) and b not in repr(ring)


def test_rotation_keeps_history_together(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    data, keys = tmp_path / "data", tmp_path / "pseudonym.key"
    k1, k2 = secrets.token_hex(32), secrets.token_hex(32)
    keys.write_text(f"k1:{k1}\n")
    s = serve(data, keys)
    try:
        record(s, "old-customer", "grant", EMAIL)
        first = check(s, "old-customer", EMAIL, "user.contact.email", "DE")
    finally:
        stop(s)
    keys.write_text(f"k1:{k1}\nk2:{k2}\n")  # rotate
    s = serve(data, keys)
    try:
        # The grant made under k1 still counts, and a withdrawal lands in the same history.
        assert decision_name(check(s, "old-customer", EMAIL, "user.contact.email",
                                   "DE")) == "ALLOW"
        record(s, "old-customer", "withdraw", EMAIL)
        assert check(s, "old-customer", EMAIL, "user.contact.email", "DE").reason == \
            "CONSENT_WITHDRAWN"
        # A new subject gets the new key.
        record(s, "new-customer", "grant", EMAIL)
        new = check(s, "new-customer", EMAIL, "user.contact.email", "DE")
        got = s.audit.GetDecision(audit_pb2.GetDecisionRequest(decision_id=new.decision_id))
        assert got.subject_pseudonym.startswith("k2:")
        target = f"127.0.0.1:{s.app.port}"
        found = subprocess.run(
            [str(BIN), "audit", "query", "--subject", "old-customer", "--format", "jsonl",
             "--target", target], capture_output=True, text=True, timeout=60, check=True)
        rows = [json.loads(line) for line in found.stdout.splitlines()]
        assert len(rows) == 3 and first.decision_id in {r["decision_id"] for r in rows}
        assert {r["subject_pseudonym"][:3] for r in rows} == {"k1:"}
    finally:
        stop(s)
    for secret in (k1, k2):
        assert secret not in caplog.text


# -- the documented rotation with replicas (docs/auditing.md), end to end ---------------


def test_rotation_by_two_rolling_restarts_never_splits_a_subject(tmp_path: Path) -> None:
    """Two `serve` replicas on one PostgreSQL ledger rotate k1 -> k2 as docs/auditing.md
    says: a roll that adds k2 to every ring (k1 stays current), then a roll that makes
    k2 current. Whichever replica records a subject, during either roll or after, a
    withdrawal recorded on one replica is honoured on the other with its token."""
    k1, k2 = secrets.token_hex(32), secrets.token_hex(32)
    env = serve_env(CONSENTAUTHZ_MASTER_KEY="cd" * 32)
    served: dict[str, Served] = {}

    def start(name: str, ring: str) -> Served:
        key_file = tmp_path / f"{name}.key"
        key_file.write_text(ring)
        served[name] = start_serve(serve_command(
            tmp_path / name, "--ledger", ledger, "--pseudonym-key-file", str(key_file)), env)
        return served[name]

    def restart(name: str, ring: str) -> Served:
        served.pop(name).stop()
        return start(name, ring)

    def consistent(subject: str, writer: Served, reader: Served) -> None:
        """Grant on `writer`, withdraw on `reader`, then both deny with the token; and
        the other way round for a second subject."""
        for grant_on, withdraw_on, who in ((writer, reader, subject),
                                           (reader, writer, subject + "-reversed")):
            granted = record(grant_on, who, "grant", EMAIL).consistency_token
            assert decide(withdraw_on, who, granted) == "ALLOW"
            token = record(withdraw_on, who, "withdraw", EMAIL).consistency_token
            assert decide(grant_on, who, token) == decide(withdraw_on, who, token) == "DENY"

    with fresh_database() as dsn:
        ledger = pg_url(dsn)
        try:
            a, b = start("a", f"k1:{k1}\n"), start("b", f"k1:{k1}\n")
            record(a, "old-customer", "grant", EMAIL)

            # Roll 1: k2 joins every ring ahead of k1, which stays current (last line).
            b = restart("b", f"k2:{k2}\nk1:{k1}\n")
            consistent("during-roll-1", a, b)
            # From now on the ledger knows k2: a replica without it would not find what
            # is recorded under it, and is refused.
            code, err = refused(serve_command(tmp_path / "c", "--ledger", ledger,
                                              "--pseudonym-key-file", str(tmp_path / "a.key")),
                                env)
            assert code != 0
            (line,) = error_lines(err)
            assert "pseudonymisation key k2" in line and "lacks" in line
            a = restart("a", f"k2:{k2}\nk1:{k1}\n")

            # Roll 2: k2 becomes current (last line), one replica after the other.
            b = restart("b", f"k1:{k1}\nk2:{k2}\n")
            # b (k2 current) looks a new subject up before anyone recorded it, then a
            # (k1 still current) records it first: it lives under k1 from then on.
            assert decide(b, "first-seen-mid-roll") == "DENY"
            record(a, "first-seen-mid-roll", "grant", EMAIL)
            consistent("during-roll-2", a, b)
            a = restart("a", f"k1:{k1}\nk2:{k2}\n")

            # After the roll: b must not have kept the k2 pseudonym it computed.
            granted = record(b, "first-seen-mid-roll", "grant", EMAIL).consistency_token
            token = record(a, "first-seen-mid-roll", "withdraw", EMAIL).consistency_token
            assert position(token) > position(granted)
            assert decide(b, "first-seen-mid-roll", token) == "DENY"
            assert decide(a, "first-seen-mid-roll", token) == "DENY"
            consistent("after-roll", a, b)
            token = record(b, "old-customer", "withdraw", EMAIL).consistency_token
            assert decide(a, "old-customer", token) == "DENY"
        finally:
            for s in served.values():
                s.stop()
    output = "".join(line for s in served.values() for line in s.output)
    assert k1 not in output and k2 not in output
