"""The consent-state cache every replica shares (Redis), and its invalidation channel.

Layout (PREFIX defaults to `ca:`):
- `PREFIX head` = `<generation>:<position>`: every entry of this generation is current as
  of ledger position `position`. Only ledger writers move it, one at a time, in ledger
  order (they hold the ledger's global write order while they do, `Ledger.exclusive`).
- `PREFIX s:<key id>:<20-byte digest>` = `<generation>:<as of>:<version>:<state>`: one
  subject's state (consent/codec.py's compact form, no evidence), current as of ledger
  position `as of` and, while its generation lasts, as of the head too. The subject is its
  keyed HMAC pseudonym, fixed length: no subject id can collide with another's key.
- channel `PREFIX inv`: `<sequence>:<pseudonym>` for each write, published by the same
  script that writes it through, so replicas receive them in ledger order.

A write whose write-through fails (Redis down, a timeout) leaves Redis behind the ledger.
The next write-through sees `position < sequence - 1` and starts a new generation: the
old entries become unreachable at once and expire by their TTL. Losing Redis therefore
costs cache hits, never a stale answer. A reader that finds Redis behind the freshness
floor, or no head at all (Redis restarted empty), starts the new generation itself when it
repopulates an entry from the ledger.

Every call has a short timeout; a failure opens a breaker for `retry_after` seconds so a
dead Redis costs one timeout, not one per request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from ..domain import SubjectState
from .cache import LocalCache
from .codec import state_from_bytes, state_to_bytes

log = logging.getLogger("consentauthz.consent")

# KEYS: head, entry. ARGV: new generation, sequence, state, ttl ms, channel, message.
_WRITE_THROUGH = """
local head = redis.call('GET', KEYS[1])
local seq = tonumber(ARGV[2])
local gen, pos
if head then
  gen, pos = string.match(head, '^(%w+):(%d+)$')
  pos = tonumber(pos)
end
-- Behind: Redis missed writes. Ahead: a late command after a timeout, or a ledger that
-- went back. Either way the old generation is not to be trusted: start a new one.
if (not head) or (not pos) or pos < seq - 1 or pos > seq then
  gen = ARGV[1]
