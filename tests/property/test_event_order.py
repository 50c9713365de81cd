"""Event time orders consent (issue 12): the state a subject's records project to, and so
every decision, depends on the records and not on the order they arrived in; the latest
record by collected_at decides, and at the same instant a withdrawal, objection or
opt-out wins over a grant or opt-in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consentauthz.consent.projection import apply_event
from consentauthz.domain import (
    PERMISSION_ACTIONS,
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectState,
    event_order,
)
from consentauthz.engine import CompiledPolicy

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
PURPOSES = ("marketing.communications.email", "marketing", "")
CATEGORIES = ((), ("user.contact.email",), ("user.contact",))
CONSENT_CHANNEL = (ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT)


@st.composite
def records(draw: st.DrawFn) -> list[ConsentEvent]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(list(ConsentAction)))
        purpose = draw(st.sampled_from(PURPOSES[:2] if action in CONSENT_CHANNEL
                                       else PURPOSES))
        out.append(ConsentEvent(
            record_id=f"r{i}", sequence=i + 1, action=action, purpose=purpose,
            data_categories=draw(st.sampled_from(CATEGORIES)), explicit=False,
            method=draw(st.sampled_from((CollectionMethod.AFFIRMATIVE,
                                         CollectionMethod.PRE_TICKED))),
            jurisdiction="", source="test", notice_version="v1", expires_at=None,
            # Few distinct instants: ties are common; +2 min is in the accepted skew.
            collected_at=NOW + timedelta(minutes=draw(st.sampled_from((-90, -60, -60, 2)))),
            recorded_at=NOW))
    return out


def fold(events: list[ConsentEvent]) -> SubjectState:
    state = SubjectState()
    for ev in events:
        state = apply_event(state, ev)
    return replace(state, version=0)


def expected_consent_record(events: list[ConsentEvent], purpose_lineage: set[str],
                            category_lineage: set[str]) -> str:
    """The plain reading of the rule: among the valid consent-channel records that cover
    the request and count by now, the latest by (collected_at, restriction wins)."""
    covering = [e for e in events
                if e.action in CONSENT_CHANNEL
                and (not e.purpose or e.purpose in purpose_lineage)
                and (not e.data_categories or set(e.data_categories) & category_lineage)
                and not (e.action in PERMISSION_ACTIONS and e.collected_at > NOW)
                and (e.action is not ConsentAction.GRANT or e.method.is_valid_consent)]
    return max(covering, key=event_order).record_id if covering else ""


@settings(max_examples=300, deadline=None)
@given(events=records(), order=st.randoms(use_true_random=False))
def test_the_projection_does_not_depend_on_arrival_order(
        events: list[ConsentEvent], order, shipped_policy: CompiledPolicy) -> None:
    shuffled = list(events)
    order.shuffle(shuffled)
    by_arrival, by_event_time = fold(events), fold(shuffled)
    assert by_arrival.events == by_event_time.events
    assert list(by_arrival.events) == sorted(by_arrival.events, key=event_order)
    tax = shipped_policy.policy.taxonomy
    request = CheckRequest(subject_id="s", purpose="marketing.communications.email",
                           data_category="user.contact.email", jurisdiction="DE")
    decision = shipped_policy.decide(request, by_arrival, NOW)
    assert decision == shipped_policy.decide(request, by_event_time, NOW)
    latest = expected_consent_record(
        events, set(tax.purposes.lineage(request.purpose)),
        set(tax.categories.lineage(request.data_category)))
    if decision.reason.value in ("CONSENT_GIVEN", "CONSENT_WITHDRAWN", "OBJECTED"):
        assert decision.consent_record_ids == (latest,)
    elif decision.reason.value == "NO_CONSENT":
        assert latest == ""
