"""Input rules for every request: lengths, character sets, taxonomy keys, time ranges.

Shared by the checker and the consent service, so in-process callers get the same
answers as gRPC callers. Every violation names its field, and one error names every bad
field of a request (a caller fixes a request in one round trip, not one field per try);
nothing is written before validation has passed.

Each rule comes in two forms: `check_*`/`read_*` add to a `Violations` and carry on, so a
caller can judge all fields first; `validate_*`/`parse_*` raise `InvalidArgument` at once
(for a request that has nothing else to report).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from .domain import (
    PERMISSION_ACTIONS,
    PURPOSE_REQUIRED_ACTIONS,
    CheckRequest,
    CollectionMethod,
    ConsentWrite,
    DecisionQuery,
    SubjectUpsert,
)
from .errors import FieldViolation, InvalidArgument
from .policy import Taxonomy

MAX_SUBJECT_ID = 256
MAX_KEY = 128
MAX_BATCH = 1000
MAX_CONTEXT_ENTRIES = 16
MAX_CONTEXT_VALUE = 256
#: Request facts the engine understands, with their allowed values.
KNOWN_CONTEXT: Mapping[str, frozenset[str]] = {"gpc": frozenset({"0", "1"})}
MAX_CATEGORIES = 64
MAX_SOURCE = 128
MAX_NOTICE_VERSION = 128
MAX_EVIDENCE_ENTRIES = 32
MAX_EVIDENCE_KEY = 64
MAX_EVIDENCE_VALUE = 4096
MAX_IDEMPOTENCY_KEY = 128
MAX_TOKEN_DIGITS = 19
#: Ledger positions are SQLite/PostgreSQL 64-bit integers.
MAX_TOKEN = 2**63 - 1
MAX_PAGE_SIZE = 1000
#: How far in the future collected_at may be (the caller's clock ahead of ours), unless
#: `serve --clock-skew` says otherwise. Such a record counts from its collected time.
CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
#: What the gRPC edge puts in `CheckRequest.consistency_token` for a token it could not
#: parse: validate_check then reports it together with the request's other bad fields.
NOT_A_TOKEN = -1
_NOT_A_POSITION = "is not a consistency token from this service"

_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?\Z")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]*\Z")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CONTEXT_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,63}\Z")


class Violations:
    """Collects violations so one error names every bad field at once."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(self.prefix + field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _text(v: Violations, field: str, value: str, limit: int, *, required: bool) -> bool:
    if not value:
        if required:
            v.add(field, "is required")
        return False
    if len(value) > limit:
        v.add(field, f"is longer than {limit} characters")
        return False
    if not value.isprintable():
        v.add(field, "contains control or non-printable characters")
        return False
    return True


def check_subject_id(v: Violations, value: str, field: str = "subject_id") -> None:
    """One subject, one id: ids are compared after Unicode NFC (pseudonym.canonical);
    what NFC cannot make one (surrounding whitespace, control characters) is refused rather
    than silently becoming a second subject. The value is never echoed."""
    if not _text(v, field, value, MAX_SUBJECT_ID, required=True):
        return
    if not value.strip():
        v.add(field, "is blank")
    elif value != value.strip():
        v.add(field, "has leading or trailing whitespace")


def check_jurisdiction(v: Violations, value: str, field: str = "jurisdiction") -> None:
    if value and not _JURISDICTION.match(value):
        v.add(field, "must be an ISO 3166-1 alpha-2 code (DE) or ISO 3166-2 subdivision "
                     "(US-CA), upper case")


def check_purpose(v: Violations, taxonomy: Taxonomy, value: str, field: str = "purpose",
                  *, required: bool = True) -> None:
    if _text(v, field, value, MAX_KEY, required=required) and value not in taxonomy.purposes:
        v.add(field, "is not a known purpose (fideslang data use)")


def check_category(v: Violations, taxonomy: Taxonomy, value: str,
                   field: str = "data_category") -> None:
    if (_text(v, field, value, MAX_KEY, required=True)
            and value not in taxonomy.categories):
        v.add(field, "is not a known data category (fideslang data category)")


def validate_check(req: CheckRequest, taxonomy: Taxonomy, prefix: str = "",
                   partitions: int = 1, bare_until: int = 0) -> None:
    """`partitions`: the consent ledger's (a token must name one of them); `bare_until`:
    see check_token_partition."""
    v = Violations(prefix)
    check_subject_id(v, req.subject_id)
    check_purpose(v, taxonomy, req.purpose)
    check_category(v, taxonomy, req.data_category)
    check_jurisdiction(v, req.jurisdiction)
    if len(req.context) > MAX_CONTEXT_ENTRIES:
        v.add("context", f"has more than {MAX_CONTEXT_ENTRIES} entries")
    else:
        for key, value in req.context.items():
            if not _CONTEXT_KEY.match(key):
                v.add("context", "keys are lower-case names")
            elif key not in KNOWN_CONTEXT:
                # The key is not echoed: it is caller text and could hold personal data.
                v.add("context", f"has an unknown key (known: "
                      f"{', '.join(sorted(KNOWN_CONTEXT))})")
            elif value not in KNOWN_CONTEXT[key]:
                v.add(f"context[{key}]",
                      f"must be one of {', '.join(sorted(KNOWN_CONTEXT[key]))}")
    if req.consistency_token < 0:
        v.add("consistency_token", _NOT_A_POSITION)
    else:
        check_token_partition(v, req.token_partition, req.consistency_token, partitions,
                              bare_until)
    v.raise_if_any()


