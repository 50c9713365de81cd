"""`policy test` holds every pack it loads to the engine's equivalence with Casbin."""

from __future__ import annotations

import shutil
from pathlib import Path

from consentauthz.app import compile_policy
from consentauthz.authoring import load_suites, run_case
from consentauthz.authoring.runner import casbin_disagreement, run_suites
from consentauthz.engine.reference import reference_enforcer
from tests.conftest import POLICIES


def test_every_shipped_case_agrees_with_plain_casbin() -> None:
    compiled = compile_policy(POLICIES)
    run = run_suites(compiled, load_suites(POLICIES), check_casbin=True)
    assert run.failed == 0, [r.problems for r in run.results if not r.passed][:3]


def test_a_disagreement_is_reported(tmp_path: Path) -> None:
    compiled = compile_policy(POLICIES)
    # A Casbin enforcer on a different pack stands in for an engine whose index drifted
    # from the rules: the runner must notice.
    other = Path(shutil.copytree(POLICIES, tmp_path / "other"))
    gdpr = other / "gdpr.csv"
    gdpr.write_text(gdpr.read_text().replace(
        "p, 610, gdpr, gdpr_consent_required, *, consent, allow, CONSENT_GIVEN, consent",
        "p, 610, gdpr, gdpr_consent_required, *, consent, deny, NO_CONSENT,"))
    drifted = reference_enforcer(compile_policy(other).policy)
    case = next(c for s in load_suites(POLICIES) for c in s.cases
                if c.expect.rule == "gdpr.csv:64")
    result = run_case(case, compiled)
    assert result.passed and result.decision is not None
    problem = casbin_disagreement(case, compiled, result.decision, drifted)
    assert "disagree" in problem and "gdpr.csv" not in problem  # rule fields, not sources
    assert casbin_disagreement(case, compiled, result.decision,
                               reference_enforcer(compiled.policy)) == ""
