"""Consent use cases: record choices (ledger first, then cache) and read state back."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from ..chain import canonical_json
from ..domain import (
    ConsentEvent,
    ConsentWrite,
    SubjectProfile,
    SubjectState,
    SubjectUpsert,
    WriteResult,
    new_id,
)
from ..errors import Unavailable
from ..metrics import NO_METRICS, Metrics
from ..policy import Taxonomy
from ..pseudonym import Pseudonymizer
from ..telemetry import ATTR_CACHE_TIER, tracer
from ..validation import (
    check_page_size,
    check_subject_only,
    parse_token,
    validate_upsert,
    validate_write,
)
from .cache import LocalCache
from .ledger import Idempotency, Ledger

#: Bound on remembered key-ring resolutions (stable, so forgetting only costs a lookup).
_MAX_RESOLVED = 100_000


class ConsentService:
    def __init__(self, ledger: Ledger, cache: LocalCache, pseudonymize: Pseudonymizer,
                 taxonomy: Callable[[], Taxonomy], clock: Callable[[], datetime],
                 metrics: Metrics = NO_METRICS) -> None:
        self._ledger = ledger
        self._cache = cache
        self._pseudonymize = pseudonymize
        self._taxonomy = taxonomy
        self._clock = clock
        self._metrics = metrics
        self._write_lock = threading.Lock()
        #: current-key pseudonym -> the pseudonym the subject's records live under
        self._resolved: dict[str, str] = {}
        #: Every ledger write up to here is reflected in the cache.
        self._watermark = ledger.head()

    # -- subjects -----------------------------------------------------------------------

    def subject_key(self, subject_id: str) -> str:
        """The pseudonym a subject's records live under: the one it was first recorded with,
        under whichever key of the ring was current then (so key rotation never splits a
        subject's history); the current key's for a subject not yet in the ledger."""
        candidates = self._pseudonymize.all(subject_id)
        if len(candidates) == 1:
            return candidates[0]
        current = candidates[0]
        found = self._resolved.get(current)
        if found is not None:
            return found
        found = next((p for p in reversed(candidates[1:]) if self._ledger.has_subject(p)),
                     current)
        with self._write_lock:
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[current] = found
        return found

    # -- reads ------------------------------------------------------------------------

    def state_of(self, subject: str, min_sequence: int = 0) -> SubjectState:
        """State of a pseudonymised subject, current as of at least `min_sequence`."""
        with tracer().start_as_current_span("consent.Get") as span:
            # Read the watermark before the cache: a state read after it is at least
            # that current.
            watermark = self._watermark
            if min_sequence > watermark:
                head = self._ledger.head()
                if head < min_sequence:
                    raise Unavailable("consistency_token is ahead of the consent ledger")
                watermark = self._watermark
            cached = self._cache.get(subject)
            if cached is not None and watermark >= min_sequence:
                span.set_attribute(ATTR_CACHE_TIER, "local")
                self._metrics.cache_lookup("local")
                return replace(cached, sequence=watermark)
            span.set_attribute(ATTR_CACHE_TIER, "ledger")
            self._metrics.cache_lookup("ledger")
            state = self._ledger.load(subject)
            with self._write_lock:
                # Only cache what no write overtook while we read: otherwise a state from
                # before a withdrawal could land in the cache (the newer entry may have been
                # evicted meanwhile) and be served as current.
                if state.sequence >= self._watermark:
                    self._cache.put(subject, state)
            return state

    def get_state(self, subject_id: str, token: str = "") -> SubjectState:
        check_subject_only(subject_id)
        return self.state_of(self.subject_key(subject_id), parse_token(token))

    def history(self, subject_id: str, page_size: int,
                page_token: str) -> tuple[list[ConsentEvent], str]:
        check_subject_only(subject_id)
        size = check_page_size(page_size)
        after = parse_token(page_token, "page_token")
        events = self._ledger.history(self.subject_key(subject_id), after, size + 1)
        more = len(events) > size
        events = events[:size]
        return events, (str(events[-1].sequence) if more and events else "")

    # -- writes -----------------------------------------------------------------------

    def record(self, write: ConsentWrite) -> WriteResult:
        now = self._clock()
        validate_write(write, self._taxonomy(), now)
        subject = self.subject_key(write.subject_id)
        idempotency = None
        if write.idempotency_key:
            # Under every key of the ring: a retry after a key rotation is still a retry.
            keys = self._pseudonymize.all("idempotency:" + write.idempotency_key)
            idempotency = Idempotency(keys[0], self._request_hash(subject, write), keys[1:])
        event = ConsentEvent(
            record_id=new_id(), sequence=0, action=write.action, purpose=write.purpose,
            data_categories=tuple(write.data_categories), explicit=write.explicit,
            method=write.method, jurisdiction=write.jurisdiction,
            collected_at=write.collected_at or now, expires_at=write.expires_at,
            source=write.source, notice_version=write.notice_version, recorded_at=now,
            evidence=dict(write.evidence))
        with tracer().start_as_current_span("consent.Record"), self._write_lock:
            result = self._ledger.append_consent(subject, event, idempotency)
            self._after_write(subject, result.state, result.sequence)
        return WriteResult(result.record_id, result.sequence)

    def upsert_subject(self, upsert: SubjectUpsert) -> WriteResult:
        now = self._clock()
        validate_upsert(upsert, now.date())
        subject = self.subject_key(upsert.subject_id)
        profile = SubjectProfile(jurisdiction=upsert.jurisdiction, birth_date=upsert.birth_date)
        with tracer().start_as_current_span("consent.UpsertSubject"), self._write_lock:
            result = self._ledger.append_profile(subject, profile, new_id(), now)
            self._after_write(subject, result.state, result.sequence)
        return WriteResult(result.record_id, result.sequence)

    def _after_write(self, subject: str, state: SubjectState, sequence: int) -> None:
        # Cache before watermark: a reader that sees the new watermark finds the new state.
        self._cache.put(subject, state)
        self._watermark = max(self._watermark, sequence)

    @staticmethod
    def _request_hash(subject: str, w: ConsentWrite) -> str:
        body = {
            "subject": subject, "action": w.action.value, "purpose": w.purpose,
            "data_categories": sorted(w.data_categories), "explicit": w.explicit,
            "method": w.method.value, "jurisdiction": w.jurisdiction,
            "collected_at": w.collected_at.isoformat() if w.collected_at else None,
            "expires_at": w.expires_at.isoformat() if w.expires_at else None,
            "source": w.source, "notice_version": w.notice_version,
            "evidence": dict(w.evidence),
        }
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()

    @property
    def watermark(self) -> int:
        return self._watermark

    def close(self) -> None:
        self._ledger.close()

