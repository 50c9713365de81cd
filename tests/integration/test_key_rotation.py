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
from tests.scenario import check, decision_name, record

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
