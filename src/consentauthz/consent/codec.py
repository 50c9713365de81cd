"""Consent events and subject state <-> JSON (the form the ledgers store), and the compact
binary form the Redis cache holds."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
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


_ACTION_OF = {a.value: a for a in ConsentAction}
_METHOD_OF = {m.value: m for m in CollectionMethod}


def event_from_dict(d: dict[str, Any]) -> ConsentEvent:
    collected = _parse_ts(d["collected_at"])
    recorded = _parse_ts(d["recorded_at"])
    assert collected is not None and recorded is not None
    return ConsentEvent(
        record_id=d["record_id"],
        sequence=int(d["sequence"]),
        # A dict lookup: the ledger's cache-miss reads decode several events each.
        action=_ACTION_OF.get(d["action"]) or ConsentAction(d["action"]),
        purpose=d["purpose"],
        data_categories=tuple(d["data_categories"]),
        explicit=bool(d["explicit"]),
        method=_METHOD_OF.get(d["method"]) or CollectionMethod(d["method"]),
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
    if p.erased_by:
        d["erased_by"] = p.erased_by
    return d


def profile_from_dict(d: dict[str, Any]) -> SubjectProfile:
    birth = d.get("birth_date")
    return SubjectProfile(jurisdiction=d.get("jurisdiction") or "",
                          birth_date=date.fromisoformat(birth) if birth else None,
                          sealed_birth_date=str(d.get("sealed_birth_date") or ""),
                          erased_at=_parse_ts(d.get("erased_at")),
                          erased_by=str(d.get("erased_by") or ""))


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
# Binary, and no evidence: a decision never reads evidence, and a cache should hold as
# little personal data as it can (the ledger keeps the evidence). Redis keeps one entry per
# subject, so the layout is chosen for size first, and for decoding in few Python steps:
#
#   format byte, then raw DEFLATE (preset dictionary _ZDICT) of
#   1. the byte length of part 2 (varint)
#   2. bytes: kinds (one per event: action * 5 + method, +32 explicit, +64 the record id
#      is a UUID, +128 it has an expiry); strings (one per string: its index in _VOCAB + 1,
#      or 0 for a string stored here); the UUID record ids (16 bytes each); the UTF-8 of
#      the stored strings, one after the other
#   3. unsigned LEB128 varints to the end: event count n, string count, the byte length of
#      each stored string; profile: jurisdiction, birth date (ordinal + 1; 0: none),
#      erased_at (0: none; 1 and a time; 2, a time and the string that erased_by is);
#      then column by column (runs of equal values
#      compress well): record ids that are not UUIDs, sequences (zigzag delta from the
#      previous event's, the first from `version`), purposes, category counts, categories,
#      jurisdictions, sources, notice versions, recorded_at (delta from the previous
#      event's, the first from _EPOCH), collected_at (delta from recorded_at), expires_at
#      of those with one (delta from collected_at)
#   Strings are their position in part 2's strings. Times are signed microseconds, zigzag:
#   2z + 1 for a whole number of seconds z, else 2z for microseconds z.
#
# `sequence` and `version` travel beside it (in the Redis entry's header). Anything that
# changes how bytes are read (this layout, _ACTIONS, _METHODS, _VOCAB, _ZDICT) needs a new
# FORMAT: an entry of another format is a miss (read through and overwritten), never
# misread. tests/unit/test_codec.py pins them.

#: 3: the bytes of 2; the state is projected in event order (projection.PROJECTION_RULES
#: 2), so an entry of 2 (arrival order) must not be served.
FORMAT = 4
_FORMAT_BYTE = bytes([FORMAT])
_MICRO = timedelta(microseconds=1)
#: Timestamps count from here: fewer varint bytes than from 1970 (and signed: zigzag).
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
#: Never reorder, only append (with a new FORMAT): the index is what is stored.
_ACTIONS = (ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT,
            ConsentAction.OPT_OUT_OF_SALE, ConsentAction.OPT_IN_TO_SALE,
            ConsentAction.LIMIT_SENSITIVE)
_METHODS = (CollectionMethod.UNSPECIFIED, CollectionMethod.AFFIRMATIVE,
            CollectionMethod.PRE_TICKED, CollectionMethod.IMPLIED, CollectionMethod.PARENTAL)
_ACTION_INDEX = {a: i for i, a in enumerate(_ACTIONS)}
_METHOD_INDEX = {m: i for i, m in enumerate(_METHODS)}
_KINDS = tuple((a, m) for a in _ACTIONS for m in _METHODS)
_NO_EVIDENCE: Mapping[str, str] = MappingProxyType({})

# What entries are mostly made of: the data uses and categories of fideslang 3.1's default
# taxonomy, this pack's additions, the jurisdictions the pack maps, common sources. Fixed
# per FORMAT, whatever taxonomy is installed: a string outside it is stored in full, so
# nothing depends on it but the size.
_WORDS = """
    analytics analytics.reporting analytics.reporting.ad_performance
    analytics.reporting.campaign_insights analytics.reporting.content_performance
    analytics.reporting.system analytics.reporting.system.performance collect employment
    employment.recruitment essential essential.fraud_detection
    essential.legal_obligation essential.service essential.service.authentication
    essential.service.notifications essential.service.notifications.email
    essential.service.notifications.sms essential.service.operations
    essential.service.operations.improve essential.service.operations.support
    essential.service.payment_processing essential.service.security
    essential.service.upgrades finance functional functional.service
    functional.service.automated_decision functional.service.improve functional.storage
    functional.storage.privacy_preferences marketing marketing.advertising
    marketing.advertising.first_party marketing.advertising.first_party.contextual
    marketing.advertising.first_party.targeted marketing.advertising.frequency_capping
    marketing.advertising.negative_targeting marketing.advertising.profiling
    marketing.advertising.serving marketing.advertising.third_party
    marketing.advertising.third_party.targeted marketing.communications
    marketing.communications.email marketing.communications.sms operations personalize
    personalize.content personalize.content.limited personalize.content.profiled
    personalize.content.profiling personalize.profiling personalize.system sales
    third_party_sharing third_party_sharing.legal_obligation train_ai_system
    system system.authentication system.operations user user.account
    user.account.settings user.account.username user.authorization
    user.authorization.biometric user.authorization.credentials
    user.authorization.password user.behavior user.behavior.browsing_history
    user.behavior.media_consumption user.behavior.purchase_history
    user.behavior.search_history user.biometric user.biometric.fingerprint
    user.biometric.health user.biometric.retinal user.biometric.voice user.childrens
    user.contact user.contact.address user.contact.address.city
    user.contact.address.country user.contact.address.postal_code
    user.contact.address.state user.contact.address.street user.contact.email
    user.contact.fax_number user.contact.organization user.contact.phone_number
    user.contact.url user.content user.content.private user.content.public
    user.content.self_image user.criminal_history user.demographic
    user.demographic.age_range user.demographic.date_of_birth user.demographic.gender
    user.demographic.language user.demographic.marital_status
    user.demographic.philosophical_belief user.demographic.political_opinion
    user.demographic.profile user.demographic.race_ethnicity
    user.demographic.religious_belief user.demographic.sex_life
    user.demographic.sexual_orientation user.demographic.trade_union_membership
    user.device user.device.cookie user.device.cookie_id user.device.device_id
    user.device.ip_address user.financial user.financial.bank_account
    user.financial.credit_card user.government_id user.government_id.birth_certificate
    user.government_id.drivers_license_number user.government_id.immigration
    user.government_id.national_identification_number user.government_id.passport_number
    user.government_id.vehicle_registration user.health_and_medical
    user.health_and_medical.genetic user.health_and_medical.insurance_beneficiary_id
    user.health_and_medical.record_id user.job_title user.location
    user.location.imprecise user.location.precise user.name user.name.first
    user.name.last user.payment user.privacy_preferences user.sensor user.social
    user.telemetry user.unique_id user.unique_id.pseudonymous user.user_sensor
    user.workplace
    AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS
    LI NO GB uk_gdpr US-CA UNKNOWN
    web-form preference-centre mobile-app cookie-banner social-lead-form api import
