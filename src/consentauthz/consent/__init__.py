"""Consent state: the durable ledger (system of record), its projection, the caches."""

from .cache import LocalCache
from .ledger import AppendResult, Idempotency, Ledger, MemoryLedger
from .service import ConsentService
from .sqlite import SqliteLedger

__all__ = [
    "AppendResult",
    "ConsentService",
    "Idempotency",
    "Ledger",
    "LocalCache",
    "MemoryLedger",
    "SqliteLedger",
]
