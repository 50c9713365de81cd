"""The consent ledger boundary: append-only records, a projection, partitioned positions.

A ledger has a fixed number of partitions, chosen when it is made; a subject's partition
follows from its pseudonym (`partition_of`). Each partition has its own sequence, hash
chain and write order, so writes to different partitions never wait for each other. A
record's position is its partition's sequence number: the subject's consistency token
(consent/tokens.py names the partition too). Positions of different partitions are not
comparable; nothing in the ledger spans partitions. Three implementations share this
contract (tests/unit/test_ledger_contract.py): SQLite, the embedded default; PostgreSQL,
shared by replicas; and an in-memory twin for tests.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from ..chain import GENESIS, ChainReport, link
from ..domain import ConsentEvent, SubjectProfile, SubjectState
from ..errors import ConsentAuthzError, InvalidArgument
from .codec import (
    event_from_dict,
    event_to_dict,
    profile_from_dict,
    profile_to_dict,
    state_from_json,
)
from .migration import Migration
from .projection import apply_event, apply_profile


@dataclass(frozen=True, slots=True)
class Idempotency:
    #: Already pseudonymised: callers sometimes put personal data in their keys.
    key: str
    request_hash: str
    #: The same key under the older keys of the pseudonymisation ring.
    older_keys: tuple[str, ...] = ()

    @property
    def all_keys(self) -> tuple[str, ...]:
        return (self.key, *self.older_keys)


@dataclass(frozen=True, slots=True)
class AppendResult:
    record_id: str
    sequence: int
    state: SubjectState
    #: True when the idempotency key matched an earlier write (nothing was appended).
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One consent event of a batch (Ledger.append_batch)."""

    subject: str
    event: ConsentEvent
    idempotency: Idempotency | None = None


#: What a batch gives back for each item: its append, or why it was not made (its
#: idempotency key was used for another request; the subject was erased).
BatchResult = AppendResult | ConsentAuthzError


@dataclass(frozen=True, slots=True)
class Changes:
    """What a ledger poll sees, from one consistent snapshot."""

    #: The ledger's identity (`Ledger.identity`): another one means another database.
    identity: str
    #: Every partition's head, by partition number.
    heads: tuple[int, ...]
    #: (partition, seq, subject) of the entries after the positions asked about, by
    #: partition and then oldest first.
    entries: list[tuple[int, int, str]]

    @property
    def head(self) -> int:
        """How many entries the ledger holds (all partitions)."""
        return sum(self.heads)


#: Partitions a ledger may have (the number is fixed when it is made).
MAX_PARTITIONS = 1024


def partition_of(subject: str, partitions: int) -> int:
    """The partition a subject's records live in: the first four bytes of its pseudonym's
    digest (an HMAC already, so uniform) modulo the number of partitions. Anything that is
    not a pseudonym (tests name subjects "alice") is hashed first."""
    if partitions == 1:
        return 0
    digest = subject.rpartition(":")[2]
    try:
        value = int(digest[:8], 16) if len(digest) >= 8 else -1
    except ValueError:
        value = -1
    if value < 0:
        value = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big")
    return value % partitions


def check_partitions(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"a ledger has 1 to {MAX_PARTITIONS} partitions, not {partitions}")
    return partitions


def heads_digest(tips: Sequence[tuple[int, int, str]]) -> str:
    """One hash over every partition's (partition, head, head hash): what a checkpoint of a
    partitioned ledger holds, so that truncating or rewriting any partition is caught. A
    ledger of one partition is its chain's head hash, as before partitions."""
    if len(tips) == 1:
        return tips[0][2]
    text = "".join(f"{part}:{seq}:{entry_hash}\n" for part, seq, entry_hash in tips)
    return hashlib.sha256(text.encode()).hexdigest()


