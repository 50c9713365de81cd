"""The projection of a subject's ledger records onto the state decisions need.

Records are kept in `event_order` (collected time, restrictions winning ties), whatever
order they arrived in. A record stops mattering once a record of the same kind that comes
after it in that order covers exactly the same purpose and data categories: the engine
only ever looks at the latest record that covers a request. Pre-ticked or implied grants
never displace a real choice (they are evidence, not consent), and neither does a grant
or opt-in collected after it was recorded (within the accepted clock skew): it counts
only from its collected time, and until then the record it would replace still counts.

PROJECTION_RULES names these rules: a ledger whose stored projections were made under
other rules rebuilds them from its records when it opens (consent/tables.py).
"""

from __future__ import annotations

from dataclasses import replace

from ..domain import (
    PERMISSION_ACTIONS,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
    event_order,
)

#: Version of the rules below; stored projections made under another version are rebuilt.
#: 1: arrival order. 2: event order (issue 12).
PROJECTION_RULES = "2"

_CHANNEL = {
    ConsentAction.GRANT: "consent",
    ConsentAction.WITHDRAW: "consent",
    ConsentAction.OBJECT: "consent",
    ConsentAction.OPT_OUT_OF_SALE: "sale",
    ConsentAction.OPT_IN_TO_SALE: "sale",
    ConsentAction.LIMIT_SENSITIVE: "limit",
}


def _is_valid_choice(ev: ConsentEvent) -> bool:
    return ev.action not in PERMISSION_ACTIONS or ev.method.is_valid_consent


def _same_scope(a: ConsentEvent, b: ConsentEvent) -> bool:
    return (_CHANNEL[a.action] == _CHANNEL[b.action] and a.purpose == b.purpose
            and set(a.data_categories) == set(b.data_categories))


def _displaces(later: ConsentEvent, earlier: ConsentEvent) -> bool:
    if later.action in PERMISSION_ACTIONS and later.collected_at > later.recorded_at:
        # Collected in the (skew-accepted) future: it counts only from then (engine/facts),
        # so until then what it would replace still decides. Both are kept.
        return False
    return _same_scope(later, earlier) and (
        _is_valid_choice(later) or not _is_valid_choice(earlier))


def apply_event(state: SubjectState, ev: ConsentEvent) -> SubjectState:
    key = event_order(ev)
    if any(_displaces(old, ev) for old in state.events if event_order(old) > key):
        # Arrived late and already overtaken by a later choice of the same scope.
        return replace(state, version=ev.sequence)
    kept = [old for old in state.events
            if not (event_order(old) < key and _displaces(ev, old))]
    kept.append(ev)
    kept.sort(key=event_order)  # nearly sorted already: a late record moves back
    return replace(state, events=tuple(kept), version=ev.sequence)


def apply_profile(state: SubjectState, profile: SubjectProfile, sequence: int) -> SubjectState:
    """An upsert sets the fields it carries and keeps the others: updating a jurisdiction
    must not erase a recorded birth date (which would turn a known minor into an adult)."""
    old = state.profile
    merged = SubjectProfile(
        jurisdiction=profile.jurisdiction or old.jurisdiction,
        birth_date=profile.birth_date or old.birth_date,
        sealed_birth_date=profile.sealed_birth_date or old.sealed_birth_date,
        # The first erasure stands, with who asked for it.
        erased_at=old.erased_at or profile.erased_at,
        erased_by=old.erased_by if old.erased_at else profile.erased_by)
    return replace(state, profile=merged, version=sequence)
