"""Consent events and subject state <-> JSON, the form the ledgers store."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from ..domain import CollectionMethod, ConsentAction, ConsentEvent, SubjectProfile, SubjectState


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def event_to_dict(ev: ConsentEvent) -> dict[str, Any]:
    return {
        "record_id": ev.record_id,
        "sequence": ev.sequence,
        "action": ev.action.value,
        "purpose": ev.purpose,
        "data_categories": list(ev.data_categories),
        "explicit": ev.explicit,
        "method": ev.method.value,
        "jurisdiction": ev.jurisdiction,
        "collected_at": _ts(ev.collected_at),
        "expires_at": _ts(ev.expires_at),
        "source": ev.source,
        "notice_version": ev.notice_version,
        "recorded_at": _ts(ev.recorded_at),
        "evidence": dict(ev.evidence),
    }


def event_from_dict(d: dict[str, Any]) -> ConsentEvent:
    collected = _parse_ts(d["collected_at"])
    recorded = _parse_ts(d["recorded_at"])
    assert collected is not None and recorded is not None
    return ConsentEvent(
        record_id=d["record_id"],
        sequence=int(d["sequence"]),
        action=ConsentAction(d["action"]),
        purpose=d["purpose"],
        data_categories=tuple(d["data_categories"]),
        explicit=bool(d["explicit"]),
        method=CollectionMethod(d["method"]),
        jurisdiction=d["jurisdiction"],
        collected_at=collected,
        expires_at=_parse_ts(d["expires_at"]),
        source=d["source"],
        notice_version=d["notice_version"],
        recorded_at=recorded,
        evidence=dict(d.get("evidence") or {}),
    )


def profile_to_dict(p: SubjectProfile) -> dict[str, Any]:
    return {"jurisdiction": p.jurisdiction,
            "birth_date": p.birth_date.isoformat() if p.birth_date else None}


def profile_from_dict(d: dict[str, Any]) -> SubjectProfile:
    birth = d.get("birth_date")
    return SubjectProfile(jurisdiction=d.get("jurisdiction") or "",
                          birth_date=date.fromisoformat(birth) if birth else None)


def state_to_json(state: SubjectState) -> str:
    return json.dumps({
        "profile": profile_to_dict(state.profile),
        "events": [event_to_dict(e) for e in state.events],
        "version": state.version,
    }, sort_keys=True)


def state_from_json(text: str, sequence: int) -> SubjectState:
    d = json.loads(text)
    return SubjectState(
        profile=profile_from_dict(d["profile"]),
        events=tuple(event_from_dict(e) for e in d["events"]),
        sequence=sequence,
        version=int(d["version"]),
    )
