"""The projection of a subject's ledger records onto the state decisions need.

A record stops mattering once a later record of the same kind covers exactly the same
purpose and data categories: the engine only ever looks at the latest record that covers
a request. Pre-ticked or implied grants never displace a real choice (they are evidence,
not consent).
"""

from __future__ import annotations

from dataclasses import replace

from ..domain import (
    PERMISSION_ACTIONS,
    ConsentAction,
    ConsentEvent,
    SubjectProfile,
    SubjectState,
)

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


def apply_event(state: SubjectState, ev: ConsentEvent) -> SubjectState:
    new_valid = _is_valid_choice(ev)
    kept = tuple(
        old for old in state.events
        if not (_same_scope(old, ev) and (new_valid or not _is_valid_choice(old)))
    )
    return replace(state, events=(*kept, ev), version=ev.sequence)


def apply_profile(state: SubjectState, profile: SubjectProfile, sequence: int) -> SubjectState:
    """An upsert sets the fields it carries and keeps the others: updating a jurisdiction
    must not erase a recorded birth date (which would turn a known minor into an adult)."""
    old = state.profile
    merged = SubjectProfile(
        jurisdiction=profile.jurisdiction or old.jurisdiction,
        birth_date=profile.birth_date or old.birth_date,
        sealed_birth_date=profile.sealed_birth_date or old.sealed_birth_date,
        erased_at=old.erased_at or profile.erased_at)  # the first erasure stands
    return replace(state, profile=merged, version=sequence)
