"""The core vocabulary: frozen dataclasses and stable codes shared by every layer.

Imports nothing of ours. Protobuf stays at the edge (server/); this module is what the
core speaks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from types import MappingProxyType


class Effect(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class Reason(StrEnum):
    """Stable reason codes. Documented in docs/api.md; never renamed, only added."""

    CONSENT_GIVEN = "CONSENT_GIVEN"
    NO_CONSENT = "NO_CONSENT"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    CONSENT_EXPIRED = "CONSENT_EXPIRED"
    CONSENT_INVALID = "CONSENT_INVALID"
    EXPLICIT_CONSENT_REQUIRED = "EXPLICIT_CONSENT_REQUIRED"
    OBJECTED = "OBJECTED"
    OPTED_OUT = "OPTED_OUT"
    GPC_OPT_OUT = "GPC_OPT_OUT"
    PARENTAL_CONSENT_REQUIRED = "PARENTAL_CONSENT_REQUIRED"
    MINOR_OPT_IN_REQUIRED = "MINOR_OPT_IN_REQUIRED"
    SENSITIVE_USE_LIMITED = "SENSITIVE_USE_LIMITED"
    SUBJECT_ERASED = "SUBJECT_ERASED"
    NO_MATCHING_RULE = "NO_MATCHING_RULE"
    CONTRACT = "CONTRACT"
    LEGAL_OBLIGATION = "LEGAL_OBLIGATION"
    LEGITIMATE_INTEREST = "LEGITIMATE_INTEREST"
    NOT_OPTED_OUT = "NOT_OPTED_OUT"
    LAWFUL_AUTHORITY_REQUIRED = "LAWFUL_AUTHORITY_REQUIRED"
    SENSITIVE_PERMITTED_USE = "SENSITIVE_PERMITTED_USE"
    #: The law forbids it whatever the consent (Md. Com. Law §14-4707(a), ORS 646A.578).
    PROHIBITED = "PROHIBITED"
    #: A purpose the law does not restrict (security, fraud, the product or service the
    #: consumer requested: e.g. Va. Code §59.1-582(A)).
    EXEMPT_PURPOSE = "EXEMPT_PURPOSE"
    #: A sale that needs the consumer's signed authorisation (RCW 19.373.070, NRS 603A.535).
    AUTHORISATION_REQUIRED = "AUTHORISATION_REQUIRED"


class LegalBasis(StrEnum):
    CONSENT = "consent"
    EXPLICIT_CONSENT = "explicit_consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"
    CCPA_OPT_OUT_NOT_EXERCISED = "ccpa_opt_out_not_exercised"
    #: CCPA §1798.121(a), 11 CCR §7027(m): a use of sensitive personal information that a
    #: request to limit does not reach.
    CCPA_SENSITIVE_PERMITTED_USE = "ccpa_sensitive_permitted_use"
    #: A US state law allows it until the consumer opts out (targeted advertising, sale,
    #: profiling; e.g. Va. Code §59.1-577(A)(5)).
    OPT_OUT_NOT_EXERCISED = "opt_out_not_exercised"
    #: The law's own exemption for this purpose (e.g. Va. Code §59.1-582(A)).
    STATUTORY_EXEMPTION = "statutory_exemption"
    #: The consumer's signed authorisation, unexpired (RCW 19.373.070, NRS 603A.535).
    SIGNED_AUTHORISATION = "signed_authorisation"


class ConsentAction(StrEnum):
    GRANT = "GRANT"
    WITHDRAW = "WITHDRAW"
    OBJECT = "OBJECT"
    OPT_OUT_OF_SALE = "OPT_OUT_OF_SALE"
    OPT_IN_TO_SALE = "OPT_IN_TO_SALE"
    LIMIT_SENSITIVE = "LIMIT_SENSITIVE"


#: Actions that are about one purpose and must name it.
PURPOSE_REQUIRED_ACTIONS = frozenset(
    {ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT}
)
#: The source of the opt-out a Global Privacy Control signal records (ConsentService).
GPC_SOURCE = "gpc"
#: Actions that express a permission and so must say how it was collected.
PERMISSION_ACTIONS = frozenset({ConsentAction.GRANT, ConsentAction.OPT_IN_TO_SALE})


class CollectionMethod(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    AFFIRMATIVE = "AFFIRMATIVE"
    PRE_TICKED = "PRE_TICKED"
    IMPLIED = "IMPLIED"
    PARENTAL = "PARENTAL"

    @property
    def is_valid_consent(self) -> bool:
        """Pre-ticked boxes, silence and inactivity are not consent (Art. 4(11), Recital 32)."""
        return self in (CollectionMethod.AFFIRMATIVE, CollectionMethod.PARENTAL)


def _frozen_map(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


def new_id() -> str:
    """A time-ordered UUIDv7 string: sortable ids make log ranges cheap to scan."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    # What str(uuid.UUID(int=value)) gives, at a third of the cost (one per decision).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class CheckRequest:
    subject_id: str
    purpose: str
    data_category: str
    jurisdiction: str = ""
    context: Mapping[str, str] = field(default_factory=lambda: _frozen_map(None))
    #: Minimum ledger position the decision must see (0: no requirement), in the
    #: partition `token_partition` (None: the token named none, a bare position).
    consistency_token: int = 0
    explain: bool = False
    token_partition: int | None = None


