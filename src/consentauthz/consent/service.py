"""Consent use cases: record choices (ledger first, then cache) and read state back."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry.trace import Span

from ..chain import canonical_json
from ..domain import (
    GPC_SOURCE,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    ConsentWrite,
    SubjectProfile,
    SubjectState,
    SubjectUpsert,
    WriteResult,
    new_id,
)
from ..errors import ConsentAuthzError, InvalidArgument, SubjectErased, TokenAhead, Unavailable
from ..metrics import NO_METRICS, CacheTier, Metrics
from ..policy import Taxonomy
from ..pseudonym import Pseudonymizer
from ..telemetry import ATTR_CACHE_TIER, child_span, tracer
from ..validation import (
    CLOCK_SKEW,
    check_subject_only,
    format_token,
    validate_history,
    validate_state_read,
    validate_upsert,
    validate_write,
)
from .cache import LocalCache
from .freshness import Freshness, SoleWriter
from .ledger import AppendResult, BatchItem, Idempotency, Ledger, partition_of
from .migration import MIGRATION_KEY, Migration
from .redis_cache import RedisStateCache

log = logging.getLogger("consentauthz.consent")

#: Writes of one partition recorded in one ledger transaction by record_batch.
BATCH_CHUNK = 500
#: Partitions a batch records at once, each on its own writer connection (a partition's
#: chunks go in order, one after another).
BATCH_WORKERS = 4
#: Bound on remembered key-ring resolutions (stable, so forgetting only costs a lookup).
_MAX_RESOLVED = 100_000


def _without_evidence(state: SubjectState) -> SubjectState:
    """Decisions never read evidence, so the caches never hold it."""
    if not any(e.evidence for e in state.events):
        return state
    return replace(state, events=tuple(replace(e, evidence={}) if e.evidence else e
                                       for e in state.events))


class Shredder(Protocol):
    def erase(self, subject: str) -> None:
        """Destroy the subject's key."""
        ...

    def recorded_erasure(self, subject: str) -> datetime | None:
        """When the ledger recorded the subject's erasure (not the key store's view)."""
        ...


