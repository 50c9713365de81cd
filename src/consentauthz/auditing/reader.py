"""Look decisions up by id, and query them by subject (pseudonymised on the way in)."""

from __future__ import annotations

from dataclasses import replace

from ..decisionlog import DecisionLog
from ..domain import DecisionQuery, DecisionRecord
from ..errors import InvalidArgument, NotFound
from ..pseudonym import Pseudonymizer
from ..validation import validate_query

MAX_DECISION_ID = 64


class AuditReader:
    def __init__(self, log: DecisionLog, pseudonymize: Pseudonymizer) -> None:
        self._log = log
        self._pseudonymize = pseudonymize

    def get(self, decision_id: str) -> DecisionRecord:
        if not decision_id or len(decision_id) > MAX_DECISION_ID or not decision_id.isprintable():
            raise InvalidArgument.single("decision_id", "is required (at most 64 characters)")
        found = self._log.get(decision_id)
        if found is None:
            raise NotFound("no decision with that decision_id")
        return found

    def query(self, query: DecisionQuery, subject_id: str, page_size: int,
              page_token: str) -> tuple[list[DecisionRecord], str]:
        size, before = validate_query(query, subject_id, page_size, page_token)
        # A subject may have been seen under any key of the ring (rotation): ask for each
        # pseudonym and merge, newest first.
        subjects = self._pseudonymize.all(subject_id) if subject_id else ("",)
        pages = [self._log.query(replace(query, subject=s, limit=size + 1,
                                         before_sequence=before)) for s in subjects]
        found = sorted((r for page in pages for r in page), key=lambda r: -r.sequence)
        more = len(found) > size
        found = found[:size]
        return found, (str(found[-1].sequence) if more and found else "")
