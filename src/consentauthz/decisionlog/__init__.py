"""The durable, hash-chained decision log: record format, writer, reader, verification."""

from .log import DecisionLog, MemoryDecisionLog, VerifiableLog
from .record import FORMAT_VERSION, entry_hash, record_from_dict, record_to_dict
from .retention import RetentionJob, RetentionMark
from .sqlite import SqliteDecisionLog
from .verify import BrokenEntry, Checkpoint, Problem, VerifyResult
from .writer import QueuedDecisionLog

__all__ = [
    "FORMAT_VERSION",
    "BrokenEntry",
    "Checkpoint",
    "DecisionLog",
    "MemoryDecisionLog",
    "Problem",
    "QueuedDecisionLog",
    "RetentionJob",
    "RetentionMark",
    "SqliteDecisionLog",
    "VerifiableLog",
    "VerifyResult",
    "entry_hash",
    "record_from_dict",
    "record_to_dict",
]
