"""The decision-log record format: its canonical JSON form and its place in the chain.

The JSON form is stable (golden file: tests/unit/golden/decision_record.json); fields
are only ever added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..chain import link
from ..domain import CheckRequest, DecisionRecord, Effect, Reason

FORMAT_VERSION = 1


def record_to_dict(r: DecisionRecord) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "decision_id": r.decision_id,
        "time": r.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "caller": r.caller,
        "subject": r.subject,
        "purpose": r.purpose,
        "data_category": r.data_category,
        "jurisdiction": r.jurisdiction,
        "regime": r.regime,
        "decision": r.decision.value,
        "reason": r.reason.value,
        "legal_basis": r.legal_basis,
        "matched_rule": r.matched_rule,
        "policy_version": r.policy_version,
        "consent_record_ids": list(r.consent_record_ids),
        "consistency_token": r.consistency_token,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "context": dict(r.context),
        "sequence": r.sequence,
        "prev_hash": r.prev_hash,
        "entry_hash": r.entry_hash,
    }


def parse_stored(text: str, prev_hash: str, entry_hash: str) -> Any:
    """A stored entry's JSON, as the dict of the whole record. The SQLite log stores each
    entry's content (the canonical text its entry_hash covers) with the two hashes in
    their own columns, so the record is serialised once; entries written before that
    carry the hashes inside, and are read as they are."""
    d = json.loads(text)
    if isinstance(d, dict):
        # A hash inside the text (an older entry, or one edited) is kept, and verify
        # compares it with its column.
        d.setdefault("prev_hash", prev_hash)
        d.setdefault("entry_hash", entry_hash)
    return d


def record_from_dict(d: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord(
        decision_id=d["decision_id"],
        time=datetime.fromisoformat(d["time"]),
        caller=d["caller"],
        subject=d["subject"],
        purpose=d["purpose"],
        data_category=d["data_category"],
        jurisdiction=d["jurisdiction"],
        regime=d["regime"],
        decision=Effect(d["decision"]),
        reason=Reason(d["reason"]),
        legal_basis=d["legal_basis"],
        matched_rule=d["matched_rule"],
        policy_version=d["policy_version"],
        consent_record_ids=tuple(d["consent_record_ids"]),
        consistency_token=int(d["consistency_token"]),
        trace_id=d["trace_id"],
        span_id=d["span_id"],
        context=dict(d.get("context") or {}),
        sequence=int(d.get("sequence", 0)),
        prev_hash=d.get("prev_hash", ""),
        entry_hash=d.get("entry_hash", ""),
    )


def hashed_content(r: DecisionRecord) -> dict[str, Any]:
    """Everything but the hashes themselves; the sequence is covered."""
    d = record_to_dict(r)
    del d["prev_hash"], d["entry_hash"]
    return d


def entry_hash(prev_hash: str, r: DecisionRecord) -> str:
    return link(prev_hash, hashed_content(r))


def request_of(r: DecisionRecord, *, explain: bool = False) -> CheckRequest:
    """The request a logged decision answered, as it can be asked again (replay, diff).

    The logged jurisdiction is the one the decision was made under (after defaulting), so
    asking with it reproduces the same regime whatever the profile says."""
    return CheckRequest(subject_id="replay", purpose=r.purpose, data_category=r.data_category,
                        jurisdiction=r.jurisdiction, context=dict(r.context), explain=explain)
