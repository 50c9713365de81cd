"""Fuzz every RPC of one running server with malformed, random and valid requests.

One server (module scope) takes well over 10,000 generated requests across DecisionService,
ConsentService, AuditService and PolicyService. Every request is judged by an oracle
written from the API contract (docs/api.md, the protos), not from the server's code:

* no call ever ends in INTERNAL or UNKNOWN, and every error is INVALID_ARGUMENT (with a
  google.rpc.BadRequest naming at least one field, every named field really bad),
  NOT_FOUND (an unknown decision id) or UNAVAILABLE (only a consistency token ahead of the
  ledger; an unexpected server error also surfaces as UNAVAILABLE and fails here);
* a request the contract calls bad is rejected, a valid one is answered; in a batch every
  bad item comes back as an error slot, never as a decision;
* error messages never echo the caller's subject id (nor other long request strings).

The last test then checks that the server is still healthy: a grant is followed by ALLOW,
both hash chains verify, exactly the accepted requests were decided and written, RSS did
not grow without bound and the engine's candidate memo only holds taxonomy keys.

Hypothesis runs derandomized without an example database, so every run sends the same
requests. The regressions at the end pin inputs the fuzzer found slipping through
(a trailing newline after a valid jurisdiction or evidence key; an ISO week date).
"""

from __future__ import annotations

import random
import re
import sqlite3
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentauthz.policy import Taxonomy
from consentauthz.v1 import (
    audit_pb2,
    consent_pb2,
    decision_pb2,
    policy_pb2,
    policy_pb2_grpc,
)
from tests.conftest import SPANS, Running, start_server
from tests.integration.test_malformed_bytes import MARKER, set_marker, string_paths
from tests.integration.test_malformed_bytes import METHODS as RPC_METHODS
from tests.scenario import check, decision_name, field_violations, record

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"

#: Subjects that collect consent records and decisions during the run.
POOL = tuple(f"fuzz-subject-{i:03d}@example.org" for i in range(40))
IDEMPOTENCY_KEYS = tuple(f"idem-{i}" for i in range(8))
AHEAD = "consistency_token is ahead of the consent ledger"

# Contract limits (docs/api.md "Limits", the protos).
MAX_SUBJECT = 256
MAX_KEY = 128
MAX_CONTEXT = 16
MAX_CATEGORIES = 64
MAX_LABEL = 128  # source, notice_version, idempotency_key
MAX_EVIDENCE = 32
MAX_EVIDENCE_KEY = 64
MAX_EVIDENCE_VALUE = 4096
MAX_DECISION_ID = 64
MAX_BATCH = 1000
MAX_TOKEN = 2**63 - 1
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)
#: Protobuf Timestamp's range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW_S = int(time.time())
#: Close to a time bound the server's clock decides; the oracle accepts either answer.
FUZZY = timedelta(minutes=2)

PERMISSION = {consent_pb2.CONSENT_ACTION_GRANT, consent_pb2.CONSENT_ACTION_OPT_IN_TO_SALE}
PURPOSE_REQUIRED = {consent_pb2.CONSENT_ACTION_GRANT, consent_pb2.CONSENT_ACTION_WITHDRAW,
                    consent_pb2.CONSENT_ACTION_OBJECT}
ACTIONS = range(1, 7)
METHODS = range(0, 5)

_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_EVIDENCE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]*")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# -- the running server and what the run has learnt -------------------------------------


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Fuzz:
    s: Running
    policy: policy_pb2_grpc.PolicyServiceStub
    taxonomy: Taxonomy
    rss_before_kb: int
    started: float
    calls: Counter[str] = field(default_factory=Counter)
    batch_items: int = 0
    #: Decisions answered to us (every one must be in the decision log, nothing else).
    decided: int = 0
    #: Ledger entries written (consent records and profile updates; not idempotent replays).
    writes: int = 0
    decision_ids: list[str] = field(default_factory=list)
    known_ids: set[str] = field(default_factory=set)
    #: idempotency key -> (request identity, first response)
    idempotency: dict[str, tuple[tuple[Any, ...], tuple[str, str]]] = field(
        default_factory=dict)
    checkpoints: list[audit_pb2.Checkpoint] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    @property
    def watermark(self) -> int:
        return self.s.app.cache.watermark_of(0)  # one partition (SQLite)


#: Filled by the fixture; the strategies sample taxonomy keys from the live policy.
_LIVE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    running = start_server(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        compiled = running.app.policy()
        _LIVE["purposes"] = sorted(compiled.policy.taxonomy.purposes)
        _LIVE["categories"] = sorted(compiled.policy.taxonomy.categories)
        _LIVE["jurisdictions"] = sorted(j for j in compiled.jurisdictions if j != "UNKNOWN")
        yield Fuzz(running, policy_pb2_grpc.PolicyServiceStub(running.channel),
                   compiled.policy.taxonomy, _rss_kb(), time.perf_counter())
    finally:
        running.channel.close()
        running.app.stop(grace=None)


# -- values -------------------------------------------------------------------------------
#
# Hypothesis spends a few milliseconds of bookkeeping per example and per draw, which for
# 10,000 requests is most of the time budget. So each example sends several requests, and
# most malformed values are drawn (one choice each) from pools built once from a fixed
# seed; a share still comes from Hypothesis' own generation.

_RNG = random.Random(20_260_101)
_CONTROLS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))] + [
    "\u00ad", "\u200b", "\u200e", "\u202e", "\u2028", "\u2029", "\u3000", "\ufeff",
    "\ue000", "\U000f0000", "\U000e0001"]
_PRINTABLE = (string.ascii_letters + string.digits + string.punctuation
              + "\u00e9\u00df\u00f8\u0436\u4e2d\u6587\u0627\u05d0\u0e01\U0001f600 ")


def _any_char(rng: random.Random) -> str:
    while True:
        c = rng.randrange(0x110000)
        if not 0xD800 <= c <= 0xDFFF:  # protobuf strings are UTF-8: no lone surrogates
            return chr(c)


def _printable_text(rng: random.Random, n: int) -> str:
    out = "".join(rng.choice(_PRINTABLE) for _ in range(n))
    return out if out.strip() else "p" + out[1:]


def _nasty(rng: random.Random) -> str:
    n = rng.randrange(1, 40)
    match rng.randrange(9):
        case 0:
            return "".join(_any_char(rng) for _ in range(n))
        case 1:
            return "".join(rng.choice(_CONTROLS) for _ in range(n % 8 + 1))
        case 2:
            return rng.randbytes(n).decode("latin-1")
        case 3:
            text = _printable_text(rng, n)
            i = rng.randrange(len(text) + 1)
            return text[:i] + rng.choice(_CONTROLS) + text[i:]
        case 4:
            unit = "".join(_any_char(rng) for _ in range(rng.randrange(1, 5)))
            size = rng.choice([100, 257, 1000, 4097, 10_240, rng.randrange(100, 10_240)])
            return (unit * size)[:size]
        case 5:
            return "".join(chr(rng.choice([rng.randrange(0x0400, 0x0500),
                                           rng.randrange(0x0600, 0x0700),
                                           rng.randrange(0x4E00, 0x9FFF),
                                           rng.randrange(0x1F300, 0x1FAFF)]))
                           for _ in range(n))
        case 6:
            return "a" + "\u0301" * n + "\u200d\U0001f469\u200d\U0001f467"
        case 7:
            return "".join(rng.choice(" \t\n\r\x0b\x0c\u00a0\u2003\u3000") for _ in range(n))
        case _:
            return _printable_text(rng, n)  # printable: valid for some fields


EDGE_STRINGS = (
    "", " ", "   ", "\t", "\n", "\r\n", "\x00", "\x7f", "\x85", "\xa0", "\u200b", "\ufeff",
    "\u202e", "\u2028", "null", "None", "-", "*", "%", "_", "' OR 1=1 --", "../../etc/passwd",
    "\\", "\U0001f600", "a\u0301", "x" * MAX_SUBJECT, "x" * (MAX_SUBJECT + 1), "y" * MAX_KEY,
    "y" * (MAX_KEY + 1), "z" * 10_240, "0", "-1", "9" * 19, "a\nb", "a\x00b",
)
NASTY_POOL = (*EDGE_STRINGS, *(_nasty(_RNG) for _ in range(800)))
SHORT_NASTY_POOL = tuple(s for s in NASTY_POOL if len(s) < 64)
SUBJECT_POOL = (*POOL, *(_printable_text(_RNG, _RNG.choice(
    [1, 2, 8, 30, 64, 255, MAX_SUBJECT, _RNG.randrange(1, MAX_SUBJECT)])) for _ in range(300)))


