"""Small shared helpers: decision ids, a record's place in the chain, pseudonyms."""

from __future__ import annotations

import dataclasses
import uuid

from consentauthz.domain import new_id
from consentauthz.pseudonym import Pseudonymizer
from tests.unit.test_decisionlog import record


def test_new_id_is_a_canonical_uuid7_and_time_ordered() -> None:
    ids = [new_id() for _ in range(2_000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    # The first 48 bits are the millisecond clock: never going back within one process.
    millis = [uuid.UUID(t).int >> 80 for t in ids]
    assert millis == sorted(millis)


def test_numbered_is_replace_of_the_three_chain_fields() -> None:
    r = record("d1", 3)
    assert r.numbered(7, "a" * 64, "b" * 64) == dataclasses.replace(
        r, sequence=7, prev_hash="a" * 64, entry_hash="b" * 64)
    # Every field is carried: a field added to DecisionRecord and forgotten in numbered()
    # would differ here.
    assert [f.name for f in dataclasses.fields(r)][-3:] == ["sequence", "prev_hash",
                                                          "entry_hash"]


def test_pseudonyms_never_change_for_a_key() -> None:
    # Ledgers, decision logs and Redis keys are keyed by these: a different value for the
    # same key and id would lose every subject's history. Known vector (HMAC-SHA256 of
    # the id under the key 00 01 .. 1f, first 40 hex digits).
    p = Pseudonymizer(bytes(range(32)), "k1")
    assert p("alice@example.org") == "k1:03a2cceef95fc1b3c5757f658be5a2fe7068969e"
    assert p.all("alice@example.org") == ("k1:03a2cceef95fc1b3c5757f658be5a2fe7068969e",)