"""
_VOCAB: tuple[str, ...] = ("", *_WORDS.split())
_VOCAB_CODE = {w: i + 1 for i, w in enumerate(_VOCAB)}
# Strings outside the vocabulary (extension keys, notice versions) still share much with it.
_ZDICT = b"".join(bytes([len(w)]) + w.encode() for w in _VOCAB[1:])
_WBITS = -15  # raw DEFLATE: no zlib header or checksum (the Redis entry is authenticated)
_MAX_STATE = 1 << 20  # decompressed; far above any real subject's state
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def _unzigzag(n: int) -> int:
    return n >> 1 if not n & 1 else -((n + 1) >> 1)


def _put(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("negative varint")
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _us(value: datetime) -> int:
    return (value - _EPOCH) // _MICRO


def _put_time(out: bytearray, us: int) -> None:
    """A signed number of microseconds: in whole seconds when it is (forms and callers
    often send whole seconds), the low bit says which."""
    seconds, rest = divmod(us, 1_000_000)
    _put(out, _zigzag(seconds) * 2 + 1 if not rest else _zigzag(us) * 2)


def _time(n: int) -> int:
    return _unzigzag(n >> 1) * 1_000_000 if n & 1 else _unzigzag(n >> 1)


def _uuid_bytes(record_id: str) -> bytes | None:
    """16 bytes for a UUID in canonical (lower-case, hyphenated) form; None otherwise, so
    decoding always gives back exactly the string that was encoded."""
    if _CANONICAL_UUID.fullmatch(record_id) is None:
        return None
    return bytes.fromhex(record_id.replace("-", ""))


def _varints(data: bytes) -> list[int]:
    """Every varint in `data`, which must hold nothing else."""
    out: list[int] = []
    append = out.append
    value = shift = 0
    for byte in data:
        if byte < 0x80:
            append(value | byte << shift)
            value = shift = 0
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
    if shift:
        raise ValueError("unterminated varint")
    return out


def state_to_bytes(state: SubjectState) -> bytes:
    """The state without its `sequence` and `version` (the caller keeps those)."""
    strings: dict[str, int] = {}
    nums = bytearray()

    def ref(text: str) -> None:
        index = strings.get(text)
        if index is None:
            index = strings[text] = len(strings)
        _put(nums, index)

    p, events = state.profile, state.events
    raw = bytearray()
    uuids = bytearray()
    ref(p.jurisdiction)
    _put(nums, p.birth_date.toordinal() + 1 if p.birth_date is not None else 0)
    if p.erased_at is None:
        nums.append(0)
    else:
        nums.append(2 if p.erased_by else 1)
        _put_time(nums, _us(p.erased_at))
        if p.erased_by:
            ref(p.erased_by)
    for e in events:
        rid = _uuid_bytes(e.record_id)
        raw.append(_ACTION_INDEX[e.action] * 5 + _METHOD_INDEX[e.method]
                   | (32 if e.explicit else 0) | (64 if rid is not None else 0)
                   | (128 if e.expires_at is not None else 0))
        if rid is not None:
            uuids += rid
        else:
            ref(e.record_id)
    prev = state.version
    for e in events:
        _put(nums, _zigzag(prev - e.sequence))
        prev = e.sequence
    for e in events:
        ref(e.purpose)
    for e in events:
        _put(nums, len(e.data_categories))
    for e in events:
        for c in e.data_categories:
            ref(c)
    for e in events:
        ref(e.jurisdiction)
    for e in events:
        ref(e.source)
    for e in events:
        ref(e.notice_version)
    prev = 0
    for e in events:
        recorded = _us(e.recorded_at)
        _put_time(nums, recorded - prev)
        prev = recorded
    for e in events:
        _put_time(nums, _us(e.collected_at) - _us(e.recorded_at))
    for e in events:
        if e.expires_at is not None:
            _put_time(nums, _us(e.expires_at) - _us(e.collected_at))
    head = bytearray()
    _put(head, len(events))
    _put(head, len(strings))
    stored = bytearray()
    for text in strings:  # insertion order is index order
        code = _VOCAB_CODE.get(text, 0)
        raw.append(code)
        if not code:
            utf8 = text.encode()
            _put(head, len(utf8))
            stored += utf8
    raw += uuids
    raw += stored
    out = bytearray()
    _put(out, len(raw))
    packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return _FORMAT_BYTE + packer.compress(bytes(out + raw + head + nums)) + packer.flush()


def state_from_bytes(data: bytes, sequence: int, version: int) -> SubjectState:
    """Raises ValueError for anything state_to_bytes of this FORMAT did not write: the
    caller treats that as a miss."""
    try:
        return _state_from_bytes(data, sequence, version)
    except (StopIteration, IndexError, KeyError, OverflowError, zlib.error) as exc:
        raise ValueError("malformed cached state") from exc


def _state_from_bytes(data: bytes, sequence: int, version: int) -> SubjectState:
    if data[:1] != _FORMAT_BYTE:
        raise ValueError("unknown cached state format")
    unpacker = zlib.decompressobj(_WBITS, _ZDICT)
    b = unpacker.decompress(data[1:], _MAX_STATE)
    if not unpacker.eof or unpacker.unused_data or unpacker.unconsumed_tail:
        raise ValueError("truncated or oversized cached state")
    size = shift = start = 0
    while b[start] >= 0x80:  # part 2's length
        size |= (b[start] & 0x7F) << shift
        shift += 7
        start += 1
    size |= b[start] << shift
    start += 1
    end = start + size
    raw = b[start:end]
    it = iter(_varints(b[end:]))
    nxt = it.__next__
    n, count = nxt(), nxt()
    kinds = raw[:n]
    codes = raw[n:n + count]
    pos = n + count + 16 * sum(1 for k in kinds if k & 64)
    strings = []
    for code in codes:
        if code:
            strings.append(_VOCAB[code - 1])
        else:
            size = nxt()
            strings.append(raw[pos:pos + size].decode())
            pos += size
    if len(kinds) != n or len(codes) != count or pos != len(raw):
        raise ValueError("malformed cached state")
    jurisdiction = strings[nxt()]
    birth = nxt()
    erased_flag = nxt()
    erased = _EPOCH + _MICRO * _time(nxt()) if erased_flag else None
    erased_by = strings[nxt()] if erased_flag == 2 else ""
    profile = SubjectProfile(jurisdiction=jurisdiction,
                             birth_date=date.fromordinal(birth - 1) if birth else None,
                             erased_at=erased, erased_by=erased_by)
    rids = []
    pos = n + count
    for kind in kinds:
        if kind & 64:
            h = raw[pos:pos + 16].hex()
            pos += 16
            rids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        else:
            rids.append(strings[nxt()])
    seqs = []
    seq = version
    for _ in kinds:
        seq -= _unzigzag(nxt())
        seqs.append(seq)
    purposes = [strings[nxt()] for _ in kinds]
    counts = [nxt() for _ in kinds]
    categories = [tuple([strings[nxt()] for _ in range(c)]) for c in counts]
    jurisdictions = [strings[nxt()] for _ in kinds]
    sources = [strings[nxt()] for _ in kinds]
    notices = [strings[nxt()] for _ in kinds]
    recorded = []
    rec_us, rec = 0, _EPOCH
    for _ in kinds:
        delta = _time(nxt())
        if delta:  # events often share timestamps: share the objects too
            rec_us += delta
            rec = _EPOCH + _MICRO * rec_us
        recorded.append(rec)
    collected = []
    for r in recorded:
        delta = _time(nxt())
        collected.append(r + _MICRO * delta if delta else r)
    events = []
    for k, kind in enumerate(kinds):
        action, method = _KINDS[kind & 31]
        expires = collected[k] + _MICRO * _time(nxt()) if kind & 128 else None
        events.append(ConsentEvent(rids[k], seqs[k], action, purposes[k], categories[k],
                                   bool(kind & 32), method, jurisdictions[k], collected[k],
                                   expires, sources[k], notices[k], recorded[k],
                                   _NO_EVIDENCE))
    if next(it, None) is not None:
        raise ValueError("trailing bytes in cached state")
    return SubjectState(profile, tuple(events), sequence, version)