def pooled(pool: Sequence[Any], live: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three parts from the pool, one part live Hypothesis generation."""
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), st.sampled_from(pool), live)


NASTY_TEXT = pooled(NASTY_POOL, st.text(max_size=16))
SHORT_NASTY_TEXT = st.sampled_from(SHORT_NASTY_POOL)  # 1001 of these stay under 8 MiB
VALID_SUBJECT = st.one_of(st.sampled_from(POOL), st.sampled_from(SUBJECT_POOL))
PRINTABLE_LABEL = st.sampled_from(tuple(_printable_text(_RNG, _RNG.randrange(1, 30))
                                        for _ in range(100)))

HOMOGLYPHS = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "c": "\u0441", "p": "\u0440",
              "i": "\u0456"}
TYPOS = ("drop", "double", "swap", "replace", "insert", "upper", "title", "homoglyph",
         "lead_space", "trail_space", "newline", "dot", "dotdot", "underscore", "zwsp",
         "truncate", "segment", "wildcard", "nbsp", "tab")


def typo(key: str, kind: str, pos: int, ch: str) -> str:
    i = pos % len(key)
    match kind:
        case "drop":
            return key[:i] + key[i + 1:]
        case "double":
            return key[:i] + key[i] + key[i:]
        case "swap":
            return key[:i] + key[i + 1:i + 2] + key[i:i + 1] + key[i + 2:]
        case "replace":
            return key[:i] + ch + key[i + 1:]
        case "insert":
            return key[:i] + ch + key[i:]
        case "upper":
            return key.upper()
        case "title":
            return key.capitalize()
        case "homoglyph":
            return next((key.replace(c, h, 1) for c, h in HOMOGLYPHS.items() if c in key),
                        key + HOMOGLYPHS["a"])
        case "lead_space":
            return " " + key
        case "trail_space":
            return key + " "
        case "newline":
            return key + "\n"
        case "dot":
            return key + "."
        case "dotdot":
            return key.replace(".", "..", 1) if "." in key else "." + key
        case "underscore":
            return key.replace(".", "_")
        case "zwsp":
            return key[:i] + "\u200b" + key[i:]
        case "truncate":
            return key[:i]
        case "segment":
            return key + ".x"
        case "wildcard":
            return key.rsplit(".", 1)[0] + ".*"
        case "nbsp":
            return key + "\xa0"
        case _:
            return key + "\t"


def typo_pool(keys: Sequence[str]) -> tuple[str, ...]:
    """Every key with every kind of typo (position and character from a fixed seed)."""
    rng = random.Random(len(keys))
    return tuple(typo(k, kind, rng.randrange(64), rng.choice(_PRINTABLE + "\x00\u0430"))
                 for k in keys for kind in TYPOS)


# Taxonomy keys and jurisdictions come from the live policy (filled in by the fixture).
PURPOSE = st.deferred(lambda: st.sampled_from(_LIVE["purposes"]))
CATEGORY = st.deferred(lambda: st.sampled_from(_LIVE["categories"]))
MAPPED = st.deferred(lambda: st.sampled_from(_LIVE["jurisdictions"]))
PURPOSE_TYPO = st.deferred(lambda: st.sampled_from(typo_pool(_LIVE["purposes"])))
CATEGORY_TYPO = st.deferred(lambda: st.sampled_from(typo_pool(_LIVE["categories"])))
BAD_PURPOSE = st.one_of(PURPOSE_TYPO, PURPOSE_TYPO, CATEGORY, NASTY_TEXT)
BAD_CATEGORY = st.one_of(CATEGORY_TYPO, CATEGORY_TYPO, PURPOSE, NASTY_TEXT)
SHORT_BAD_PURPOSE = st.one_of(PURPOSE_TYPO, CATEGORY, SHORT_NASTY_TEXT)
SHORT_BAD_CATEGORY = st.one_of(CATEGORY_TYPO, PURPOSE, SHORT_NASTY_TEXT)

VALID_JURISDICTION = st.one_of(st.just(""), MAPPED, st.sampled_from(
    ["JP", "US-NY", "BR", "XX", "ZZ-999", "US-FL"]))
JURISDICTION_TYPO = st.deferred(lambda: st.sampled_from(typo_pool(_LIVE["jurisdictions"])))
BAD_JURISDICTION = st.one_of(
    st.sampled_from(["de", "De", "Germany", "DEU", "D", "US-CALI", "US_CA", "US-", "-CA",
                     "US-ca", " DE", "DE ", "D E", "\u0414E", "US-CA-1", "US-CA\n", "DE\n",
                     "\uff24\uff25", "US\u2011CA"]),
    JURISDICTION_TYPO, NASTY_TEXT)


def huge_map(n: int, key: str, value: str) -> dict[str, str]:
    return {f"{key}{i}": value for i in range(n)}


BAD_CONTEXT = st.one_of(
    st.sampled_from([
        {"GPC": "1"}, {"gpc ": "1"}, {"Sec-GPC": "1"}, {"sec-gpc": "1"}, {"gpc\n": "1"},
        {"g\u0440c": "1"}, {"gpc.x": "0"}, {"1gpc": "0"}, {"": "1"}, {"utm": "x"},
        {"gpc": "yes"}, {"gpc": ""}, {"gpc": "1 "}, {"gpc": "true"}, {"gpc": "01"},
        {"gpc": "\u0661"}, {"gpc": "1" * 300}, {"gpc": "1", "utm": "x"},
        huge_map(MAX_CONTEXT + 1, "gpc", "0"), huge_map(MAX_CONTEXT, "gpc", "0"),
        {"gpc": "1", **huge_map(MAX_CONTEXT, "gpc", "0")}, huge_map(3000, "k", "1"),
        huge_map(200, "gpc", "1"), {"gpc": "0"}, {"gpc": "1"}]),
    st.dictionaries(NASTY_TEXT, NASTY_TEXT, min_size=1, max_size=3))

VALID_TOKEN = st.sampled_from(["", "0", "1", "2", "00", "0001"])
BAD_TOKEN = st.one_of(
    st.sampled_from(["abc", "-1", "1.0", " 1", "1 ", "1e3", "+1", "0x10", "\u0663", "\xb2",
                     "\uff11", "9" * 19, str(2**63), str(MAX_TOKEN), "9" * 40,
                     "0" * 19 + "1", str(2**64), "1_000", "1\n"]),
    st.integers(0, 2**70).map(str),  # ahead of the ledger, or out of range
    NASTY_TEXT)


def timestamp_parts() -> st.SearchStrategy[tuple[int, int] | None]:
    seconds = st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([2**62, -(2**62), 2**62 + 1, -(2**62) - 1, 2**63 - 1, -(2**63), 0, -1,
                         MIN_SECONDS, MIN_SECONDS - 1, MAX_SECONDS, MAX_SECONDS + 1,
                         int(EARLIEST.timestamp()) - 1, int(EARLIEST.timestamp()),
                         int(LATEST.timestamp()) - 1, int(LATEST.timestamp())]),
        st.integers(int(EARLIEST.timestamp()), NOW_S - 3600),
        st.integers(NOW_S + 3600, int(LATEST.timestamp()) + 10**9),
    )
    nanos = st.one_of(st.just(0), st.integers(0, 10**9 - 1), st.integers(-(2**31), 2**31 - 1),
                      st.sampled_from([-1, 10**9, 10**9 - 1, 2**31 - 1, -(2**31)]))
    return st.none() | st.tuples(seconds, nanos)


TIMESTAMPS = timestamp_parts()


def when(parts: tuple[int, int] | None) -> datetime | None:
    """The instant a Timestamp stands for (to the microsecond), None when it is not a valid
    protobuf Timestamp (seconds out of 0001..9999, nanos out of 0..999,999,999)."""
    if parts is None:
        return None
    seconds, nanos = parts
    if not (MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 10**9):
        return None
    return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def set_ts(msg: pb_message.Message, name: str, parts: tuple[int, int] | None) -> None:
    if parts is not None:
        ts = getattr(msg, name)
        ts.SetInParent()
        ts.seconds, ts.nanos = parts


def ts_parts(msg: pb_message.Message, name: str) -> tuple[int, int] | None:
    if not msg.HasField(name):
        return None
    ts = getattr(msg, name)
    return int(ts.seconds), int(ts.nanos)


def unknown_fields() -> st.SearchStrategy[bytes]:
    """Well-formed wire data for fields no request message defines (forward compatibility)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def encode(number: int, wire: int, payload: bytes, value: int) -> bytes:
        tag = varint(number << 3 | wire)
        body = {0: varint(value), 1: payload[:8].ljust(8, b"\0"),
                2: varint(len(payload)) + payload, 5: payload[:4].ljust(4, b"\0")}[wire]
        return tag + body

    one = st.builds(encode, st.integers(100, 2**29 - 1), st.sampled_from([0, 1, 2, 5]),
                    st.binary(max_size=64), st.integers(0, 2**64 - 1))
    return st.lists(one, max_size=3).map(b"".join)


UNKNOWN_FIELDS = unknown_fields()


# -- the oracle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the contract says about one request."""

    #: Fields that are bad: the call must be INVALID_ARGUMENT naming only bad fields.
    must: frozenset[str] = frozenset()
    #: Fields the oracle accepts either way (known gaps, clock boundaries).
    may: frozenset[str] = frozenset()
    #: A well-formed consistency token beyond the ledger head: UNAVAILABLE.
    ahead: bool = False
    #: A well-formed decision id the log does not hold: NOT_FOUND.
    missing: bool = False


def expect(must: set[str], may: set[str] | None = None, *, ahead: bool = False,
           missing: bool = False) -> Expect:
    return Expect(frozenset(must), frozenset(may or ()), ahead, missing)


def subject_ok(value: str) -> bool:
    # One subject, one id (issue 12): no surrounding whitespace either.
    return (0 < len(value) <= MAX_SUBJECT and value.isprintable() and bool(value.strip())
            and value == value.strip())


def label_ok(value: str, *, required: bool, limit: int = MAX_LABEL) -> bool:
    return (not value and not required) or (0 < len(value) <= limit and value.isprintable())


def jurisdiction(value: str, must: set[str], may: set[str], name: str = "jurisdiction") -> None:
    if value and not _JURISDICTION.fullmatch(value):
        must.add(name)


def token_value(value: str) -> int | None:
    """The ledger position a token names; None when it is not a token (empty is 0). The
    fuzzed server's ledger has one partition: a token is a bare position or names
    partition 0 (`0.<position>`)."""
    part, dot, position = value.partition(".")
    if dot:
        if not (part.isascii() and part.isdigit() and len(part) <= 4 and int(part) == 0
                and position):
            return None
        value = position
    if not value:
        return 0
    if value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= MAX_TOKEN:
        return int(value)
    return None


def check_expect(req: decision_pb2.CheckRequest, tax: Taxonomy, watermark: int) -> Expect:
    must: set[str] = set()
    may: set[str] = set()
    if not subject_ok(req.subject_id):
        must.add("subject_id")
    if req.purpose not in tax.purposes:
        must.add("purpose")
    if req.data_category not in tax.categories:
        must.add("data_category")
    jurisdiction(req.jurisdiction, must, may)
    if len(req.context) > MAX_CONTEXT or any(
            k != "gpc" or v not in ("0", "1") for k, v in req.context.items()):
        must.add("context")
    token = token_value(req.consistency_token)
    if token is None:
        must.add("consistency_token")
    return expect(must, may, ahead=token is not None and token > watermark)


def consent_identity(req: consent_pb2.RecordConsentRequest) -> tuple[Any, ...]:
    """What makes two writes "the same request" for an idempotency key."""
    return (req.subject_id, req.action, req.purpose, tuple(sorted(req.data_categories)),
            req.explicit, req.method, req.jurisdiction, when(ts_parts(req, "collected_at")),
            when(ts_parts(req, "expires_at")), req.source, req.notice_version,
            tuple(sorted(req.evidence.items())))


def consent_expect(req: consent_pb2.RecordConsentRequest, tax: Taxonomy,
                   now: datetime) -> Expect:
    must: set[str] = set()
    may: set[str] = set()
    # Fields without a domain value: an unknown enum number, a time out of range.
    action = req.action if req.action in ACTIONS else None
    if action is None:
        must.add("action")
    if req.method not in METHODS:
        must.add("method")
    collected_parts, expires_parts = ts_parts(req, "collected_at"), ts_parts(req, "expires_at")
    collected, expires = when(collected_parts), when(expires_parts)
    if collected_parts is not None and collected is None:
        must.add("collected_at")
    if expires_parts is not None and expires is None:
        must.add("expires_at")
    # Such a request is judged at the edge: every other field still, except by rules that
    # need the fields it could not read, and taxonomy keys for form only (the live
    # taxonomy is the consent service's), so an unknown key is a tolerated omission there.
    unknown_key = may if must else must
    permission = action in PERMISSION
    if not subject_ok(req.subject_id):
        must.add("subject_id")
    required = action in PURPOSE_REQUIRED
    if req.purpose or required:
        if not label_ok(req.purpose, required=required, limit=MAX_KEY):
            must.add("purpose")
        elif req.purpose not in tax.purposes:
            unknown_key.add("purpose")
    cats = list(req.data_categories)
    if (len(cats) > MAX_CATEGORIES or len(set(cats)) != len(cats)
            or not all(label_ok(c, required=True, limit=MAX_KEY) for c in cats)):
        must.add("data_categories")
    elif any(c not in tax.categories for c in cats):
        unknown_key.add("data_categories")
    jurisdiction(req.jurisdiction, must, may)
    if permission and req.method == 0:
        must.add("method")
    if req.explicit and action is not None and not permission:
        must.add("explicit")
    if collected is not None:
        if not EARLIEST <= collected < LATEST:
            must.add("collected_at")
        elif collected > now + CLOCK_SKEW:
            (may if abs(collected - now - CLOCK_SKEW) < FUZZY else must).add("collected_at")
    if expires is not None:
        start = now if collected_parts is None else collected  # None: unreadable
        if not EARLIEST <= expires < LATEST or (action is not None and not permission):
            must.add("expires_at")
        elif start is not None and expires <= start:
            (may if collected_parts is None and abs(expires - now) < FUZZY
             else must).add("expires_at")
        elif collected_parts is None and abs(expires - now) < FUZZY:
            may.add("expires_at")
    if not label_ok(req.source, required=permission):
        must.add("source")
    if not label_ok(req.notice_version, required=permission):
        must.add("notice_version")
    evidence = dict(req.evidence)
    if len(evidence) > MAX_EVIDENCE or any(len(v) > MAX_EVIDENCE_VALUE
                                           for v in evidence.values()):
        must.add("evidence")
    for key in evidence:
        if not (0 < len(key) <= MAX_EVIDENCE_KEY and _EVIDENCE_KEY.fullmatch(key)):
            must.add("evidence")
    if req.idempotency_key and not label_ok(req.idempotency_key, required=False):
        must.add("idempotency_key")
    return expect(must, may)


def birth_date(value: str, today: date, must: set[str], may: set[str]) -> None:
    if not value:
        return
    parsed = None
    if _DATE.fullmatch(value):
        try:
            parsed = date.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None:
        must.add("birth_date")
    elif not date(1900, 1, 1) <= parsed <= today:
        (may if abs(parsed - today) <= timedelta(days=1) else must).add("birth_date")
    elif abs(parsed - today) <= timedelta(days=1):
        may.add("birth_date")


def decision_id_expect(value: str, known: set[str]) -> Expect:
    if not value or len(value) > MAX_DECISION_ID or not value.isprintable():
        return expect({"decision_id"})
    return expect(set(), missing=value not in known)


def page_expect(size: int, token: str, must: set[str]) -> None:
    if size < 0:
        must.add("page_size")
    if token_value(token) is None:
        must.add("page_token")


# -- judging a call -------------------------------------------------------------------------


def _field(name: str, prefix: str = "") -> str:
    assert name.startswith(prefix), f"violation {name!r} is not under {prefix!r}"
    return name[len(prefix):].split("[", 1)[0]


def secrets_of(*values: str) -> list[str]:
    """Request strings an error message must never echo (long enough not to occur by
    chance in the server's own wording)."""
    return [v for v in values if len(v) >= 8 and v.strip()]


def _judge_error(rpc: str, code: grpc.StatusCode, message: str, fields: dict[str, str] | None,
                 exp: Expect, secrets: Sequence[str], prefix: str = "") -> None:
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"{rpc}: {code.name} {message!r} for {exp}")
    for secret in secrets:
        assert secret not in message, f"{rpc}: error message echoes {secret!r}: {message!r}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert fields, f"{rpc}: INVALID_ARGUMENT without field violations: {message!r}"
        named = {_field(f, prefix) for f in fields}
        assert exp.must or exp.may, f"{rpc}: rejected a valid request: {fields}"
        assert named <= exp.must | exp.may, (
            f"{rpc}: names {sorted(named)} but only {sorted(exp.must | exp.may)} are bad: "
            f"{fields}")
        assert exp.must <= named, (  # every bad field, not only some
            f"{rpc}: names {sorted(named)} but not all of the bad {sorted(exp.must)}: "
            f"{fields}")
    elif code is grpc.StatusCode.UNAVAILABLE:
        assert exp.ahead and not exp.must, (
            f"{rpc}: UNAVAILABLE {message!r} for {exp}")
        assert message == AHEAD, f"{rpc}: UNAVAILABLE for another reason: {message!r}"
    elif code is grpc.StatusCode.NOT_FOUND:
        assert exp.missing and not exp.must, f"{rpc}: NOT_FOUND {message!r} for {exp}"
    else:
        raise AssertionError(f"{rpc}: unexpected {code.name} {message!r} for {exp}")


