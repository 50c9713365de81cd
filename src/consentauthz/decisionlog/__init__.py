"""The durable, hash-chained decision log: record format, writer, reader."""

from .log import DecisionLog, MemoryDecisionLog
from .record import FORMAT_VERSION, entry_hash, record_from_dict, record_to_dict
from .sqlite import SqliteDecisionLog

__all__ = [
    "FORMAT_VERSION",
    "DecisionLog",
    "MemoryDecisionLog",
    "SqliteDecisionLog",
    "entry_hash",
    "record_from_dict",
    "record_to_dict",
]
