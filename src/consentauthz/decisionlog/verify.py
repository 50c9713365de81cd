"""Checking a decision log: recompute every entry hash, follow the links, compare the
indexed columns with the record, and confirm checkpoints that a third party holds.

One verifier serves every store. A store hands in its entries as stored (the JSON text
and the columns it indexes), so what is checked is what is on disk, not a fresh
serialisation of it. The hash is recomputed over the stored JSON object minus its two
hash fields, which is exactly what `chain()` hashed (`hashed_content` of the record): the
JSON round trip of a record's dict is lossless (strings, integers, lists, objects), and
hashing the parsed object rather than a re-built record means a field smuggled into the
JSON, or a value re-typed (7 -> 7.0), breaks the hash instead of being silently dropped.

What verification cannot see: entries removed from the end of the log leave a shorter but
intact chain. A `Checkpoint` taken earlier and held elsewhere closes that gap: it names a
(sequence, entry hash) that must still be in the chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..chain import GENESIS, ChainReport, link
from .record import parse_stored, record_from_dict

#: Indexed columns a store keeps next to the JSON record, by the JSON field they copy.
INDEXED = ("decision_id", "time", "subject", "purpose", "data_category", "decision",
           "reason", "caller", "prev_hash", "entry_hash")

_HASHES = ("prev_hash", "entry_hash")


class Problem(StrEnum):
    CONTENT_HASH = "content hash mismatch"
    BROKEN_LINK = "prev_hash does not link"
    SEQUENCE_GAP = "sequence gap"
    UNREADABLE = "unreadable JSON"
    COLUMNS = "indexed columns disagree with the JSON record"
    CHECKPOINT = "checkpoint not in the chain"
    RETENTION = "retention record does not anchor the chain"


@dataclass(frozen=True, slots=True)
class BrokenEntry:
    """The first entry that does not verify."""

    sequence: int
    #: From the record when it is readable, else from the indexed column ("" if none).
    decision_id: str
    problem: Problem
    detail: str


def ledger_heads_ok(heads: Sequence[tuple[int, int, str]]) -> bool:
    """Consent-ledger heads as a checkpoint holds them: partitions 0.. in order, positions
    not negative, hashes of 64 hex digits."""
    return all(p == i and s >= 0 and len(h) == 64 and all(c in "0123456789abcdef" for c in h)
               for i, (p, s, h) in enumerate(heads))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log head as a third party keeps it: later verification proves the entry at
    `sequence` still has `entry_hash`, so history up to there was not rewritten or cut."""

    sequence: int
    entry_hash: str
    #: Entries the log held when the checkpoint was taken (after any retention).
    count: int
    #: Decision time of the entry at `sequence`; None for an empty log.
    time: datetime | None
    #: The consent ledger's (partition, position, entry hash) of every partition's head
    #: when the checkpoint was taken (empty: a checkpoint from before they were kept).
    ledger: tuple[tuple[int, int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "sequence": self.sequence, "entry_hash": self.entry_hash, "count": self.count,
            "time": self.time.isoformat(timespec="microseconds") if self.time else None}
        if self.ledger:
            d["consent_ledger"] = [list(head) for head in self.ledger]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        try:
            sequence, count = int(d["sequence"]), int(d["count"])
            entry_hash = str(d["entry_hash"])
            time = datetime.fromisoformat(d["time"]) if d.get("time") else None
            ledger = tuple((int(p), int(s), str(h)) for p, s, h in d.get("consent_ledger", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a decision-log checkpoint: {exc}") from exc
        if sequence < 0 or len(entry_hash) != 64:
            raise ValueError("not a decision-log checkpoint: bad sequence or entry_hash")
        if not ledger_heads_ok(ledger):
            raise ValueError("not a checkpoint: a bad consent-ledger head")
        return cls(sequence, entry_hash, count, time, ledger)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a decision-log checkpoint: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError("not a decision-log checkpoint: expected a JSON object")
        return cls.from_dict(d)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    #: Entries that verified (on failure: those before the broken one).
    checked: int
    #: The last entry that verified (the anchor when none did).
    head_sequence: int
    head_hash: str
    #: The chain was checked from the entry after this one: (0, GENESIS), or the last
    #: retention mark's first kept entry minus one and its prev_hash.
    anchor_sequence: int = 0
    anchor_hash: str = GENESIS
    broken: BrokenEntry | None = None
    #: Held checkpoints older than the retained log: they cannot be confirmed any more
    #: (compare them with the retention marks instead); they do not fail verification.
    expired: tuple[Checkpoint, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        broken = self.broken
        return {
            "ok": self.ok, "checked": self.checked,
            "head_sequence": self.head_sequence, "head_hash": self.head_hash,
            "anchor_sequence": self.anchor_sequence, "anchor_hash": self.anchor_hash,
            "broken": None if broken is None else {
                "sequence": broken.sequence, "decision_id": broken.decision_id,
                "problem": broken.problem.value, "detail": broken.detail},
            "expired_checkpoints": [c.to_dict() for c in self.expired],
        }

    def to_chain_report(self, name: str = "decision log") -> ChainReport:
        """The shape AuditService.VerifyChains reports for every chain."""
        b = self.broken
        return ChainReport(name, self.ok, self.checked, self.head_sequence, self.head_hash,
                           b.sequence if b else None, b.decision_id if b else "",
                           f"{b.problem.value}: {b.detail}" if b else "")


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry as a store holds it."""

    #: The store's key for the entry (the `seq` column).
    sequence: int
    #: The record's JSON text, exactly as stored.
    record: str
    #: Indexed copies of record fields, by JSON field name (see INDEXED).
    columns: Mapping[str, object]


def verify_entries(entries: Iterable[StoredEntry], *, anchor_sequence: int = 0,
                   anchor_hash: str = GENESIS,
                   checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult:
    """Check `entries` (in stored order) as the chain that continues after the anchor.

    Stops at the first problem: everything after a break is unanchored, so a second
    report would say nothing an auditor could rely on."""
    expected, prev, checked = anchor_sequence + 1, anchor_hash, 0
    expired = tuple(c for c in checkpoints if c.sequence < anchor_sequence)
    held: dict[int, list[Checkpoint]] = {}
    for c in checkpoints:
        if c.sequence >= anchor_sequence:
            held.setdefault(c.sequence, []).append(c)

    def fail(sequence: int, decision_id: str, problem: Problem, detail: str) -> VerifyResult:
        return VerifyResult(False, checked, expected - 1, prev, anchor_sequence, anchor_hash,
                            BrokenEntry(sequence, decision_id, problem, detail), expired)

    for c in held.pop(anchor_sequence, []):
        if c.entry_hash != anchor_hash:
            return fail(c.sequence, "", Problem.CHECKPOINT,
                        f"held checkpoint says {c.entry_hash[:16]}..., the chain's anchor "
                        f"is {anchor_hash[:16]}...")
    for e in entries:
        column_id = str(e.columns.get("decision_id", ""))
        if e.sequence != expected:
            return fail(e.sequence, column_id, Problem.SEQUENCE_GAP,
                        f"expected sequence {expected}, found {e.sequence}")
        try:
            d = parse_stored(e.record, str(e.columns.get("prev_hash", "")),
                             str(e.columns.get("entry_hash", "")))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            record_from_dict(d)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return fail(e.sequence, column_id, Problem.UNREADABLE,
                        f"{type(exc).__name__}: {exc}")
        decision_id = str(d["decision_id"])
        differ = [name for name in INDEXED
                  if name in e.columns and e.columns[name] != d.get(name)]
        if d.get("sequence") != e.sequence:
            differ.insert(0, "sequence")
        if differ:
            return fail(e.sequence, decision_id, Problem.COLUMNS,
                        "column(s) " + ", ".join(differ) + " differ from the record")
        if d["prev_hash"] != prev:
            return fail(e.sequence, decision_id, Problem.BROKEN_LINK,
                        f"prev_hash {str(d['prev_hash'])[:16]}... but the entry before "
                        f"hashes to {prev[:16]}...")
        content = {k: v for k, v in d.items() if k not in _HASHES}
        if link(prev, content) != d["entry_hash"]:
            return fail(e.sequence, decision_id, Problem.CONTENT_HASH,
                        "the record's content does not hash to its entry_hash")
        prev, expected, checked = str(d["entry_hash"]), expected + 1, checked + 1
        for c in held.pop(e.sequence, []):
            if c.entry_hash != prev:
                return fail(e.sequence, decision_id, Problem.CHECKPOINT,
                            f"held checkpoint says {c.entry_hash[:16]}..., the chain has "
                            f"{prev[:16]}...: history up to here was rewritten")
    if held:
        beyond = min(held)
        return fail(beyond, "", Problem.CHECKPOINT,
                    f"held checkpoint at sequence {beyond} is beyond the head "
                    f"{expected - 1}: entries were removed from the end")
    return VerifyResult(True, checked, expected - 1, prev, anchor_sequence, anchor_hash,
                        None, expired)
