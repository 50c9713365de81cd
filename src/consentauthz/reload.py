"""Safe hot reload: a candidate policy goes live only if it loads, lints without errors
and its test suites pass; otherwise the last good version keeps serving."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .domain import PolicyReload, PolicyStatus
from .engine import CompiledPolicy
from .errors import PolicyError
from .metrics import NO_METRICS, Metrics
from .policy import PolicyStore, load_policy_set

log = logging.getLogger("consentauthz.policy")

#: (directory, compiled candidate) -> problems that keep it from going live
Gate = Callable[[Path, CompiledPolicy], Sequence[str]]


class PolicyHolder:
    """The active policy. Swapping is one reference assignment: no request sees half."""

    def __init__(self, compiled: CompiledPolicy, source: Path, loaded_at: datetime) -> None:
        self._current = compiled
        self._status = PolicyStatus(policy_version=compiled.version, loaded_at=loaded_at,
                                    source=str(source), rule_count=len(compiled.rules))

    def __call__(self) -> CompiledPolicy:
        return self._current

    @property
    def status(self) -> PolicyStatus:
        return self._status

    def swap(self, compiled: CompiledPolicy, at: datetime, attempt: PolicyReload) -> None:
        self._current = compiled
        self._status = replace(self._status, policy_version=compiled.version, loaded_at=at,
                               rule_count=len(compiled.rules), last_reload=attempt,
                               reloads_accepted=self._status.reloads_accepted + 1)

    def reject(self, attempt: PolicyReload) -> None:
        self._status = replace(self._status, last_reload=attempt,
                               reloads_rejected=self._status.reloads_rejected + 1)

    def set_watching(self, watching: bool) -> None:
        self._status = replace(self._status, watching=watching)


class PolicyReloader:
    def __init__(self, directory: Path, holder: PolicyHolder, store: PolicyStore, gate: Gate,
                 clock: Callable[[], datetime], metrics: Metrics = NO_METRICS) -> None:
        self._directory = directory
        self._holder = holder
        self._store = store
        self._gate = gate
        self._clock = clock
        self._lock = threading.Lock()
        self._metrics = metrics

    def reload(self) -> PolicyReload | None:
        """Try the directory's current content. None when it is the version already live."""
        with self._lock:
            now = self._clock()
            try:
                candidate = CompiledPolicy(load_policy_set(self._directory))
            except PolicyError as exc:
                return self._reject(PolicyReload(now, False, "", exc.problems))
            if candidate.version == self._holder().version:
                return None
            problems = tuple(self._gate(self._directory, candidate))
            if problems:
                return self._reject(PolicyReload(now, False, candidate.version, problems))
            self._store.save(candidate.policy)
            self._store.set_live(candidate.version)
            attempt = PolicyReload(now, True, candidate.version)
            self._holder.swap(candidate, now, attempt)
            self._metrics.policy_reload(accepted=True)
            log.info("policy %s is live (%d rules)", candidate.version[:12],
                     len(candidate.rules))
            return attempt

    def _reject(self, attempt: PolicyReload) -> PolicyReload:
        self._holder.reject(attempt)
        self._metrics.policy_reload(accepted=False)
        log.error("policy %s refused; %s keeps serving:\n  %s",
                  attempt.policy_version[:12] or "(unloadable)",
                  self._holder().version[:12], "\n  ".join(attempt.problems))
        return attempt
