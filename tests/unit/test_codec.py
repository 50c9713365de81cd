"""The compact binary form of subject state that Redis caches (consent/codec.py)."""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentauthz.consent import codec
from consentauthz.consent.codec import FORMAT, state_from_bytes, state_to_bytes
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
    new_id,
)

NOW = datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=UTC)

times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.just(UTC))
texts = st.one_of(st.sampled_from(codec._VOCAB), st.text(max_size=40))
record_ids = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                       st.uuids().map(lambda u: u.hex), st.text(max_size=40))
events = st.builds(
    ConsentEvent, record_id=record_ids, sequence=st.integers(0, 2**62),
    action=st.sampled_from(ConsentAction), purpose=texts,
    data_categories=st.lists(texts, max_size=4).map(tuple), explicit=st.booleans(),
    method=st.sampled_from(CollectionMethod), jurisdiction=texts, collected_at=times,
    expires_at=st.none() | times, source=texts, notice_version=texts, recorded_at=times)
states = st.builds(
    SubjectState,
    profile=st.builds(SubjectProfile, jurisdiction=texts,
                      birth_date=st.none() | st.dates(min_value=date(1, 1, 1)),
                      erased_at=st.none() | times, erased_by=texts)
    # Only an erasure says who asked for it.
    .map(lambda p: p if p.erased_at else replace(p, erased_by="")),
    events=st.lists(events, max_size=12).map(tuple), sequence=st.integers(0, 2**62),
    version=st.integers(0, 2**62))


@settings(max_examples=300, deadline=None)
@given(state=states)
def test_every_state_comes_back_exactly(state: SubjectState) -> None:
    back = state_from_bytes(state_to_bytes(state), 77, state.version)
    assert back == replace(state, sequence=77)
    assert [e.record_id for e in back.events] == [e.record_id for e in state.events]


def five_events(record_id: str = "") -> SubjectState:
    """A subject as the benchmarks have them: a jurisdiction and five choices."""
    def ev(k: int, action: ConsentAction, purpose: str, categories: tuple[str, ...] = (),
           method: CollectionMethod = CollectionMethod.UNSPECIFIED) -> ConsentEvent:
        return ConsentEvent(
            record_id=record_id or new_id(), sequence=6_000_000 + k, action=action,
            purpose=purpose, data_categories=categories, explicit=False, method=method,
            jurisdiction="DE", collected_at=NOW - timedelta(days=40 - k),
            expires_at=NOW + timedelta(days=700), source="web-form", notice_version="2026-01",
            recorded_at=NOW - timedelta(days=40 - k, seconds=-1))
    aff = CollectionMethod.AFFIRMATIVE
    return SubjectState(
        profile=SubjectProfile(jurisdiction="DE", birth_date=date(2012, 3, 1)),
        events=(ev(1, ConsentAction.GRANT, "marketing.communications.email",
                   ("user.contact.email",), aff),
                ev(2, ConsentAction.GRANT, "analytics", (), aff),
                ev(3, ConsentAction.WITHDRAW, "personalize"),
                ev(4, ConsentAction.OBJECT, "marketing.advertising"),
                ev(5, ConsentAction.OPT_OUT_OF_SALE, "")),
        sequence=6_000_010, version=6_000_005)


def test_five_events_with_random_ids_and_times_fit_in_160_bytes() -> None:
    # What keeps Redis at a few hundred bytes per subject: this state took ~390 bytes as
    # compressed JSON (format 1), ~155 now, most of it the random bits of the record ids
    # and the microseconds of the times.
    state = five_events()
    assert len(state_to_bytes(state)) <= 160
    assert state_from_bytes(state_to_bytes(state), 1, state.version).events == state.events


def test_evidence_and_sealed_values_are_never_in_the_cached_form() -> None:
    state = five_events()
    secret = replace(state, profile=replace(state.profile, sealed_birth_date="v1:SEALED"),
                     events=tuple(replace(e, evidence={"ip": "203.0.113.77"},
                                          sealed_evidence="v1:SEALEDEVIDENCE")
                                  for e in state.events))
    data = state_to_bytes(secret)
    assert data == state_to_bytes(state)
    plain = zlib.decompressobj(codec._WBITS, codec._ZDICT).decompress(data[1:])
    assert b"203.0.113.77" not in plain and b"SEALED" not in plain


def test_another_format_is_refused_not_misread() -> None:
    data = state_to_bytes(five_events())
    for other in (b"z" + data[1:], b"j" + b"[]", bytes([FORMAT + 1]) + data[1:], b""):
        with pytest.raises(ValueError):
            state_from_bytes(other, 1, 1)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 200), flip=st.integers(0, 200), bit=st.integers(0, 7))
def test_damaged_bytes_raise_value_error_and_nothing_else(cut: int, flip: int,
                                                          bit: int) -> None:
    # (A damaged entry never reaches the codec in Redis: the entry cipher refuses it first.
    # Without one, whatever the bytes, the reader gets a ValueError: a miss.)
    data = bytearray(state_to_bytes(five_events()))
    if flip < len(data):
        data[flip] ^= 1 << bit
    for attempt in (bytes(data), bytes(data[:cut])):
        with contextlib.suppress(ValueError):
            state_from_bytes(attempt, 1, 6_000_005)


def test_the_tables_are_complete() -> None:
    assert set(codec._ACTIONS) == set(ConsentAction)
    assert set(codec._METHODS) == set(CollectionMethod)
    assert len(codec._VOCAB) == len(set(codec._VOCAB)) < 256


def test_the_format_byte_pins_the_tables_and_the_dictionary() -> None:
    # Changing any of these changes how stored bytes read: an entry written by another
    # release would decode to something else. Give the change a new FORMAT, then update
    # the digest here.
    digest = hashlib.sha256(repr((codec._ACTIONS, codec._METHODS, codec._VOCAB,
                                  codec._EPOCH, codec._WBITS)).encode()
                            + codec._ZDICT).hexdigest()
    # FORMAT 3 has the tables of 2 (it changed what a state means, not how it reads); 4
    # too (it added who erased a subject to the profile).
    assert (FORMAT, digest) == (4, PINNED)


PINNED = "5e04097df6cc68b3e356d2616d79fb53145136e769ce456e88c65391cdd93554"
