"""Consent state: the durable ledger (system of record), its projection, the caches."""

from .cache import LocalCache
from .freshness import Freshness, LedgerPoller, SoleWriter
from .ledger import AppendResult, Idempotency, Ledger, MemoryLedger
from .postgres import PostgresLedger
from .redis_cache import InvalidationListener, RedisStateCache
from .service import ConsentService
from .sqlite import SqliteLedger

__all__ = [
    "AppendResult",
    "ConsentService",
    "Freshness",
    "Idempotency",
    "InvalidationListener",
    "Ledger",
    "LedgerPoller",
    "LocalCache",
    "MemoryLedger",
    "PostgresLedger",
    "RedisStateCache",
    "SoleWriter",
    "SqliteLedger",
]