end
redis.call('SET', KEYS[1], gen .. ':' .. seq)
redis.call('SET', KEYS[2], gen .. ':' .. seq .. ':' .. seq .. ':' .. ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: head, entry. ARGV: head seen (or ''), bump (1/0), new generation, ledger position
# the state is current as of, subject version, state, ttl ms.
_POPULATE = """
local head = redis.call('GET', KEYS[1])
if (not head) or (ARGV[2] == '1' and head == ARGV[1]) then
  head = ARGV[3] .. ':' .. ARGV[4]
  redis.call('SET', KEYS[1], head)
end
local gen, pos = string.match(head, '^(%w+):(%d+)$')
if (not pos) or tonumber(pos) > tonumber(ARGV[4]) then
  return 0
end
local current = redis.call('GET', KEYS[2])
if current then
  local cgen, casof, cver = string.match(current, '^(%w+):(%d+):(%d+):')
  if cgen == gen and tonumber(cver) > tonumber(ARGV[5]) then
    return 0
  end
end
redis.call('SET', KEYS[2], gen .. ':' .. ARGV[4] .. ':' .. ARGV[5] .. ':' .. ARGV[6],
           'PX', ARGV[7])
return 1
"""


@dataclass(frozen=True, slots=True)
class RedisRead:
    #: The head value as read ('' when absent): lets a repopulation replace exactly it.
    head: str
    #: Every entry of the head's generation is current as of this position (-1: no head).
    position: int
    #: The subject's cached state, its sequence the position it is known current as of;
    #: None when not cached (or unreadable: a miss, repaired by the next populate).
    state: SubjectState | None


class EntryCipher:
    """Entries are encrypted and authenticated (AES-256-GCM, the entry's key as associated
    data) under a key derived from the master key: a Redis dump or snapshot holds no birth
    date in the clear, and an entry cannot be forged or moved to another subject by whoever
    can write to Redis (old entries can still be replayed: docs/security.md)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, where: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, where)

    def open(self, sealed: bytes, where: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], where)


def _decode_entry(raw: bytes, gen: str, position: int, where: bytes,
                  cipher: EntryCipher | None) -> SubjectState | None:
    """An entry of generation `gen`; None for another generation or anything unreadable
    (treated as a miss: the ledger answers and the next populate overwrites it)."""
    try:
        egen, asof, _version, blob = raw.split(b":", 3)
        if egen.decode() != gen:
            return None
        if cipher is not None:
            blob = cipher.open(blob, where)
        # Current as of its own position, and as of the head while its generation lasts.
        return state_from_bytes(blob, max(position, int(asof)))
    except (ValueError, TypeError, KeyError, IndexError, zlib.error, InvalidTag):
        # Any corruption is a miss: never an error, never an answer.
        log.warning("ignored an unreadable consent cache entry")
        return None


def _parse_head(raw: bytes | None) -> tuple[str, str, int]:
    if raw is None:
        return "", "", -1
    text = raw.decode()
    gen, _, pos = text.partition(":")
    return text, gen, int(pos) if pos.isdigit() else -1


class RedisStateCache:
    def __init__(self, url: str, clock: Callable[[], datetime], prefix: str = "ca:",
                 timeout: float = 0.05, max_ttl: float = 86_400.0,
                 retry_after: float = 1.0,
                 on_change: Callable[[bool], None] | None = None,
                 cipher: EntryCipher | None = None) -> None:
        self._url = url
        self._clock = clock
        self._prefix = prefix.encode()
        self._timeout = timeout
        self._max_ttl_ms = int(max_ttl * 1000)
        self._retry_after = retry_after
        self._on_change = on_change
        self._cipher = cipher
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            # No retries: the breaker decides when to try again, and a retry would double
            # the time a request waits on a dead Redis.
            retry=Retry(NoBackoff(), 0))
        self._write = self._client.register_script(_WRITE_THROUGH)
        self._populate = self._client.register_script(_POPULATE)
        self._head_key = self._prefix + b"head"
        self.channel = self._prefix + b"inv"
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._down_until = 0.0
        self._available = True
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None

    # -- keys and state ---------------------------------------------------------------

    def entry_key(self, subject: str) -> bytes:
        key_id, _, digest = subject.partition(":")
        return self._prefix + b"s:" + key_id.encode() + b":" + bytes.fromhex(digest)

    def _ttl_ms(self, state: SubjectState) -> int:
        """Never outlive the earliest consent expiry the state holds (expiries already past
        change nothing from now on: the engine judges those at decision time)."""
        now = self._clock()
        ttl = self._max_ttl_ms
        for ev in state.events:
            if ev.expires_at is not None and ev.expires_at > now:
                ttl = min(ttl, int((ev.expires_at - now).total_seconds() * 1000))
        return max(ttl, 1)

    # -- availability -----------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one Redis operation; None when Redis is down, slow, or the breaker is open."""
        if time.monotonic() < self._down_until:
            return None
        try:
            result = fn()
        except (redis.RedisError, OSError, ValueError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self._retry_after
            self._set_available(False, f"{what}: {type(exc).__name__}")
            return None
        self._set_available(True, "")
        return result

    def _set_available(self, available: bool, why: str) -> None:
        # One lock around the change and its notification: health never ends up showing
        # the opposite of the last change.
        with self._notify_lock:
            if available == self._available:
                return
            self._available = available
            if available:
                log.warning("redis reachable again: consent cache back in use")
            else:
                log.warning("redis unavailable (%s): answering from the ledger", why)
            if self._on_change is not None:
                self._on_change(available)

    def ping(self) -> bool:
        """Probe Redis even while the breaker is open (the health loop calls this)."""
        with self._lock:
            self._down_until = 0.0
        return bool(self._call("ping", self._client.ping))

    # -- operations -------------------------------------------------------------------

    def _blob(self, state: SubjectState, key: bytes) -> bytes:
        blob = state_to_bytes(state)
        return self._cipher.seal(blob, key) if self._cipher is not None else blob

    def read(self, subject: str) -> RedisRead | None:
        key = self.entry_key(subject)

        def run() -> RedisRead:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self._head_key)  # the head first: the entry is then at least as new
            pipe.get(key)
            raw_head, raw_entry = pipe.execute()
            head, gen, position = _parse_head(raw_head)
            state = None
            if raw_entry is not None and position >= 0:
                state = _decode_entry(bytes(raw_entry), gen, position, key, self._cipher)
            return RedisRead(head, position, state)

        result: RedisRead | None = self._call("read", run)
        return result

    def write_through(self, subject: str, state: SubjectState, sequence: int) -> bool:
        """After the ledger committed `sequence` (and while holding its write order)."""
        message = f"{sequence}:{subject}".encode()
        key = self.entry_key(subject)
        args: list[bytes | str | int] = [
            secrets.token_hex(4), sequence, self._blob(state, key), self._ttl_ms(state),
            self.channel, message]
        return self._call("write", lambda: self._write(
            keys=[self._head_key, key], args=args)) is not None

    def populate(self, subject: str, state: SubjectState, seen: RedisRead | None,
                 behind: bool) -> bool:
        """Cache a state read from the ledger (current as of `state.sequence`). `behind`:
        Redis was seen behind the freshness floor, so it missed writes: start a new
        generation unless someone already moved the head on."""
        key = self.entry_key(subject)
        args: list[bytes | str | int] = [
            seen.head if seen else "", 1 if behind else 0, secrets.token_hex(4),
            state.sequence, state.version, self._blob(state, key), self._ttl_ms(state)]
        return bool(self._call("populate", lambda: self._populate(
            keys=[self._head_key, key], args=args)))

    def start(self) -> None:
        """Probe a Redis that is down, so health and the cache come back without waiting
        for a request to try."""
        self._probe = threading.Thread(target=self._probe_loop, name="consentauthz-redis-probe",
                                       daemon=True)
        self._probe.start()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self._retry_after):
            if not self._available:
                self.ping()

    def used_memory(self) -> int:
        info = self._client.info("memory")
        return int(info["used_memory"])

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=5)
        self._client.close()


class InvalidationListener:
    """Subscribes to the invalidation channel and applies each write to the local cache.
    Reconnects with back-off; what it misses while disconnected, the ledger poller applies
    within the staleness bound."""

    def __init__(self, url: str, channel: bytes, cache: LocalCache,
                 on_message: Callable[[], None] | None = None) -> None:
        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0,
                                            socket_keepalive=True, health_check_interval=5)
        self._channel = channel
        self._cache = cache
        self._on_message = on_message
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consentauthz-invalidations",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def subscribed(self) -> threading.Event:
        return self._subscribed

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub: PubSub | None = None
            try:
                pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                backoff = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._apply(message["data"])
            except Exception:  # never let the listener die; the poller covers the gap
                log.warning("invalidation channel lost; resubscribing", exc_info=True)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

    def _apply(self, data: bytes) -> None:
        seq, _, subject = bytes(data).decode("utf-8", "replace").partition(":")
        if not (seq.isascii() and seq.isdigit()) or not subject:
            log.warning("ignored a malformed invalidation message")
            return
        self._cache.note_write(subject, int(seq))
        if self._on_message is not None:
            self._on_message()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()
