"""Consent events and subject state <-> JSON, the form the ledgers store."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, date, datetime, timedelta
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
        # Only when present: records written before sealing hash exactly as they did.
        **({"sealed_evidence": ev.sealed_evidence} if ev.sealed_evidence else {}),
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
        sealed_evidence=str(d.get("sealed_evidence") or ""),
    )


def profile_to_dict(p: SubjectProfile) -> dict[str, Any]:
    d: dict[str, Any] = {"jurisdiction": p.jurisdiction,
                         "birth_date": p.birth_date.isoformat() if p.birth_date else None}
    # Only when present: older records hash exactly as they did.
    if p.sealed_birth_date:
        d["sealed_birth_date"] = p.sealed_birth_date
    if p.erased_at is not None:
        d["erased_at"] = p.erased_at.isoformat()
    return d


def profile_from_dict(d: dict[str, Any]) -> SubjectProfile:
    birth = d.get("birth_date")
    return SubjectProfile(jurisdiction=d.get("jurisdiction") or "",
                          birth_date=date.fromisoformat(birth) if birth else None,
                          sealed_birth_date=str(d.get("sealed_birth_date") or ""),
                          erased_at=_parse_ts(d.get("erased_at")))


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


# -- the compact form cached in Redis ---------------------------------------------------
# Positional JSON, timestamps as integer microseconds, and no evidence: a decision never
# reads evidence, and a cache should hold as little personal data as it can (the ledger
# keeps the evidence). zlib only when it pays.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _us(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICRO


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def state_to_bytes(state: SubjectState) -> bytes:
    p = state.profile
    body = [
        state.version,
        p.jurisdiction,
        p.birth_date.isoformat() if p.birth_date else None,
        _us(p.erased_at),
        [[e.record_id, e.sequence, e.action.value, e.purpose, list(e.data_categories),
          e.explicit, e.method.value, e.jurisdiction, _us(e.collected_at), _us(e.expires_at),
          e.source, e.notice_version, _us(e.recorded_at)] for e in state.events],
    ]
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    packed = zlib.compress(raw, 6)
    return b"z" + packed if len(packed) < len(raw) else b"j" + raw


def state_from_bytes(data: bytes, sequence: int) -> SubjectState:
    if data[:1] == b"z":
        raw = zlib.decompress(data[1:])
    elif data[:1] == b"j":
        raw = data[1:]
    else:
        raise ValueError("unknown cached state format")
    version, jurisdiction, birth, erased, events = json.loads(raw)
    return SubjectState(
        profile=SubjectProfile(jurisdiction=jurisdiction,
                               birth_date=date.fromisoformat(birth) if birth else None,
                               erased_at=_from_us(erased)),
        events=tuple(ConsentEvent(
            record_id=rid, sequence=seq, action=ConsentAction(action), purpose=purpose,
            data_categories=tuple(cats), explicit=explicit, method=CollectionMethod(method),
            jurisdiction=jur, collected_at=_from_us(collected) or _EPOCH,
            expires_at=_from_us(expires), source=source, notice_version=notice,
            recorded_at=_from_us(recorded) or _EPOCH)
            for rid, seq, action, purpose, cats, explicit, method, jur, collected, expires,
            source, notice, recorded in events),
        sequence=sequence,
        version=int(version),
    )
