"""Look decisions up by id, and query them by subject (pseudonymised on the way in)."""

from __future__ import annotations

from dataclasses import replace

from ..decisionlog import DecisionLog
from ..domain import DecisionQuery, DecisionRecord
from ..errors import InvalidArgument, NotFound
from ..pseudonym import Pseudonymizer
from ..validation import MAX_KEY, Violations, check_page_size, check_subject_id, parse_token

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
        v = Violations()
        if subject_id:
            check_subject_id(v, subject_id)
        for field, value in (("purpose", query.purpose), ("data_category", query.data_category),
                             ("reason", query.reason), ("caller", query.caller)):
            if len(value) > MAX_KEY:
                v.add(field, f"is longer than {MAX_KEY} characters")
        if query.start and query.end and query.end <= query.start:
            v.add("end_time", "must be after start_time")
        v.raise_if_any()
        size = check_page_size(page_size)
        before = parse_token(page_token, "page_token")
        # A subject may have been seen under any key of the ring (rotation): ask for each
        # pseudonym and merge, newest first.
        subjects = self._pseudonymize.all(subject_id) if subject_id else ("",)
        pages = [self._log.query(replace(query, subject=s, limit=size + 1,
                                         before_sequence=before)) for s in subjects]
        found = sorted((r for page in pages for r in page), key=lambda r: -r.sequence)
        more = len(found) > size
        found = found[:size]
        return found, (str(found[-1].sequence) if more and found else "")
