"""The auditors' use cases over a decision log, a consent ledger and the kept policy
versions: the same object serves `AuditService` and the offline `audit --data-dir` CLI."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..chain import ChainReport
from ..consent import Ledger
from ..consent.ledger import partition_of
from ..decisionlog import Checkpoint, VerifiableLog
from ..domain import ConsentEvent, DecisionQuery, DecisionRecord
from ..policy import PolicyStore
from ..pseudonym import Pseudonymizer
from ..validation import check_subject_only, format_token
from .export import export_document
from .reader import AuditReader
from .replay import Replay, Replayer
from .report import SubjectReport, build_report
from .story import Story, tell

_PAGE = 1000


class Auditor(AuditReader):
    def __init__(self, log: VerifiableLog, ledger: Ledger, store: PolicyStore,
                 pseudonymize: Pseudonymizer, clock: Callable[[], datetime]) -> None:
        super().__init__(log, pseudonymize)
        self._store = log
        self._ledger = ledger
        self._replayer = Replayer(ledger, store)
        self._clock = clock

    @property
    def partitions(self) -> int:
        """The consent ledger's partitions (a decision's token names its subject's)."""
        return self._ledger.partitions

    def replay(self, decision_id: str) -> Replay:
        return self._replayer.replay(self.get(decision_id))

    def story(self, decision_id: str) -> Story:
        return tell(self.get(decision_id), self._ledger, self._replayer)

    def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> list[ChainReport]:
        return [self._store.verify(checkpoints).to_chain_report("decision log"),
                self._ledger.verify([head for c in checkpoints for head in c.ledger])]

    def checkpoint(self) -> Checkpoint:
        """The decision log's head and every consent-ledger partition's head."""
        return replace(self._store.checkpoint(), ledger=self._ledger.tips())

    def _all_decisions(self, subject: str) -> Iterator[DecisionRecord]:
        before = 0
        while True:
            page = self._log.query(DecisionQuery(subject=subject, limit=_PAGE,
                                                 before_sequence=before))
            yield from page
            if len(page) < _PAGE:
                return
            before = page[-1].sequence

    def export(self, subject_id: str) -> dict[str, Any]:
        """Everything held on the subject (GDPR Art. 15/20), under every key of the ring."""
        check_subject_only(subject_id)
        pseudonyms = self._pseudonymize.all(subject_id)
        held = [(p, self._ledger.load(p)) for p in pseudonyms]
        decisions = sorted((d for p in pseudonyms for d in self._all_decisions(p)),
                           key=lambda r: r.sequence)
        parts = self._ledger.partitions
        records = self._records(pseudonyms)
        # Each record's consistency token names its pseudonym's ledger partition.
        tokens = {e.record_id: format_token(partition_of(p, parts), e.sequence, parts)
                  for p, e in records}
        return export_document(subject_id, held, [e for _, e in records], decisions,
                               self._clock(), tokens)

    def _records(self, pseudonyms: Sequence[str]) -> list[tuple[str, ConsentEvent]]:
        """Every consent record under these pseudonyms, with its pseudonym, in the order
        they were recorded (positions of different partitions are not comparable)."""
        found: list[tuple[str, ConsentEvent]] = []
        for p in pseudonyms:
            after = 0
            while True:
                page = self._ledger.history(p, after, _PAGE)
                found.extend((p, e) for e in page)
                if len(page) < _PAGE:
                    break
                after = page[-1].sequence
        if self._ledger.partitions == 1:
            found.sort(key=lambda pe: pe[1].sequence)
        else:
            found.sort(key=lambda pe: (pe[1].recorded_at, pe[1].sequence))
        return found

    def _history(self, pseudonyms: Sequence[str]) -> list[ConsentEvent]:
        return [e for _, e in self._records(pseudonyms)]

    def subject_report(self, subject_id: str) -> SubjectReport:
        check_subject_only(subject_id)
        pseudonyms = self._pseudonymize.all(subject_id)
        decisions = heapq.merge(*(self._all_decisions(p) for p in pseudonyms),
                                key=lambda r: -r.sequence)
        return build_report(decisions, self._history(pseudonyms), self._clock())

