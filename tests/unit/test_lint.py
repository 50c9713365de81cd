"""`policy lint` finds what loading alone does not, with file:line."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from consentauthz.authoring import load_suites
from consentauthz.authoring.lint import Finding, _needs, has_errors, lint, lint_compiled
from consentauthz.engine import ALWAYS, CompiledPolicy
from consentauthz.policy import load_policy_set
from tests.conftest import POLICIES


@pytest.fixture()
def pack(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def append(pack: Path, name: str, text: str) -> int:
    path = pack / name
    body = path.read_text()
    path.write_text(body + text + "\n")
    return body.count("\n") + 1


def messages(pack: Path) -> list[str]:
    return [str(f) for f in lint(pack)]


def test_shipped_pack_is_clean() -> None:
    findings = lint(POLICIES)
    assert not has_errors(findings), "\n".join(map(str, findings))


def test_contradicted_rule(pack: Path) -> None:
    line = append(pack, "gdpr.csv",
                  "p, 611, gdpr, gdpr_consent_required, *, consent, deny, NO_CONSENT,")
    found = [m for m in messages(pack) if m.startswith(f"gdpr.csv:{line}:")]
    assert found and "contradicted by gdpr.csv:64" in found[0], messages(pack)


def test_shadowed_rule(pack: Path) -> None:
    line = append(pack, "gdpr.csv",
                  "p, 700, gdpr, marketing.communications.email, *, consent, allow, "
                  "CONSENT_GIVEN, consent")
    found = [m for m in messages(pack) if m.startswith(f"gdpr.csv:{line}:")]
    assert found and "shadowed by gdpr.csv:64" in found[0]


def test_explicit_consent_rule_behind_a_consent_rule_is_shadowed(pack: Path) -> None:
    # explicit consent always comes with consent: the later rule can never decide
    line = append(pack, "gdpr.csv",
                  "p, 615, gdpr, marketing, *, explicit_consent, allow, CONSENT_GIVEN, "
                  "explicit_consent")
    assert any(m.startswith(f"gdpr.csv:{line}:") and "shadowed" in m for m in messages(pack))


def test_more_specific_rule_before_a_general_one_is_fine(pack: Path) -> None:
    append(pack, "gdpr.csv",
           "p, 605, gdpr, marketing.communications.sms, *, consent, deny, NO_CONSENT,")
    assert not has_errors(lint(pack)), messages(pack)


def test_rule_for_an_unreachable_regime(pack: Path) -> None:
    append(pack, "regimes.csv", "g, lgpd_like, gdpr")
    line = append(pack, "gdpr.csv",
                  "p, 650, lgpd_like, marketing, *, consent, allow, CONSENT_GIVEN, consent")
    assert any(m.startswith(f"gdpr.csv:{line}:") and "can never match" in m
               for m in messages(pack))


def test_unknown_jurisdiction_code(pack: Path) -> None:
    line = append(pack, "regimes.csv", "g, XQ, gdpr")
    assert any(m.startswith(f"regimes.csv:{line}:") and "XQ is not an ISO 3166" in m
               for m in messages(pack))
    line = append(pack, "regimes.csv", "g, US-ZZ, ccpa")
    assert any(m.startswith(f"regimes.csv:{line}:") and "US-ZZ" in m for m in messages(pack))


def test_regime_without_tests(pack: Path) -> None:
    append(pack, "regimes.csv", "g, BR, lgpd\ng, lgpd, gdpr")
    assert any("regime 'lgpd' has no test case" in m for m in messages(pack))


def test_load_errors_are_findings_with_file_and_line(pack: Path) -> None:
    line = append(pack, "ccpa.csv", "p, 950, ccpa, *, *, maybe, allow, NOT_OPTED_OUT, "
                  "ccpa_opt_out_not_exercised")
    findings = lint(pack)
    assert has_errors(findings)
    assert any(f.where == f"ccpa.csv:{line}" and "unknown fact 'maybe'" in f.message
               for f in findings)


def test_broken_test_suite_is_an_error(pack: Path) -> None:
    (pack / "tests" / "broken_test.yaml").write_text("cases: [oops\n")
    assert any("broken_test.yaml" in m for m in messages(pack))


# -- the reachability sweep, against the exhaustive one it replaces ---------------------

def _reachability_by_brute_force(compiled: CompiledPolicy) -> dict[int, str]:
    """Rule position -> "decides", "never matches" or the blocker's position, from
    `compiled.candidates` for one jurisdiction of each kind and every purpose and
    category (as `policy lint` did before it grouped purposes and categories)."""
    rule_regimes = {r.regime for r in compiled.rules}
    kinds: dict[frozenset[str], str] = {}
    for token in sorted(compiled.jurisdictions):
        kinds.setdefault(frozenset(c for c in compiled.regime_closure(token)
                                   if c in rule_regimes), token)
    position = {id(r): i for i, r in enumerate(compiled.rules)}
    tax = compiled.policy.taxonomy
    verdict: dict[int, str] = {}
    counts: dict[int, Counter[int]] = {}
    for token in kinds.values():
        for purpose in tax.purposes:
            for category in tax.categories:
                candidates = compiled.candidates(token, purpose, category)
                for pos, rule in enumerate(candidates):
                    need = _needs(rule)
                    blocker = next((a for a in candidates[:pos]
                                    if a.when == ALWAYS or a.when in need), None)
                    if blocker is None:
                        verdict[position[id(rule)]] = "decides"
                    else:
                        counts.setdefault(position[id(rule)], Counter())[
                            position[id(blocker)]] += 1
    for i in range(len(compiled.rules)):
        if i not in verdict:
            verdict[i] = (str(min(counts[i], key=lambda b: (-counts[i][b], b)))
                          if i in counts else "never matches")
    return verdict


def _verdicts(findings: list[Finding], compiled: CompiledPolicy) -> dict[int, str]:
    where = {f"{r.source.file}:{r.source.line}": i for i, r in enumerate(compiled.rules)}
    verdict = {i: "decides" for i in range(len(compiled.rules))}
    for f in findings:
        if f.where not in where:
            continue
        if "can never match" in f.message:
            verdict[where[f.where]] = "never matches"
        else:
            blocker = f.message.split(" by ", 1)[1].split(" ", 1)[0]
            verdict[where[f.where]] = str(where[blocker])
    return verdict


EXTRA_RULES = [
    "p, 605, gdpr, marketing.communications.sms, *, consent, deny, NO_CONSENT,",
    "p, 611, gdpr, gdpr_consent_required, *, consent, deny, NO_CONSENT,",
    "p, 700, gdpr, marketing.communications.email, *, consent, allow, CONSENT_GIVEN, consent",
    "p, 615, gdpr, marketing, *, explicit_consent, allow, CONSENT_GIVEN, explicit_consent",
    "p, 5, gdpr, analytics, user.contact, always, deny, NO_CONSENT,",
    "p, 650, lgpd_like, marketing, *, consent, allow, CONSENT_GIVEN, consent",
    "p, 1, ccpa, *, user.contact.email, gpc, deny, GPC_OPT_OUT,",
]


@pytest.mark.parametrize("extra", [(), EXTRA_RULES[:2], EXTRA_RULES[2:5], EXTRA_RULES])
def test_reachability_equals_the_exhaustive_sweep(pack: Path, extra: Sequence[str]) -> None:
    append(pack, "regimes.csv", "g, lgpd_like, gdpr")
    for rule in extra:
        append(pack, "gdpr.csv", rule)
    compiled = CompiledPolicy(load_policy_set(pack))
    found = lint_compiled(compiled, load_suites(pack))
    assert compiled._candidates == {}  # the sweep leaves the decision memo alone
    assert _verdicts(found, compiled) == _reachability_by_brute_force(compiled)
    assert sorted(found) == lint(pack)  # the gate's entry point and `policy lint` agree
