"""Loading and compiling policy packs: the shipped pack, its version hash, bad packs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentauthz.app import compile_policy
from consentauthz.engine import UNKNOWN_JURISDICTION, CompiledPolicy
from consentauthz.errors import PolicyError
from consentauthz.policy.loader import _split_bracketed, split_policy_line

POLICIES = Path(__file__).resolve().parents[2] / "policies"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture()
def pack(tmp_path: Path) -> Path:
    """A private copy of the shipped pack to edit."""
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def edit(pack: Path, name: str, old: str, new: str) -> int:
    """Replace the one occurrence of `old` in pack/name; return its 1-based line number."""
    path = pack / name
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {name}"
    line = text[:text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new), encoding="utf-8")
    return line


def problems_of(pack: Path) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as info:
        compile_policy(pack)
    assert info.value.problems, "a PolicyError names its problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def assert_problem(problems: tuple[str, ...], where: str, *words: str) -> None:
    hits = [p for p in problems if p.startswith(where) and all(w in p for w in words)]
    assert hits, f"no problem at {where!r} mentioning {words}: {problems}"


# -- the shipped pack -------------------------------------------------------------------


def test_shipped_pack_compiles(shipped_policy: CompiledPolicy) -> None:
    compiled = compile_policy(POLICIES)
    assert isinstance(compiled, CompiledPolicy)
    assert compiled.version == shipped_policy.version
    assert compiled.version == compiled.policy.version
    assert compiled.rules, "the pack has rules"
    regime_dirs = {d.name for d in (POLICIES / "regimes").iterdir() if d.is_dir()}
    assert {r.regime for r in compiled.rules} == {"gdpr", "ccpa"} | regime_dirs
    assert compiled.jurisdictions[UNKNOWN_JURISDICTION] == "gdpr"
    assert compiled.jurisdictions["US-CA"] == "ccpa"
    assert compiled.jurisdictions["GB"] == "uk_gdpr"
    assert [r.priority for r in compiled.rules] == sorted(r.priority for r in compiled.rules)
    assert set(compiled.policy.files) == {
        "model.conf", "settings.yaml", "taxonomy.yaml",
        "ccpa.csv", "classes.csv", "gdpr.csv", "regimes.csv"} | {
        p.relative_to(POLICIES).as_posix() for d in regime_dirs
        for p in (POLICIES / "regimes" / d).iterdir() if p.suffix in (".csv", ".yaml")
        and not p.name.endswith("_test.yaml")}


def test_rules_remember_where_they_were_written() -> None:
    compiled = compile_policy(POLICIES)
    for rule in compiled.rules:
        lines = (POLICIES / rule.source.file).read_text(encoding="utf-8").splitlines()
        assert lines[rule.source.line - 1].strip() == rule.source.text


def test_version_is_a_stable_content_hash() -> None:
    first, second = compile_policy(POLICIES), compile_policy(POLICIES)
    assert HEX64.match(first.version)
    assert first.version == second.version


def test_version_does_not_depend_on_the_directory(pack: Path) -> None:
    assert compile_policy(pack).version == compile_policy(POLICIES).version


@pytest.mark.parametrize(("name", "old", "new"), [
    ("gdpr.csv", "p, 610, gdpr, gdpr_consent_required, *, consent, allow",
                 "p, 611, gdpr, gdpr_consent_required, *, consent, allow"),
    ("ccpa.csv", "p, 900, ccpa,", "p, 901, ccpa,"),
    ("classes.csv", "g2, analytics, gdpr_consent_required\n", ""),
    ("regimes.csv", "g, SE, gdpr", "g, SE, uk_gdpr"),
    ("gdpr.csv", "# GDPR (Regulation", "# GDPR  (Regulation"),  # a comment byte counts
    ("model.conf", "# consentauthz policy model.", "# consentauthz policy model!"),
    ("settings.yaml", "default_lifetime_days: 730", "default_lifetime_days: 365"),
    ("taxonomy.yaml", "name: Sex life", "name: Sex Life"),
])
def test_version_changes_with_any_byte(pack: Path, name: str, old: str, new: str) -> None:
    before = compile_policy(pack).version
    edit(pack, name, old, new)
    after = compile_policy(pack).version
    assert HEX64.match(after)
    assert after != before


def test_version_covers_new_rule_files(pack: Path) -> None:
    before = compile_policy(pack).version
    (pack / "extra").mkdir()
    (pack / "extra" / "local.csv").write_text(
        "p, 50, gdpr, essential.legal_obligation, *, always, allow, LEGAL_OBLIGATION, "
        "legal_obligation\n", encoding="utf-8")
    compiled = compile_policy(pack)
    assert compiled.version != before
    assert "extra/local.csv" in compiled.policy.files
    assert compiled.rules[0].source.file == "extra/local.csv"


def test_callers_directory_is_not_part_of_the_decision_policy(pack: Path) -> None:
    before = compile_policy(pack).version
    (pack / "callers").mkdir(exist_ok=True)  # the shipped pack has one
    (pack / "callers" / "crm.csv").write_text("not, a, rule\n", encoding="utf-8")
    assert compile_policy(pack).version == before


def test_taxonomy_extensions_are_loaded() -> None:
    taxonomy = compile_policy(POLICIES).policy.taxonomy
    assert "functional.service.automated_decision" in taxonomy.purposes
    assert taxonomy.purposes.parents["functional.service.automated_decision"] == (
        "functional.service")
    assert taxonomy.purposes.covers("functional", "functional.service.automated_decision")
    for key in ("user.demographic.trade_union_membership",
                "user.demographic.philosophical_belief", "user.demographic.sex_life"):
        assert key in taxonomy.categories
        assert taxonomy.categories.covers("user.demographic", key)
    assert taxonomy.categories.names["user.demographic.trade_union_membership"] == (
        "Trade-union membership")


# -- bad packs --------------------------------------------------------------------------


def test_unknown_fact(pack: Path) -> None:
    line = edit(pack, "gdpr.csv", "*, objected, deny, OBJECTED", "*, objectd, deny, OBJECTED")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "unknown fact", "'objectd'")


def test_non_numeric_priority(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 900, ccpa", "p, last, ccpa")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}:", "priority", "'last'")


def test_negative_priority(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 900, ccpa", "p, -900, ccpa")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}:", "priority")


def test_unknown_purpose(pack: Path) -> None:
    line = edit(pack, "gdpr.csv", "p, 113, gdpr, finance,", "p, 501, gdpr, finanse,")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "unknown purpose", "'finanse'")


def test_unknown_data_category(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 160, ccpa, *, ccpa_sensitive,",
                "p, 160, ccpa, *, user.contact.emial,")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}:", "unknown data category",
                   "'user.contact.emial'")


def test_unknown_regime(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 900, ccpa,", "p, 900, cppa,")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}:", "unknown regime", "'cppa'")


def test_eft_must_be_allow_or_deny(pack: Path) -> None:
    line = edit(pack, "gdpr.csv", "*, always, allow, CONTRACT, contract\np, 511",
                "*, always, permit, CONTRACT, contract\np, 511")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "eft", "'permit'")


def test_unknown_reason_code(pack: Path) -> None:
    line = edit(pack, "gdpr.csv", "deny, CONSENT_WITHDRAWN,", "deny, CONSENT_WITHDRAWED,")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "unknown reason code",
                   "'CONSENT_WITHDRAWED'")


@pytest.mark.parametrize("basis", ["", "consnet"])
def test_allow_rule_needs_a_legal_basis(pack: Path, basis: str) -> None:
    line = edit(pack, "gdpr.csv", "required, *, consent, allow, CONSENT_GIVEN, consent\n",
                f"required, *, consent, allow, CONSENT_GIVEN, {basis}\n")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "allow rule", "legal basis")


def test_deny_rule_has_no_legal_basis(pack: Path) -> None:
    line = edit(pack, "gdpr.csv", "deny, CONSENT_WITHDRAWN,", "deny, CONSENT_WITHDRAWN, consent")
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "deny rule", "legal basis")


@pytest.mark.parametrize(("new", "count"), [
    ("deny, CONSENT_WITHDRAWN\n", "found 7"),
    ("deny, CONSENT_WITHDRAWN,,\n", "found 9"),
])
def test_wrong_field_count(pack: Path, new: str, count: str) -> None:
    line = edit(pack, "gdpr.csv", "deny, CONSENT_WITHDRAWN,\n", new)
    assert_problem(problems_of(pack), f"gdpr.csv:{line}:", "8 fields", count)


def test_every_bad_line_is_reported_at_once(pack: Path) -> None:
    one = edit(pack, "gdpr.csv", "*, objected, deny", "*, objectd, deny")
    two = edit(pack, "ccpa.csv", "p, 900, ccpa", "p, last, ccpa")
    problems = problems_of(pack)
    assert_problem(problems, f"gdpr.csv:{one}:", "objectd")
    assert_problem(problems, f"ccpa.csv:{two}:", "last")


def test_unknown_line_type(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 900, ccpa", "q, 900, ccpa")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}:", "unknown line type", "'q'")


def test_unknown_jurisdiction_must_be_mapped(pack: Path) -> None:
    edit(pack, "regimes.csv", "g, UNKNOWN, gdpr\n", "")
    problems = problems_of(pack)
    assert any(UNKNOWN_JURISDICTION in p and "must map" in p for p in problems), problems


def test_jurisdiction_mapped_to_two_regimes(pack: Path) -> None:
    (pack / "more.csv").write_text("g, DE, ccpa\n", encoding="utf-8")
    problems = problems_of(pack)
    assert any("DE" in p and "2 regimes" in p for p in problems), problems


@pytest.mark.parametrize(("old", "new"), [
    ('(p.when == "always" || (p.when in r.facts))', "(p.when in r.facts)"),
    ("e = priority(p.eft) || deny", "e = some(where (p.eft == allow))"),
    ("p = priority, regime, purpose, category, when, eft, reason, basis",
     "p = priority, regime, purpose, category, when, eft, reason"),
    ("g3 = _, _\n", ""),
])
def test_changed_model_is_rejected(pack: Path, old: str, new: str) -> None:
    edit(pack, "model.conf", old, new)
    assert_problem(problems_of(pack), "model.conf:", "consentauthz model")


def test_model_whitespace_and_comments_do_not_matter(pack: Path) -> None:
    edit(pack, "model.conf", "m = g(r.jurisdiction, p.regime) &&(",
         "# a comment\nm = g(r.jurisdiction,  p.regime)  &&(")
    compile_policy(pack)


def test_the_matcher_as_written_before_node_casbin_parity_still_loads(pack: Path) -> None:
    from consentauthz.engine.compiled import _EARLIER_MODEL
    (pack / "model.conf").write_text(_EARLIER_MODEL, encoding="utf-8")
    compile_policy(pack)


def test_class_must_not_be_a_taxonomy_key(pack: Path) -> None:
    with (pack / "classes.csv").open("a", encoding="utf-8") as f:
        f.write("g2, marketing.advertising.first_party, marketing\n")
    line = (pack / "classes.csv").read_text(encoding="utf-8").count("\n")
    assert_problem(problems_of(pack), f"classes.csv:{line}:", "'marketing'", "class name")


def test_g3_class_must_not_be_a_taxonomy_key(pack: Path) -> None:
    line = edit(pack, "classes.csv", "g3, user.criminal_history, gdpr_criminal_offence",
                "g3, user.criminal_history, user.demographic")
    assert_problem(problems_of(pack), f"classes.csv:{line}:", "'user.demographic'",
                   "class name")


def test_grouping_with_unknown_taxonomy_key(pack: Path) -> None:
    line = edit(pack, "classes.csv", "g2, essential.fraud_detection,",
                "g2, essential.fraud_detectoin,")
    assert_problem(problems_of(pack), f"classes.csv:{line}:", "unknown purpose",
                   "'essential.fraud_detectoin'")


def test_taxonomy_extension_with_unknown_parent(pack: Path) -> None:
    edit(pack, "taxonomy.yaml", "parent_key: functional.service\n",
         "parent_key: functional.servise\n")
    assert_problem(problems_of(pack), "taxonomy.yaml:", "data_uses[0]", "functional.servise",
                   "not a known key")


def test_taxonomy_extension_must_be_a_direct_child(pack: Path) -> None:
    edit(pack, "taxonomy.yaml", "fides_key: user.demographic.sex_life\n",
         "fides_key: user.sex_life\n")
    assert_problem(problems_of(pack), "taxonomy.yaml:", "data_categories[2]", "direct child")


def test_taxonomy_extension_must_not_redefine_a_key(pack: Path) -> None:
    edit(pack, "taxonomy.yaml", "fides_key: user.demographic.sex_life\n",
         "fides_key: user.demographic.political_opinion\n")
    assert_problem(problems_of(pack), "taxonomy.yaml:", "already exists")


def test_settings_out_of_range(pack: Path) -> None:
    edit(pack, "settings.yaml", "    AT: 14\n", "    AT: 12\n")
    assert_problem(problems_of(pack), "settings.yaml:", "AT", "13 to 18")


def test_authorisation_lifetime_out_of_range(pack: Path) -> None:
    edit(pack, "settings.yaml", "authorisation_lifetime_years: 1",
         "authorisation_lifetime_years: 0")
    assert_problem(problems_of(pack), "settings.yaml:", "authorisation_lifetime_years",
                   "1 to 10")


VA_SETTINGS = "regimes/us_va/settings.yaml"


def test_a_regime_folders_settings_are_merged(pack: Path) -> None:
    edit(pack, VA_SETTINGS, "  US-VA: 13\n", "  US-VA: 13\ngpc_remembered_from: 2026-01-01\n")
    settings = compile_policy(pack).policy.settings
    assert settings.consent_age("US-VA") == 13
    assert settings.gpc_remembered_from["us_va"].isoformat() == "2026-01-01"


@pytest.mark.parametrize(("old", "new", "words"), [
    ("  US-VA: 13\n", "  US-VA: 12\n", ("US-VA", "13 to 16")),
    # Above the default for unmapped jurisdictions (16), which would then be looser.
    ("  US-VA: 13\n", "  US-VA: 17\n", ("US-VA", "13 to 16")),
    ("  US-VA: 13\n", "  US-VA: 13\n  DE: 13\n", ("DE", "set twice")),
    ("  US-VA: 13\n", "  US-VA: 13\nage_of_majority: 18\n", ("unknown settings",
                                                            "age_of_majority")),
    ("  US-VA: 13\n", "  US-VA: 13\ngpc_remembered_from: soon\n", ("gpc_remembered_from",
                                                                   "date")),
])
def test_a_regime_folders_bad_settings_are_named(pack: Path, old: str, new: str,
                                                 words: tuple[str, ...]) -> None:
    edit(pack, VA_SETTINGS, old, new)
    assert_problem(problems_of(pack), VA_SETTINGS, *words)


def test_a_regime_folders_settings_of_only_comments_set_nothing(pack: Path) -> None:
    (pack / VA_SETTINGS).write_text("# Virginia: nothing of its own yet\n", encoding="utf-8")
    settings = compile_policy(pack).policy.settings
    assert settings.consent_age("US-VA") == settings.digital_consent_age_default


def test_a_regime_folder_named_for_no_regime_cannot_remember_gpc(pack: Path) -> None:
    (pack / "regimes" / "us_zz").mkdir()
    (pack / "regimes" / "us_zz" / "settings.yaml").write_text(
        "gpc_remembered_from: 2026-01-01\n", encoding="utf-8")
    assert_problem(problems_of(pack), "regimes/us_zz/settings.yaml: gpc_remembered_from",
                   "us_zz", "not a regime")


def test_not_a_policy_directory(tmp_path: Path) -> None:
    assert_problem(problems_of(tmp_path), str(tmp_path.resolve()), "model.conf")


@pytest.mark.parametrize("name", ["settings.yaml", "taxonomy.yaml"])
def test_malformed_yaml_names_the_file(pack: Path, name: str) -> None:
    with (pack / name).open("a", encoding="utf-8") as f:
        f.write("broken: [\n")
    assert_problem(problems_of(pack), f"{name}:", "not valid YAML")


def test_typo_on_the_left_of_a_class_link_is_rejected(pack: Path) -> None:
    # A typo would silently drop third-party sharing out of sale_or_share: an opted-out
    # Californian would then be sold to. The pack must refuse to load instead.
    line = edit(pack, "classes.csv", "g2, third_party_sharing, sale_or_share",
                "g2, third_party_sharng, sale_or_share")
    assert_problem(problems_of(pack), f"classes.csv:{line}", "unknown purpose",
                   "'third_party_sharng'")


def test_nested_declared_class_is_accepted(pack: Path) -> None:
    (pack / "classes.csv").write_text((pack / "classes.csv").read_text()
                                      + "\ng2, sale_or_share, commercial_use\n")
    assert "sale_or_share" in compile_policy(pack).purpose_classes


def test_non_ascii_digit_priority(pack: Path) -> None:
    line = edit(pack, "ccpa.csv", "p, 900,", "p, \u00b2900,")
    assert_problem(problems_of(pack), f"ccpa.csv:{line}", "priority")


@settings(max_examples=2_000, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet="pg2, ab.*_[]()#", min_size=1, max_size=40))
def test_split_policy_line_is_pycasbins_walk(line: str) -> None:
    # The fast path (no brackets) must split exactly as the character walk does.
    try:
        expected = _split_bracketed(line)
    except IndexError:  # the walk (like pycasbin's) fails on a leading bracket
        return
    assert split_policy_line(line) == expected


def test_repeated_tokens_are_stored_once() -> None:
    policy = compile_policy(POLICIES).policy
    regimes = [line.fields[1] for line in policy.rules if line.fields[1] == "gdpr"]
    assert len(regimes) > 1 and all(r is regimes[0] for r in regimes)