def call(fz: Fuzz, rpc: str, fn: Callable[..., Any], request: Any, exp: Expect,
         secrets: Sequence[str] = ()) -> Any:
    """Send one request and judge the outcome; the response, or None after an error."""
    return judge(fz, rpc, lambda: fn(request, timeout=60), exp, secrets)


def call_all(fz: Fuzz, rpc: str, fn: grpc.UnaryUnaryMultiCallable,
             calls: Sequence[tuple[Any, Expect, Sequence[str]]]) -> list[Any]:
    """Requests that change nothing the oracle depends on go out together (the server
    has 8 workers), then each outcome is judged as by `call`."""
    futures = [fn.future(request, timeout=60) for request, _, _ in calls]
    return [judge(fz, rpc, future.result, exp, secrets)
            for future, (_, exp, secrets) in zip(futures, calls, strict=True)]


def judge(fz: Fuzz, rpc: str, result: Callable[[], Any], exp: Expect,
          secrets: Sequence[str]) -> Any:
    fz.calls[rpc] += 1
    if fz.calls.total() % 500 == 0:
        SPANS.clear()  # the test session's in-memory span exporter keeps every span
    try:
        response = result()
    except grpc.RpcError as err:
        code, message = err.code(), err.details() or ""  # type: ignore[attr-defined]
        fields = (field_violations(err)  # type: ignore[arg-type]
                  if code is grpc.StatusCode.INVALID_ARGUMENT else None)
        _judge_error(rpc, code, message, fields, exp, secrets)
        return None
    assert not exp.must, f"{rpc}: accepted a request with bad {sorted(exp.must)}"
    assert not exp.ahead, f"{rpc}: answered with a consistency token ahead of the ledger"
    assert not exp.missing, f"{rpc}: found a decision id that was never issued"
    return response