class ConsentService:
    """Consent state in three tiers: this replica's cache, the Redis every replica shares
    (optional), and the ledger, which decides whenever the faster tiers cannot prove they
    are current enough (consistency token, freshness floor)."""

    def __init__(self, ledger: Ledger, cache: LocalCache, pseudonymize: Pseudonymizer,
                 taxonomy: Callable[[], Taxonomy], clock: Callable[[], datetime],
                 metrics: Metrics = NO_METRICS, freshness: Freshness | None = None,
                 shared: RedisStateCache | None = None,
                 shredder: Shredder | None = None,
                 clock_skew: timedelta = CLOCK_SKEW,
                 batch_workers: int = BATCH_WORKERS) -> None:
        self._ledger = ledger
        self._cache = cache
        self._pseudonymize = pseudonymize
        self._taxonomy = taxonomy
        self._clock = clock
        self._metrics = metrics
        self._freshness = freshness if freshness is not None else SoleWriter(cache)
        self._sole_writer = isinstance(self._freshness, SoleWriter)
        self._redis = shared
        #: Destroys subjects' keys (consent/sealing.py); None: nothing is sealed.
        self._shredder = shredder
        #: How far in the future a record's collected_at may be (validation.CLOCK_SKEW).
        self.clock_skew = clock_skew
        #: Partitions record_batch records at once.
        self._batch_workers = max(1, batch_workers)
        self._partitions = ledger.partitions
        migrated = ledger.meta(MIGRATION_KEY)
        #: Bare positions up to here are tokens the ledger issued before `ledger migrate`.
        self.bare_until = Migration.from_json(migrated).head if migrated else 0
        if cache.partitions != self._partitions:
            raise ValueError(f"the cache has {cache.partitions} partitions, the ledger "
                             f"{self._partitions}")
        #: This replica's write order per partition (the ledger's exclusive() holds it
        #: across replicas).
        self._part_locks = [threading.Lock() for _ in range(self._partitions)]
        self._resolved_lock = threading.Lock()  # never the write lock: checks must not wait
        #: current-key pseudonym -> the pseudonym the subject's records live under
        self._resolved: dict[str, str] = {}
        # An empty cache has applied every write made so far.
        cache.clear(ledger.heads())

    # -- subjects and tokens -------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partitions

    def partition(self, subject: str) -> int:
        """The ledger partition of a pseudonymised subject."""
        return partition_of(subject, self._partitions)

    def token_of(self, subject: str, position: int) -> str:
        """The consistency token of a position of a pseudonymised subject's partition."""
        return format_token(self.partition(subject), position, self._partitions)

    def check_token(self, subject: str, part: int | None, position: int,
                    field: str = "consistency_token") -> None:
        """A token a caller sent for this (pseudonymised) subject must name the subject's
        partition: positions of different partitions are not comparable. (That it names
        one of the ledger's partitions, or is a bare position only where the ledger has
        one partition, validation checks with the request's other fields.)"""
        if part is not None and part != self.partition(subject):
            raise InvalidArgument.single(
                field, "names a position of another subject's ledger partition")

    def subject_key(self, subject_id: str) -> str:
        """The pseudonym a subject's records live under: of its pseudonyms under every key
        of the ring, the one with the oldest ledger entry (so key rotation never splits a
        subject's history, and every replica with the same ring picks the same one); the
        current key's for a subject not yet in the ledger."""
        candidates = self._pseudonymize.all(subject_id)
        if len(candidates) == 1:
            return candidates[0]
        current = candidates[0]
        found = self._resolved.get(current)
        if found is not None:
            return found
        found = self._ledger.first_recorded(candidates)
        if found is None:
            # Not remembered: until the subject's first record, another replica may record
            # it under another key of the ring (one still on the previous current key
            # during a rolling restart), and then that is where its records live.
            return current
        # Remembered: the oldest entry stays the oldest whatever is recorded later, so
        # this answer is final (ledger.first_recorded).
        with self._resolved_lock:
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[current] = found
        return found

    # -- reads ------------------------------------------------------------------------

    def state_of(self, subject: str, min_sequence: int = 0) -> SubjectState:
        """State of a pseudonymised subject, current as of at least `min_sequence` (of its
        partition) and missing no write older than the staleness bound."""
        floor = self._freshness.floor(self.partition(subject))
        need = max(min_sequence, floor) if floor is not None else None
        if need is not None:
            cached = self._cache.get(subject)
            if cached is not None and cached.sequence >= need:
                # The hot path: no span (a dict lookup is no operation worth tracing; the
                # tier is counted all the same).
                self._metrics.cache_lookup("local")
                return cached
        with child_span("consent.Get") as span:
            return self._read_through(span, subject, min_sequence, floor, need)

    def _read_through(self, span: Span, subject: str, min_sequence: int,
                      floor: int | None, need: int | None) -> SubjectState:
        """The local cache could not answer: Redis, then the ledger."""
        # Taken first: should the ledger turn out to have gone back meanwhile (the poller
        # resets the cache and fences Redis off), what is read here is cached nowhere.
        epoch, shared_epoch = self._epochs()
        seen = None
        if need is not None and self._redis is not None:
            seen = self._redis.read(subject)
            # Never beyond what this replica knows the ledger to hold (its watermark, or
            # the caller's token): a Redis ahead of the ledger belongs to a ledger that
            # went back or was replaced, and is read through.
            known = max(self._cache.watermark_of(self.partition(subject)), min_sequence)
            if (seen is not None and seen.state is not None
                    and need <= seen.position <= known):
                self._cache.put(subject, seen.state, epoch)
                return self._answer(span, "redis", seen.state)
        state = _without_evidence(self._ledger.load(subject))
        if state.sequence < min_sequence:
            raise TokenAhead("consistency_token is ahead of the consent ledger")
        if self._redis is not None:
            # Redis behind the floor missed writes; Redis ahead of the ledger belongs to
            # a ledger that went back (a restore, a failover that lost commits, another
            # database): either way its generation must not be read again.
            stale = seen is not None and (
                (floor is not None and seen.position < floor)
                or seen.position > state.sequence)
            # After answering, on the cache's own thread: the caller does not wait for it.
            self._redis.populate_soon(subject, state, seen, stale, shared_epoch)
        self._cache.put(subject, state, epoch)
        return self._answer(span, "ledger", state)

    def _epochs(self) -> tuple[int, int]:
        """The local and shared caches' epochs (before a ledger read or write)."""
        return self._cache.epoch, self._redis.epoch if self._redis is not None else 0

    def _answer(self, span: Span, tier: CacheTier, state: SubjectState) -> SubjectState:
        if span.is_recording():
            span.set_attribute(ATTR_CACHE_TIER, tier)
        self._metrics.cache_lookup(tier)
        return state

    def get_state(self, subject_id: str, token: str = "") -> SubjectState:
        """The whole recorded state, evidence included, from the ledger itself (the caches
        hold no evidence; this is a preference-centre read, not the hot path)."""
        part, need = validate_state_read(subject_id, token, self._partitions,
                                         self.bare_until)
        subject = self.subject_key(subject_id)
        self.check_token(subject, part, need)
        state = self._ledger.load(subject, evidence=True)
        if state.sequence < need:
            raise TokenAhead("consistency_token is ahead of the consent ledger")
        return state

    def history(self, subject_id: str, page_size: int,
                page_token: str) -> tuple[list[ConsentEvent], str]:
        size, after = validate_history(subject_id, page_size, page_token)
        events = self._ledger.history(self.subject_key(subject_id), after, size + 1)
        more = len(events) > size
        events = events[:size]
        return events, (str(events[-1].sequence) if more and events else "")

    # -- writes -----------------------------------------------------------------------

    def record(self, write: ConsentWrite) -> WriteResult:
        now = self._clock()
        validate_write(write, self._taxonomy(), now, self.clock_skew)
        event = self._event(write, now)
        with tracer().start_as_current_span("consent.Record"), \
                self._write_order(write.subject_id) as subject:
            epochs = self._epochs()
            result = self._ledger.append_consent(subject, event,
                                                 self._idempotency(subject, write))
            self._after_write(subject, result, epochs)
        return self._written(subject, result.record_id, result.sequence)

    def record_batch(self, writes: Sequence[ConsentWrite]
                     ) -> list[WriteResult | ConsentAuthzError]:
        """Many consent writes (an import, the events of one signal), one result each in
        their order: a bad write gets its InvalidArgument (its fields named), a write
        for an erased subject its SubjectErased, and the rest are recorded. Writes are
        grouped by ledger partition; each group (up to BATCH_CHUNK writes) is one ledger
        transaction under the partition's write order, then written through to the caches
        in order. Up to `batch_workers` partitions are recorded at once (their writes are
        independent; a partition's chunks stay in order). A subject whose pseudonym is
        not settled (a key rotation) is recorded on its own, as record() does. Should the
        ledger become unavailable, the writes it had not recorded get that Unavailable
        (none of them was written; the others' results say what was), and no chunk is
        begun after it: a caller retries exactly those."""
        now = self._clock()
        taxonomy = self._taxonomy()
        results: list[WriteResult | ConsentAuthzError | None] = [None] * len(writes)
        groups: dict[int, list[tuple[int, BatchItem]]] = {}
        for i, write in enumerate(writes):
            try:
                validate_write(write, taxonomy, now, self.clock_skew)
                candidates = self._pseudonymize.all(write.subject_id)
                if len(candidates) > 1:
                    results[i] = self.record(write)
                    continue
            except (InvalidArgument, SubjectErased, Unavailable) as exc:
                results[i] = exc
                continue
            subject = candidates[0]
            item = BatchItem(subject, self._event(write, now), self._idempotency(subject, write))
            groups.setdefault(self.partition(subject), []).append((i, item))
        lanes = [[group[lo:lo + BATCH_CHUNK] for lo in range(0, len(group), BATCH_CHUNK)]
                 for _, group in sorted(groups.items())]
        failed: list[Unavailable] = []

        def record_chunk(chunk: list[tuple[int, BatchItem]]) -> None:
            part = self.partition(chunk[0][1].subject)
            with self._holding([part], ordered=self._redis is not None, lazy=True):
                epochs = self._epochs()
                appended = self._ledger.append_batch([item for _, item in chunk])
                for (i, item), result in zip(chunk, appended, strict=True):
                    if isinstance(result, AppendResult):
                        self._after_write(item.subject, result, epochs)
                        results[i] = self._written(item.subject, result.record_id,
                                                   result.sequence)
                    else:
                        results[i] = result

        def record_lane(lane: list[list[tuple[int, BatchItem]]]) -> None:
            """One partition's chunks, in order."""
            for chunk in lane:
                try:
                    if failed:
                        raise failed[0]
                    record_chunk(chunk)
                except Unavailable as exc:
                    failed.append(exc)
                    for i, _ in chunk:
                        results[i] = exc

        with tracer().start_as_current_span("consent.RecordBatch"):
            if len(lanes) == 1 or self._batch_workers == 1:
                for lane in lanes:
                    record_lane(lane)
            elif lanes:
                with ThreadPoolExecutor(min(self._batch_workers, len(lanes)),
                                        thread_name_prefix="record-batch") as pool:
                    # Each lane in a copy of this context: its spans are the batch's.
                    for f in [pool.submit(contextvars.copy_context().run, record_lane, lane)
                              for lane in lanes]:
                        f.result()
        done = [r for r in results if r is not None]
        if len(done) != len(writes):
            raise Unavailable("a batch write was left without a result")
        return done

    def _event(self, write: ConsentWrite, now: datetime) -> ConsentEvent:
        return ConsentEvent(
            record_id=new_id(), sequence=0, action=write.action, purpose=write.purpose,
            data_categories=tuple(write.data_categories), explicit=write.explicit,
            method=write.method, jurisdiction=write.jurisdiction,
            collected_at=write.collected_at or now, expires_at=write.expires_at,
            source=write.source, notice_version=write.notice_version, recorded_at=now,
            evidence=dict(write.evidence))

    def _idempotency(self, subject: str, write: ConsentWrite) -> Idempotency | None:
        if not write.idempotency_key:
            return None
        # Under every key of the ring: a retry after a key rotation is still a retry.
        keys = self._pseudonymize.all("idempotency:" + write.idempotency_key)
        return Idempotency(keys[0], self._request_hash(subject, write), keys[1:])

    def remember_gpc(self, subject_id: str, jurisdiction: str) -> WriteResult:
        """Record a Global Privacy Control signal as the subject's opt-out of sale and
        sharing (source `gpc`), once per subject: the write is keyed by the subject, so a
        second call (on any replica, after any restart) writes nothing and returns the
        first record. The caller has validated `subject_id` (it comes from a Check)."""
        now = self._clock()
        event = ConsentEvent(
            record_id=new_id(), sequence=0, action=ConsentAction.OPT_OUT_OF_SALE, purpose="",
            data_categories=(), explicit=False, method=CollectionMethod.UNSPECIFIED,
            jurisdiction=jurisdiction, collected_at=now, expires_at=None, source=GPC_SOURCE,
            notice_version="", recorded_at=now, evidence={"signal": "Sec-GPC: 1"})
        with tracer().start_as_current_span("consent.RememberGpc"), \
                self._write_order(subject_id) as subject:
            epochs = self._epochs()
            # Its own namespace, apart from callers' idempotency keys; the same request
            # every time (no time in it), so a repeat is a retry, never a conflict.
            keys = self._pseudonymize.all("gpc-opt-out:" + subject_id)
            idempotency = Idempotency(keys[0], hashlib.sha256(
                canonical_json({"subject": subject, "gpc": "opt-out"}).encode()).hexdigest(),
                keys[1:])
            result = self._ledger.append_consent(subject, event, idempotency)
            self._after_write(subject, result, epochs)
        return self._written(subject, result.record_id, result.sequence)

    def upsert_subject(self, upsert: SubjectUpsert) -> WriteResult:
        now = self._clock()
        validate_upsert(upsert, now.date())
        profile = SubjectProfile(jurisdiction=upsert.jurisdiction, birth_date=upsert.birth_date)
        with tracer().start_as_current_span("consent.UpsertSubject"), \
                self._write_order(upsert.subject_id) as subject:
            epochs = self._epochs()
            result = self._ledger.append_profile(subject, profile, new_id(), now)
            self._after_write(subject, result, epochs)
        return self._written(subject, result.record_id, result.sequence)

    def erase(self, subject_id: str, caller: str = "") -> WriteResult:
        """GDPR Art. 17: destroy the subject's data key (their evidence and birth date can
        never be read again; the ledger and its hash chain stay intact), then record the
        erasure and who asked for it (`caller`), after which checks deny with
        SUBJECT_ERASED except on a legal obligation and nothing more is recorded about
        them. Erasing twice changes nothing (the first erasure's caller stands)."""
        check_subject_only(subject_id)
        now = self._clock()
        with tracer().start_as_current_span("consent.EraseSubject"), \
                self._write_order(subject_id) as subject:
            if self._shredder is not None:
                # First: should recording the marker fail, nothing readable is left, and a
                # retry completes the erasure.
                for pseudonym in {subject, *self._pseudonymize.all(subject_id)}:
                    self._shredder.erase(pseudonym)
                recorded = self._shredder.recorded_erasure(subject)
            else:
                recorded = self._ledger.load(subject).profile.erased_at
            if recorded is not None:
                return self._written(subject, "", self._ledger.load(subject).version)
            epochs = self._epochs()
            result = self._ledger.append_profile(
                subject, SubjectProfile(erased_at=now, erased_by=caller), new_id(), now)
            self._after_write(subject, result, epochs)
        return self._written(subject, result.record_id, result.sequence)

    def _written(self, subject: str, record_id: str, position: int) -> WriteResult:
        return WriteResult(record_id, position, self.token_of(subject, position))

    @contextmanager
    def _write_order(self, subject_id: str) -> Iterator[str]:
        """Hold the write order of the partition the subject's records live in, on every
        replica, and yield the subject's pseudonym, resolved inside it: no other replica
        records the subject's first entry under another key of the ring between the
        lookup and the append. A subject not known yet during a key rotation may come to
        live under any of its pseudonyms, so the partitions of all of them are held (in
        order: never a deadlock); otherwise only its own. Other partitions go on.

        The ledger's order across replicas (`exclusive`: two more round trips with
        PostgreSQL) is taken only when something needs it: a Redis, whose heads move only
        with writes in a partition's order, or a key ring of several keys (the lookup
        above). Otherwise a partition's appends are ordered by the append itself, and this
        replica's lock orders its own."""
        candidates = self._pseudonymize.all(subject_id)
        known = candidates[0] if len(candidates) == 1 else self._resolved.get(candidates[0])
        parts = sorted({self.partition(c) for c in ([known] if known else candidates)})
        # With one key there is no lookup to order: the order may begin at the append.
        with self._holding(parts, ordered=self._redis is not None or len(candidates) > 1,
                           lazy=len(candidates) == 1):
            subject = self.subject_key(subject_id)
            if self.partition(subject) not in parts:  # cannot be: it is one of candidates
                raise AssertionError("a subject resolved outside the partitions held")
            yield subject

    @contextmanager
    def _holding(self, parts: Sequence[int], ordered: bool, lazy: bool = False
                 ) -> Iterator[None]:
        """This replica's locks of these partitions (sorted), and with `ordered` the
        ledger's order of them across replicas too (`lazy`: from the first append on)."""
        with ExitStack() as stack:
            for part in sorted(parts):
                stack.enter_context(self._part_locks[part])
            if ordered:
                stack.enter_context(self._ledger.exclusive(sorted(parts), lazy))
            yield

    def _after_write(self, subject: str, result: AppendResult,
                     epochs: tuple[int, int]) -> None:
        """Still inside the ledger's write order: Redis sees writes in ledger order.
        `epochs`: the caches' epochs from before the ledger write."""
        if self._sole_writer:
            self._cache.note_write(subject, result.sequence)
        state = _without_evidence(result.state)
        self._cache.put(subject, state, epochs[0])
        if self._redis is not None and not result.replayed:
            # Ledger first: a failed write-through leaves Redis behind, never ahead, and
            # the next write-through starts a new generation (redis_cache.py). The write
            # is committed: nothing that goes wrong with the cache may report it failed.
            try:
                self._redis.write_through(subject, state, result.sequence, epochs[1])
            except Exception:
                log.exception("write-through to redis failed; the ledger has the write")

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
    def cache_epoch(self) -> int:
        """Moves on when the caches are dropped because the ledger went back or was
        replaced: what was learnt about the ledger before is to be learnt again."""
        return self._cache.epoch


    def close(self) -> None:
        self._ledger.close()

