"""Hash chains: each entry's hash covers the previous entry's hash and its own content.

Used by the consent ledger and the decision log so that `audit verify` can prove that no
entry was changed, removed or inserted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """The one serialisation hashes are computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def link(prev_hash: str, payload: Any) -> str:
    return link_text(prev_hash, canonical_json(payload))


def link_text(prev_hash: str, text: str) -> str:
    """`link` of a payload already in its canonical_json form."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of checking one hash chain from its first entry to its head."""

    name: str
    ok: bool
    entries: int
    head_sequence: int
    head_hash: str
    #: the first entry that does not verify, and why
    broken_sequence: int | None = None
    broken_id: str = ""
    problem: str = ""