def status_violations(status: status_pb2.Status) -> dict[str, str]:
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def _check_response(fz: Fuzz, req: decision_pb2.CheckRequest,
                    resp: decision_pb2.CheckResponse) -> None:
    assert resp.decision in (decision_pb2.DECISION_ALLOW, decision_pb2.DECISION_DENY)
    assert bool(resp.legal_basis) == (resp.decision == decision_pb2.DECISION_ALLOW), resp
    assert resp.decision_id and resp.decision_id not in fz.known_ids
    assert token_value(resp.consistency_token) is not None
    got = token_value(resp.consistency_token)
    assert got is not None and got >= (token_value(req.consistency_token) or 0)
    assert bool(resp.explanation) == req.explain
    fz.decided += 1
    fz.known_ids.add(resp.decision_id)
    if len(fz.decision_ids) < 5000:
        fz.decision_ids.append(resp.decision_id)


# -- request builders -----------------------------------------------------------------------


def corruptions(fields: Sequence[str], clean: int) -> st.SearchStrategy[tuple[str, ...]]:
    """Which fields to replace by malformed values: none (`clean` parts), one, two, three
    or all of them. Shrinks towards none."""
    singles = [(f,) for f in fields]
    pairs = [(a, b) for i, a in enumerate(fields) for b in fields[i + 1:]]
    triples = [tuple(fields[(i + k) % len(fields)] for k in (0, 2, 3))
               for i in range(len(fields))]
    return st.sampled_from([*[()] * clean, *singles, *singles, *pairs, *triples,
                            tuple(fields)])


CHECK_FIELDS = ("subject_id", "purpose", "data_category", "jurisdiction", "context",
                "consistency_token")
UNMAPPED = ("JP", "US-NY", "BR", "XX", "ZZ-999", "US-TX")


def valid_checks() -> tuple[dict[str, Any], ...]:
    """Valid requests to start from (one draw each, instead of one per field)."""
    rng = random.Random(1)
    jurisdictions = ["", "", "US-CA", "US-CA", *_LIVE["jurisdictions"], *UNMAPPED]
    return tuple({
        "subject_id": rng.choice(POOL if rng.random() < 0.6 else SUBJECT_POOL),
        "purpose": rng.choice(_LIVE["purposes"]),
        "data_category": rng.choice(_LIVE["categories"]),
        "jurisdiction": rng.choice(jurisdictions),
        "context": rng.choice([{}, {}, {"gpc": "0"}, {"gpc": "1"}]),
        "consistency_token": rng.choice(["", "", "", "0", "1", "2", "00", "0001"]),
        "explain": rng.random() < 0.25} for _ in range(3000))


VALID_CHECK = st.deferred(lambda: st.sampled_from(valid_checks()))
CHECK_BAD = {
    "subject_id": NASTY_TEXT, "purpose": BAD_PURPOSE, "data_category": BAD_CATEGORY,
    "jurisdiction": BAD_JURISDICTION, "context": BAD_CONTEXT, "consistency_token": BAD_TOKEN}
#: For batches of 1000: small values, so 1001 items stay under the 8 MiB message limit.
CHECK_BAD_SHORT = {
    "subject_id": SHORT_NASTY_TEXT, "purpose": SHORT_BAD_PURPOSE,
    "data_category": SHORT_BAD_CATEGORY,
    "jurisdiction": st.sampled_from(["de", "DEU", "Germany", "US-CA\n", "U", "\x00"]),
    "context": st.sampled_from([{"GPC": "1"}, {"gpc": "yes"}, huge_map(17, "k", "1")]),
    "consistency_token": st.sampled_from(["x", "-1", "9" * 20, "1.0", str(2**62)])}
CHECK_CORRUPT = corruptions(CHECK_FIELDS, clean=30)


@st.composite
def check_requests(draw: st.DrawFn, *, short: bool = False) -> decision_pb2.CheckRequest:
    """A valid request with none, some or all of its fields replaced by malformed values."""
    values = dict(draw(VALID_CHECK))
    bad = CHECK_BAD_SHORT if short else CHECK_BAD
    for name in draw(CHECK_CORRUPT):
        values[name] = draw(bad[name])
    return decision_pb2.CheckRequest(**values)


CONSENT_FIELDS = ("subject_id", "purpose", "data_categories", "action", "explicit",
                  "jurisdiction", "collected_at", "expires_at", "source", "notice_version",
                  "method", "evidence", "idempotency_key")
BAD_ENUM = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 7, 99, 2**31 - 1]))
EVIDENCE_KEYS = ("ip", "user-agent", *(
    _RNG.choice(string.ascii_letters + string.digits) + "".join(
        _RNG.choice(string.ascii_letters + string.digits + "_.:@/+-")
        for _ in range(_RNG.randrange(0, 20))) for _ in range(60)))
EVIDENCE_VALUES = tuple(s for s in NASTY_POOL if len(s) <= 200)[:300]  # values: any text


def valid_write(rng: random.Random) -> tuple[dict[str, Any], dict[str, tuple[int, int] | None]]:
    """A valid RecordConsent request (fields, and timestamps as (seconds, nanos))."""
    action = rng.choice(ACTIONS)
    permission = action in PERMISSION
    purposes, categories = _LIVE["purposes"], _LIVE["categories"]
    values: dict[str, Any] = {
        "subject_id": rng.choice(POOL if rng.random() < 0.6 else SUBJECT_POOL),
        "action": action,
        "purpose": rng.choice(purposes) if action in PURPOSE_REQUIRED or rng.random() < 0.6
        else "",
        "data_categories": rng.sample(categories, rng.choice([0, 0, 0, 1, 1, 2, 3])),
        "explicit": permission and rng.random() < 0.4,
        "method": rng.choice([1, 1, 2, 3, 4] if permission else list(METHODS)),
        "jurisdiction": rng.choice(["", "", "US-CA", *_LIVE["jurisdictions"], *UNMAPPED]),
        "source": rng.choice(["web-form", _printable_text(rng, rng.randrange(1, 30))])
        if permission else "",
        "notice_version": rng.choice(["2026-01", _printable_text(rng, rng.randrange(1, 20))])
        if permission else "",
        "evidence": {rng.choice(EVIDENCE_KEYS): rng.choice(EVIDENCE_VALUES)
                     for _ in range(rng.choice([0, 0, 1, 3]))},
        "idempotency_key": rng.choice(["", IDEMPOTENCY_KEYS[rng.randrange(8)],
                                       _printable_text(rng, rng.randrange(1, 30))]
                                      ) if rng.random() < 0.3 else "",
    }
    collected = (rng.randrange(int(EARLIEST.timestamp()), NOW_S - 3600),
                 rng.randrange(10**9)) if rng.random() < 0.5 else None
    expires = None
    if permission and rng.random() < 0.5:
        start = collected[0] if collected else NOW_S
        expires = (start + rng.randrange(3600, 3 * 365 * 86400), 0)
    return values, {"collected_at": collected, "expires_at": expires}