class Ledger(Protocol):
    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None, *,
                       read: SubjectState | None = None) -> AppendResult:
        """`read`: the subject's stored state as the caller has just read it from this
        ledger (`load`), a hint: a ledger that appends against the state's version may use
        it instead of reading again. A stale one costs a retry, never a wrong record."""
        ...

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime, *,
                       read: SubjectState | None = None) -> AppendResult: ...

    def append_batch(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        """Many consent events of subjects of one partition, in order, in one transaction:
        all of them are recorded or none (an error of the ledger), except an item that
        cannot be (its result says why: an idempotency key already used for another
        request), which changes nothing. A retried item returns its earlier record."""
        ...

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        """The subject's state, current as of the head. `evidence`: the caller will show
        the evidence (a ledger that seals it opens it only then)."""
        ...

    @property
    def partitions(self) -> int:
        """How many partitions the ledger has (fixed when it was made)."""
        ...

    def head(self) -> int:
        """How many entries the ledger holds (all partitions)."""
        ...

    def heads(self) -> tuple[int, ...]:
        """Every partition's head (its newest position), by partition number."""
        ...

    def identity(self) -> str:
        """A random id made with the ledger (when its schema is created) and kept with it (a
        restored backup keeps it; a new database has another): what tells one ledger's
        positions from another's. A read: never creates anything."""
        ...

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        """Of these pseudonyms, the one with the oldest ledger entry (None: none has any;
        across partitions, the earliest recorded). The answer for a pseudonym that has
        entries never changes: a pseudonym without any can only ever get a newer first
        entry."""
        ...

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]: ...

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        """The subject's state exactly as it was at position `sequence` of its partition
        (replay)."""
        ...

    def tips(self) -> tuple[tuple[int, int, str], ...]:
        """(partition, head, the head entry's hash) of every partition, in order: what a
        checkpoint holds of the ledger."""
        ...

    def verify(self, held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
        """Recompute every partition's hash chain; report the first entry that does not
        verify. The report's head hash covers every partition's head (heads_digest).
        `held`: (partition, position, entry hash) from checkpoints a third party kept:
        each must still be in its partition's chain, so a partition cut short (its head
        row moved back with it) is caught."""
        ...

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        """The identity, every partition's head, and (partition, seq, subject) of the
        entries after `after` (a position per partition), at most `limit` of them; all
        from one consistent snapshot."""
        ...

    def exclusive(self, partitions: Iterable[int],
                  lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        """Hold these partitions' write order across the block: appends to them made inside
        it and whatever the caller does after them inside it (the Redis write-through)
        happen before any other writer's append to them, on every replica sharing this
        ledger. Other partitions are not held up. `lazy`: the order need only hold from
        the block's first append on (nothing the block does before it needs the order; a
        ledger may then take it with that append). Not re-entrant per thread by
        contract."""
        ...

    def meta(self, key: str) -> str | None:
        """A value of the ledger's small key/value table (`ledger_meta`): facts about the
        ledger as a whole, kept with it (key fingerprints, ...). None: not set."""
        ...

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        """Set `key` to `value` if it is `expected` now (None: not set), atomically for
        every replica sharing the ledger; False (and nothing changed) otherwise."""
        ...

    def close(self) -> None: ...


def check_one_partition(items: Sequence[BatchItem], partitions: int) -> int:
    """The one partition a batch's subjects are in (ValueError: several)."""
    parts = {partition_of(item.subject, partitions) for item in items}
    if len(parts) != 1:
        raise ValueError("a batch holds the events of one ledger partition")
    return parts.pop()


def entry_payload(seq: int, subject: str, kind: str, record_id: str, recorded_at: str,
                  body: dict[str, Any]) -> dict[str, Any]:
    """What a ledger entry's hash covers."""
    return {"seq": seq, "subject": subject, "kind": kind, "record_id": record_id,
            "recorded_at": recorded_at, "body": body}


def replay(entries: Iterable[tuple[int, str, dict[str, Any]]], sequence: int) -> SubjectState:
    """Fold (seq, kind, body) ledger entries, oldest first, into the projected state."""
    state = SubjectState()
    for seq, kind, body in entries:
        if kind == "consent":
            state = apply_event(state, event_from_dict(body))
        else:
            state = apply_profile(state, profile_from_dict(body), seq)
    return replace(state, sequence=sequence)


def verify_entries(rows: Sequence[Sequence[Any]], projections: Mapping[str, str],
                   partitions: int = 1,
                   stored_heads: Mapping[int, tuple[int, str]] | None = None,
                   held: Sequence[tuple[int, int, str]] = (),
                   migration: Migration | None = None) -> ChainReport:
    """Check stored ledger rows (part, seq, record_id, subject, kind, body, recorded_at,
    prev_hash, entry_hash; by partition, oldest first), the partitions' stored heads
    (part -> (seq, entry_hash), where the ledger keeps them) and the stored projections
    against each other; for a migrated ledger, also the old chain the moved entries made
    (consent/migration.py).

    The projection is what decisions read, so a tampered projection is tampering too.
    """
    by_part: dict[int, list[Sequence[Any]]] = {p: [] for p in range(partitions)}
    for row in rows:
        part = int(row[0])
        if part not in by_part:
            return ChainReport("consent ledger", False, len(rows), 0, GENESIS, int(row[1]),
                               str(row[2]), f"an entry of partition {part}, which the "
                               f"ledger does not have")
        by_part[part].append(row)
    tips: list[tuple[int, int, str]] = []
    per_subject: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    heads: dict[str, int] = {}
    moved: dict[int, Sequence[Any]] = {}
    for part, part_rows in by_part.items():
        report = _verify_partition(part, partitions, part_rows, per_subject, migration,
                                   moved)
        if isinstance(report, str):
            seq, record_id, problem = _broken_at(part_rows, report)
            where = f"partition {part}: " if partitions > 1 else ""
            return ChainReport("consent ledger", False, len(rows), 0, GENESIS, seq,
                               record_id, where + problem)
        head, tip = report
        if stored_heads is not None and stored_heads.get(part, (0, GENESIS)) != (head, tip):
            last = part_rows[-1] if part_rows else None
            where = f"partition {part}: " if partitions > 1 else ""
            return ChainReport(
                "consent ledger", False, len(rows), 0, GENESIS,
                int(last[1]) if last else 0, str(last[2]) if last else "",
                where + "the stored head does not match the chain (entries removed?)")
        tips.append((part, head, tip))
        for subject in {str(r[3]) for r in part_rows}:
            heads[subject] = head
    total = sum(h for _, h, _ in tips)
    digest = heads_digest(tips)
    old_chain: list[str] = []
    if migration is not None:
        found = _old_chain(migration, moved, old_chain)
        if found is not None:
            return ChainReport("consent ledger", False, len(rows), total, digest,
                               found[0], found[1], found[2])
    chains = {part: Chain([(int(r[1]), str(r[8])) for r in part_rows],
                          migration.anchor(part) if migration else GENESIS,
                          migration.head if migration else 0)
              for part, part_rows in by_part.items()}
    for problem in held_problems(held, chains, partitions, old_chain):
        return ChainReport("consent ledger", False, len(rows), total, digest, None, "",
                           problem)
    missing = sorted(set(per_subject) - set(projections))
    if missing:
        last_seq = per_subject[missing[0]][-1][0]
        return ChainReport("consent ledger", False, len(rows), total, digest, last_seq, "",
                           "a subject with records has no projection (deleted?)")
    for subject, stored in projections.items():
        entries = per_subject.get(subject, [])
        head = heads.get(subject, tips[partition_of(subject, partitions)][1]
                         if partitions else 0)
        rebuilt = replay(entries, head)
        try:
            current = state_from_json(stored, head)
        except (ValueError, KeyError):
            current = None
        if current != rebuilt:
            last_seq = entries[-1][0] if entries else 0
            return ChainReport("consent ledger", False, len(rows), total, digest, last_seq,
                               "", "the projection of a subject differs from its records")
    return ChainReport("consent ledger", True, len(rows), total, digest)


@dataclass(frozen=True, slots=True)
class Chain:
    """One partition's chain as verification sees it: (position, entry hash) of its
    entries, oldest first, and the hash it starts from."""

    entries: Sequence[tuple[int, str]]
    start: str = GENESIS
    #: A migrated partition's head starts at the old ledger's head (consent/migration.py).
    floor: int = 0

    @classmethod
    def of(cls, hashes: Sequence[str]) -> Chain:
        """A gapless chain of these entry hashes, from position 1."""
        return cls(list(enumerate(hashes, start=1)))

    @property
    def head(self) -> int:
        return max(self.entries[-1][0] if self.entries else 0, self.floor)

    def hash_at(self, position: int) -> str:
        """The chain's head hash as of `position`: its newest entry at or below it."""
        i = bisect.bisect_right(self.entries, (position, "\uffff"))
        return self.entries[i - 1][1] if i else self.start


def held_problems(held: Sequence[tuple[int, int, str]], chains: Mapping[int, Chain],
                  partitions: int, old_chain: Sequence[str] = ()) -> list[str]:
    """What is wrong with held checkpoint heads against the partitions' chains. A
    checkpoint taken before a migration holds the old chain's head (partition 0, at or
    below the old head), which `old_chain` (its entry hashes by position) holds."""
    problems = []
    for part, position, entry_hash in held:
        where = f"partition {part}: " if partitions > 1 else ""
        chain = chains.get(part)
        if chain is None:
            problems.append(f"a held checkpoint names partition {part}, which the ledger "
                            "does not have")
        elif part == 0 and 0 < position <= len(old_chain) \
                and old_chain[position - 1] == entry_hash:
            continue  # the old chain's head, held before the migration
        elif position > chain.head:
            problems.append(f"{where}a held checkpoint is at position {position}, beyond "
                            f"the head {chain.head} (entries removed?)")
        elif position and chain.hash_at(position) != entry_hash:
            problems.append(f"{where}the held checkpoint says position {position} is "
                            f"{entry_hash[:16]}..., the chain has "
                            f"{chain.hash_at(position)[:16]}...")
    return problems


def _old_chain(migration: Migration, moved: Mapping[int, Sequence[Any]],
               hashes: list[str]) -> tuple[int, str, str] | None:
    """Recompute the chain the moved entries made before the migration (positions 1..its
    head, one sequence) into `hashes`; (seq, record_id, problem) when it is not the one
    the migration recorded."""
    prev = GENESIS
    for seq in range(1, migration.head + 1):
        row = moved.get(seq)
        if row is None:
            return seq, "", ("an entry moved by the migration is missing (its position "
                             "is gone from every partition)")
        _, _, record_id, subject, kind, body, recorded_at, _, _ = row
        prev = link(prev, entry_payload(seq, subject, kind, record_id, recorded_at,
                                        json.loads(body)))
        hashes.append(prev)
    if prev != migration.head_hash:
        return migration.head, "", ("the entries moved by the migration no longer make the "
                                    "chain it recorded")
    return None


def _broken_at(rows: Sequence[Sequence[Any]], found: str) -> tuple[int, str, str]:
    """(seq, record_id, problem) from _verify_partition's '<index>|<problem>'."""
    index, _, problem = found.partition("|")
    row = rows[int(index)]
    return int(row[1]), str(row[2]), problem


def _verify_partition(part: int, partitions: int, rows: Sequence[Sequence[Any]],
                      per_subject: dict[str, list[tuple[int, str, dict[str, Any]]]],
                      migration: Migration | None = None,
                      moved: dict[int, Sequence[Any]] | None = None
                      ) -> tuple[int, str] | str:
    """(head, head hash) of one partition's chain, or '<row index>|<problem>'. In a
    migrated ledger the moved entries (at or below the old head) keep their positions, so
    they only increase; the entries after them number on from the old head, gapless."""
    floor = migration.head if migration else 0
    prev, last = (migration.anchor(part) if migration else GENESIS), 0
    for i, row in enumerate(rows):
        _, seq, record_id, subject, kind, body, recorded_at, prev_hash, stored_hash = row
        expected_seq = max(last, floor) + 1
        if seq != expected_seq and not last < seq <= floor:
            return f"{i}|sequence gap: expected {expected_seq}"
        if prev_hash != prev:
            return f"{i}|prev_hash does not link to the entry before"
        if partition_of(subject, partitions) != part:
            return f"{i}|the entry's subject belongs to another partition"
        try:
            parsed = json.loads(body)
        except ValueError:
            return f"{i}|unreadable record"
        if link(prev, entry_payload(seq, subject, kind, record_id, recorded_at,
                                    parsed)) != stored_hash:
            return f"{i}|content does not match its hash"
        per_subject.setdefault(subject, []).append((seq, kind, parsed))
        if seq <= floor and moved is not None:
            if seq in moved:
                return f"{i}|another partition has an entry at this moved position"
            moved[seq] = row
        prev, last = stored_hash, seq
    return max(last, floor), prev


def idempotency_conflict() -> InvalidArgument:
    return InvalidArgument.single(
        "idempotency_key", "was already used for a different request")


class MemoryLedger:
    """A real ledger held in memory: same contract as SqliteLedger, nothing on disk."""

    def __init__(self, partitions: int = 1) -> None:
        self._identity = secrets.token_hex(8)
        self._partitions = check_partitions(partitions)
        self._lock = threading.Lock()
        #: per partition: (subject, kind, item, hash) in order
        self._entries: list[list[tuple[str, str, Any, str]]] = [[] for _ in range(partitions)]
        self._states: dict[str, SubjectState] = {}
        self._idempotency: dict[str, tuple[str, int, str]] = {}
        self._meta: dict[str, str] = {}
        self._first: dict[str, int] = {}  # subject -> when its first entry was made
        self._count = 0

    @property
    def partitions(self) -> int:
        return self._partitions

    def _part(self, subject: str) -> list[tuple[str, str, Any, str]]:
        return self._entries[partition_of(subject, self._partitions)]

    def _append(self, subject: str, kind: str, record_id: str, recorded_at: datetime,
                body: dict[str, Any], item: Any) -> tuple[int, str]:
        entries = self._part(subject)
        seq = len(entries) + 1
        prev = entries[-1][3] if entries else GENESIS
        entry_hash = link(prev, entry_payload(seq, subject, kind, record_id,
                                              recorded_at.isoformat(), body))
        entries.append((subject, kind, item, entry_hash))
        self._count += 1
        self._first.setdefault(subject, self._count)
        return seq, entry_hash

    def append_consent(self, subject: str, event: ConsentEvent,
                       idempotency: Idempotency | None = None, *,
                       read: SubjectState | None = None) -> AppendResult:
        with self._lock:
            seen = next((self._idempotency[k] for k in idempotency.all_keys
                         if k in self._idempotency), None) if idempotency else None
            if seen is not None:
                record_id, seq, request_hash = seen
                assert idempotency is not None
                if request_hash != idempotency.request_hash:
                    raise idempotency_conflict()
                return AppendResult(record_id, seq, self._current(subject), replayed=True)
            seq = len(self._part(subject)) + 1
            ev = replace(event, sequence=seq)
            self._append(subject, "consent", ev.record_id, ev.recorded_at,
                         event_to_dict(ev), ev)
            state = apply_event(self._states.get(subject, SubjectState()), ev)
            self._states[subject] = state
            if idempotency is not None:
                self._idempotency[idempotency.key] = (
                    ev.record_id, seq, idempotency.request_hash)
            return AppendResult(ev.record_id, seq, replace(state, sequence=seq))

    def append_batch(self, items: Sequence[BatchItem]) -> list[BatchResult]:
        if not items:
            return []
        check_one_partition(items, self._partitions)
        results: list[BatchResult] = []
        for item in items:  # the caller holds the partition's order: nothing comes between
            try:
                results.append(self.append_consent(item.subject, item.event,
                                                   item.idempotency))
            except InvalidArgument as exc:
                results.append(exc)
        return results

    def append_profile(self, subject: str, profile: SubjectProfile, record_id: str,
                       recorded_at: datetime, *,
                       read: SubjectState | None = None) -> AppendResult:
        with self._lock:
            seq, _ = self._append(subject, "profile", record_id, recorded_at,
                                  profile_to_dict(profile), profile)
            state = apply_profile(self._states.get(subject, SubjectState()), profile, seq)
            self._states[subject] = state
            return AppendResult(record_id, seq, replace(state, sequence=seq))

    def _current(self, subject: str) -> SubjectState:
        return replace(self._states.get(subject, SubjectState()),
                       sequence=len(self._part(subject)))

    def load(self, subject: str, evidence: bool = False) -> SubjectState:
        with self._lock:
            return self._current(subject)

    def head(self) -> int:
        with self._lock:
            return self._count

    def heads(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(len(e) for e in self._entries)

    def identity(self) -> str:
        return self._identity

    def first_recorded(self, subjects: Sequence[str]) -> str | None:
        with self._lock:
            found = [(self._first[s], s) for s in subjects if s in self._first]
        return min(found)[1] if found else None

    def history(self, subject: str, after_sequence: int, limit: int) -> list[ConsentEvent]:
        with self._lock:
            found = [item for s, kind, item, _ in self._part(subject)
                     if s == subject and kind == "consent" and item.sequence > after_sequence]
            return found[:limit]

    def changes(self, after: Sequence[int], limit: int) -> Changes:
        found: list[tuple[int, int, str]] = []
        with self._lock:
            for part, entries in enumerate(self._entries):
                start = max(after[part], 0)
                for seq, entry in enumerate(entries[start:], start=start + 1):
                    if len(found) >= max(limit, 0):
                        break
                    found.append((part, seq, entry[0]))
            return Changes(self._identity, tuple(len(e) for e in self._entries), found)

    def exclusive(self, partitions: Iterable[int],
                  lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        # One process, and the caller already orders its writes per partition.
        return contextlib.nullcontext()

    def meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def swap_meta(self, key: str, expected: str | None, value: str) -> bool:
        with self._lock:
            if self._meta.get(key) != expected:
                return False
            self._meta[key] = value
            return True

    def tips(self) -> tuple[tuple[int, int, str], ...]:
        with self._lock:
            return tuple((p, len(e), e[-1][3] if e else GENESIS)
                         for p, e in enumerate(self._entries))

    def verify(self, held: Sequence[tuple[int, int, str]] = ()) -> ChainReport:
        with self._lock:
            parts = [list(e) for e in self._entries]
        for problem in held_problems(held, {p: Chain.of([e[3] for e in entries])
                                            for p, entries in enumerate(parts)},
                                     self._partitions):
            return ChainReport("consent ledger", False, self._count, self._count, "", None,
                               "", problem)
        tips: list[tuple[int, int, str]] = []
        for part, entries in enumerate(parts):
            prev = GENESIS
            for seq, (subject, kind, item, stored) in enumerate(entries, start=1):
                body = event_to_dict(item) if kind == "consent" else profile_to_dict(item)
                record_id = item.record_id if kind == "consent" else ""
                recorded = item.recorded_at.isoformat() if kind == "consent" else ""
                if kind == "consent" and link(prev, entry_payload(
                        seq, subject, kind, record_id, recorded, body)) != stored:
                    return ChainReport("consent ledger", False, self._count, seq - 1, prev,
                                       seq, record_id, "content does not match its hash")
                prev = stored
            tips.append((part, len(entries), prev))
        return ChainReport("consent ledger", True, self._count, self._count,
                           heads_digest(tips))

    def state_at(self, subject: str, sequence: int) -> SubjectState:
        with self._lock:
            entries = [(seq, kind, event_to_dict(item) if kind == "consent"
                        else profile_to_dict(item))
                       for seq, (s, kind, item, _) in enumerate(
                           self._part(subject)[:sequence], 1)
                       if s == subject]
        return replay(entries, sequence)

    def close(self) -> None:
        pass
