"""The shipped policy test suites (policies/tests/*_test.yaml) pass and cover every rule;
the runner that checks them reports failures, bad input, JUnit XML and a summary."""

from __future__ import annotations

import io
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from consentauthz.app import compile_policy
from consentauthz.authoring import (
    RunResult,
    load_suites,
    print_report,
    run_suites,
    write_junit,
)
from consentauthz.domain import Effect, Reason
from consentauthz.errors import PolicyError

POLICIES = Path(__file__).resolve().parents[2] / "policies"
#: The pack's own regimes and one per US state law in force on 2026-12-01 (issue 13).
REGIMES = {"gdpr", "uk_gdpr", "ccpa"} | {f"us_{s}" for s in (
    "va", "co", "ct", "ut", "tx", "or", "mt", "ia", "de", "nh", "nj", "ne", "tn", "mn",
    "md", "in", "ky", "ri", "wa_mhmda", "nv")}
MIN_CASES = 80


# -- the shipped suites --------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> RunResult:
    return run_suites(compile_policy(POLICIES), load_suites(POLICIES))


def test_every_shipped_case_passes(shipped: RunResult) -> None:
    failing = [f"{r.case.id} ({r.case.file}:{r.case.line}): {'; '.join(r.problems)}"
               for r in shipped.results if not r.passed]
    assert not failing, f"{len(failing)} failing policy case(s):\n" + "\n".join(failing)


def test_shipped_suites_cover_every_rule(shipped: RunResult) -> None:
    uncovered = [str(rule.source) for rule in shipped.uncovered]
    assert shipped.coverage == 100.0, "rules no case exercised:\n" + "\n".join(uncovered)
    assert not uncovered


def test_every_rule_line_has_a_designated_case() -> None:
    """Each rule line is named by some case's `expect.rule`, so a moved rule is noticed."""
    compiled = compile_policy(POLICIES)
    named = {case.expect.rule for suite in load_suites(POLICIES) for case in suite.cases}
    missing = [str(rule.source) for rule in compiled.rules
               if f"{rule.source.file}:{rule.source.line}" not in named]
    assert not missing, "rules without a case naming them in expect.rule:\n" + "\n".join(missing)


def test_shipped_suites_exercise_every_regime(shipped: RunResult) -> None:
    compiled = compile_policy(POLICIES)
    assert set(compiled.jurisdictions.values()) == REGIMES
    missing = REGIMES - shipped.regimes
    assert not missing, f"no case decided under {sorted(missing)} (got {sorted(shipped.regimes)})"


def test_shipped_suites_are_substantial(shipped: RunResult) -> None:
    assert len(shipped.results) >= MIN_CASES, (
        f"only {len(shipped.results)} shipped cases; expected at least {MIN_CASES}")


