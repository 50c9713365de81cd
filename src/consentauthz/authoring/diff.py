"""Impact analysis: replay logged decisions against a candidate policy.

Each decision is re-evaluated with the consent state it saw (the ledger replayed up to its
consistency token), at the time it was made, for the same purpose, data category,
jurisdiction and request context. What would flip is listed, grouped by direction,
purpose, regime and the rules involved, so a policy author sees the consequence of a
change before it ships.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..consent import Ledger
from ..decisionlog import DecisionLog
from ..decisionlog.record import request_of
from ..domain import Decision, DecisionQuery, DecisionRecord, SubjectState
from ..engine import CompiledPolicy
from ..errors import InvalidArgument
from ..validation import validate_check

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Change:
    record: DecisionRecord
    now: Decision

    @property
    def direction(self) -> str:
        return f"{self.record.decision.value}->{self.now.effect.value}"

    @property
    def new_rule(self) -> str:
        rule = self.now.matched_rule
        return f"{rule.file}:{rule.line}" if rule else "(no rule)"

    @property
    def old_rule(self) -> str:
        return self.record.matched_rule.split(": ", 1)[0] or "(no rule)"


@dataclass(slots=True)
class DiffReport:
    candidate_version: str
    replayed: int = 0
    unchanged: int = 0
    flips: list[Change] = field(default_factory=list)
    #: same decision, different reason (for example a different deny)
    reason_changes: list[Change] = field(default_factory=list)
    #: the candidate no longer knows the request's purpose or category
    undecidable: list[DecisionRecord] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    versions_seen: Counter[str] = field(default_factory=Counter)

    def groups(self) -> list[tuple[tuple[str, str, str, str, str], list[Change]]]:
        grouped: dict[tuple[str, str, str, str, str], list[Change]] = {}
        for c in self.flips:
            key = (c.direction, c.record.purpose, c.record.regime, c.old_rule, c.new_rule)
            grouped.setdefault(key, []).append(c)
        return sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _records(log: DecisionLog, query: DecisionQuery, limit: int | None) -> Iterator[DecisionRecord]:
    seen = 0
    before = 0
    while True:
        page = log.query(replace(query, limit=_PAGE, before_sequence=before))
        for record in page:
            yield record
            seen += 1
            if limit is not None and seen >= limit:
                return
        if len(page) < _PAGE:
            return
        before = page[-1].sequence


def diff(log: DecisionLog, ledger: Ledger, candidate: CompiledPolicy,
         query: DecisionQuery | None = None, *, limit: int | None = None,
         sample: float | None = None, seed: int = 0) -> DiffReport:
    query = query or DecisionQuery()
    report = DiffReport(candidate.version)
    rng = random.Random(seed)
    states: dict[tuple[str, int], SubjectState] = {}
    taxonomy = candidate.policy.taxonomy
    for record in _records(log, query, limit):
        if sample is not None and rng.random() >= sample:
            continue
        report.replayed += 1
        report.versions_seen[record.policy_version] += 1
        report.first = min(report.first or record.time, record.time)
        report.last = max(report.last or record.time, record.time)
        request = request_of(record)
        try:
            validate_check(request, taxonomy)
        except InvalidArgument:
            report.undecidable.append(record)
            continue
        key = (record.subject, record.consistency_token)
        state = states.get(key)
        if state is None:
            state = states[key] = ledger.state_at(record.subject, record.consistency_token)
        now = candidate.decide(request, state, record.time)
        change = Change(record, now)
        if now.effect is not record.decision:
            report.flips.append(change)
        elif now.reason is not record.reason:
            report.reason_changes.append(change)
        else:
            report.unchanged += 1
    return report


def format_report(report: DiffReport, examples: int = 3) -> str:
    lines = [f"replayed {report.replayed} decision(s)"
             + (f" from {report.first.isoformat()} to {report.last.isoformat()}"
                if report.first and report.last else "")
             + f" against candidate {report.candidate_version[:12]}"]
    if report.versions_seen:
        made = ", ".join(f"{v[:12]} ({n})" for v, n in report.versions_seen.most_common())
        lines.append(f"  made by policy version(s): {made}")
    by_direction = Counter(c.direction for c in report.flips)
    lines.append(f"would flip: {len(report.flips)}"
                 + (f" ({', '.join(f'{d} {n}' for d, n in sorted(by_direction.items()))})"
                    if by_direction else "")
                 + f"; reason changes only: {len(report.reason_changes)}; unchanged: "
                 f"{report.unchanged}; not decidable under the candidate: "
                 f"{len(report.undecidable)}")
    for (direction, purpose, regime, old, new), changes in report.groups():
        ids = ", ".join(c.record.decision_id for c in changes[:examples])
        reasons = Counter(f"{c.record.reason.value}->{c.now.reason.value}" for c in changes)
        lines.append(f"  {direction:<11} {len(changes):>6}  purpose {purpose}  regime {regime}"
                     f"  rule {old} -> {new}  ({', '.join(reasons)})")
        lines.append(f"              e.g. {ids}")
    return "\n".join(lines)


def report_json(report: DiffReport) -> dict[str, object]:
    def change(c: Change) -> dict[str, object]:
        return {
            "decision_id": c.record.decision_id, "time": c.record.time.isoformat(),
            "purpose": c.record.purpose, "data_category": c.record.data_category,
            "jurisdiction": c.record.jurisdiction, "regime": c.record.regime,
            "was": {"decision": c.record.decision.value, "reason": c.record.reason.value,
                    "rule": c.record.matched_rule, "policy_version": c.record.policy_version},
            "now": {"decision": c.now.effect.value, "reason": c.now.reason.value,
                    "rule": str(c.now.matched_rule or "")},
        }

    return {
        "candidate_version": report.candidate_version, "replayed": report.replayed,
        "unchanged": report.unchanged, "flips": [change(c) for c in report.flips],
        "reason_changes": [change(c) for c in report.reason_changes],
        "undecidable": [r.decision_id for r in report.undecidable],
        "groups": [{"direction": k[0], "purpose": k[1], "regime": k[2], "old_rule": k[3],
                    "new_rule": k[4], "count": len(v)} for k, v in report.groups()],
    }