def check_token_partition(v: Violations, part: int | None, position: int,
                          partitions: int, bare_until: int = 0) -> None:
    """A token names one of the ledger's partitions; a bare position is a token only of a
    ledger of one partition (or 0, no requirement), or one the ledger issued before
    `ledger migrate` partitioned it (at most `bare_until`, the head it had then: moved
    entries keep their positions, so it means the subject's partition at that position).
    Whether it is the subject's own partition is ConsentService.check_token's to say (it
    knows the subject's)."""
    if part is not None and part >= partitions:
        v.add("consistency_token", "names a ledger partition this service does not have")
    elif part is None and position > bare_until and partitions > 1:
        v.add("consistency_token", _NOT_A_POSITION)


def validate_batch_size(n: int) -> None:
    if n == 0:
        raise InvalidArgument.single("items", "is empty")
    if n > MAX_BATCH:
        raise InvalidArgument.single("items", f"has {n} items; the maximum is {MAX_BATCH}")


def _check_time(v: Violations, field: str, value: datetime | None) -> None:
    if value is None:
        return
    if value.tzinfo is None:
        v.add(field, "must carry a time zone")
    elif not EARLIEST <= value < LATEST:
        v.add(field, f"must be between {EARLIEST.date()} and {LATEST.date()}")


def validate_write(w: ConsentWrite, taxonomy: Taxonomy, now: datetime,
                   clock_skew: timedelta = CLOCK_SKEW) -> None:
    v = Violations()
    check_write(v, w, taxonomy, now, clock_skew=clock_skew)
    v.raise_if_any()


def check_write(v: Violations, w: ConsentWrite, taxonomy: Taxonomy | None, now: datetime,
                unknown: frozenset[str] = frozenset(), *,
                clock_skew: timedelta = CLOCK_SKEW) -> None:
    """`unknown`: fields the edge could not convert (and has reported); `w` holds
    placeholders there, so no rule that depends on them is applied. Without a
    `taxonomy`, purposes and categories are checked for form only."""
    action = None if "action" in unknown else w.action
    permission = action in PERMISSION_ACTIONS
    check_subject_id(v, w.subject_id)
    if taxonomy is not None:
        check_purpose(v, taxonomy, w.purpose, required=action in PURPOSE_REQUIRED_ACTIONS)
    else:
        _text(v, "purpose", w.purpose, MAX_KEY, required=action in PURPOSE_REQUIRED_ACTIONS)
    if len(w.data_categories) > MAX_CATEGORIES:
        v.add("data_categories", f"has more than {MAX_CATEGORIES} entries")
    else:
        for i, cat in enumerate(w.data_categories):
            if taxonomy is not None:
                check_category(v, taxonomy, cat, f"data_categories[{i}]")
            else:
                _text(v, f"data_categories[{i}]", cat, MAX_KEY, required=True)
        if len(set(w.data_categories)) != len(w.data_categories):
            v.add("data_categories", "has duplicates")
    check_jurisdiction(v, w.jurisdiction)
    if (permission and "method" not in unknown
            and w.method is CollectionMethod.UNSPECIFIED):
        v.add("method", "is required for a grant or opt-in (how was it collected?)")
    if w.explicit and action is not None and not permission:
        v.add("explicit", "only applies to a grant or opt-in")
    collected = None if "collected_at" in unknown else w.collected_at
    expires = None if "expires_at" in unknown else w.expires_at
    _check_time(v, "collected_at", collected)
    _check_time(v, "expires_at", expires)
    if collected is not None and collected.tzinfo and collected > now + clock_skew:
        v.add("collected_at", f"is more than {int(clock_skew.total_seconds())} seconds in "
                              "the future")
    if expires is not None:
        if action is not None and not permission:
            v.add("expires_at", "only applies to a grant or opt-in")
        start = None if "collected_at" in unknown else (collected or now)
        if start is not None and expires.tzinfo and start.tzinfo and expires <= start:
            v.add("expires_at", "must be after collected_at")
    # Art. 7(1): a controller must be able to show which notice and channel.
    _text(v, "source", w.source, MAX_SOURCE, required=permission)
    _text(v, "notice_version", w.notice_version, MAX_NOTICE_VERSION, required=permission)
    _check_evidence(v, w.evidence)
    if w.idempotency_key:
        _text(v, "idempotency_key", w.idempotency_key, MAX_IDEMPOTENCY_KEY, required=False)