def test_shipped_case_names_are_unique() -> None:
    ids = [case.id for suite in load_suites(POLICIES) for case in suite.cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, "duplicate case names:\n" + "\n".join(duplicates)


# -- the runner, on synthetic suites -------------------------------------------------------

GRANT_EMAIL = """\
    consent:
      - {action: grant, purpose: marketing.communications.email}
    check: {purpose: marketing.communications.email, data_category: user.contact.email,
            jurisdiction: DE}
"""


def pack_with_suite(tmp_path: Path, body: str) -> Path:
    """A copy of the shipped pack whose only suite is `body` (the lines under `cases:`)."""
    pack = Path(shutil.copytree(POLICIES, tmp_path / "policies",
                                ignore=shutil.ignore_patterns("*_test.yaml")))
    suite = "name: synthetic\nnow: 2026-06-01T12:00:00Z\ncases:\n" + textwrap.dedent(body)
    (pack / "tests" / "synthetic_test.yaml").write_text(suite, encoding="utf-8")
    return pack


def run_pack(pack: Path) -> RunResult:
    return run_suites(compile_policy(pack), load_suites(pack))


PASS_AND_FAIL = f"""\
  - name: right expectation
{GRANT_EMAIL}    expect: {{decision: ALLOW, reason: CONSENT_GIVEN, legal_basis: consent,
             rule: gdpr.csv:64}}
  - name: wrong expectation
{GRANT_EMAIL}    expect: {{decision: DENY, reason: NO_CONSENT}}
"""


def test_a_wrong_expectation_fails_with_expected_and_got(tmp_path: Path) -> None:
    run = run_pack(pack_with_suite(tmp_path, PASS_AND_FAIL))
    assert (run.passed, run.failed) == (1, 1)
    result = next(r for r in run.results if r.case.name == "wrong expectation")
    assert not result.passed
    assert result.decision is not None
    assert (result.decision.effect, result.decision.reason) == (Effect.ALLOW,
                                                                Reason.CONSENT_GIVEN)
    assert any(re.fullmatch(r"expected DENY NO_CONSENT, got ALLOW CONSENT_GIVEN", p)
               for p in result.problems), result.problems


def test_a_wrong_rule_or_basis_fails(tmp_path: Path) -> None:
    body = (f"  - name: wrong rule and basis\n{GRANT_EMAIL}"
            "    expect: {decision: ALLOW, reason: CONSENT_GIVEN, legal_basis: contract,\n"
            "             rule: gdpr.csv:65}\n")
    run = run_pack(pack_with_suite(tmp_path, body))
    [result] = run.results
    assert result.problems == (
        "expected legal basis contract, got consent",
        "expected rule gdpr.csv:65, got gdpr.csv:64",
    )


@pytest.mark.parametrize(("where", "body"), [
    ("bad check", """\
  - name: unknown purpose on the check
    check: {purpose: marketing.telepathy, data_category: user.contact.email, jurisdiction: DE}
    expect: {decision: DENY, reason: NO_CONSENT}
"""),
    ("bad consent record", """\
  - name: unknown purpose on a consent record
    consent:
      - {action: grant, purpose: marketing.telepathy}
    check: {purpose: marketing.communications.email, data_category: user.contact.email,
            jurisdiction: DE}
    expect: {decision: DENY, reason: NO_CONSENT}
"""),
])
def test_an_unknown_purpose_is_a_problem_not_a_crash(tmp_path: Path, where: str,
                                                     body: str) -> None:
    run = run_pack(pack_with_suite(tmp_path, body))
    [result] = run.results
    assert not result.passed
    assert result.decision is None
    assert any(p.startswith(where) and "purpose" in p for p in result.problems), result.problems
    assert run.failed == 1 and not run.covered


def test_a_malformed_case_is_rejected_with_its_location(tmp_path: Path) -> None:
    pack = pack_with_suite(tmp_path, """\
  - name: typo in expect
    check: {purpose: analytics, data_category: user.contact.email, jurisdiction: DE}
    expect: {decision: DENY, reasons: NO_CONSENT}
""")
    with pytest.raises(PolicyError) as info:
        load_suites(pack)
    assert any(p.startswith("tests/synthetic_test.yaml:4:") and "reasons" in p
               for p in info.value.problems), info.value.problems


def test_junit_xml_counts_the_failures(tmp_path: Path) -> None:
    run = run_pack(pack_with_suite(tmp_path, PASS_AND_FAIL))
    out = tmp_path / "junit.xml"
    write_junit(run, out)
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    [suite] = root.findall("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == (
        "synthetic", "2", "1")
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["wrong expectation"]
    failure = failed[0].find("failure")
    assert failure is not None
    assert "expected DENY NO_CONSENT, got ALLOW CONSENT_GIVEN" in (failure.get("message") or "")


def test_report_ends_with_the_summary_line(tmp_path: Path) -> None:
    run = run_pack(pack_with_suite(tmp_path, PASS_AND_FAIL))
    out = io.StringIO()
    print_report(run, out, coverage=True)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "1 passed, 1 failed"
    assert any("FAIL  wrong expectation" in line for line in lines)
    assert not any("PASS" in line for line in lines)  # passing cases only with verbose
    assert any(line.startswith("rule coverage: 1/") for line in lines)


def test_shipped_report_summary(shipped: RunResult) -> None:
    out = io.StringIO()
    print_report(shipped, out, coverage=True)
    lines = out.getvalue().splitlines()
    assert lines[-1] == f"{len(shipped.results)} passed, 0 failed"
    assert f"rule coverage: {len(shipped.rules)}/{len(shipped.rules)} (100.0%)" in lines
