"""Everything held on one subject, as one JSON document (GDPR Art. 15 access, Art. 20
portability; CCPA §1798.110 right to know): profile, every consent record with its
evidence while the subject's key exists, and every decision made about them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from ..decisionlog.record import record_to_dict
from ..domain import ConsentEvent, DecisionRecord, SubjectState

FORMAT = "consentauthz.subject-export/1"

#: How the document is written (ExportSubject, ExportSubjectStream, `consent export`).
_ENCODER = json.JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False)


def document_text(document: Mapping[str, Any]) -> str:
    return _ENCODER.encode(document)


def document_chunks(document: Mapping[str, Any], size: int) -> Iterator[bytes]:
    """document_text's UTF-8 in chunks of at most `size` bytes, written as they are
    encoded (the text is never held whole)."""
    buffer = bytearray()
    for piece in _ENCODER.iterencode(document):
        buffer += piece.encode()
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _record(e: ConsentEvent, erased: bool, token: str) -> dict[str, Any]:
    return {
        "record_id": e.record_id, "consistency_token": token,
        "action": e.action.value, "purpose": e.purpose,
        "data_categories": list(e.data_categories), "explicit": e.explicit,
        "method": e.method.value, "jurisdiction": e.jurisdiction,
        "collected_at": _ts(e.collected_at), "expires_at": _ts(e.expires_at),
        "recorded_at": _ts(e.recorded_at), "source": e.source,
        "notice_version": e.notice_version,
        # Evidence sealed under a destroyed key is gone for everyone, the subject included.
        "evidence": None if erased and e.sealed_evidence else dict(e.evidence),
    }


def export_document(subject_id: str, held: Iterable[tuple[str, SubjectState]],
                    events: Iterable[ConsentEvent], decisions: Iterable[DecisionRecord],
                    now: datetime, tokens: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
    """`tokens`: record id -> its consistency token (partition and position); by default
    the bare position, as in a ledger of one partition."""
    held = list(held)
    erased = next((s.profile for _, s in held if s.profile.erased_at), None)
    erased_at = erased.erased_at if erased is not None else None
    current = next((s for _, s in held if s.version), None)
    profile = current.profile if current is not None else None
    in_effect = [e.record_id for _, s in held for e in s.events]
    return {
        "format": FORMAT,
        "generated_at": now.isoformat(),
        "subject_id": subject_id,
        "stored_as": [p for p, s in held if s.version],
        "profile": {
            "jurisdiction": profile.jurisdiction if profile else "",
            "birth_date": profile.birth_date.isoformat() if profile and profile.birth_date
            else None,
            "erased_at": _ts(erased_at),
            # Who asked for the erasure (a calling service's configured name).
            "erased_by": erased.erased_by if erased is not None else None,
        },
        "consent_records": [_record(e, erased_at is not None,
                                    (tokens or {}).get(e.record_id, str(e.sequence)))
                            for e in events],
        "records_in_effect": in_effect,
        "decisions": [{k: v for k, v in record_to_dict(d).items()
                       if k not in ("prev_hash", "entry_hash")} for d in decisions],
    }