VALID_WRITE = st.deferred(lambda: st.sampled_from(
    tuple(valid_write(random.Random(i)) for i in range(3000))))
CONSENT_BAD: dict[str, st.SearchStrategy[Any]] = {
    "subject_id": NASTY_TEXT,
    "purpose": BAD_PURPOSE,
    "data_categories": st.one_of(
        st.lists(BAD_CATEGORY, min_size=1, max_size=3),
        st.lists(CATEGORY, min_size=1, max_size=3).map(lambda c: [*c, c[0]]),
        st.builds(lambda c, n: [c] * n, CATEGORY, st.sampled_from([2, 65, 2000])),
        # up to and past the 64-entry limit, no duplicates
        st.builds(lambda n: _LIVE["categories"][:n], st.integers(60, 88))),
    "action": BAD_ENUM,
    "explicit": st.just(True),
    "jurisdiction": BAD_JURISDICTION,
    "collected_at": TIMESTAMPS,
    "expires_at": TIMESTAMPS,
    "source": NASTY_TEXT,
    "notice_version": NASTY_TEXT,
    "method": BAD_ENUM,
    "evidence": st.one_of(
        st.dictionaries(NASTY_TEXT, NASTY_TEXT, min_size=1, max_size=3),
        st.sampled_from([
            huge_map(MAX_EVIDENCE + 1, "k", "v"), huge_map(MAX_EVIDENCE, "k", ""),
            huge_map(3000, "k", "v"), {"ip": "v" * MAX_EVIDENCE_VALUE},
            {"ip": "v" * (MAX_EVIDENCE_VALUE + 1)}, {"ip": "v" * 10_240}, {"ip\n": "x"},
            {"ip ": "x"}, {"ip\x00": "x"}, {"ip=": "x"}, {"\u00e9": "x"}, {"k" * 64: "x"},
            {"k" * 65: "x"}, {"_ip": "1"}, {"-": "1"}, {"": "1"}, {"bad key": "1"}])),
    "idempotency_key": NASTY_TEXT,
}
CONSENT_CORRUPT = corruptions(CONSENT_FIELDS, clean=90)


@st.composite
def consent_requests(draw: st.DrawFn) -> consent_pb2.RecordConsentRequest:
    """A valid write with none, some or all of its fields replaced by malformed values."""
    base, base_times = draw(VALID_WRITE)
    values, times = dict(base), dict(base_times)
    for name in draw(CONSENT_CORRUPT):
        if name in times:
            times[name] = draw(CONSENT_BAD[name])
        else:
            values[name] = draw(CONSENT_BAD[name])
    req = consent_pb2.RecordConsentRequest(**values)
    for name, parts in times.items():
        set_ts(req, name, parts)
    return req


def several(strategy: st.SearchStrategy[Any], n: int) -> st.SearchStrategy[list[Any]]:
    """`n` requests per example (Hypothesis' own cost is per example)."""
    return st.lists(strategy, min_size=n, max_size=n)


# -- the fuzz: writes first, so that the decisions rest on consent records ---------------------


def write_all(fuzz: Fuzz, reqs: Sequence[consent_pb2.RecordConsentRequest]) -> None:
    """Send writes together (no two with the same idempotency key) and judge them: each
    by the oracle, and together by the ledger, which must have grown by exactly the new
    records, each under its own position."""
    calls = []
    earlier = []
    for req in reqs:
        exp = consent_expect(req, fuzz.taxonomy, datetime.now(UTC))
        seen = fuzz.idempotency.get(req.idempotency_key) if req.idempotency_key else None
        if seen is not None and seen[0] != consent_identity(req):  # used for another write
            exp = Expect(exp.must or frozenset({"idempotency_key"}),
                         exp.may | {"idempotency_key"})
        earlier.append(seen)
        calls.append((req, exp, secrets_of(
            req.subject_id, req.source, req.notice_version, req.purpose, req.idempotency_key,
            *req.data_categories[:50], *list(req.evidence)[:50])))
    before = fuzz.watermark
    new: list[int] = []
    for req, seen, resp in zip(reqs, earlier, call_all(
            fuzz, "RecordConsent", fuzz.s.consent.RecordConsent, calls), strict=True):
        if resp is None:
            continue
        token = (resp.record_id, resp.consistency_token)
        if seen is not None:
            assert token == seen[1], "an idempotent retry got another response"
            continue
        new.append(int(resp.consistency_token))
        if req.idempotency_key:
            fuzz.idempotency[req.idempotency_key] = (consent_identity(req), token)
    assert sorted(new) == list(range(before + 1, fuzz.watermark + 1)), (
        "the ledger grew by other than the accepted writes")
    fuzz.writes += len(new)


@given(reqs=several(consent_requests(), 16))
@_settings(175)
def test_record_consent(fuzz: Fuzz, reqs: list[consent_pb2.RecordConsentRequest]) -> None:
    fuzz.done.add("RecordConsent")
    keys: set[str] = set()
    together, alone = [], []
    for req in reqs:  # a key's second use must see its first
        key = req.idempotency_key
        (alone if key and key in keys else together).append(req)
        keys.add(key)
    write_all(fuzz, together)
    for req in alone:
        write_all(fuzz, [req])


BIRTH_DATES = st.one_of(
    st.just(""),
    st.dates(date(1900, 1, 1), date.today() - timedelta(days=2)).map(date.isoformat),
    st.dates().map(date.isoformat),
    st.dates().map(lambda d: d.strftime("%d/%m/%Y")),
    st.sampled_from(["2010-13-01", "2010-02-30", "2010-00-10", "0000-01-01", "1899-12-31",
                     "1900-01-01", "2999-01-01", "20100101", "2010-1-1", "2010-01-01T00:00",
                     "2010-01-01 ", " 2010-01-01", "2010/01/01", "10-01-2010", "2010-W01-1",
                     "2010-W53-7", "2010-001", "\uff12\uff10\uff11\uff10-01-01",
                     "2010-01-0\u0661", "+2010-01-01", "-2010-01-01", "2010-01-01Z",
                     "1e3-01-01", "2010-02-29", "2012-02-29", "9999-12-31", "2010-01-01\n"]),
    NASTY_TEXT,
)
UPSERTS = st.tuples(VALID_SUBJECT | NASTY_TEXT, VALID_JURISDICTION | BAD_JURISDICTION,
                    BIRTH_DATES, UNKNOWN_FIELDS)


@given(upserts=several(UPSERTS, 16))
@_settings(50)
def test_upsert_subject(fuzz: Fuzz, upserts: list[tuple[str, str, str, bytes]]) -> None:
    """With unknown fields appended on the wire (they must be ignored)."""
    fuzz.done.add("UpsertSubject")
    raw = fuzz.s.channel.unary_unary(
        "/consentauthz.v1.ConsentService/UpsertSubject", request_serializer=None,
        response_deserializer=consent_pb2.UpsertSubjectResponse.FromString)
    calls = []
    for subject, jur, birth, extra in upserts:
        must: set[str] = set()
        may: set[str] = set()
        if not subject_ok(subject):
            must.add("subject_id")
        jurisdiction(jur, must, may)
        birth_date(birth, datetime.now(UTC).date(), must, may)
        req = consent_pb2.UpsertSubjectRequest(subject_id=subject, jurisdiction=jur,
                                               birth_date=birth)
        calls.append((req.SerializeToString() + extra, expect(must, may),
                      secrets_of(subject, birth)))
    before = fuzz.watermark
    new = [int(r.consistency_token) for r in call_all(fuzz, "UpsertSubject", raw, calls)
           if r is not None]
    assert sorted(new) == list(range(before + 1, fuzz.watermark + 1))
    fuzz.writes += len(new)


@given(reqs=several(check_requests(), 16))
@_settings(200)
def test_check(fuzz: Fuzz, reqs: list[decision_pb2.CheckRequest]) -> None:
    fuzz.done.add("Check")
    responses = call_all(fuzz, "Check", fuzz.s.decisions.Check, [
        (req, check_expect(req, fuzz.taxonomy, fuzz.watermark),
         secrets_of(req.subject_id, req.purpose, req.data_category,
                    *list(req.context)[:50], *list(req.context.values())[:50]))
        for req in reqs])
    for req, resp in zip(reqs, responses, strict=True):
        if resp is not None:
            _check_response(fuzz, req, resp)


@given(extras=several(UNKNOWN_FIELDS, 8))
@_settings(13)
def test_get_checkpoint(fuzz: Fuzz, extras: list[bytes]) -> None:
    """GetCheckpointRequest has no fields: every field on the wire is unknown."""
    fuzz.done.add("GetCheckpoint")
    raw = fuzz.s.channel.unary_unary(
        "/consentauthz.v1.AuditService/GetCheckpoint", request_serializer=None,
        response_deserializer=audit_pb2.Checkpoint.FromString)
    for extra in extras:
        resp = call(fuzz, "GetCheckpoint", raw, extra, expect(set()))
        assert resp.sequence == resp.count == fuzz.decided
        assert len(resp.entry_hash) == 64
        if len(fuzz.checkpoints) < 50:
            fuzz.checkpoints.append(resp)


