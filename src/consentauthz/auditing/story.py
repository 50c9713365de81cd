"""`audit show`: the whole story of one decision, as an auditor needs it months later."""

from __future__ import annotations

from dataclasses import dataclass

from ..consent import Ledger
from ..domain import ConsentEvent, DecisionRecord
from .replay import Replay, Replayer


@dataclass(frozen=True, slots=True)
class Story:
    record: DecisionRecord
    #: the consent records the decision rests on, with their evidence
    consent_records: tuple[ConsentEvent, ...]
    #: every other record in effect for the subject at the time
    other_records: tuple[ConsentEvent, ...]
    #: the replay with the same inputs, with its plain-language explanation
    replay: Replay


def tell(record: DecisionRecord, ledger: Ledger, replayer: Replayer) -> Story:
    state = ledger.state_at(record.subject, record.consistency_token)
    named = set(record.consent_record_ids)
    return Story(
        record=record,
        consent_records=tuple(e for e in state.events if e.record_id in named),
        other_records=tuple(e for e in state.events if e.record_id not in named),
        replay=replayer.replay(record))
