"""The consent-state cache every replica shares (Redis), and its invalidation channel.

Layout (PREFIX defaults to `ca:`; F is consent/codec.py's FORMAT, now 4). Everything is
per ledger partition (consent/ledger.py), and a partition's keys share the hash tag
`{pN}`: in a Redis Cluster they live in one slot, so each script below touches one slot.
- `PREFIX{pN}head` = `F.<generation>:<position>` (generation: 8 hex digits): every entry
  of partition N of this generation is current as of position `position` of the
  partition. Only ledger writers move it, one at a time, in the partition's order (they
  hold its write order while they do, `Ledger.exclusive`).
- `PREFIX{pN}<10 bytes>` = format byte, generation (4 bytes), version (varint), sealed state:
  one subject's state (consent/codec.py's compact form, no evidence, encrypted), current as
  of the head's position while its generation lasts. The key is the first 10 bytes of the
  subject's keyed HMAC pseudonym: short, because Redis keeps one per subject. Two subjects
  that share those 80 bits (at a billion subjects, a chance below one in a million that
  any two do) share a key and never an answer: the full pseudonym is the entry's
  associated data, so each one's entry fails to open for the other (a miss, read through
  to the ledger). Without an entry cipher (tests) the key holds the whole pseudonym.
- channel `PREFIX inv`: `<sequence>:<pseudonym>` for each write (the pseudonym names the
  partition), published by the same script that writes it through, so replicas receive
  a partition's writes in its order.

A write whose write-through fails (Redis down, a timeout) leaves Redis behind the ledger.
The next write-through sees `position < sequence - 1` and starts a new generation: the
old entries become unreachable at once and expire by their TTL. Losing Redis therefore
costs cache hits, never a stale answer. A reader that finds Redis behind the freshness
floor, or no head at all (Redis restarted empty), starts the new generation itself when it
repopulates an entry from the ledger.

A release with another entry layout (during a rolling upgrade) writes other keys, and so
must never move a head this layout trusts (its write would leave this layout's entry of
that subject stale yet in the current generation): each layout takes a head of the other's
form for no head at all, and replaces it with a generation of its own (a release before
this one finds no entry of an `F.` generation, and its writes replace such a head). Mixed
releases thus keep starting new generations (misses), never read a stale entry as
current. An entry of another format found under a key is a miss, read through and
overwritten.

A replica whose ledger poll finds the ledger went back or was replaced (consent/
freshness.py) calls `fence`: a new generation (under the new ledger's prefix, when there is
one) that no entry of the old one belongs to, and a new epoch. A populate or write-through
that began before it (its state may come from the old ledger) carries the older epoch and
is dropped. Until the new generation is in Redis (it was down), nothing is read from it.

Every call has a short timeout; a failure opens a breaker for `retry_after` seconds so a
dead Redis costs one timeout, not one per request.

With `cluster` the client is a Redis Cluster client (made on first use, so a cluster that
is down when the server starts costs hits, not the start): each script's keys share a
partition's hash tag and run on that slot's node, a read is one MGET there, and the
invalidations published on any node reach a listener subscribed to any other (Redis
Cluster broadcasts PUBLISH), so the listener subscribes on the node the URL names.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
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
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..domain import SubjectState
from .cache import LocalCache
from .codec import FORMAT, state_from_bytes, state_to_bytes
from .ledger import partition_of

log = logging.getLogger("consentauthz.consent")

# Heads: `<FORMAT>.<generation: 8 hex digits>:<position>`. Entries: format byte, generation
# (its 8 hex digits as 4 bytes), version (LEB128 varint), then the sealed state.
_LUA_COMMON = """
local FORMAT = @FORMAT@
-- A head of this layout: '<FORMAT>.<8 hex digits>:<position>' -> hex digits, position
local function parse_head(head)
  if not head then return nil end
  local gen, pos = string.match(head, '^' .. FORMAT .. '%.(%x%x%x%x%x%x%x%x):(%d+)$')
  if not gen then return nil end
  return gen, tonumber(pos)