@given(extras=several(UNKNOWN_FIELDS, 8))
@_settings(13)
def test_policy_get_status(fuzz: Fuzz, extras: list[bytes]) -> None:
    fuzz.done.add("GetStatus")
    raw = fuzz.s.channel.unary_unary(
        "/consentauthz.v1.PolicyService/GetStatus", request_serializer=None,
        response_deserializer=policy_pb2.PolicyStatus.FromString)
    for extra in extras:
        resp = call(fuzz, "GetStatus", raw, extra, expect(set()))
        assert resp.policy_version == fuzz.s.app.policy().version and resp.rule_count > 0


CHECKPOINT = st.one_of(
    st.just(None),  # a real one, taken earlier in the run
    st.tuples(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 50_000)),
              st.one_of(st.text(st.sampled_from("0123456789abcdef"), min_size=64, max_size=64),
                        st.text(min_size=64, max_size=64), NASTY_TEXT),
              st.integers(-(2**63), 2**63 - 1), TIMESTAMPS))


@given(held=st.lists(CHECKPOINT, max_size=5), index=st.integers(0, 10**6))
@_settings(20)
def test_verify_chains(fuzz: Fuzz, held: list[Any], index: int) -> None:
    """Held checkpoints: real ones verify, fabricated ones are refused or reported."""
    fuzz.done.add("VerifyChains")
    req = audit_pb2.VerifyChainsRequest()
    must: set[str] = set()
    may: set[str] = set()
    fabricated = False
    for spec in held:
        cp = req.checkpoints.add()
        if spec is None:
            if fuzz.checkpoints:
                cp.CopyFrom(fuzz.checkpoints[index % len(fuzz.checkpoints)])
            else:
                cp.entry_hash = "0" * 64  # the genesis anchor of an empty log
            continue
        fabricated = True
        cp.sequence, cp.entry_hash, cp.count = spec[0], spec[1], spec[2]
        set_ts(cp, "time", spec[3])
        if cp.sequence < 0 or len(cp.entry_hash) != 64:
            must.add("checkpoints")
        if spec[3] is not None and when(spec[3]) is None:
            # checkpoints[i].time; plain `time` from the servicer's one-by-one conversion
            must.add("checkpoints")
            may.add("time")
    resp = call(fuzz, "VerifyChains", fuzz.s.audit.VerifyChains, req,
                expect(must, may))
    if resp is not None:
        assert [c.name for c in resp.chains] == ["decision log", "consent ledger"]
        if not fabricated:
            assert all(c.ok for c in resp.chains), list(resp.chains)
        assert resp.chains[1].ok, resp.chains[1]


def _batch(fz: Fuzz, items: list[decision_pb2.CheckRequest]) -> None:
    req = decision_pb2.BatchCheckRequest(items=items)
    exps = [check_expect(item, fz.taxonomy, fz.watermark) for item in items]
    # An item past the ledger head fails in its own slot; the rest are answered.
    exp = expect({"items"}) if not 0 < len(items) <= MAX_BATCH else expect(set())
    fz.batch_items += len(items)
    resp = call(fz, "BatchCheck", fz.s.decisions.BatchCheck, req, exp,
                secrets_of(*{i.subject_id for i in items[:50]}))
    if resp is None:
        return
    assert len(resp.results) == len(items)
    codes = {c.value[0]: c for c in grpc.StatusCode}
    for i, (item, e, slot) in enumerate(zip(items, exps, resp.results, strict=True)):
        if slot.WhichOneof("result") == "response":
            assert not e.must, f"items[{i}] with bad {sorted(e.must)} was decided"
            assert not e.ahead, f"items[{i}] was decided past the ledger head"
            _check_response(fz, item, slot.response)
        else:
            assert slot.WhichOneof("result") == "error", f"items[{i}] has no result"
            _judge_error(f"BatchCheck items[{i}]", codes[slot.error.code], slot.error.message,
                         status_violations(slot.error), e, secrets_of(item.subject_id),
                         prefix=f"items[{i}].")
            assert slot.error.code in (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                       grpc.StatusCode.UNAVAILABLE.value[0]), slot.error


@given(items=st.lists(check_requests(), min_size=1, max_size=10))
@_settings(400)
def test_batch_check(fuzz: Fuzz, items: list[decision_pb2.CheckRequest]) -> None:
    fuzz.done.add("BatchCheck")
    _batch(fuzz, items)


@given(size=st.sampled_from([0, 1, 2, 999, 1000, 1001, 1001, 1500]),
       templates=st.lists(check_requests(short=True), min_size=1, max_size=6),
       spread=st.booleans())
@_settings(14)
def test_batch_check_sizes(fuzz: Fuzz, size: int, templates: list[decision_pb2.CheckRequest],
                           spread: bool) -> None:
    """Batches at and around the limit; big batches repeat a few generated items."""
    fuzz.done.add("BatchCheckSizes")
    items = []
    for i in range(size):
        item = decision_pb2.CheckRequest()
        item.CopyFrom(templates[i % len(templates)])
        if spread and subject_ok(item.subject_id):
            item.subject_id = POOL[i % len(POOL)]
        items.append(item)
    _batch(fuzz, items)


TOKENS = st.one_of(VALID_TOKEN, BAD_TOKEN, st.integers(0, 3000).map(str))


@given(reads=several(st.tuples(VALID_SUBJECT | NASTY_TEXT, TOKENS), 16))
@_settings(38)
def test_get_consent_state(fuzz: Fuzz, reads: list[tuple[str, str]]) -> None:
    fuzz.done.add("GetConsentState")
    calls = []
    for subject, token in reads:
        must = set() if subject_ok(subject) else {"subject_id"}
        value = token_value(token)
        if value is None:
            must.add("consistency_token")
        calls.append((consent_pb2.GetConsentStateRequest(subject_id=subject,
                                                         consistency_token=token),
                      expect(must, ahead=value is not None and value > fuzz.watermark),
                      secrets_of(subject)))
    for (_, token), resp in zip(reads, call_all(
            fuzz, "GetConsentState", fuzz.s.consent.GetConsentState, calls), strict=True):
        if resp is not None:
            got = token_value(resp.consistency_token)
            assert got is not None and got >= (token_value(token) or 0)
            assert all(r.record_id for r in resp.records)


PAGE_SIZES = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(
    [0, 1, 2, 100, 1000, 1001, -1, 2**31 - 1, -(2**31)]))


@given(reads=several(st.tuples(VALID_SUBJECT | NASTY_TEXT, PAGE_SIZES, TOKENS), 16))
@_settings(32)
def test_list_consent_events(fuzz: Fuzz, reads: list[tuple[str, int, str]]) -> None:
    fuzz.done.add("ListConsentEvents")
    calls = []
    for subject, size, token in reads:
        must = set() if subject_ok(subject) else {"subject_id"}
        page_expect(size, token, must)
        calls.append((consent_pb2.ListConsentEventsRequest(
            subject_id=subject, page_size=size, page_token=token),
            expect(must), secrets_of(subject)))
    for (_, size, token), resp in zip(reads, call_all(
            fuzz, "ListConsentEvents", fuzz.s.consent.ListConsentEvents, calls), strict=True):
        if resp is not None:
            assert len(resp.events) <= min(size or 100, 1000)
            seqs = [int(e.consistency_token) for e in resp.events]
            assert seqs == sorted(seqs) and all(s > (token_value(token) or 0) for s in seqs)


#: (text, index, typo): the text, or (when the text is "@") a real decision id picked by
#: index, typo 0 leaving it as it is.
DECISION_IDS = st.tuples(
    st.one_of(st.just("@"), st.just("@"), st.just("@"), NASTY_TEXT, st.uuids().map(str),
              st.sampled_from(["x" * 64, "x" * 65, "01" * 32])),
    st.integers(0, 10**6), st.sampled_from([0, 0, 0, 1, 2, 3, 5, 6, 9, 10, 12, 15]))


def pick_id(fz: Fuzz, choice: tuple[str, int, int]) -> str:
    text, index, mutate = choice
    if text != "@":
        return text
    if not fz.decision_ids:
        return "no-decisions-yet"
    real = fz.decision_ids[index % len(fz.decision_ids)]
    return real if mutate == 0 else typo(real, TYPOS[mutate], index, "z")


