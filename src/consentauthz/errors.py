"""One exception hierarchy for the whole service; server/ maps it to gRPC status codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ConsentAuthzError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ConsentAuthzError):
    """Bad input. Names every offending field; nothing was changed."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(ConsentAuthzError):
    """The thing asked for does not exist."""


class Unavailable(ConsentAuthzError):
    """A dependency (ledger, decision log) cannot serve now; the caller may retry."""


class ResourceExhausted(ConsentAuthzError):
    """The answer would be larger than the service gives in one response (the message
    names the limit and what to use instead)."""


class TokenAhead(Unavailable):
    """The ledger answered, and a consistency token names a position it does not hold yet
    (another replica's write this one cannot see yet, or a token of a ledger that went
    back): the item's own error, never an outage of the whole batch."""


class SubjectErased(ConsentAuthzError):
    """The subject was erased (GDPR Art. 17): nothing more is recorded about them."""


class PolicyError(ConsentAuthzError):
    """A policy pack does not load or validate. Carries `file:line: message` entries."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(ConsentAuthzError):
    """Configuration is missing or inconsistent."""
