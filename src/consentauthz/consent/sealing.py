"""Encryption at rest of what identifies a person in the ledger, and crypto-shredding.

Evidence (IP address, user agent, form payload, e-mail...) and the birth date are
encrypted with a key of the subject's own (AES-256-GCM, the subject's pseudonym and the
field as associated data, so a sealed value cannot be moved to another subject or field).
That data key is stored wrapped (AES-256-GCM) under the master key ring from
configuration, in a key store that is NOT append-only. Erasure (GDPR Art. 17) destroys the
subject's data key: the sealed values in the append-only ledger stay where they are, so
the hash chains still verify, but nobody can read them again.

`SealingLedger` wraps any Ledger: it seals on the way in and opens on the way out, so
everything above it (the consent service, the auditors' replay, the policy diff) sees the
clear values while the subject's key exists, and never after.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..chain import ChainReport
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import SubjectErased, Unavailable
from ..pseudonym import key_fingerprint
from ..sqlite_files import open_database
from .ledger import AppendResult, BatchItem, BatchResult, Changes, Idempotency, Ledger

log = logging.getLogger("consentauthz.consent")

_NONCE = 12
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MasterKeys:
    """The key ring that wraps subject keys: the last wraps new keys; the others (in any
    order) stay to unwrap what they wrapped (docs/security.md: rotation)."""

    __slots__ = ("_aeads", "_current", "_keys")

    def __init__(self, ring: Sequence[tuple[str, bytes]]) -> None:
        if not ring:
            raise ValueError("the master key ring is empty")
        for kid, key in ring:
            if len(key) != 32:
                raise ValueError("a master key is 32 bytes (64 hex digits)")
            if not kid or ":" in kid:
                raise ValueError("a key id is a short name without ':'")
        if len({kid for kid, _ in ring}) != len(ring):
            raise ValueError("key ids must be unique")
        self._keys = dict(ring)
        self._current = ring[-1][0]
        # Built once: every ledger read of a sealed subject unwraps its key.
        self._aeads = {kid: AESGCM(key) for kid, key in ring}

    def wrap(self, data_key: bytes, subject: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aeads[self._current].encrypt(
            nonce, data_key, b"subject-key:" + subject.encode())
        return f"{self._current}:{_b64(nonce + sealed)}"

    def unwrap(self, wrapped: str, subject: str) -> bytes:
        kid, _, body = wrapped.partition(":")
        aead = self._aeads.get(kid)
        if aead is None:
            raise Unavailable(f"subject key wrapped under unknown master key {kid!r}")
        raw = _unb64(body)
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], b"subject-key:" + subject.encode())
        except InvalidTag as exc:
            raise Unavailable("a subject key does not unwrap (wrong master key?)") from exc

    @property
    def current(self) -> str:
        return self._current

    def fingerprints(self) -> dict[str, str]:
        """Key id -> key_fingerprint (pseudonym.py), for every key of the ring."""
        return {kid: key_fingerprint(key) for kid, key in self._keys.items()}

    def derive(self, purpose: bytes) -> bytes:
        """A 256-bit key for `purpose`, from the current master key (HKDF-SHA256)."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"consentauthz/" + purpose).derive(self._keys[self._current])

    def __repr__(self) -> str:  # never print a key
        return f"MasterKeys(key_ids={list(self._keys)!r})"