def id_calls(fz: Fuzz, rpc: str, fn: grpc.UnaryUnaryMultiCallable,
             make: Callable[[str], Any],
             choices: list[tuple[str, int, int]]) -> Iterator[tuple[str, Any]]:
    ids = [pick_id(fz, choice) for choice in choices]
    responses = call_all(fz, rpc, fn, [
        (make(i), decision_id_expect(i, fz.known_ids), secrets_of(i)) for i in ids])
    yield from ((i, resp) for i, resp in zip(ids, responses, strict=True) if resp is not None)


@given(choices=several(DECISION_IDS, 16))
@_settings(32)
def test_get_decision(fuzz: Fuzz, choices: list[tuple[str, int, int]]) -> None:
    fuzz.done.add("GetDecision")
    for decision_id, resp in id_calls(
            fuzz, "GetDecision", fuzz.s.audit.GetDecision,
            lambda i: audit_pb2.GetDecisionRequest(decision_id=i), choices):
        assert resp.decision_id == decision_id and resp.entry_hash
        assert resp.subject_pseudonym.startswith("k1:")


@given(choices=several(DECISION_IDS, 8))
@_settings(32)
def test_replay_decision(fuzz: Fuzz, choices: list[tuple[str, int, int]]) -> None:
    fuzz.done.add("ReplayDecision")
    for decision_id, resp in id_calls(
            fuzz, "ReplayDecision", fuzz.s.audit.ReplayDecision,
            lambda i: audit_pb2.ReplayDecisionRequest(decision_id=i), choices):
        assert resp.record.decision_id == decision_id
        assert resp.confirmed, f"replay of {decision_id} differs: {list(resp.differences)}"


@given(choices=several(DECISION_IDS, 8))
@_settings(32)
def test_explain_decision(fuzz: Fuzz, choices: list[tuple[str, int, int]]) -> None:
    fuzz.done.add("ExplainDecision")
    for decision_id, resp in id_calls(
            fuzz, "ExplainDecision", fuzz.s.audit.ExplainDecision,
            lambda i: audit_pb2.ExplainDecisionRequest(decision_id=i), choices):
        assert resp.record.decision_id == decision_id and resp.explanation
        assert resp.replay_confirmed, list(resp.replay_differences)


QUERIES = st.tuples(
    st.just("") | VALID_SUBJECT | NASTY_TEXT, st.just("") | PURPOSE | NASTY_TEXT,
    st.just("") | CATEGORY | NASTY_TEXT,
    st.sampled_from(["", "NO_CONSENT", "CONSENT_GIVEN"]) | NASTY_TEXT,
    st.sampled_from(["", "anonymous"]) | NASTY_TEXT, st.sampled_from([0, 1, 2]) | BAD_ENUM,
    TIMESTAMPS, TIMESTAMPS, PAGE_SIZES, TOKENS)


@given(queries=several(QUERIES, 16))
@_settings(32)
def test_query_decisions(fuzz: Fuzz, queries: list[tuple[Any, ...]]) -> None:
    fuzz.done.add("QueryDecisions")
    calls = []
    for subject, purpose, category, reason, caller, decision, start, end, size, token in queries:
        must: set[str] = set()
        if subject and not subject_ok(subject):
            must.add("subject_id")
        for name, value in (("purpose", purpose), ("data_category", category),
                            ("reason", reason), ("caller", caller)):
            if len(value) > MAX_KEY:
                must.add(name)
        if decision not in (0, 1, 2):
            must.add("decision")
        start_at, end_at = when(start), when(end)
        if start is not None and start_at is None:
            must.add("start_time")
        if end is not None and end_at is None:
            must.add("end_time")
        if start_at is not None and end_at is not None and end_at <= start_at:
            must.add("end_time")
        page_expect(size, token, must)
        req = audit_pb2.QueryDecisionsRequest(
            subject_id=subject, purpose=purpose, data_category=category, reason=reason,
            caller=caller, decision=decision, page_size=size, page_token=token)
        set_ts(req, "start_time", start)
        set_ts(req, "end_time", end)
        calls.append((req, expect(must), secrets_of(subject, purpose, category, reason, caller)))
    for (req, _, _), resp in zip(calls, call_all(
            fuzz, "QueryDecisions", fuzz.s.audit.QueryDecisions, calls), strict=True):
        if resp is not None:
            purpose, category, reason = req.purpose, req.data_category, req.reason
            assert len(resp.decisions) <= min(req.page_size or 100, 1000)
            for r in resp.decisions:
                assert r.subject_pseudonym.startswith("k1:")
                assert not purpose or r.purpose == purpose
                assert not category or r.data_category == category
                assert not reason or r.reason == reason


@given(subjects=several(VALID_SUBJECT | NASTY_TEXT, 8))
@_settings(15)
def test_get_subject_report(fuzz: Fuzz, subjects: list[str]) -> None:
    fuzz.done.add("GetSubjectReport")
    for resp in call_all(fuzz, "GetSubjectReport", fuzz.s.audit.GetSubjectReport, [
            (audit_pb2.GetSubjectReportRequest(subject_id=subject),
             expect(set() if subject_ok(subject) else {"subject_id"}), secrets_of(subject))
            for subject in subjects]):
        if resp is not None:
            assert resp.decisions == sum(u.allowed + u.denied for u in resp.uses)


@st.composite
def malformed_payloads(draw: st.DrawFn) -> tuple[Any, bytes, bool]:
    """(method, bytes that do not parse as its request, whether a string is bad UTF-8):
    a request with one string field's bytes replaced by random non-UTF-8 bytes of the same
    length, or random bytes."""
    method = draw(st.sampled_from(RPC_METHODS))
    paths = list(string_paths(method.input_type))
    request_class = message_factory.GetMessageClass(method.input_type)
    if paths and draw(st.booleans()):
        msg = request_class()
        set_marker(msg, draw(st.sampled_from(paths)))
        garbage = bytearray(draw(st.binary(min_size=len(MARKER), max_size=len(MARKER))))
        garbage[draw(st.integers(0, len(MARKER) - 1))] = draw(st.sampled_from(
            [0xC0, 0xC1, 0xF5, 0xFF, 0x80, 0xBF]))  # never valid at any position
        return method, msg.SerializeToString().replace(MARKER.encode(), bytes(garbage)), True
    for payload in (draw(st.binary(min_size=1, max_size=120)) + b"\x0a\x7f", b"\x0a\x05ab"):
        try:
            request_class.FromString(payload)
        except pb_message.DecodeError:
            return method, payload, False
    raise AssertionError("unreachable: the last payload is truncated")


@given(payloads=several(malformed_payloads(), 16))
@_settings(40)
def test_malformed_bytes(fuzz: Fuzz, payloads: list[tuple[Any, bytes, bool]]) -> None:
    """Bytes that are no request message, to every RPC of every service: INVALID_ARGUMENT
    on `request`, never INTERNAL (they never reach a servicer, so nothing is written)."""
    fuzz.done.add("MalformedBytes")
    pending = []
    for method, payload, utf8 in payloads:
        raw = fuzz.s.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=None, response_deserializer=None)
        pending.append((method, utf8, raw.future(payload, timeout=60)))
    for method, utf8, future in pending:
        fuzz.calls[method.name] += 1
        with pytest.raises(grpc.RpcError) as err:
            future.result()
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value
        violations = field_violations(err.value)
        assert list(violations) == ["request"], violations
        problem = violations["request"]
        assert problem.startswith(f"not a valid {method.input_type.name}: "), problem
        assert not utf8 or problem.endswith("a string field is not valid UTF-8"), problem


ALL_FUZZ = {"RecordConsent", "UpsertSubject", "Check", "BatchCheck", "BatchCheckSizes",
            "GetConsentState", "ListConsentEvents", "GetDecision", "ReplayDecision",
            "ExplainDecision", "QueryDecisions", "GetSubjectReport", "VerifyChains",
            "GetCheckpoint", "GetStatus", "MalformedBytes"}


