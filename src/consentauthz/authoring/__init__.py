"""The policy authors' wing: test suites and coverage, lint, matrix, impact diff."""

from .report import print_report, write_junit
from .runner import CaseResult, RunResult, run_case, run_suites, state_for
from .suite import Case, Suite, load_suites

__all__ = [
    "Case",
    "CaseResult",
    "RunResult",
    "Suite",
    "load_suites",
    "print_report",
    "run_case",
    "run_suites",
    "state_for",
    "write_junit",
]