@dataclass(frozen=True, slots=True)
class SubjectProfile:
    jurisdiction: str = ""
    #: In the clear only in memory and the caches; the ledger holds `sealed_birth_date`.
    birth_date: date | None = None
    #: The birth date encrypted under the subject's key (consent/sealing.py).
    sealed_birth_date: str = ""
    #: When the subject was erased (GDPR Art. 17); erasure is final.
    erased_at: datetime | None = None
    #: The caller that asked for the erasure (its configured name; "" when not known).
    erased_by: str = ""


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """One ledger record: the proof of a consent choice (Kantara / ISO/IEC TS 27560 fields)."""

    record_id: str
    sequence: int
    action: ConsentAction
    purpose: str
    data_categories: tuple[str, ...]
    explicit: bool
    method: CollectionMethod
    jurisdiction: str
    collected_at: datetime
    expires_at: datetime | None
    source: str
    notice_version: str
    recorded_at: datetime
    #: In the clear only in memory, and only until the subject's key is destroyed.
    evidence: Mapping[str, str] = field(default_factory=lambda: _frozen_map(None))
    #: The evidence encrypted under the subject's key: what the ledger stores.
    sealed_evidence: str = ""


def event_order(ev: ConsentEvent) -> tuple[datetime, int, int]:
    """The one order of a subject's consent records, used wherever the latest one matters
    (the projection, the facts, replay, explain, the caches): event time first, because
    choices arrive late (offline queues, CRM imports, lead-form syncs) and a grant
    collected before a withdrawal must not undo it by arriving after it. At the same
    `collected_at` a withdrawal, objection, opt-out or limit comes after a grant or
    opt-in, so it wins (the reading that can only deny more). Then ledger order."""
    return (ev.collected_at, 0 if ev.action in PERMISSION_ACTIONS else 1, ev.sequence)


@dataclass(frozen=True, slots=True)
class SubjectState:
    """What the engine needs about one subject: profile and the consent events in effect,
    in `event_order` (oldest first)."""

    profile: SubjectProfile = field(default_factory=SubjectProfile)
    events: tuple[ConsentEvent, ...] = ()
    #: Ledger position this state is current as of (the consistency token it satisfies).
    sequence: int = 0
    #: Ledger position of this subject's latest record (orders cache updates).
    version: int = 0


@dataclass(frozen=True, slots=True)
class ConsentWrite:
    """A consent event as a caller submits it (RecordConsent), before the ledger numbers it."""

    subject_id: str
    action: ConsentAction
    purpose: str = ""
    data_categories: tuple[str, ...] = ()
    explicit: bool = False
    method: CollectionMethod = CollectionMethod.UNSPECIFIED
    jurisdiction: str = ""
    collected_at: datetime | None = None
    expires_at: datetime | None = None
    source: str = ""
    notice_version: str = ""
    evidence: Mapping[str, str] = field(default_factory=lambda: _frozen_map(None))
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class SubjectUpsert:
    subject_id: str
    jurisdiction: str = ""
    birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    record_id: str
    #: The position of the write in the subject's partition.
    consistency_token: int
    #: The consistency token callers get (partition and position).
    token: str = ""


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """A policy rule as the author wrote it, with where it lives."""

    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one request."""

    effect: Effect
    reason: Reason
    legal_basis: str
    regime: str
    jurisdiction: str
    policy_version: str
    matched_rule: MatchedRule | None
    consent_record_ids: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    explanation: tuple[str, ...] = ()
    #: The purpose and category whose evaluation decided (a broader request is decided by
    #: the first key under it that is denied; otherwise these are the requested keys).
    decided_purpose: str = ""
    decided_category: str = ""
    #: The jurisdiction token the rules were matched with: a mapped code, UNKNOWN, or, for
    #: a jurisdiction the pack does not map, the regime whose rules decided (an unknown
    #: jurisdiction is evaluated under every regime of the pack).
    decided_jurisdiction: str = ""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision-log entry. Holds a pseudonym, never the raw subject id."""

    decision_id: str
    time: datetime
    caller: str
    subject: str
    purpose: str
    data_category: str
    jurisdiction: str
    regime: str
    decision: Effect
    reason: Reason
    legal_basis: str
    matched_rule: str
    policy_version: str
    consent_record_ids: tuple[str, ...]
    consistency_token: int
    trace_id: str
    span_id: str
    context: Mapping[str, str] = field(default_factory=lambda: _frozen_map(None))
    sequence: int = 0
    prev_hash: str = ""
    entry_hash: str = ""

    def numbered(self, sequence: int, prev_hash: str, entry_hash: str) -> DecisionRecord:
        """This record at its place in the chain. (dataclasses.replace does the same at
        twice the cost, and the decision log does this once per decision.)"""
        return DecisionRecord(
            self.decision_id, self.time, self.caller, self.subject, self.purpose,
            self.data_category, self.jurisdiction, self.regime, self.decision, self.reason,
            self.legal_basis, self.matched_rule, self.policy_version,
            self.consent_record_ids, self.consistency_token, self.trace_id, self.span_id,
            self.context, sequence, prev_hash, entry_hash)


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    subject: str = ""
    purpose: str = ""
    data_category: str = ""
    decision: Effect | None = None
    reason: str = ""
    caller: str = ""
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 100
    #: Return entries with sequence strictly below this (paging backwards from newest).
    before_sequence: int = 0


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """What the checker returns for one request: the decision and its log entry."""

    decision: Decision
    record: DecisionRecord
    #: The consistency token of the state the decision read (partition and position).
    token: str = ""


@dataclass(frozen=True, slots=True)
class PolicyReload:
    """One attempt to put a new policy version live."""

    time: datetime
    accepted: bool
    policy_version: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    policy_version: str
    loaded_at: datetime
    source: str
    rule_count: int
    last_reload: PolicyReload | None = None
    reloads_accepted: int = 0
    reloads_rejected: int = 0
    watching: bool = False
