"""`policy test` holds every pack it loads to the engine's equivalence with Casbin."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from consentauthz.app import compile_policy
from consentauthz.authoring import load_suites, run_case, runner
from consentauthz.authoring.runner import (
    GATE_CASBIN_BUDGET,
    casbin_disagreement,
    casbin_sample,
    run_suites,
)
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


def test_the_gate_budget_picks_a_fixed_spread_of_cases() -> None:
    assert casbin_sample(81, 46, None) == list(range(81))  # `policy test`: every case
    assert casbin_sample(81, 46, GATE_CASBIN_BUDGET) == list(range(81))  # shipped pack
    some = casbin_sample(81, 10_000, GATE_CASBIN_BUDGET)  # room for 15 cases
    assert len(some) == 15 and some == sorted(set(some)) and some[0] == 0 and some[-1] > 70
    assert some == casbin_sample(81, 10_000, GATE_CASBIN_BUDGET)
    assert casbin_sample(81, 100_000, GATE_CASBIN_BUDGET) == []  # the Enforcer alone is over
    assert casbin_sample(0, 46, GATE_CASBIN_BUDGET) == []


def _drifted(tmp_path: Path) -> Any:
    other = Path(shutil.copytree(POLICIES, tmp_path / "other"))
    gdpr = other / "gdpr.csv"
    gdpr.write_text(gdpr.read_text().replace(
        "p, 610, gdpr, gdpr_consent_required, *, consent, allow, CONSENT_GIVEN, consent",
        "p, 610, gdpr, gdpr_consent_required, *, consent, deny, NO_CONSENT,"))
    return reference_enforcer(compile_policy(other).policy)


def test_within_its_budget_the_gate_still_catches_a_disagreement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drifted = _drifted(tmp_path)
    monkeypatch.setattr(runner, "reference_enforcer", lambda policy: drifted)
    run = run_suites(compile_policy(POLICIES), load_suites(POLICIES),
                     casbin_budget=GATE_CASBIN_BUDGET)
    assert run.casbin_checked == len(run.results)
    assert any("disagree" in p for r in run.results for p in r.problems)


def test_over_its_budget_the_gate_builds_no_enforcer(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(policy: object) -> None:
        raise AssertionError("no Enforcer may be built when no case fits the budget")

    monkeypatch.setattr(runner, "reference_enforcer", refuse)
    run = run_suites(compile_policy(POLICIES), load_suites(POLICIES), casbin_budget=0)
    assert run.failed == 0 and run.casbin_checked == 0 and run.results