def parse_master_ring(text: str) -> MasterKeys:
    """One key per line, the last is current: `<key id>:<64 hex>` or just `<64 hex>` (id
    m1)."""
    ring: list[tuple[str, bytes]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kid, sep, hexkey = line.rpartition(":")
        try:
            ring.append((kid if sep else "m1", bytes.fromhex(hexkey)))
        except ValueError:
            raise ValueError("a master key line is '<key id>:<hex>'") from None
    return MasterKeys(ring)


# -- where the wrapped subject keys live ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    #: The wrapped data key; None once destroyed (the subject was erased).
    wrapped: str | None
    destroyed_at: datetime | None = None


class KeyStore(Protocol):
    def get(self, subject: str) -> KeyRecord | None: ...

    def create(self, subject: str, wrapped: str) -> KeyRecord:
        """Store `wrapped` unless the subject has a record already; return what is stored."""
        ...

    def create_many(self, wrapped: Mapping[str, str]) -> dict[str, KeyRecord]:
        """create() for many subjects at once (one transaction where the store has them)."""
        ...

    def destroy(self, subject: str) -> None:
        """Forget the subject's key for good (and remember that it was destroyed)."""
        ...

    def close(self) -> None: ...


class MemoryKeyStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}

    def get(self, subject: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get(subject)

    def create(self, subject: str, wrapped: str) -> KeyRecord:
        with self._lock:
            return self._keys.setdefault(subject, KeyRecord(wrapped))

    def create_many(self, wrapped: Mapping[str, str]) -> dict[str, KeyRecord]:
        return {s: self.create(s, w) for s, w in wrapped.items()}

    def wrapped_page(self, after: str, limit: int) -> list[tuple[str, str]]:
        with self._lock:
            return sorted((s, r.wrapped) for s, r in self._keys.items()
                          if r.wrapped is not None and s > after)[:limit]

    def swap_wrapped(self, subject: str, old: str, new: str) -> bool:
        with self._lock:
            record = self._keys.get(subject)
            if record is None or record.wrapped != old:
                return False
            self._keys[subject] = KeyRecord(new)
            return True

    def destroy(self, subject: str) -> None:
        with self._lock:
            old = self._keys.get(subject)
            if old is None or old.wrapped is not None:
                self._keys[subject] = KeyRecord(None, datetime.now(UTC))

    def close(self) -> None:
        pass


def _sqlite_record(row: tuple[str | None, str | None]) -> KeyRecord:
    return KeyRecord(row[0], datetime.fromisoformat(row[1]) if row[1] else None)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    subject TEXT PRIMARY KEY,
    wrapped TEXT,
    destroyed_at TEXT
);
"""


class SqliteKeyStore:
    """A file of its own beside the ledger: the ledger is append-only, this is not.
    `secure_delete` overwrites a destroyed key's bytes, and the WAL is truncated after a
    destruction so no older copy of the page survives there either."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self._lock = threading.Lock()
        try:
            self._conn = open_database(path, _SQLITE_SCHEMA, fsync=True, read_only=read_only)
            if not read_only:
                self._conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            raise Unavailable(f"subject key store cannot be opened: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise Unavailable("subject key store unavailable") from exc

    def get(self, subject: str) -> KeyRecord | None:
        with self._locked() as conn:
            row = conn.execute("SELECT wrapped, destroyed_at FROM subject_keys "
                               "WHERE subject = ?", (subject,)).fetchone()
        return _sqlite_record(row) if row else None

    def create(self, subject: str, wrapped: str) -> KeyRecord:
        return self.create_many({subject: wrapped})[subject]

    def create_many(self, wrapped: Mapping[str, str]) -> dict[str, KeyRecord]:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")  # one commit (one fsync) for them all
            try:
                conn.executemany("INSERT OR IGNORE INTO subject_keys (subject, wrapped) "
                                 "VALUES (?, ?)", list(wrapped.items()))
                found = {s: _sqlite_record(conn.execute(
                    "SELECT wrapped, destroyed_at FROM subject_keys WHERE subject = ?",
                    (s,)).fetchone()) for s in wrapped}
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return found

    def wrapped_page(self, after: str, limit: int) -> list[tuple[str, str]]:
        with self._locked() as conn:
            return [(str(s), str(w)) for s, w in conn.execute(
                "SELECT subject, wrapped FROM subject_keys WHERE wrapped IS NOT NULL "
                "AND subject > ? ORDER BY subject LIMIT ?", (after, limit))]

    def swap_wrapped(self, subject: str, old: str, new: str) -> bool:
        with self._locked() as conn:
            # secure_delete overwrites the old value's bytes in the file.
            cur = conn.execute("UPDATE subject_keys SET wrapped = ? WHERE subject = ? "
                               "AND wrapped = ?", (new, subject, old))
            return cur.rowcount == 1

    def destroy(self, subject: str) -> None:
        now = datetime.now(UTC).isoformat()
        with self._locked() as conn:
            conn.execute(
                "INSERT INTO subject_keys (subject, wrapped, destroyed_at) VALUES (?, NULL, ?) "
                "ON CONFLICT (subject) DO UPDATE SET wrapped = NULL, "
                "destroyed_at = COALESCE(subject_keys.destroyed_at, excluded.destroyed_at)",
                (subject, now))
            # Move the page out of the WAL and truncate it, so no copy of the key survives
            # there; a concurrent reader can make a checkpoint busy: try again.
            for _ in range(50):
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                time.sleep(0.01)
            else:
                log.warning("the key store's WAL could not be truncated after an erasure; "
                            "it will be at the next checkpoint")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_keys (
    subject TEXT PRIMARY KEY,
    wrapped TEXT,
    destroyed_at TIMESTAMPTZ
)
"""


class PostgresKeyStore:
    """A table beside the PostgreSQL ledger. After a destruction PostgreSQL keeps the old
    row version until VACUUM; docs/security.md says to run it (autovacuum does, too)."""

    def __init__(self, dsn: str) -> None:
        from psycopg_pool import ConnectionPool

        from .postgres import CONNECT_TIMEOUT, STATEMENT_TIMEOUT, _conninfo, _translated

        self._translated = _translated
        with _translated():
            self._pool: ConnectionPool = ConnectionPool(
                _conninfo(dsn, CONNECT_TIMEOUT, STATEMENT_TIMEOUT), min_size=1, max_size=4,
                open=False, timeout=CONNECT_TIMEOUT, kwargs={"autocommit": True},
                name="subject-keys")
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            with self._pool.connection() as conn:
                conn.execute(_PG_SCHEMA)
        self.conninfo = _conninfo(dsn, CONNECT_TIMEOUT, STATEMENT_TIMEOUT)

    def get(self, subject: str) -> KeyRecord | None:
        with self._translated(), self._pool.connection() as conn:
            row = conn.execute("SELECT wrapped, destroyed_at FROM subject_keys "
                               "WHERE subject = %s", (subject,)).fetchone()
        return KeyRecord(row[0], row[1]) if row else None

    def create(self, subject: str, wrapped: str) -> KeyRecord:
        with self._translated(), self._pool.connection() as conn:
            # One statement: the new row, or the one already there (another writer's,
            # or a destroyed key's).
            row = conn.execute(
                "WITH made AS (INSERT INTO subject_keys (subject, wrapped) VALUES (%(s)s, "
                "%(w)s) ON CONFLICT (subject) DO NOTHING RETURNING wrapped, destroyed_at) "
                "SELECT wrapped, destroyed_at FROM made UNION ALL "
                "SELECT wrapped, destroyed_at FROM subject_keys WHERE subject = %(s)s",
                {"s": subject, "w": wrapped}).fetchone()
            if row is None:  # a concurrent writer's row, committed after this snapshot
                row = conn.execute("SELECT wrapped, destroyed_at FROM subject_keys "
                                   "WHERE subject = %s", (subject,)).fetchone()
        assert row is not None
        return KeyRecord(row[0], row[1])

    def create_many(self, wrapped: Mapping[str, str]) -> dict[str, KeyRecord]:
        subjects = list(wrapped)
        with self._translated(), self._pool.connection() as conn:
            conn.execute("INSERT INTO subject_keys (subject, wrapped) "
                         "SELECT * FROM unnest(%s::text[], %s::text[]) "
                         "ON CONFLICT (subject) DO NOTHING",
                         (subjects, [wrapped[s] for s in subjects]))
            # Its own statement, so its snapshot holds the rows other writers made first.
            rows = conn.execute("SELECT subject, wrapped, destroyed_at FROM subject_keys "
                                "WHERE subject = ANY(%s)", (subjects,)).fetchall()
        return {str(s): KeyRecord(w, d) for s, w, d in rows}

    def wrapped_page(self, after: str, limit: int) -> list[tuple[str, str]]:
        with self._translated(), self._pool.connection() as conn:
            return [(str(s), str(w)) for s, w in conn.execute(
                "SELECT subject, wrapped FROM subject_keys WHERE wrapped IS NOT NULL "
                "AND subject > %s ORDER BY subject LIMIT %s", (after, limit))]

    def swap_wrapped(self, subject: str, old: str, new: str) -> bool:
        with self._translated(), self._pool.connection() as conn:
            cur = conn.execute("UPDATE subject_keys SET wrapped = %s WHERE subject = %s "
                               "AND wrapped = %s", (new, subject, old))
            return cur.rowcount == 1

    def destroy(self, subject: str) -> None:
        with self._translated(), self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO subject_keys (subject, wrapped, destroyed_at) "
                "VALUES (%s, NULL, now()) ON CONFLICT (subject) DO UPDATE SET wrapped = NULL, "
                "destroyed_at = COALESCE(subject_keys.destroyed_at, excluded.destroyed_at)",
                (subject,))

    def close(self) -> None:
        self._pool.close()


# -- sealing ----------------------------------------------------------------------------


class _Unread:
    """A key record not read yet (None already means: the subject has none)."""


_UNREAD = _Unread()


class Sealer:
    """Subject keys (raw 256-bit AES keys) from the key store, and sealing with them."""

    def __init__(self, master: MasterKeys, store: KeyStore,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._master = master
        self._store = store
        self._clock = clock

    def key_for_write(self, subject: str, holds_sealed: bool,
                      record: KeyRecord | _Unread | None = _UNREAD) -> bytes:
        """The subject's key, created on first use. `holds_sealed`: the ledger already holds
        values sealed for this subject, so a missing key is lost, not new. `record`: the
        store's record (None: there is none), when already read with the ledger state."""
        if isinstance(record, _Unread):
            record = self._store.get(subject)
        if record is None:
            if holds_sealed:
                raise Unavailable("the subject's key is missing from the key store")
            record = self._store.create(subject, self._master.wrap(os.urandom(32), subject))
        if record.wrapped is None:
            raise SubjectErased("the subject was erased; nothing more is recorded about them")
        return self._master.unwrap(record.wrapped, subject)

    def record(self, subject: str) -> KeyRecord | None:
        return self._store.get(subject)

    def create_keys(self, subjects: Sequence[str]) -> dict[str, KeyRecord]:
        """New keys for subjects without one (one store transaction); what is stored."""
        if not subjects:
            return {}
        return self._store.create_many(
            {s: self._master.wrap(os.urandom(32), s) for s in subjects})

    @property
    def store(self) -> KeyStore:
        return self._store

    def unwrap(self, subject: str, record: KeyRecord) -> bytes:
        assert record.wrapped is not None
        return self._master.unwrap(record.wrapped, subject)

    @staticmethod
    def seal(key: bytes, subject: str, field: str, plain: bytes) -> str:
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(key).encrypt(nonce, plain, f"{field}:{subject}".encode())
        return f"{_VERSION}:{_b64(nonce + sealed)}"

    @staticmethod
    def open(key: bytes, subject: str, field: str, sealed: str) -> bytes:
        version, _, body = sealed.partition(":")
        if version != _VERSION:
            raise Unavailable("sealed value of an unknown version")
        raw = _unb64(body)
        try:
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:],
                                       f"{field}:{subject}".encode())
        except InvalidTag as exc:
            raise Unavailable("a sealed value does not open (tampered?)") from exc

    @staticmethod
    def keyed_digest(key: bytes, value: str) -> str:
        """A digest only the subject's key can reproduce, gone with the key."""
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def destroy(self, subject: str) -> None:
        self._store.destroy(subject)

    def now(self) -> datetime:
        return self._clock()

    def close(self) -> None:
        self._store.close()


