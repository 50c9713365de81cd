"""Consent state: the durable ledger (system of record), its projection, the caches."""

from .cache import LocalCache
from .fingerprints import KeyKind, KeyMismatch, RingCheck, check_key_ring
from .freshness import Freshness, LedgerPoller, SoleWriter
from .ledger import AppendResult, Changes, Idempotency, Ledger, MemoryLedger
from .postgres import PostgresLedger
from .redis_cache import EntryCipher, InvalidationListener, RedisStateCache
from .sealing import (
    KeyStore,
    MasterKeys,
    MemoryKeyStore,
    PostgresKeyStore,
    Sealer,
    SealingLedger,
    SqliteKeyStore,
    parse_master_ring,
)
from .service import ConsentService
from .sqlite import SqliteLedger

__all__ = [
    "AppendResult",
    "Changes",
    "ConsentService",
    "EntryCipher",
    "Freshness",
    "Idempotency",
    "InvalidationListener",
    "KeyKind",
    "KeyMismatch",
    "KeyStore",
    "Ledger",
    "LedgerPoller",
    "LocalCache",
    "MasterKeys",
    "MemoryKeyStore",
    "MemoryLedger",
    "PostgresKeyStore",
    "PostgresLedger",
    "RedisStateCache",
    "RingCheck",
    "Sealer",
    "SealingLedger",
    "SoleWriter",
    "SqliteKeyStore",
    "SqliteLedger",
    "check_key_ring",
    "parse_master_ring",
]
