"""The policy matrix: cells that follow from the shipped rules, and both renderings."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from consentauthz.app import compile_policy
from consentauthz.authoring.matrix import (
    NO_CHOICES,
    ORDINARY,
    PROBES,
    Cell,
    Column,
    Matrix,
    Regime,
    Row,
    build_matrix,
    render_html,
    render_markdown,
)
from consentauthz.domain import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    Effect,
    SubjectState,
)
from consentauthz.engine import UNKNOWN_JURISDICTION, CompiledPolicy, Rule, derive_facts

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SPECIAL = "gdpr_special_category"
CRIMINAL = "gdpr_criminal_offence"
SENSITIVE = "ccpa_sensitive"
# third_party_sharing.legal_obligation (fideslang: legal or contractual obligations) is no
# Art. 10 authorisation by itself (LEGAL.md review).
LEGAL_OBLIGATION_PURPOSES = ("essential.legal_obligation",)


@pytest.fixture(scope="module")
def compiled() -> CompiledPolicy:
    return compile_policy(POLICIES)


@pytest.fixture(scope="module")
def matrix(compiled: CompiledPolicy) -> Matrix:
    return build_matrix(compiled)


def where(rule: Rule) -> str:
    return f"{rule.source.file}:{rule.source.line}"


# -- shape ----------------------------------------------------------------------------


def test_regimes_are_the_direct_regimes_with_one_representative_each(matrix: Matrix) -> None:
    names = [(r.name, r.jurisdiction) for r in matrix.regimes]
    # The pack's own files first, then the regime folders (policies/regimes/*) by name.
    assert names[:3] == [("gdpr", "AT"), ("uk_gdpr", "GB"), ("ccpa", "US-CA")]
    states = names[3:]
    assert states and states == sorted(states)
    # One regime per US state, named for it (us_va for US-VA; us_wa_mhmda for Washington's
    # consumer health data law).
    assert all(code.startswith("US-") and name.startswith("us_" + code[3:].lower())
               for name, code in states), states
    gdpr = matrix.regimes[0]
    assert UNKNOWN_JURISDICTION in gdpr.jurisdictions and "DE" in gdpr.jurisdictions
    assert matrix.regimes[1].jurisdictions == ("GB",)


def test_rows_are_every_purpose_parent_first(compiled: CompiledPolicy, matrix: Matrix) -> None:
    purposes = compiled.policy.taxonomy.purposes
    keys = [row.key for row in matrix.purposes]
    assert sorted(keys) == sorted(purposes.keys())
    position = {key: i for i, key in enumerate(keys)}
    for row in matrix.purposes:
        lineage = purposes.lineage(row.key)
        assert row.depth == len(lineage) - 1
        assert row.name == purposes.names[row.key]
        if len(lineage) > 1:
            assert position[lineage[1]] < position[row.key], row.key
    # The pack's own extension sits under its parent, not at the end.
    auto = position["functional.service.automated_decision"]
    assert keys[auto - 1].startswith("functional.service")


def test_columns_are_ordinary_data_and_one_per_category_class(
        compiled: CompiledPolicy, matrix: Matrix) -> None:
    # The pack's own classes first; the regime folders' (US states) follow.
    assert [c.key for c in matrix.columns][:5] == [
        ORDINARY, SPECIAL, CRIMINAL, "eprivacy_terminal", SENSITIVE]
    assert matrix.columns[0].category == "user.contact.email"
    # Each class is shown with a key it covers, one covered by no other class if any.
    for c in matrix.columns[1:]:
        assert c.key in compiled.category_closure(c.category), c
    assert {c.key for c in matrix.columns} - {ORDINARY} == compiled.category_classes
    assert len(matrix.cells) == len(matrix.regimes) * len(matrix.purposes) * len(matrix.columns)


# -- cells that follow from the rules -------------------------------------------------


@pytest.mark.parametrize(("regime", "purpose", "column", "requirement"), [
    ("gdpr", "marketing.communications.email", ORDINARY, "consent"),
    ("gdpr", "essential.service", ORDINARY, "contract"),
    ("gdpr", "essential.fraud_detection", ORDINARY, "legitimate_interests"),
    ("gdpr", "essential.legal_obligation", SPECIAL, "legal_obligation"),
    ("gdpr", "personalize", SPECIAL, "explicit_consent"),
    ("gdpr", "functional.service.automated_decision", ORDINARY, "explicit_consent"),
    ("gdpr", "finance", CRIMINAL, "never"),
    ("ccpa", "sales", ORDINARY, "ccpa_opt_out_not_exercised"),
    ("ccpa", "essential.service", SENSITIVE, "ccpa_sensitive_permitted_use"),
    ("gdpr", "operations", "eprivacy_terminal", "consent"),
    ("gdpr", "essential.service.authentication", "eprivacy_terminal", "contract"),
    ("uk_gdpr", "marketing.communications.email", ORDINARY, "consent"),
    ("uk_gdpr", "personalize", SPECIAL, "explicit_consent"),
    ("uk_gdpr", "essential.fraud_detection", ORDINARY, "legitimate_interests"),
])
def test_cell_requirement(matrix: Matrix, regime: str, purpose: str, column: str,
                          requirement: str) -> None:
    assert matrix.cell(regime, purpose, column).requirement == requirement


def test_consent_cell_names_the_allowing_rule_and_the_deny_without_it(matrix: Matrix) -> None:
    cell = matrix.cell("gdpr", "marketing.communications.email", ORDINARY)
    assert cell.legal_basis == "consent" and cell.reason == "CONSENT_GIVEN"
    assert re.fullmatch(r"gdpr\.csv:\d+", cell.rule)
    assert cell.deny_reason == "NO_CONSENT" and re.fullmatch(r"gdpr\.csv:\d+", cell.deny_rule)
    allowed_without_consent = matrix.cell("gdpr", "essential.service", ORDINARY)
    assert allowed_without_consent.deny_reason == allowed_without_consent.deny_rule == ""


def test_gdpr_criminal_data_only_under_a_legal_obligation(matrix: Matrix) -> None:
    for row in matrix.purposes:
        cell = matrix.cell("gdpr", row.key, CRIMINAL)
        if row.key.startswith(LEGAL_OBLIGATION_PURPOSES):
            assert cell.requirement == "legal_obligation", row.key
        else:
            assert cell.requirement == "never", row.key
            assert cell.deny_reason == "LAWFUL_AUTHORITY_REQUIRED"
            assert cell.rule == "" and cell.deny_rule.startswith("gdpr.csv:")


def test_a_purpose_no_rule_covers_is_never_allowed(matrix: Matrix) -> None:
    # `essential` itself is in no class and no rule names it: deny by default.
    cell = matrix.cell("gdpr", "essential", ORDINARY)
    assert cell == Cell("never", deny_reason="NO_MATCHING_RULE")


def test_uk_gdpr_reads_exactly_as_gdpr(matrix: Matrix) -> None:
    for row in matrix.purposes:
        for column in matrix.columns:
            assert (matrix.cell("uk_gdpr", row.key, column.key)
                    == matrix.cell("gdpr", row.key, column.key)), (row.key, column.key)


def test_every_cell_agrees_with_first_match(compiled: CompiledPolicy, matrix: Matrix) -> None:
    """Re-derive each cell from first_match with literal fact sets (not the module's)."""
    nothing = frozenset({"no_consent"})
    consent = frozenset({"consent"})
    explicit = frozenset({"consent", "explicit_consent"})
    opt_in = frozenset({"no_consent", "sale_opted_in"})
    signed = frozenset({"consent", "explicit_consent", "signed_authorisation"})

    def allows(token: str, purpose: str, category: str, facts: frozenset[str]) -> Rule | None:
        rule = compiled.first_match(token, purpose, category, facts)
        return rule if rule is not None and rule.effect is Effect.ALLOW else None

    checked = 0
    for regime in matrix.regimes:
        for row in matrix.purposes:
            for column in matrix.columns:
                cell = matrix.cell(regime.name, row.key, column.key)
                args = (regime.jurisdiction, row.key, column.category)
                base = compiled.first_match(*args, nothing)
                if cell.requirement == "never":
                    assert not any(allows(*args, f)
                                   for f in (nothing, consent, explicit, opt_in, signed))
                    assert cell.deny_reason == (base.reason.value if base else "NO_MATCHING_RULE")
                    continue
                ladder = {"consent": consent, "explicit_consent": explicit,
                          "consent_opt_in": opt_in, "signed_authorisation": signed}
                facts = ladder.get(cell.requirement, nothing)
                rule = allows(*args, facts)
                assert rule is not None and where(rule) == cell.rule, (regime, row, column)
                assert rule.basis == cell.legal_basis and rule.reason.value == cell.reason
                if facts is nothing:
                    assert rule.basis == cell.requirement
                else:
                    assert allows(*args, nothing) is None
                    assert base is not None and base.reason.value == cell.deny_reason
                if facts is explicit:
                    assert allows(*args, consent) is None
                checked += 1
    assert checked > 100


def test_the_probes_are_the_facts_real_subjects_have(compiled: CompiledPolicy) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    purpose, category = "sales", "user.contact.email"

    def facts_of(*events: ConsentEvent) -> frozenset[str]:
        state = SubjectState(events=events)
        return derive_facts(state, purpose, category, "US-CA", now, {},
                            compiled.policy.taxonomy, compiled.policy.settings).tokens

    def event(action: ConsentAction, explicit: bool = False,
              expires_in: timedelta | None = None) -> ConsentEvent:
        # A signed authorisation names the data it covers (RCW 19.373.070(2)(a)).
        at = now - timedelta(days=1)
        return ConsentEvent(
            record_id="r1", sequence=1, action=action,
            purpose=purpose if action is ConsentAction.GRANT else "",
            data_categories=(category,) if expires_in else (),
            explicit=explicit, method=CollectionMethod.AFFIRMATIVE, jurisdiction="US-CA",
            collected_at=at, expires_at=at + expires_in if expires_in else None,
            source="test", notice_version="v1",
            recorded_at=at)

    assert facts_of() == NO_CHOICES
    assert [facts for _, facts in PROBES] == [
        facts_of(event(ConsentAction.GRANT)),
        facts_of(event(ConsentAction.GRANT, explicit=True)),
        facts_of(event(ConsentAction.OPT_IN_TO_SALE)),
        facts_of(event(ConsentAction.GRANT, explicit=True, expires_in=timedelta(days=300))),
    ]


def test_an_opt_in_regime_shows_consent_opt_in(tmp_path: Path) -> None:
    pack = Path(shutil.copytree(POLICIES, tmp_path / "policies"))
    with (pack / "ccpa.csv").open("a", encoding="utf-8") as f:
        # Before 405 (a grant after an opt-out): only an opt-in re-authorises here.
        f.write("p, 404, ccpa, sale_or_share, *, always, deny, NO_CONSENT,\n")
    m = build_matrix(compile_policy(pack))
    cell = m.cell("ccpa", "third_party_sharing", ORDINARY)
    assert cell.requirement == "consent_opt_in" and cell.legal_basis == "consent"
    assert cell.deny_reason == "NO_CONSENT"
    assert "consent (opt-in)" in render_markdown(m)


# -- Markdown -------------------------------------------------------------------------


def test_markdown_has_one_table_per_regime_with_a_row_per_purpose(matrix: Matrix) -> None:
    text = render_markdown(matrix)
    assert matrix.policy_version[:12] in text
    assert "Generated from the rules" in text
    assert "## Legend" in text and "objection" in text  # deny-before-allow facts not probed
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    by_name = {s.split("\n", 1)[0]: s for s in sections[1:]}
    for regime in matrix.regimes:
        section = by_name[regime.name.replace("_", "\\_")]
        rows = [line for line in section.splitlines() if line.startswith("| ")]
        assert len(rows) == 2 + len(matrix.purposes)  # header, separator, one per purpose
        for row in matrix.purposes:
            assert sum(f"`{row.key}`" in line for line in rows) == 1, row.key
    for label in ("consent", "explicit consent", "contract", "legitimate interests", "never"):
        assert f"**{label}**" in text


# -- HTML -----------------------------------------------------------------------------

_VOID = {"meta", "br", "wbr", "img", "hr", "input", "link"}


class _Checker(HTMLParser):
    """Fails on unbalanced tags; records what the page would load."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    return checker


def test_html_is_one_self_contained_well_formed_page(matrix: Matrix) -> None:
    text = render_html(matrix)
    assert text.startswith("<!DOCTYPE html>")
    page = check_html(text)
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not re.search(r"<script\s+src|<link\b|https?://|@import|url\(", text)
    assert tags.count("table") == len(matrix.regimes)
    assert "position: sticky" in text
    assert matrix.policy_version[:12] in text


def test_html_cells_are_colour_coded_with_the_deciding_rule_on_hover(matrix: Matrix) -> None:
    page = check_html(render_html(matrix))
    cells = [attrs for tag, attrs in page.tags if tag == "td"]
    assert len(cells) == len(matrix.cells)
    for attrs in cells:
        title = attrs["title"] or ""
        assert re.search(r"\b(gdpr|ccpa|us_[a-z_]+)\.csv:\d+|no rule matched", title), attrs
        assert (attrs["class"] or "").startswith("tone-")
    tones = {attrs["class"] for attrs in cells}
    assert {"tone-none", "tone-consent", "tone-explicit", "tone-never"} <= tones


def test_renderings_escape_what_the_pack_supplies() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    m = Matrix(
        policy_version="0123456789abcdef" * 4,
        regimes=(Regime("gdpr", "DE", ("DE",)),),
        purposes=(Row("marketing", f"Mark{hostile}", 0),
                  Row("marketing.a<b", "a|b & <c>", 1)),
        columns=(Column(ORDINARY, "user.<x>"),),
        cells={
            ("gdpr", "marketing", ORDINARY): Cell("consent", "consent", "CONSENT_GIVEN",
                                                  'g"dpr.csv:1', "NO_CONSENT", "gdpr.csv:2"),
            ("gdpr", "marketing.a<b", ORDINARY): Cell("never", deny_reason="<DENY>"),
        },
    )
    text = render_html(m)
    page = check_html(text)
    assert hostile not in text and "&lt;img src=x" in text
    assert "marketing.a&lt;b" in text and "&lt;DENY&gt;" in text
    assert {tag for tag, _ in page.tags}.isdisjoint({"img", "c", "x"})
    assert any('g"dpr.csv:1' in (attrs.get("title") or "") for _, attrs in page.tags)
    md = render_markdown(m)
    assert hostile not in md and "&lt;img" in md
    row = next(line for line in md.splitlines() if "a&lt;b" in line or "a<b" in line)
    assert row.count(" | ") == 1  # the `|` in the name does not split the cell


# -- the per-jurisdiction view (issue 13) ------------------------------------------------


def test_a_jurisdiction_table_reads_as_the_engine_answers_it(compiled: CompiledPolicy) -> None:
    m = build_matrix(compiled, ["US", "US-CA", "DE", "FR"])
    assert [r.name for r in m.regimes] == ["US", "US-CA", "DE", "FR"]
    us, ca = (next(r for r in m.regimes if r.name == n) for n in ("US", "US-CA"))
    assert us.evaluated_under == tuple(sorted(set(compiled.jurisdictions.values())))
    assert ca.evaluated_under == ("ccpa",)
    # California allows sharing until the consumer opts out; the bare US (state unknown)
    # is answered as strictly as any regime would: consent.
    assert m.cell("US-CA", "third_party_sharing", ORDINARY).requirement == (
        "ccpa_opt_out_not_exercised")
    assert m.cell("US", "third_party_sharing", ORDINARY).requirement == "consent"
    for row in m.purposes:
        for column in m.columns:
            never = {code: m.cell(code, row.key, column.key).requirement == "never"
                     for code in ("US", "US-CA", "DE")}
            if never["US-CA"] or never["DE"]:
                assert never["US"], (row.key, column.key)
    text = render_markdown(m)
    every = ", ".join(us.evaluated_under).replace("_", "\\_")
    assert f"evaluated under every regime ({every})" in text
    assert "below 15, consent must be given jointly" in text  # FR, Loi 78-17 art. 45


def test_by_jurisdiction_has_a_table_per_mapped_code_and_the_bare_us(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from consentauthz import cli
    assert cli.main(["policy", "matrix", "--by-jurisdiction"]) == 0
    out = capsys.readouterr().out
    for code in ("DE", "FR", "GB", "US-CA", "US", "(none)"):
        assert f"\n## {code}\n" in out.replace("\\_", "_"), code