def _check_evidence(v: Violations, evidence: Mapping[str, str]) -> None:
    if len(evidence) > MAX_EVIDENCE_ENTRIES:
        v.add("evidence", f"has more than {MAX_EVIDENCE_ENTRIES} entries")
        return
    for key, value in evidence.items():
        if not key or len(key) > MAX_EVIDENCE_KEY or not _LABEL.match(key):
            v.add("evidence", f"keys are 1-{MAX_EVIDENCE_KEY} characters of A-Z a-z 0-9 _.:@/+-")
            return
        if len(value) > MAX_EVIDENCE_VALUE:
            v.add("evidence", f"has a value longer than {MAX_EVIDENCE_VALUE} characters")


def validate_upsert(u: SubjectUpsert, today: date) -> None:
    v = Violations()
    check_upsert(v, u, today)
    v.raise_if_any()


def check_upsert(v: Violations, u: SubjectUpsert, today: date) -> None:
    check_subject_id(v, u.subject_id)
    check_jurisdiction(v, u.jurisdiction)
    if u.birth_date is not None and not date(1900, 1, 1) <= u.birth_date <= today:
        v.add("birth_date", "must be between 1900-01-01 and today")


def parse_token(value: str) -> tuple[int | None, int] | None:
    """(partition, position) a consistency token names: `<partition>.<position>` from a
    partitioned ledger, a bare `<position>` from a ledger of one partition (partition
    None), empty for none (None, 0); None when `value` is not a token."""
    part, dot, position = value.partition(".")
    if not dot:
        seq = token_value(value)
        return None if seq is None else (None, seq)
    if not (part.isascii() and part.isdigit() and len(part) <= 4) or not position:
        return None
    seq = token_value(position)
    return None if seq is None else (int(part), seq)


def format_token(part: int, position: int, partitions: int) -> str:
    """The consistency token for a position of a partition (parse_token's inverse): a
    ledger of one partition writes the bare position, as before partitions."""
    return str(position) if partitions == 1 else f"{part}.{position}"


def token_value(value: str) -> int | None:
    """The ledger position a consistency token names (decimal; empty is 0); None when
    `value` is not a token."""
    if not value:
        return 0
    if (len(value) > MAX_TOKEN_DIGITS or not value.isascii() or not value.isdigit()
            or int(value) > MAX_TOKEN):
        return None
    return int(value)


def read_token(v: Violations, value: str, field: str = "consistency_token") -> int:
    """Consistency tokens are ledger positions written as decimal strings (0 when bad)."""
    position = token_value(value)
    if position is None:
        v.add(field, _NOT_A_POSITION)
        return 0
    return position


def read_birth_date(v: Violations, value: str, field: str = "birth_date") -> date | None:
    if not value:
        return None
    try:
        # Only YYYY-MM-DD: fromisoformat alone also takes ISO week dates and others.
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        v.add(field, "must be a date as YYYY-MM-DD")
        return None


def read_page_size(v: Violations, size: int, field: str = "page_size") -> int:
    if size < 0:
        v.add(field, "must not be negative")
    return min(max(size, 0) or 100, MAX_PAGE_SIZE)


def check_subject_only(subject_id: str) -> None:
    v = Violations()
    check_subject_id(v, subject_id)
    v.raise_if_any()


def validate_state_read(subject_id: str, token: str, partitions: int = 1,
                        bare_until: int = 0) -> tuple[int | None, int]:
    """GetConsentState: the subject, and the ledger partition and position the answer must
    include."""
    v = Violations()
    check_subject_id(v, subject_id)
    parsed = parse_token(token)
    if parsed is None:
        v.add("consistency_token", _NOT_A_POSITION)
    else:
        check_token_partition(v, parsed[0], parsed[1], partitions, bare_until)
    v.raise_if_any()
    assert parsed is not None
    return parsed


def validate_history(subject_id: str, page_size: int, page_token: str) -> tuple[int, int]:
    """ListConsentEvents: (page size, position after which the page starts)."""
    v = Violations()
    check_subject_id(v, subject_id)
    size = read_page_size(v, page_size)
    after = read_token(v, page_token, "page_token")
    v.raise_if_any()
    return size, after


def check_query(v: Violations, query: DecisionQuery, subject_id: str) -> None:
    """QueryDecisions' filters (`subject_id` is optional there)."""
    if subject_id:
        check_subject_id(v, subject_id)
    for field, value in (("purpose", query.purpose), ("data_category", query.data_category),
                         ("reason", query.reason), ("caller", query.caller)):
        if len(value) > MAX_KEY:
            v.add(field, f"is longer than {MAX_KEY} characters")
    if query.start and query.end and query.end <= query.start:
        v.add("end_time", "must be after start_time")


def validate_query(query: DecisionQuery, subject_id: str, page_size: int,
                   page_token: str) -> tuple[int, int]:
    """QueryDecisions: (page size, sequence the page ends before)."""
    v = Violations()
    check_query(v, query, subject_id)
    size = read_page_size(v, page_size)
    before = read_token(v, page_token, "page_token")
    v.raise_if_any()
    return size, before
