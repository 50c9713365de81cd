"""An unknown jurisdiction (the bare `US`, an unmapped code, none at all) is answered as
strictly as any regime in the pack would answer it: ALLOW only if every regime would
allow (issue 13; LEGAL.md "Regimes and jurisdictions")."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentauthz.domain import CheckRequest, Effect, SubjectState
from consentauthz.engine import CompiledPolicy
from tests.property.test_engine_equivalence import NOW, requests_and_states

UNMAPPED = ("US", "US-NY", "JP", "CH", "DE-BY", "")


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_an_unknown_jurisdiction_is_allowed_only_where_every_regime_allows(
        shipped_policy: CompiledPolicy, data: st.DataObject) -> None:
    request, state = data.draw(requests_and_states(shipped_policy))
    unknown = data.draw(st.sampled_from(UNMAPPED))
    # The subject's recorded jurisdiction would add its own constraint: leave it out.
    state = replace(state, profile=replace(state.profile, jurisdiction=""))
    request = replace(request, jurisdiction=unknown, explain=False)
    decision = shipped_policy.decide(request, state, NOW)
    by_code = {code: _allowed(shipped_policy, request, state, code)
               for code in shipped_policy.jurisdictions if code != "UNKNOWN"}
    if decision.effect is Effect.ALLOW:
        assert all(by_code.values()), sorted(c for c, ok in by_code.items() if not ok)
    elif all(by_code.values()):
        # The converse holds too, except where an unknown jurisdiction combines the
        # strictest age settings of different regimes - the GDPR default (16, joint
        # consent) with the US states' "from 13 only the consumer's own grant" - which no
        # one mapped code has: only ever for a subject whose age is known.
        assert state.profile.birth_date is not None, (decision.regime, decision.reason)


def _allowed(compiled: CompiledPolicy, request: CheckRequest, state: SubjectState,
             code: str) -> bool:
    return compiled.decide(replace(request, jurisdiction=code), state, NOW).effect is (
        Effect.ALLOW)


def test_the_bare_us_is_denied_what_california_allows_only_until_opt_out_under_the_gdpr(
        shipped_policy: CompiledPolicy) -> None:
    request = CheckRequest(subject_id="s", purpose="marketing.communications.email",
                           data_category="user.contact.email", jurisdiction="US")
    decision = shipped_policy.decide(request, SubjectState(), NOW)
    assert (decision.effect, decision.reason.value) == (Effect.DENY, "NO_CONSENT")
    assert shipped_policy.decide(replace(request, jurisdiction="US-CA"), SubjectState(),
                                 NOW).effect is Effect.ALLOW