def test_server_is_healthy_after_the_fuzz(fuzz: Fuzz) -> None:
    s = fuzz.s
    # Checks carrying GPC for a known Californian record one opt-out per subject (CCPA 11
    # CCR §7025(c)(1)): ledger writes too, beside the accepted consent writes.
    with sqlite3.connect(f"file:{s.data_dir / 'ledger.db'}?mode=ro", uri=True) as db:
        (gpc_writes,) = db.execute(
            "SELECT count(*) FROM ledger WHERE kind = 'consent' "
            "AND json_extract(body, '$.source') = 'gpc'").fetchone()
        (gpc_subjects,) = db.execute(
            "SELECT count(DISTINCT subject) FROM ledger WHERE kind = 'consent' "
            "AND json_extract(body, '$.source') = 'gpc'").fetchone()
    assert gpc_writes == gpc_subjects  # once per subject
    # Exactly the accepted requests were decided and written, and both chains verify.
    assert s.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest()).sequence == fuzz.decided
    assert fuzz.watermark == fuzz.writes + gpc_writes
    chains = s.audit.VerifyChains(audit_pb2.VerifyChainsRequest()).chains
    assert all(c.ok for c in chains), list(chains)
    assert [c.entries for c in chains] == [fuzz.decided, fuzz.writes + gpc_writes]

    # It still decides correctly.
    subject = "after-the-fuzz@example.org"
    assert decision_name(check(s, subject, EMAIL, CONTACT_EMAIL, "DE")) == "DENY"
    token = record(s, subject, "grant", EMAIL).consistency_token
    resp = s.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose=EMAIL, data_category=CONTACT_EMAIL, jurisdiction="DE",
        consistency_token=token))
    assert decision_name(resp) == "ALLOW" and resp.reason == "CONSENT_GIVEN"

    # Unknown purposes and categories never reached the engine's tables.
    compiled = s.app.policy()
    tax = compiled.policy.taxonomy
    for jur, purpose, category in list(compiled._candidates):
        # A mapped code, UNKNOWN, or a regime an unknown jurisdiction is evaluated under:
        # never a caller's string.
        assert jur in compiled.jurisdictions or jur in compiled.regimes, jur
        assert purpose in tax.purposes, purpose
        assert category in tax.categories, category

    grown_mb = (_rss_kb() - fuzz.rss_before_kb) / 1024
    total = sum(fuzz.calls.values())
    print(f"\nfuzz: {total} requests in {time.perf_counter() - fuzz.started:.1f} s "
          f"({fuzz.batch_items} batch items, {fuzz.decided} decisions, {fuzz.writes} ledger "
          f"writes, {len(compiled._candidates)} memo entries, RSS +{grown_mb:.0f} MB): "
          + ", ".join(f"{k} {v}" for k, v in sorted(fuzz.calls.items())))
    assert grown_mb < 300, f"RSS grew by {grown_mb:.0f} MB"
    if fuzz.done >= ALL_FUZZ:
        assert total >= 10_000, fuzz.calls
        assert set(fuzz.calls) >= {"RecordConsent", "UpsertSubject", "Check", "BatchCheck",
                                   "GetConsentState", "ListConsentEvents", "GetDecision",
                                   "ReplayDecision", "ExplainDecision", "QueryDecisions",
                                   "GetSubjectReport", "VerifyChains", "GetCheckpoint",
                                   "GetStatus"}
        assert set(fuzz.calls) >= {m.name for m in RPC_METHODS}  # the malformed bytes


# -- regressions the fuzzer found (now rejected) -------------------------------------------------


@pytest.mark.parametrize("value", ["US-CA\n", "DE\n"])
def test_jurisdiction_with_trailing_newline_is_rejected(fuzz: Fuzz, value: str) -> None:
    for fn, req in (
        (fuzz.s.decisions.Check, decision_pb2.CheckRequest(
            subject_id="alice", purpose=EMAIL, data_category=CONTACT_EMAIL, jurisdiction=value)),
        (fuzz.s.consent.UpsertSubject, consent_pb2.UpsertSubjectRequest(
            subject_id="alice", jurisdiction=value)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            fn(req)
        assert "jurisdiction" in field_violations(err.value)


def test_evidence_key_with_trailing_newline_is_rejected(fuzz: Fuzz) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fuzz.s.consent.RecordConsent(consent_pb2.RecordConsentRequest(
            subject_id="alice", purpose=EMAIL, action=consent_pb2.CONSENT_ACTION_WITHDRAW,
            evidence={"ip\n": "203.0.113.7"}))
    assert "evidence" in field_violations(err.value)


def test_birth_date_in_week_format_is_rejected(fuzz: Fuzz) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fuzz.s.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
            subject_id="alice", birth_date="2010-W01-1"))
    assert "birth_date" in field_violations(err.value)


# -- every bad field in one error ---------------------------------------------------------

_NO_TIME = (MAX_SECONDS + 1, 0)  # no representable time


def _two_bad_fields() -> list[Any]:
    """(rpc, request, the violations it must name): a field the edge cannot convert
    together with fields only the core judges, so both places have to report."""
    consent = consent_pb2.RecordConsentRequest
    bad_action = consent(subject_id="", action=99, purpose=EMAIL, jurisdiction="de",
                         source="web\x00form")
    set_ts(bad_action, "collected_at", _NO_TIME)
    bad_method = consent(subject_id="alice", action=consent_pb2.CONSENT_ACTION_GRANT,
                         purpose="x" * 200, method=42, source="web", notice_version="v1",
                         evidence={"bad key": "1"})
    set_ts(bad_method, "expires_at", (NOW_S + 86_400, -1))
    bad_query = audit_pb2.QueryDecisionsRequest(subject_id="\x00", decision=99,
                                                page_size=-1, page_token="x")
    set_ts(bad_query, "start_time", _NO_TIME)
    bad_checkpoints = audit_pb2.VerifyChainsRequest(checkpoints=[
        audit_pb2.Checkpoint(entry_hash="0" * 10), audit_pb2.Checkpoint(entry_hash="0" * 64)])
    set_ts(bad_checkpoints.checkpoints[1], "time", _NO_TIME)
    return [
        pytest.param("Check", decision_pb2.CheckRequest(
            subject_id="alice", purpose="nope", data_category=CONTACT_EMAIL,
            consistency_token="x"), {"purpose", "consistency_token"}, id="Check"),
        pytest.param("BatchCheck", decision_pb2.BatchCheckRequest(items=[
            decision_pb2.CheckRequest(subject_id="alice", purpose=EMAIL, data_category="x",
                                      jurisdiction="de", consistency_token="-1")]),
            {"items[0].data_category", "items[0].jurisdiction", "items[0].consistency_token"},
            id="BatchCheck"),
        pytest.param("RecordConsent", bad_action,
                     {"action", "subject_id", "jurisdiction", "collected_at", "source"},
                     id="RecordConsent-action"),
        pytest.param("RecordConsent", bad_method,
                     {"method", "expires_at", "purpose", "evidence"}, id="RecordConsent-method"),
        pytest.param("UpsertSubject", consent_pb2.UpsertSubjectRequest(
            subject_id=" ", jurisdiction="Germany", birth_date="2010-W01-1"),
            {"subject_id", "jurisdiction", "birth_date"}, id="UpsertSubject"),
        pytest.param("QueryDecisions", bad_query,
                     {"subject_id", "decision", "start_time", "page_size", "page_token"},
                     id="QueryDecisions"),
        pytest.param("GetConsentState", consent_pb2.GetConsentStateRequest(
            subject_id="", consistency_token="x"), {"subject_id", "consistency_token"},
            id="GetConsentState"),
        pytest.param("ListConsentEvents", consent_pb2.ListConsentEventsRequest(
            subject_id="", page_size=-1, page_token="x"),
            {"subject_id", "page_size", "page_token"}, id="ListConsentEvents",),
        pytest.param("VerifyChains", bad_checkpoints,
                     {"checkpoints[0]", "checkpoints[1].time"}, id="VerifyChains"),
    ]


@pytest.mark.parametrize(("rpc", "request_", "named"), _two_bad_fields())
def test_every_bad_field_is_named(fuzz: Fuzz, rpc: str, request_: pb_message.Message,
                                  named: set[str]) -> None:
    stubs = {"Check": fuzz.s.decisions, "BatchCheck": fuzz.s.decisions,
             "RecordConsent": fuzz.s.consent, "UpsertSubject": fuzz.s.consent,
             "GetConsentState": fuzz.s.consent, "ListConsentEvents": fuzz.s.consent,
             "QueryDecisions": fuzz.s.audit, "VerifyChains": fuzz.s.audit}
    head = fuzz.watermark
    if rpc == "BatchCheck":
        resp = fuzz.s.decisions.BatchCheck(request_)
        assert resp.results[0].WhichOneof("result") == "error"
        fields = status_violations(resp.results[0].error)
    else:
        with pytest.raises(grpc.RpcError) as err:
            getattr(stubs[rpc], rpc)(request_)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        fields = field_violations(err.value)
    assert set(fields) == named, fields
    assert fuzz.watermark == head  # nothing written


def test_a_batch_item_ahead_of_the_ledger_fails_alone(fuzz: Fuzz) -> None:
    ahead = str(fuzz.watermark + 1_000_000)
    resp = fuzz.s.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[
        decision_pb2.CheckRequest(subject_id=POOL[0], purpose=EMAIL,
                                  data_category=CONTACT_EMAIL, jurisdiction="DE"),
        decision_pb2.CheckRequest(subject_id=POOL[1], purpose=EMAIL,
                                  data_category=CONTACT_EMAIL, jurisdiction="DE",
                                  consistency_token=ahead)]))
    first, second = resp.results
    assert first.WhichOneof("result") == "response"
    fuzz.decided += 1
    assert second.WhichOneof("result") == "error"
    assert second.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert second.error.message == AHEAD
