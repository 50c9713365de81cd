"""Re-evaluate a logged decision with exactly the inputs it had: the policy version that
made it (kept content-addressed), the consent state at its consistency token (the ledger
replayed), its time, request and context."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..consent import Ledger
from ..decisionlog.record import request_of
from ..domain import Decision, DecisionRecord
from ..engine import CompiledPolicy
from ..policy import PolicyStore


@dataclass(frozen=True, slots=True)
class Replay:
    record: DecisionRecord
    decision: Decision
    #: what differs between the logged decision and the replay (empty: confirmed)
    differences: tuple[str, ...]

    @property
    def confirmed(self) -> bool:
        return not self.differences


class Replayer:
    def __init__(self, ledger: Ledger, store: PolicyStore) -> None:
        self._ledger = ledger
        self._store = store
        self._compiled: dict[str, CompiledPolicy] = {}
        self._lock = threading.Lock()

    def policy(self, version: str) -> CompiledPolicy:
        with self._lock:
            found = self._compiled.get(version)
        if found is None:
            found = CompiledPolicy(self._store.load(version))
            with self._lock:
                self._compiled[version] = found
        return found

    def replay(self, record: DecisionRecord) -> Replay:
        policy = self.policy(record.policy_version)
        state = self._ledger.state_at(record.subject, record.consistency_token)
        decision = policy.decide(request_of(record, explain=True), state, record.time)
        rule = str(decision.matched_rule) if decision.matched_rule else ""
        differences = [
            f"{name}: logged {was!r}, replayed {now!r}"
            for name, was, now in (
                ("decision", record.decision.value, decision.effect.value),
                ("reason", record.reason.value, decision.reason.value),
                ("legal_basis", record.legal_basis, decision.legal_basis),
                ("matched_rule", record.matched_rule, rule),
                ("regime", record.regime, decision.regime),
                ("consent_record_ids", list(record.consent_record_ids),
                 list(decision.consent_record_ids)),
            ) if was != now]
        return Replay(record, decision, tuple(differences))