_EVIDENCE = "evidence"
_BIRTH = "birth_date"




def _has_sealed(state: SubjectState) -> bool:
    return bool(state.profile.sealed_birth_date) or any(e.sealed_evidence for e in state.events)


def _strip_event(ev: ConsentEvent) -> ConsentEvent:
    return replace(ev, evidence={}) if ev.evidence else ev


def _stripped(state: SubjectState, erased_at: datetime | None = None) -> SubjectState:
    """Nothing identifying in the clear: what is left of an erased subject."""
    profile = replace(state.profile, birth_date=None,
                      erased_at=state.profile.erased_at or erased_at)
    return replace(state, profile=profile, events=tuple(_strip_event(e) for e in state.events))


class SealingLedger:
    """A Ledger that stores evidence and birth dates sealed and reads them back opened.

    The erasure record in the ledger is the authority on erasure, the key store's
    destroyed key the second: either one alone is enough to refuse writes and to stop
    opening anything (a key store restored from an old backup does not bring an erased
    subject back). A state whose sealed values cannot be opened because the key was
    destroyed is treated as erased, never as a subject without a birth date (that would
    turn a known child into an adult)."""

    def __init__(self, inner: Ledger, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer
        #: The ledger's read that also returns the subject's key record, when the key store
        #: lives in the ledger's own PostgreSQL database: one round trip instead of two on
        #: every ledger read of a check (and both from one snapshot).
        self._load_with_key: Callable[
            [str], tuple[SubjectState, tuple[str | None, datetime | None] | None]] | None = None
        #: The same for many subjects at once (batches).
        self._load_many_with_key: Callable[
            [Sequence[str]],
            dict[str, tuple[SubjectState, tuple[str | None, datetime | None] | None]]
        ] | None = None
        store = sealer.store
        joined = getattr(inner, "load_with_key_record", None)
        if (joined is not None and isinstance(store, PostgresKeyStore)
                and getattr(inner, "conninfo", None) == store.conninfo):
            self._load_with_key = joined
            self._load_many_with_key = getattr(inner, "load_many_with_key_records", None)

    # -- sealing on the way in ------------------------------------------------------------

    def _write_key(self, subject: str) -> tuple[bytes, SubjectState]:
        """The subject's key, and its stored state as read with it (for the append)."""
        record: KeyRecord | _Unread | None = _UNREAD
        if self._load_with_key is not None:
            # The state and the key's row in one statement (one round trip, not two).
            current, row = self._load_with_key(subject)
            record = KeyRecord(row[0], row[1]) if row is not None else None
        else:
            current = self._inner.load(subject)
        if current.profile.erased_at is not None:
            self._sealer.destroy(subject)  # again: a restored key store may have it back
            raise SubjectErased("the subject was erased; nothing more is recorded about them")
        return self._sealer.key_for_write(subject, _has_sealed(current), record), current

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None, *,
                       read: SubjectState | None = None) -> AppendResult:
        key, read = self._write_key(subject)
        item = self._sealed(BatchItem(subject, event, idempotency), key)
        result = self._inner.append_consent(subject, item.event, item.idempotency, read=read)
        return replace(result, state=self._written_state(subject, result.state, key))

    @staticmethod
    def _sealed(item: BatchItem, key: bytes) -> BatchItem:
        """The event with its evidence sealed under the subject's key."""
        event, idempotency = item.event, item.idempotency
        sealed = ""
        if event.evidence:
            plain = json.dumps(dict(event.evidence), sort_keys=True).encode()
            sealed = Sealer.seal(key, item.subject, _EVIDENCE, plain)
        if idempotency is not None:
            # The request hash covers the evidence: keyed by the subject's key, it cannot be
            # used to guess the evidence, and it is gone with the key.
            idempotency = replace(idempotency, request_hash=Sealer.keyed_digest(
                key, idempotency.request_hash))
        return BatchItem(item.subject, replace(event, evidence={}, sealed_evidence=sealed),
                         idempotency)

    def _write_keys(self, subjects: Sequence[str]) -> dict[str, bytes | SubjectErased]:
        """_write_key for many subjects: their states and key records in one statement
        where the ledger and the store share a database, and the missing keys made in one
        (a subject erased gets its SubjectErased instead of a key)."""
        if self._load_many_with_key is None:
            out: dict[str, bytes | SubjectErased] = {}
            for s in subjects:
                try:
                    out[s] = self._write_key(s)[0]
                except SubjectErased as exc:
                    out[s] = exc
            return out
        erased = SubjectErased("the subject was erased; nothing more is recorded about them")
        keys: dict[str, bytes | SubjectErased] = {}
        records: dict[str, KeyRecord] = {}
        missing: list[str] = []
        for s, (state, row) in self._load_many_with_key(subjects).items():
            if state.profile.erased_at is not None:
                self._sealer.destroy(s)  # again: a restored key store may have it back
                keys[s] = erased
            elif row is not None:
                records[s] = KeyRecord(row[0], row[1])
            elif _has_sealed(state):
                raise Unavailable("the subject's key is missing from the key store")
            else:
                missing.append(s)
        records.update(self._sealer.create_keys(missing))
        for s, record in records.items():
            keys[s] = erased if record.wrapped is None else self._sealer.unwrap(s, record)
        return keys

    def append_batch(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        """Each subject's key once; an erased subject's items are refused, the rest go on."""
        keys = self._write_keys(sorted({item.subject for item in items}))
        results: list[BatchResult | None] = [None] * len(items)
        sealed: list[BatchItem] = []
        where: list[int] = []
        for i, item in enumerate(items):
            key = keys[item.subject]
            if isinstance(key, SubjectErased):
                results[i] = key
                continue
            sealed.append(self._sealed(item, key))
            where.append(i)
        appended = self._inner.append_batch(sealed) if sealed else []
        for i, result in zip(where, appended, strict=True):
            key = keys[items[i].subject]
            assert isinstance(key, bytes)
            results[i] = (replace(result, state=self._written_state(items[i].subject,
                                                                     result.state, key))
                          if isinstance(result, AppendResult) else result)
        return [r for r in results if r is not None]

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime, *,
                       read: SubjectState | None = None) -> AppendResult:
        if profile.erased_at is not None:  # the erasure marker carries nothing to seal
            result = self._inner.append_profile(subject, profile, record_id, recorded_at)
            return replace(result, state=_stripped(result.state))
        key, read = self._write_key(subject)
        sealed = profile.sealed_birth_date
        if profile.birth_date is not None:
            sealed = Sealer.seal(key, subject, _BIRTH, profile.birth_date.isoformat().encode())
        result = self._inner.append_profile(
            subject, replace(profile, birth_date=None, sealed_birth_date=sealed),
            record_id, recorded_at, read=read)
        return replace(result, state=self._written_state(subject, result.state, key))

    # -- opening on the way out -----------------------------------------------------------

    def _open_event(self, subject: str, ev: ConsentEvent, key: bytes) -> ConsentEvent:
        if not ev.sealed_evidence:
            return ev
        evidence: Mapping[str, str] = json.loads(
            Sealer.open(key, subject, _EVIDENCE, ev.sealed_evidence))
        return replace(ev, evidence=dict(evidence))

    def _written_state(self, subject: str, state: SubjectState, key: bytes) -> SubjectState:
        """The state a write gives back: its birth date opened, its evidence left sealed, as
        `load()` gives it (what a write's state is for is the caches, which never hold
        evidence; opening every record's evidence on every write cost a decryption per
        record the subject has). `load(evidence=True)` opens it."""
        return self._open_state(subject, state, key, evidence=False)

    def _open_state(self, subject: str, state: SubjectState, key: bytes,
                    evidence: bool = True) -> SubjectState:
        profile = state.profile
        if profile.sealed_birth_date:
            birth = Sealer.open(key, subject, _BIRTH, profile.sealed_birth_date)
            profile = replace(profile, birth_date=date.fromisoformat(birth.decode()))
        if not evidence:  # decisions never read it: do not pay for opening it
            return replace(state, profile=profile)
        return replace(state, profile=profile,
                       events=tuple(self._open_event(subject, e, key) for e in state.events))

    def _key_for_read(self, subject: str, record: KeyRecord | _Unread | None = _UNREAD
                      ) -> bytes | datetime:
        """The subject's key, or when it was destroyed. `record`: the subject's key record
        if already read (None: it has none)."""
        if isinstance(record, _Unread):
            record = self._sealer.record(subject)
        if record is None:
            # Sealed values without a key: the key store lost it. Never guess.
            raise Unavailable("the subject's key is missing from the key store")
        if record.wrapped is None:
            return record.destroyed_at or self._sealer.now()
        return self._sealer.unwrap(subject, record)

    def _reveal(self, subject: str, state: SubjectState, live: bool,
                evidence: bool = True, record: KeyRecord | _Unread | None = _UNREAD
                ) -> SubjectState:
        """`live`: the state decisions use now (a destroyed key means erased); otherwise a
        past state for replay (opened if it still can be, never marked erased)."""
        if state.profile.erased_at is not None:
            return _stripped(state)
        if not _has_sealed(state):
            return state
        key = self._key_for_read(subject, record)
        if isinstance(key, datetime):
            return _stripped(state, key if live else None)
        return self._open_state(subject, state, key, evidence)

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        if self._load_with_key is not None:
            state, row = self._load_with_key(subject)
            record = KeyRecord(*row) if row is not None else None
            return self._reveal(subject, state, live=True, evidence=evidence, record=record)
        return self._reveal(subject, self._inner.load(subject), live=True, evidence=evidence)

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        return self._reveal(subject, self._inner.state_at(subject, sequence), live=False)

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]:
        events = self._inner.history(subject, after_sequence, limit)
        if not any(e.evidence or e.sealed_evidence for e in events):
            return events
        if self._inner.load(subject).profile.erased_at is not None:
            return [_strip_event(e) for e in events]
        if not any(e.sealed_evidence for e in events):
            return events
        key = self._key_for_read(subject)
        if isinstance(key, datetime):
            return [_strip_event(e) for e in events]
        return [self._open_event(subject, e, key) for e in events]

    # -- erasure and pass-through ---------------------------------------------------------

    def erase(self, subject: str) -> None:
        """Destroy the subject's key: their sealed values can never be read again."""
        self._sealer.destroy(subject)

    def recorded_erasure(self, subject: str) -> datetime | None:
        return self._inner.load(subject).profile.erased_at

    @property
    def partitions(self) -> int:
        return self._inner.partitions

    def head(self) -> int:
        return self._inner.head()

    def heads(self) -> tuple[int, ...]:
        return self._inner.heads()

    def identity(self) -> str:
        return self._inner.identity()

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        return self._inner.first_recorded(subjects)

    def tips(self) -> tuple[tuple[int, int, str], ...]:
        return self._inner.tips()

    def verify(self, held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
        return self._inner.verify(held)

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        return self._inner.changes(after, limit)

    def exclusive(self, partitions: Iterable[int],
                  lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        return self._inner.exclusive(partitions, lazy)

    def meta(self, key: str) -> str | None:
        return self._inner.meta(key)

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        return self._inner.swap_meta(key, expected, value)

    def close(self) -> None:
        self._inner.close()
        self._sealer.close()
