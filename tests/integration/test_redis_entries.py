"""What the Redis state cache stores per subject, and how it reads what it finds there
(consent/redis_cache.py), against a real redis-server."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import redis

from consentauthz.consent import EntryCipher, RedisStateCache, redis_cache
from consentauthz.consent.codec import FORMAT
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
)
from consentauthz.pseudonym import Pseudonymizer
from tests.redis_server import RedisServer

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PSEUDONYMS = Pseudonymizer(b"p" * 32)
ALICE, BOB = PSEUDONYMS("alice@example.com"), PSEUDONYMS("bob@example.com")
PREFIX = "t:0123456789abcdef:"


def state(version: int, purpose: str = "analytics", sequence: int | None = None
          ) -> SubjectState:
    ev = ConsentEvent(
        record_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", sequence=version,
        action=ConsentAction.GRANT, purpose=purpose, data_categories=("user.contact.email",),
        explicit=False, method=CollectionMethod.AFFIRMATIVE, jurisdiction="DE",
        collected_at=NOW, expires_at=None, source="web-form", notice_version="v1",
        recorded_at=NOW)
    return SubjectState(SubjectProfile("DE"), (ev,), sequence if sequence is not None
                        else version, version)


@pytest.fixture()
def cache(redis_server: RedisServer) -> Iterator[RedisStateCache]:
    c = RedisStateCache(redis_server.url, lambda: NOW, prefix=PREFIX, timeout=1.0,
                        cipher=EntryCipher(b"k" * 32))
    yield c
    c.close()


def test_one_short_key_and_one_small_encrypted_value_per_subject(
        cache: RedisStateCache, redis_server: RedisServer) -> None:
    assert cache.write_through(ALICE, state(1), 1)
    client = redis_server.client()
    key = cache.entry_key(ALICE)
    assert sorted(client.keys("*")) == sorted([cache.head_key, key])
    assert len(key) == len(PREFIX) + len(b"{p0}") + redis_cache.KEY_DIGEST_BYTES
    value = client.get(key)
    assert value is not None and value[0] == FORMAT and len(value) < 130
    for clear in (b"analytics", b"user.contact", b"web-form", ALICE.encode(),
                  ALICE.partition(":")[2].encode()):
        assert clear not in value
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 1 and seen.state == state(1)


def test_an_entry_whose_header_was_altered_is_a_miss(cache: RedisStateCache,
                                                     redis_server: RedisServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert cache.write_through(ALICE, state(300), 300)
    client = redis_server.client()
    key = cache.entry_key(ALICE)
    value = client.get(key)
    assert value is not None
    # The version (a two-byte varint after format byte and generation) is authenticated.
    client.set(key, value[:5] + bytes([value[5] ^ 1]) + value[6:])
    with caplog.at_level(logging.WARNING, "consentauthz.consent"):
        seen = cache.read(ALICE)
    assert seen is not None and seen.position == 300 and seen.state is None
    assert "unreadable consent cache entry" in caplog.text


def test_subjects_that_share_a_key_never_read_each_others_state(
        cache: RedisStateCache, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys keep 80 bits of the pseudonym; make every subject collide.
    monkeypatch.setattr(redis_cache, "KEY_DIGEST_BYTES", 0)
    assert cache.entry_key(ALICE) == cache.entry_key(BOB)
    assert cache.write_through(ALICE, state(5, "analytics"), 5)
    bob = cache.read(BOB)
    assert bob is not None and bob.state is None  # alice's entry does not open for bob
    # Bob's older state does not replace alice's newer entry ...
    assert not cache.populate(BOB, state(3, "marketing", sequence=5), bob, False)
    alice = cache.read(ALICE)
    assert alice is not None and alice.state == state(5, "analytics")
    # ... a newer one does, and then alice misses in turn (never reads bob's).
    assert cache.populate(BOB, state(6, "marketing", sequence=6), bob, True)
    bob, alice = cache.read(BOB), cache.read(ALICE)
    assert bob is not None and bob.state is not None and bob.state.events[0].purpose == "marketing"
    assert alice is not None and alice.state is None


def test_the_script_orders_versions_of_any_size(cache: RedisStateCache) -> None:
    big = 2**40  # a six-byte varint in the entry
    assert cache.populate(ALICE, state(big, sequence=big + 10), None, False)
    assert not cache.populate(ALICE, state(big - 1, sequence=big + 10), None, False)
    seen = cache.read(ALICE)
    assert seen is not None and seen.state is not None and seen.state.version == big
    assert cache.populate(ALICE, state(big + 1, "marketing", sequence=big + 10), None, False)
    seen = cache.read(ALICE)
    assert seen is not None and seen.state is not None and seen.state.version == big + 1


def test_a_head_of_another_form_is_never_trusted(cache: RedisStateCache,
                                                 redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert cache.write_through(ALICE, state(7), 7)
    # A release before format 2 (`<8 hex>:<position>`), and other damage.
    for foreign in (b"0a0b0c0d:7", b"1.0a0b0c0d:7", b"bench0:7", b"2.0123456789:7",
                    b"2.zzzzzzzz:7", b"2.01234567:x", b""):
        client.set(cache.head_key, foreign)
        seen = cache.read(ALICE)
        assert seen is not None and seen.position == -1 and seen.state is None
    # A populate replaces it with a new generation, in which only its own entry exists.
    assert cache.populate(ALICE, state(7, sequence=9), cache.read(ALICE), False)
    head = client.get(cache.head_key)
    assert head is not None and head.endswith(b":9") and len(head.split(b":")[0]) == 10
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 9 and seen.state == state(7, sequence=9)


def test_an_entry_of_the_previous_layout_is_a_miss_and_is_replaced(
        cache: RedisStateCache, redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set(cache.head_key, f"{FORMAT}.0a0b0c0d:12".encode())
    client.set(cache.entry_key(ALICE), b"0a0b0c0d:12:12:" + b"\x00" * 60)  # format 1
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 12 and seen.state is None
    assert cache.populate(ALICE, state(12), seen, False)
    again = cache.read(ALICE)
    assert again is not None and again.state == state(12)


def test_entries_of_format_2_projected_in_arrival_order_are_never_served(
        cache: RedisStateCache, redis_server: RedisServer) -> None:
    """Format 2 had the same bytes, but its states were projected in arrival order (a late
    grant could displace a later withdrawal): after the upgrade its heads are no heads."""
    assert cache.write_through(ALICE, state(12), 12)
    client = redis_server.client()
    head = client.get(cache.head_key)
    entry = client.get(cache.entry_key(ALICE))
    assert head is not None and entry is not None
    client.set(cache.head_key, b"2." + head.split(b".", 1)[1])
    client.set(cache.entry_key(ALICE), bytes([2]) + entry[1:])
    seen = cache.read(ALICE)
    assert seen is None or seen.state is None


def test_a_write_after_a_gap_starts_a_new_generation(cache: RedisStateCache) -> None:
    assert cache.write_through(ALICE, state(1), 1)
    # Write 2 (another subject's, or another release's) never reached this head.
    assert cache.write_through(BOB, state(3), 3)
    alice, bob = cache.read(ALICE), cache.read(BOB)
    assert alice is not None and alice.position == 3 and alice.state is None
    assert bob is not None and bob.state == state(3)


def test_populate_soon_populates_off_the_callers_thread(cache: RedisStateCache) -> None:
    cache.populate_soon(ALICE, state(2, sequence=4), None, False)
    assert cache.wait_populated()
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 4 and seen.state == state(2, sequence=4)


def test_populate_soon_drops_what_it_cannot_queue_and_stops_with_the_cache(
        redis_server: RedisServer) -> None:
    c = RedisStateCache(redis_server.url, lambda: NOW, prefix=PREFIX, timeout=1.0,
                        cipher=EntryCipher(b"k" * 32))
    c._populates = queue.Queue(1)
    c._populates.put_nowait((BOB, state(1), None, False, None))  # no thread running yet
    c.populate_soon(ALICE, state(2), None, False)
    assert c.dropped_populates == 1
    c.close()
    c.populate_soon(ALICE, state(2), None, False)  # after close: nothing, no error
    assert redis_server.client().get(c.entry_key(ALICE)) is None


def test_a_read_that_timed_out_never_hands_its_late_reply_to_the_next_read(
        redis_server: RedisServer) -> None:
    c = RedisStateCache(redis_server.url, lambda: NOW, prefix=PREFIX, timeout=0.05,
                        retry_after=0.01, cipher=EntryCipher(b"k" * 32))
    try:
        assert c.write_through(ALICE, state(1, "analytics"), 1)
        assert c.write_through(BOB, state(2, "marketing"), 2)
        redis_server.pause()
        try:
            assert c.read(ALICE) is None  # timed out: Redis answers it once resumed
        finally:
            redis_server.resume()
        time.sleep(0.05)  # past the breaker
        bob = c.read(BOB)
        assert bob is not None and bob.state is not None
        assert bob.state.events[0].purpose == "marketing"
        alice = c.read(ALICE)
        assert alice is not None and alice.state == state(1, "analytics", sequence=2)
    finally:
        c.close()


def test_after_a_restart_no_connection_fails_once_more(redis_server: RedisServer) -> None:
    c = RedisStateCache(redis_server.url, lambda: NOW, prefix=PREFIX, timeout=0.5,
                        retry_after=0.05, cipher=EntryCipher(b"k" * 32))
    other = ThreadPoolExecutor(1)  # one more thread, with a read connection of its own
    try:
        assert c.populate(ALICE, state(1), None, False)
        assert c.read(ALICE) is not None
        assert other.submit(c.read, ALICE).result() is not None
        redis_server.kill()
        redis_server.start()  # back, and empty, between two reads
        # Each connection made before is found closed and replaced, not tried and failed
        # on (which would open the breaker: no Redis for a while).
        seen = other.submit(c.read, ALICE).result()
        assert seen is not None and seen.position == -1
        seen = c.read(ALICE)
        assert seen is not None and seen.position == -1
        assert c.populate(ALICE, state(1, sequence=3), seen, False)
        seen = other.submit(c.read, ALICE).result()
        assert seen is not None and seen.state == state(1, sequence=3)
        assert c.available
    finally:
        other.shutdown()
        c.close()


# -- fences: the ledger went back or was replaced ----------------------------------------


def test_a_fence_starts_a_generation_no_old_entry_belongs_to(cache: RedisStateCache) -> None:
    assert cache.write_through(ALICE, state(6), 6)
    cache.fence(5)  # the ledger is back at 5: the entry at 6 belongs to what it lost
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 5 and seen.state is None


def test_what_began_before_a_fence_is_never_written_after_it(cache: RedisStateCache) -> None:
    before = cache.epoch
    cache.fence(5)
    assert not cache.populate(ALICE, state(6), None, False, before)
    assert not cache.write_through(BOB, state(6), 6, before)
    cache.populate_soon(ALICE, state(6), None, False, before)
    assert cache.wait_populated()
    for subject in (ALICE, BOB):
        seen = cache.read(subject)
        assert seen is not None and seen.position == 5 and seen.state is None
    assert cache.write_through(BOB, state(6), 6, cache.epoch)  # 6 follows the fence's 5
    seen = cache.read(BOB)
    assert seen is not None and seen.state == state(6)


def test_a_fence_to_another_ledgers_prefix_moves_every_name(cache: RedisStateCache) -> None:
    assert cache.write_through(ALICE, state(3), 3)
    cache.fence(7, "t:fedcba9876543210:")
    assert cache.head_key == b"t:fedcba9876543210:{p0}head"
    assert cache.channel == b"t:fedcba9876543210:inv"
    assert cache.entry_key(ALICE).startswith(b"t:fedcba9876543210:")
    seen = cache.read(ALICE)
    assert seen is not None and seen.position == 7 and seen.state is None
    assert cache.write_through(ALICE, state(8), 8, cache.epoch)
    seen = cache.read(ALICE)
    assert seen is not None and seen.state == state(8)


def test_nothing_is_read_until_a_fence_is_in_redis(redis_server: RedisServer) -> None:
    c = RedisStateCache(redis_server.url, lambda: NOW, prefix=PREFIX, timeout=1.0,
                        retry_after=0.0, cipher=EntryCipher(b"k" * 32))
    try:
        assert c.write_through(ALICE, state(6), 6)
        real_set = c._client.set

        def down(*args: object, **kwargs: object) -> None:
            raise redis.ConnectionError("no route to redis")

        c._client.set = down  # type: ignore[method-assign]
        c.fence(5)
        assert c.read(ALICE) is None  # not the old generation, though Redis answers reads
        assert not c.populate(ALICE, state(5), None, False, c.epoch)
        c._client.set = real_set  # type: ignore[method-assign]
        seen = c.read(ALICE)  # writes the fence first
        assert seen is not None and seen.position == 5 and seen.state is None
    finally:
        c.close()