end
local function raw(gen)
  return (string.gsub(gen, '%x%x', function(h) return string.char(tonumber(h, 16)) end))
end
-- (raw generation, version) of an entry of this layout; nil for anything else
local function entry_of(entry)
  if (not entry) or string.byte(entry, 1) ~= FORMAT then return nil end
  local n, m = 0, 1
  for i = 6, 14 do
    local b = string.byte(entry, i)
    if not b then return nil end
    if b < 128 then return string.sub(entry, 2, 5), n + b * m end
    n = n + (b - 128) * m
    m = m * 128
  end
  return nil
end
""".replace("@FORMAT@", str(FORMAT))

# KEYS: head, entry. ARGV: new generation, sequence, entry tail (version and sealed state),
# ttl ms, channel, message.
_WRITE_THROUGH = _LUA_COMMON + """
local seq = tonumber(ARGV[2])
local gen, pos = parse_head(redis.call('GET', KEYS[1]))
-- Behind: Redis missed writes. Ahead: a late command after a timeout, or a ledger that
-- went back. Either way the old generation is not to be trusted: start a new one.
if (not gen) or pos < seq - 1 or pos > seq then
  gen = ARGV[1]
end
redis.call('SET', KEYS[1], FORMAT .. '.' .. gen .. ':' .. seq)
redis.call('SET', KEYS[2], string.char(FORMAT) .. raw(gen) .. ARGV[3], 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: head, entry. ARGV: head seen (or ''), bump (1/0), new generation, ledger position
# the state is current as of, subject version, entry tail (version and sealed state), ttl ms.
_POPULATE = _LUA_COMMON + """
local head = redis.call('GET', KEYS[1])
local gen, pos = parse_head(head)
if (not gen) or (ARGV[2] == '1' and head == ARGV[1]) then
  gen, pos = ARGV[3], tonumber(ARGV[4])
  redis.call('SET', KEYS[1], FORMAT .. '.' .. gen .. ':' .. ARGV[4])
end
if pos > tonumber(ARGV[4]) then
  return 0
end
local cgen, cver = entry_of(redis.call('GET', KEYS[2]))
if cgen == raw(gen) and cver > tonumber(ARGV[5]) then
  return 0
end
redis.call('SET', KEYS[2], string.char(FORMAT) .. raw(gen) .. ARGV[6], 'PX', ARGV[7])
return 1
"""

_FORMAT_BYTE = bytes([FORMAT])
#: populate_soon() calls waiting for the populating thread; more are dropped (a dropped
#: populate costs a later miss, nothing else).
MAX_PENDING_POPULATES = 10_000
#: The bytes of the pseudonym's digest a key keeps when entries are authenticated.
KEY_DIGEST_BYTES = 10


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 9, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("malformed entry header")


@dataclass(frozen=True, slots=True)
class _Keys:
    """The names under one prefix (changed together, read together): per partition, the
    prefix of its keys (with its hash tag) and its head."""

    prefix: bytes
    parts: tuple[bytes, ...]
    heads: tuple[bytes, ...]
    channel: bytes

    @classmethod
    def of(cls, prefix: str, partitions: int) -> _Keys:
        raw = prefix.encode()
        if b"{" in raw or b"}" in raw:
            raise ValueError("a redis prefix has no braces (they make hash tags)")
        parts = tuple(raw + b"{p%d}" % p for p in range(partitions))
        return cls(raw, parts, tuple(p + b"head" for p in parts), raw + b"inv")


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
    """Entries are encrypted and authenticated (AES-256-GCM; associated data: the subject's
    whole pseudonym under the cache's prefix, the entry's format byte and version) under a
    key derived from the master key: a Redis dump or snapshot holds no birth date in the
    clear, and an entry cannot be forged or moved to another subject (or key) by whoever
    can write to Redis (old entries can still be replayed: docs/security.md)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, where: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, where)

    def open(self, sealed: bytes, where: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], where)


def _decode_entry(raw: bytes, gen: bytes, position: int, where: bytes,
                  cipher: EntryCipher | None) -> SubjectState | None:
    """An entry of generation `gen` (4 bytes); None for another generation or layout (a
    plain miss) or anything unreadable (a miss too, logged: the ledger answers and the next
    populate overwrites it)."""
    if raw[:1] != _FORMAT_BYTE or raw[1:5] != gen:
        return None
    try:
        version, start = _read_varint(raw, 5)
        blob = raw[start:]
        if cipher is not None:
            # The format byte and version are authenticated with the state.
            blob = cipher.open(blob, where + raw[:1] + raw[5:start])
        # Current as of the head while its generation lasts.
        return state_from_bytes(_FORMAT_BYTE + blob, position, version)
    except (ValueError, TypeError, KeyError, IndexError, zlib.error, InvalidTag):
        # Any corruption is a miss: never an error, never an answer.
        log.warning("ignored an unreadable consent cache entry")
        return None


_HEAD_MARK = f"{FORMAT}."


def head_value(generation: str, position: int) -> str:
    """The head of this layout for `generation` (8 hex digits) at `position`."""
    return f"{_HEAD_MARK}{generation}:{position}"


def _parse_head(raw: bytes | None) -> tuple[str, bytes, int]:
    """(head as read, generation as entries hold it, position); a head that is absent or
    not of this layout's form has position -1 (no entry is read)."""
    if raw is None:
        return "", b"", -1
    text = raw.decode("ascii", "replace")
    gen, _, pos = text.partition(":")
    if not gen.startswith(_HEAD_MARK) or not (pos.isascii() and pos.isdigit()):
        return text, b"", -1
    try:
        gen_raw = bytes.fromhex(gen[len(_HEAD_MARK):])
    except ValueError:
        return text, b"", -1
    if len(gen_raw) != 4:
        return text, b"", -1
    return text, gen_raw, int(pos)


class RedisStateCache:
    def __init__(self, url: str, clock: Callable[[], datetime], prefix: str = "ca:",
                 timeout: float = 0.05, max_ttl: float = 86_400.0,
                 retry_after: float = 1.0,
                 on_change: Callable[[bool], None] | None = None,
                 cipher: EntryCipher | None = None, partitions: int = 1,
                 cluster: bool = False) -> None:
        self._url = url
        self._clock = clock
        self._partitions = partitions
        self._keys = _Keys.of(prefix, partitions)
        self._timeout = timeout
        self._max_ttl_ms = int(max_ttl * 1000)
        self._retry_after = retry_after
        self._on_change = on_change
        self._cipher = cipher
        self._cluster = cluster
        self._client: redis.Redis | RedisCluster | None = None
        self._scripts: tuple[Script, Script] | None = None
        self._lock = threading.Lock()
        if not cluster:
            self._connected()  # lazy anyway: connects on its first command
        #: Held by fence() and around every populate and write-through: each runs wholly
        #: before a fence or is checked against its epoch after it.
        self._fence_lock = threading.Lock()
        self._epoch = 0
        #: The heads of a new generation fence() could not write yet (Redis was down).
        self._fence_pending: tuple[int, ...] | None = None
        self._notify_lock = threading.Lock()
        self._down_until = 0.0
        self._available = True
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self._populates: queue.Queue[
            tuple[str, SubjectState, RedisRead | None, bool, int | None]] = (
            queue.Queue(MAX_PENDING_POPULATES))
        self._populator: threading.Thread | None = None
        self._populator_lock = threading.Lock()
        #: Each thread's connection for reads (see read()), and all of them for close().
        self._local = threading.local()
        self._read_connections: list[redis.connection.AbstractConnection] = []
        #: populate_soon() calls dropped because too many were waiting
        self.dropped_populates = 0

    def _connected(self) -> redis.Redis | RedisCluster:
        """The client, made now if it was not yet (a cluster client asks a node for the
        slots as it is made, which fails while the cluster is down)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                options: dict[str, Any] = dict(
                    socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                    # No retries: the breaker decides when to try again, and a retry would
                    # double the time a request waits on a dead Redis.
                    retry=Retry(NoBackoff(), 0))
                made: redis.Redis | RedisCluster = (
                    RedisCluster.from_url(self._url, **options) if self._cluster
                    else redis.Redis.from_url(self._url, **options))
                self._scripts = (made.register_script(_WRITE_THROUGH),
                                 made.register_script(_POPULATE))
                self._client = made
            return self._client

    def _script(self, which: int) -> Script:
        self._connected()
        assert self._scripts is not None
        return self._scripts[which]

    # -- keys and state ---------------------------------------------------------------

    @property
    def head_key(self) -> bytes:
        """Partition 0's head (a ledger of one partition has no other)."""
        return self._keys.heads[0]

    def head_key_of(self, part: int) -> bytes:
        return self._keys.heads[part]

    def _part(self, subject: str) -> int:
        return partition_of(subject, self._partitions)

    @property
    def channel(self) -> bytes:
        """The invalidation channel (it changes with the prefix: see fence())."""
        return self._keys.channel

    @property
    def epoch(self) -> int:
        """Moves on at each fence(): read it before reading or writing the ledger, and hand
        it to populate_soon() and write_through()."""
        return self._epoch

    def entry_key(self, subject: str, keys: _Keys | None = None) -> bytes:
        prefix = (self._keys if keys is None else keys).parts[self._part(subject)]
        key_id, _, digest = subject.partition(":")
        if self._cipher is not None:
            return prefix + bytes.fromhex(digest[:2 * KEY_DIGEST_BYTES])
        return prefix + b"s:" + key_id.encode() + b":" + bytes.fromhex(digest)

    @staticmethod
    def _where(prefix: bytes, subject: str) -> bytes:
        """The entry's associated data: the whole pseudonym (a key holds only part of it)."""
        return prefix + b"s:" + subject.encode()

    def _tail(self, prefix: bytes, subject: str, state_bytes: bytes, version: int) -> bytes:
        """What follows the format byte and generation in an entry: version, sealed state."""
        if state_bytes[:1] != _FORMAT_BYTE:
            raise ValueError("state bytes of another format")
        header = _varint(version)
        body = state_bytes[1:]
        if self._cipher is not None:
            body = self._cipher.seal(body, self._where(prefix, subject) + _FORMAT_BYTE + header)
        return header + body

    def entry_value(self, subject: str, generation: str, version: int,
                    state_bytes: bytes) -> bytes:
        """A whole entry of generation `generation` (8 hex digits), as the scripts write it:
        for loading many entries at once (benchmarks)."""
        gen = bytes.fromhex(generation)
        if len(gen) != 4:
            raise ValueError("a generation is 8 hex digits")
        return _FORMAT_BYTE + gen + self._tail(self._keys.prefix, subject, state_bytes, version)

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
        except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
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
        return bool(self._call("ping", lambda: self._connected().ping()))

    # -- operations -------------------------------------------------------------------

    def _read_connection(self) -> redis.connection.AbstractConnection:
        """This thread's own connection, checked as the client's pool checks one it hands
        out: a read is on the path of every check that misses the local cache, and the
        pool (checking a connection out and back in, and its instrumentation) costs about
        as much again as the round trip itself."""
        conn: redis.connection.AbstractConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            client = self._connected()
            assert isinstance(client, redis.Redis)
            pool = client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            with self._lock:
                self._read_connections.append(conn)
            self._local.conn = conn
        # Something to read before a command was sent: the server closed the connection
        # (Redis restarted) or an old reply is pending. Either way, connect afresh.
        if conn.is_connected:
            try:
                stale = conn.can_read()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                conn.disconnect()
        return conn

    def read(self, subject: str) -> RedisRead | None:
        if self._fence_pending is not None and not self._fenced():
            return None
        keys = self._keys
        key = self.entry_key(subject, keys)
        head_key = keys.heads[self._part(subject)]

        def run() -> RedisRead:
            if self._cluster:
                # One command on the node of the partition's slot (its keys share a tag).
                got: list[Any] = self._connected().mget(head_key, key)
                raw_head, raw_entry = got
            else:
                conn = self._read_connection()
                try:
                    # One command, so head and entry are read at the same instant.
                    conn.send_command("MGET", head_key, key)  # type: ignore[no-untyped-call]
                    raw_head, raw_entry = conn.read_response()
                except BaseException:
                    # A reply may still be on its way: it must never be read as the next
                    # one's.
                    conn.disconnect()  # type: ignore[no-untyped-call]
                    raise
            head, gen, position = _parse_head(raw_head)
            state = None
            if raw_entry is not None and position >= 0:
                state = _decode_entry(raw_entry, gen, position,
                                      self._where(keys.prefix, subject), self._cipher)
            return RedisRead(head, position, state)

        result: RedisRead | None = self._call("read", run)
        return result

    def write_through(self, subject: str, state: SubjectState, sequence: int,
                      epoch: int | None = None) -> bool:
        """After the ledger committed `sequence` (and while holding its write order).
        `epoch`: this cache's epoch before the ledger write; older than now, the write may
        belong to a ledger that was since replaced, and is not written through."""
        message = f"{sequence}:{subject}".encode()
        with self._fence_lock:
            if not self._current(epoch):
                return False
            keys = self._keys
            args: list[bytes | str | int] = [
                secrets.token_hex(4), sequence,
                self._tail(keys.prefix, subject, state_to_bytes(state), sequence),
                self._ttl_ms(state), keys.channel, message]
            return self._call("write", lambda: self._script(0)(
                keys=[keys.heads[self._part(subject)], self.entry_key(subject, keys)],
                args=args)) is not None

    def populate(self, subject: str, state: SubjectState, seen: RedisRead | None,
                 behind: bool, epoch: int | None = None) -> bool:
        """Cache a state read from the ledger (current as of `state.sequence`). `behind`:
        Redis was seen behind the freshness floor, so it missed writes: start a new
        generation unless someone already moved the head on. `epoch`: as for
        write_through(), taken before the ledger read."""
        with self._fence_lock:
            if not self._current(epoch):
                return False
            keys = self._keys
            args: list[bytes | str | int] = [
                seen.head if seen else "", 1 if behind else 0, secrets.token_hex(4),
                state.sequence, state.version,
                self._tail(keys.prefix, subject, state_to_bytes(state), state.version),
                self._ttl_ms(state)]
            return bool(self._call("populate", lambda: self._script(1)(
                keys=[keys.heads[self._part(subject)], self.entry_key(subject, keys)],
                args=args)))

    def fence(self, heads: int | tuple[int, ...], prefix: str | None = None) -> None:
        """The ledger went back or was replaced; its partitions are at `heads` now (an
        int: a ledger of one partition). Start a new generation there (under `prefix`, the
        replacing ledger's, when given): no entry of the old one is read again, and no
        populate or write-through begun before this call is made."""
        heads = (heads,) if isinstance(heads, int) else tuple(heads)
        if len(heads) != self._partitions:
            raise ValueError(f"{len(heads)} heads for {self._partitions} partitions")
        with self._fence_lock:
            self._epoch += 1
            if prefix is not None:
                self._keys = _Keys.of(prefix, self._partitions)
            self._fence_pending = heads
            if not self._fence_now():
                log.warning("redis unavailable: its consent cache is not read again until a "
                            "new generation is written there")

    def _current(self, epoch: int | None) -> bool:
        """(Fence lock held.) Whether an operation begun at `epoch` may go on: no fence since,
        and the newest fence is in Redis."""
        if epoch is not None and epoch != self._epoch:
            return False
        return self._fence_pending is None or self._fence_now()

    def _fenced(self) -> bool:
        with self._fence_lock:
            return self._fence_pending is None or self._fence_now()

    def _fence_now(self) -> bool:
        """(Fence lock held.) Write the pending new generation; whether it is written."""
        heads, keys = self._fence_pending, self._keys.heads
        if heads is None:
            return True
        generation = secrets.token_hex(4)
        for key, position in zip(keys, heads, strict=True):
            # One key per command: a cluster keeps each partition's head in its own slot.
            put = functools.partial(self._set, key, head_value(generation, position))
            if self._call("fence", put) is None:
                return False
        self._fence_pending = None
        return True

    def _set(self, key: bytes, value: str) -> Any:
        return self._connected().set(key, value)

    def populate_soon(self, subject: str, state: SubjectState, seen: RedisRead | None,
                      behind: bool, epoch: int | None = None) -> None:
        """populate(), on a thread of this cache's own: a check that read the ledger need
        not wait for Redis too. As safe late as at once: the script compares the head and
        the entry's version when it runs, so a populate overtaken by writes, by another
        populate or by a new generation changes nothing (as one delayed in the network
        would)."""
        if self._stop.is_set():
            return
        try:
            self._populates.put_nowait((subject, state, seen, behind, epoch))
        except queue.Full:
            self.dropped_populates += 1
            return
        if self._populator is None:
            with self._populator_lock:
                if self._populator is None and not self._stop.is_set():
                    self._populator = threading.Thread(
                        target=self._populate_loop, name="consentauthz-redis-populate",
                        daemon=True)
                    self._populator.start()

    def _populate_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._populates.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.populate(*item)
            except Exception:  # never let the thread die: a lost populate is a later miss
                log.exception("populating the consent cache failed")
            finally:
                self._populates.task_done()

    def wait_populated(self, timeout: float = 5.0) -> bool:
        """Whether every populate_soon() made so far has run within `timeout` seconds
        (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._populates.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

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
        info = self._connected().info("memory")
        if self._cluster:  # one reply per node
            return sum(int(node["used_memory"]) for node in info.values())
        return int(info["used_memory"])

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=5)
        with self._populator_lock:
            populator = self._populator
        if populator is not None:
            populator.join(timeout=5)
        with self._lock:
            connections, self._read_connections = self._read_connections, []
        for conn in connections:
            conn.disconnect()  # type: ignore[no-untyped-call]
        if self._client is not None:
            self._client.close()


class InvalidationListener:
    """Subscribes to the invalidation channel and applies each write to the local cache.
    Reconnects with back-off; what it misses while disconnected, the ledger poller applies
    within the staleness bound."""

    def __init__(self, url: str, channel: bytes, cache: LocalCache,
                 on_message: Callable[[], None] | None = None) -> None:
        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0,
                                            socket_keepalive=True, health_check_interval=5)
        #: The channel to listen to (switch() changes it; the listening thread follows).
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

    def switch(self, channel: bytes) -> None:
        """Listen to `channel` instead (the cache's prefix changed): within one wait for a
        message; what is published meanwhile, the ledger poller applies."""
        self._channel = channel

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub: PubSub | None = None
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                listening = self._channel
                pubsub.subscribe(listening)
                self._subscribed.set()
                backoff = 0.1
                while not self._stop.is_set():
                    if self._channel != listening:
                        pubsub.unsubscribe(listening)  # type: ignore[no-untyped-call]
                        listening = self._channel
                        pubsub.subscribe(listening)
                    message = pubsub.get_message(timeout=0.5)
                    # Never a message of the channel left behind: its writes are another
                    # ledger's.
                    if message is not None and message["channel"] == self._channel:
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
