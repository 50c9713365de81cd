"""The policy matrix: purposes x data categories x regimes -> what the rules require.

This owns the probing (asking the engine what a use needs, from no choice recorded up to
explicit consent) and the two renderings DPO reviews and training use: Markdown and one
self-contained HTML page. Nothing here is written by hand: every cell comes from
`CompiledPolicy.first_match` on the pack's own rules, so the matrix cannot drift from
the policy it describes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ..domain import Effect, Reason
from ..engine import UNKNOWN_JURISDICTION, CompiledPolicy, Rule

#: Column id of the ordinary-personal-data column (a category in no class).
ORDINARY = "ordinary"
#: The category shown for ordinary personal data when the taxonomy has it.
ORDINARY_CATEGORY = "user.contact.email"

#: Requirement codes the probe itself produces; an allow with no condition yields the
#: allowing rule's legal basis instead (contract, legitimate_interests, ...).
CONSENT = "consent"
EXPLICIT_CONSENT = "explicit_consent"
SIGNED_AUTHORISATION = "signed_authorisation"
OPT_IN = "consent_opt_in"
NEVER = "never"

#: The facts of the subjects the probe asks about, weakest first. NO_CHOICES is exactly
#: what derive_facts gives an adult with no record covering the use (tests/unit check it),
#: so a rule conditioned on `no_consent` is seen as it would be in production.
NO_CHOICES = frozenset({"no_consent"})
PROBES: tuple[tuple[str, frozenset[str]], ...] = (
    (CONSENT, frozenset({"consent"})),
    (EXPLICIT_CONSENT, frozenset({"consent", "explicit_consent"})),
    (OPT_IN, frozenset({"no_consent", "sale_opted_in"})),
    (SIGNED_AUTHORISATION, frozenset({"consent", "explicit_consent", "signed_authorisation"})),
)


@dataclass(frozen=True, slots=True)
class Requirement:
    """How a requirement code reads in the legend and which colour it gets."""

    label: str
    meaning: str
    #: none | consent | opt_in | explicit | never (the CSS class suffix)
    tone: str


#: Legend order. Codes not listed (a basis a pack may add) read as a no-consent basis.
REQUIREMENTS: Mapping[str, Requirement] = MappingProxyType({
    "legal_obligation": Requirement(
        "legal obligation", "Allowed without consent: required by law (GDPR Art. 6(1)(c), "
        "CCPA §1798.145(a)(1)); stands against objection.", "none"),
    "contract": Requirement(
        "contract", "Allowed without consent: necessary to perform the contract with the "
        "subject (GDPR Art. 6(1)(b)).", "none"),
    "vital_interests": Requirement(
        "vital interests", "Allowed without consent: protects someone's life "
        "(GDPR Art. 6(1)(d)).", "none"),
    "public_task": Requirement(
        "public task", "Allowed without consent: a task in the public interest "
        "(GDPR Art. 6(1)(e)).", "none"),
    "legitimate_interests": Requirement(
        "legitimate interests", "Allowed without consent on the controller's legitimate "
        "interests (GDPR Art. 6(1)(f)); an objection stops it.", "none"),
    "ccpa_opt_out_not_exercised": Requirement(
        "until opt-out", "Allowed without consent until the consumer opts out "
        "(CCPA §1798.120, §1798.121).", "none"),
    "ccpa_sensitive_permitted_use": Requirement(
        "permitted use", "Allowed even after a request to limit the use of sensitive "
        "personal information: a use the CCPA permits (§1798.121(a), 11 CCR §7027(m)).",
        "none"),
    "opt_out_not_exercised": Requirement(
        "until opt-out", "Allowed without consent until the consumer opts out of targeted "
        "advertising, sale or profiling under a US state privacy law (e.g. Va. Code "
        "§59.1-577(A)(5)).", "none"),
    "statutory_exemption": Requirement(
        "exempt", "Allowed without consent: a purpose the US state law does not restrict "
        "(security, fraud, the product or service the consumer requested; e.g. Va. Code "
        "§59.1-582(A)).", "none"),
    SIGNED_AUTHORISATION: Requirement(
        "signed authorisation", "Needs the consumer's signed authorisation, recorded as an "
        "explicit grant that expires within a year (RCW 19.373.070, NRS 603A.535).",
        "explicit"),
    CONSENT: Requirement(
        "consent", "Needs valid consent for this purpose: an affirmative act, not expired, "
        "given or authorised by a parent below the digital consent age (GDPR Art. 6(1)(a), "
        "7, 8).", "consent"),
    OPT_IN: Requirement(
        "consent (opt-in)", "Needs the consumer's opt-in to sale or sharing "
        "(CCPA §1798.120(c)-(d)).", "opt_in"),
    EXPLICIT_CONSENT: Requirement(
        "explicit consent", "Needs explicit consent, an express statement (GDPR Art. 9(2)(a) "
        "for special categories, Art. 22(2)(c) for automated decisions).", "explicit"),
    NEVER: Requirement(
        "never", "No probed subject is allowed: the rules deny (the deny reason is shown); "
        "only a rule the pack does not have could allow it.", "never"),
})

_PROBE_NOTE = (
    "Each cell is the weakest condition under which the rules allow the use: the engine is "
    "asked for a subject who recorded no choice, then one with valid consent, then one with "
    "explicit consent, then (for opt-in regimes) one who opted in to sale or sharing. Facts "
    "that deny before any allow are not probed: objection, withdrawal, expired or invalid "
    "(pre-ticked, implied) consent, a child without parental consent, a Global Privacy "
    "Control signal, a sale opt-out, a CPRA limit on sensitive data, CCPA minors. A cell "
    "says what is needed at least, never that it is enough for every subject.")


@dataclass(frozen=True, slots=True)
class Cell:
    """What one (regime, purpose, data category) needs, and the rules that say so."""

    #: a legal basis code (contract, legitimate_interests, ...), consent,
    #: explicit_consent, consent_opt_in or never
    requirement: str
    #: the allowing rule's legal basis and reason code ("" when never allowed)
    legal_basis: str = ""
    reason: str = ""
    #: `file:line` of the allowing rule ("" when never allowed)
    rule: str = ""
    #: what a subject with no choice recorded gets when that is a deny ("" if allowed):
    #: the reason code (NO_MATCHING_RULE when no rule matched) and the rule's `file:line`
    deny_reason: str = ""
    deny_rule: str = ""


@dataclass(frozen=True, slots=True)
class Regime:
    """A regime as the matrix shows it: the jurisdiction probed and all that map to it."""

    name: str
    #: the representative jurisdiction code the probe uses
    jurisdiction: str
    #: every code in the pack that maps directly to this regime (UNKNOWN included)
    jurisdictions: tuple[str, ...]
    #: for a one-jurisdiction table: the regimes it is evaluated under (several when the
    #: pack does not map it); empty for a regime's table
    evaluated_under: tuple[str, ...] = ()
    #: what the pack's settings say about this jurisdiction (Art. 8 age, GPC, ...)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Row:
    """A purpose (fideslang data use), with its depth in the hierarchy for indentation."""

    key: str
    name: str
    depth: int = 0


@dataclass(frozen=True, slots=True)
class Column:
    """A data-category class (or ORDINARY) and the category that stands for it."""

    key: str
    category: str
    category_name: str = ""


CellKey = tuple[str, str, str]  # (regime, purpose, column key)


@dataclass(frozen=True, slots=True)
class Matrix:
    """Every (regime, purpose, column) cell of one policy version, ready to render."""

    policy_version: str
    regimes: tuple[Regime, ...]
    purposes: tuple[Row, ...]
    columns: tuple[Column, ...]
    cells: Mapping[CellKey, Cell]

    def cell(self, regime: str, purpose: str, column: str) -> Cell:
        return self.cells[(regime, purpose, column)]


# -- building -------------------------------------------------------------------------


def build_matrix(compiled: CompiledPolicy, jurisdictions: Sequence[str] = ()) -> Matrix:
    """Probe every regime x purpose x column of the pack; with `jurisdictions`, one table
    per jurisdiction code instead (a code the pack does not map, the bare `US` say, is
    probed as the engine answers it: under every regime, allowed only where all allow)."""
    regimes = (tuple(_jurisdiction_view(compiled, code) for code in jurisdictions)
               if jurisdictions else _regimes(compiled))
    purposes = _purpose_rows(compiled)
    columns = _columns(compiled)
    cells = {
        (regime.name, row.key, column.key):
            probe(compiled, regime.jurisdiction, row.key, column.category)
        for regime in regimes for row in purposes for column in columns
    }
    return Matrix(compiled.version, regimes, purposes, columns, MappingProxyType(cells))


def probe(compiled: CompiledPolicy, jurisdiction: str, purpose: str, category: str) -> Cell:
    """The weakest probed subject the rules allow, or never (with the deny they give). A
    jurisdiction is probed under every token the engine evaluates it under (its own, or
    every regime for one the pack does not map): a probe allows only if all of them do,
    and the first that denies names the deny."""
    tokens = (compiled.tokens_for(jurisdiction) if jurisdiction != UNKNOWN_JURISDICTION
              else (UNKNOWN_JURISDICTION,))

    def first(facts: frozenset[str]) -> tuple[Rule | None, bool]:
        """The deciding rule (the first deny, else the first token's allow)."""
        allowing: Rule | None = None
        for token in tokens:
            rule = compiled.first_match(token, purpose, category, facts)
            if rule is None or rule.effect is not Effect.ALLOW:
                return rule, False
            allowing = allowing or rule
        return allowing, True

    base, allowed = first(NO_CHOICES)
    if allowed and base is not None:
        return _allowed(base.basis, base)
    deny_reason = (base.reason if base is not None else Reason.NO_MATCHING_RULE).value
    deny_rule = _where(base) if base is not None else ""
    for requirement, facts in PROBES:
        rule, allowed = first(facts)
        if allowed and rule is not None:
            return _allowed(requirement, rule, deny_reason, deny_rule)
    return Cell(NEVER, deny_reason=deny_reason, deny_rule=deny_rule)


def _jurisdiction_view(compiled: CompiledPolicy, code: str) -> Regime:
    tokens = compiled.tokens_for(code)
    regimes = sorted({compiled.regime_of(t) for t in tokens})
    settings = compiled.policy.settings
    reached = {r for t in tokens for r in compiled.regime_closure(t)}
    notes = []
    if "gdpr" in reached:
        joint = (" given jointly by the child and a holder of parental responsibility"
                 if settings.joint_consent(code) else
                 " given or authorised by a holder of parental responsibility")
        notes.append(f"GDPR Art. 8: below {settings.consent_age(code)}, consent must be{joint}.")
    elif code in settings.digital_consent_age:
        notes.append(f"Below {settings.consent_age(code)} (a child), consent must be given or "
                     "authorised by a parent or guardian (COPPA, 16 CFR §312.5, as the "
                     "state law adopts it).")
    if "ccpa" in reached:
        notes.append(f"CCPA §1798.120(c): under {settings.ccpa_parental_authorisation_age} a "
                     f"parent opts in to sale or sharing; from "
                     f"{settings.ccpa_parental_authorisation_age} to "
                     f"{settings.ccpa_minor_opt_in_age - 1} the consumer.")
    remembered = sorted(r for r in reached if r in settings.gpc_remembered_from)
    if remembered:
        since = ", ".join(f"{r} from {settings.gpc_remembered_from[r].isoformat()}"
                          for r in remembered)
        notes.append(f"A Global Privacy Control signal from a known consumer is recorded as "
                     f"their opt-out ({since}).")
    return Regime(code or "(none)", code, (code,), tuple(regimes), tuple(notes))


def _allowed(requirement: str, rule: Rule, deny_reason: str = "",
             deny_rule: str = "") -> Cell:
    return Cell(requirement, legal_basis=rule.basis, reason=rule.reason.value,
                rule=_where(rule), deny_reason=deny_reason, deny_rule=deny_rule)


def _where(rule: Rule) -> str:
    return f"{rule.source.file}:{rule.source.line}"


def _regimes(compiled: CompiledPolicy) -> tuple[Regime, ...]:
    # compiled.jurisdictions keeps regimes.csv order, so regimes come in the author's order.
    codes: dict[str, list[str]] = {}
    for code, regime in compiled.jurisdictions.items():
        codes.setdefault(regime, []).append(code)
    out = []
    for regime, members in codes.items():
        mapped = sorted(c for c in members if c != UNKNOWN_JURISDICTION)
        unknown = [UNKNOWN_JURISDICTION] if UNKNOWN_JURISDICTION in members else []
        out.append(Regime(regime, (mapped or unknown)[0], (*mapped, *unknown)))
    return tuple(out)


def _purpose_rows(compiled: CompiledPolicy) -> tuple[Row, ...]:
    hierarchy = compiled.policy.taxonomy.purposes
    children: dict[str | None, list[str]] = {}
    for key, parent in hierarchy.parents.items():
        children.setdefault(parent if parent in hierarchy else None, []).append(key)
    rows: list[Row] = []

    def walk(parent: str | None, depth: int) -> None:
        for key in sorted(children.get(parent, ())):
            rows.append(Row(key, hierarchy.names.get(key, key), depth))
            walk(key, depth + 1)

    walk(None, 0)
    return tuple(rows)


def _category_class_sets(compiled: CompiledPolicy) -> dict[str, frozenset[str]]:
    """Taxonomy category -> the category classes it reaches (hierarchy and g3 links)."""
    categories = compiled.policy.taxonomy.categories
    links: dict[str, set[str]] = {}
    for line in compiled.policy.groupings:
        if line.ptype == "g3" and len(line.fields) == 2:
            links.setdefault(line.fields[0], set()).add(line.fields[1])
    out: dict[str, frozenset[str]] = {}
    for key in categories.parents:
        seen: set[str] = set()
        frontier = set(categories.lineage(key))
        while frontier:
            seen |= frontier
            frontier = {c for node in frontier for c in links.get(node, ()) if c not in seen}
        out[key] = frozenset(seen & compiled.category_classes)
    return out


def _class_order(compiled: CompiledPolicy) -> list[str]:
    """Category classes in the order classes.csv declares them, then any others sorted."""
    order = [line.fields[1] for line in compiled.policy.groupings
             if line.ptype == "g3" and len(line.fields) == 2]
    order += sorted(compiled.category_classes)
    return [c for c in dict.fromkeys(order) if c in compiled.category_classes]


def _columns(compiled: CompiledPolicy) -> tuple[Column, ...]:
    categories = compiled.policy.taxonomy.categories
    reaches = _category_class_sets(compiled)
    keys = sorted(reaches)

    def column(key: str, category: str) -> Column:
        return Column(key, category, categories.names.get(category, category))

    columns: list[Column] = []
    ordinary = (ORDINARY_CATEGORY
                if ORDINARY_CATEGORY in reaches and not reaches[ORDINARY_CATEGORY]
                else next((k for k in keys if not reaches[k]), None))
    if ordinary is not None:
        columns.append(column(ORDINARY, ordinary))
    for cls in _class_order(compiled):
        members = [k for k in keys if cls in reaches[k]]
        only = [k for k in members if reaches[k] == {cls}]
        if members:  # every declared class reaches some key; guard a pack that breaks that
            columns.append(column(cls, (only or members)[0]))
    return tuple(columns)


# -- shared text ----------------------------------------------------------------------


def requirement_of(code: str) -> Requirement:
    return REQUIREMENTS.get(code) or Requirement(
        code.replace("_", " "), f"Allowed without consent on the legal basis {code}.", "none")


def _legend(m: Matrix) -> list[tuple[str, Requirement]]:
    used = {cell.requirement for cell in m.cells.values()}
    order = [*REQUIREMENTS, *sorted(used - set(REQUIREMENTS))]
    return [(code, requirement_of(code)) for code in order if code in used]


def _column_title(column: Column) -> str:
    return "ordinary personal data" if column.key == ORDINARY else column.key


def _describe(regime: Regime, row: Row, column: Column, cell: Cell) -> str:
    """The hover text of a cell: the deciding rules, file:line."""
    head = (f"{regime.name}: purpose {row.key}, data category {column.category} "
            f"({_column_title(column)})")
    if cell.requirement == NEVER:
        where = f" by {cell.deny_rule}" if cell.deny_rule else " (no rule matched)"
        return f"{head}: never allowed; denied {cell.deny_reason}{where}"
    text = (f"{head}: allowed by {cell.rule} ({cell.reason}, legal basis {cell.legal_basis})")
    if cell.deny_reason:
        where = f" by {cell.deny_rule}" if cell.deny_rule else ""
        text += f"; with no choice recorded: denied {cell.deny_reason}{where}"
    return text


def _jurisdiction_note(regime: Regime) -> str:
    if regime.evaluated_under:
        under = ", ".join(regime.evaluated_under)
        if len(regime.evaluated_under) == 1:
            head = f"Jurisdiction {regime.jurisdiction or '(none)'}: regime {under}."
        else:
            head = (f"Jurisdiction {regime.jurisdiction or '(none)'} is not mapped by the "
                    f"pack: it is evaluated under every regime ({under}), and a use is "
                    "allowed only where all of them allow it.")
        return " ".join((head, *regime.notes))
    mapped = [c for c in regime.jurisdictions if c != UNKNOWN_JURISDICTION]
    text = f"Jurisdictions: {', '.join(mapped) or '(none)'}; probed as {regime.jurisdiction}."
    if UNKNOWN_JURISDICTION in regime.jurisdictions:
        text += (f" Any jurisdiction the pack does not map ({UNKNOWN_JURISDICTION}) is "
                 "evaluated under this regime and under every other regime of the pack: "
                 "it is allowed only where all of them allow.")
    return text


def _generated_note(m: Matrix) -> str:
    return (f"Generated from the rules of the policy pack, policy version "
            f"{m.policy_version[:12]}. Do not edit by hand: regenerate it after changing "
            "the policy (consentauthz policy matrix).")


# -- Markdown -------------------------------------------------------------------------


def _md_text(text: str) -> str:
    escaped = html.escape(text, quote=False)
    return "".join("\\" + ch if ch in "\\`*_[]|#" else ch for ch in escaped)


def _md_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_markdown(m: Matrix) -> str:
    """One table per regime, a legend, and where the matrix came from."""
    out = ["# Policy matrix", "", _md_text(_generated_note(m)), "",
           "Rows are purposes (fideslang data uses, children indented under their parent); "
           "columns are data categories, one per category class of the pack, each probed "
           "with the representative category shown.", "", "## Legend", ""]
    for code, req in _legend(m):
        out.append(f"- **{_md_text(req.label)}** ({_md_code(code)}): {_md_text(req.meaning)}")
    out += ["", _md_text(_PROBE_NOTE), ""]
    header = ["purpose", *(("ordinary personal data" if c.key == ORDINARY else _md_code(c.key))
                           + f"<br>{_md_code(c.category)}" for c in m.columns)]
    for regime in m.regimes:
        out += [f"## {_md_text(regime.name)}", "", _md_text(_jurisdiction_note(regime)), "",
                _md_row(header), _md_row("---" for _ in header)]
        for row in m.purposes:
            indent = "\u00a0" * 4 * row.depth
            cells = [f"{indent}{_md_code(row.key)} {_md_text(row.name)}"]
            for column in m.columns:
                cell = m.cells[(regime.name, row.key, column.key)]
                label = _md_text(requirement_of(cell.requirement).label)
                if cell.requirement == NEVER:
                    cells.append(f"{label} ({_md_code(cell.deny_reason)})"
                                 + (f"<br><sub>{_md_text(cell.deny_rule)}</sub>"
                                    if cell.deny_rule else ""))
                else:
                    cells.append(f"{label}<br><sub>{_md_text(cell.rule)}</sub>")
            out.append(_md_row(cells))
        out.append("")
    return "\n".join(out)


# -- HTML -----------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0 2rem 3rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; margin: 1.5rem 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .25rem; }
p.meta, p.note, p.juris { color: #57606a; max-width: 75rem; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav a { margin-right: 1rem; }
ul.legend { list-style: none; padding: 0; max-width: 75rem; }
ul.legend li { margin: .3rem 0; display: flex; gap: .6rem; align-items: baseline; }
.swatch { display: inline-block; min-width: 8.5rem; padding: .1rem .5rem;
          border-radius: 4px; text-align: center; font-weight: 600; }
table { border-collapse: separate; border-spacing: 0; width: 100%; margin-top: .5rem; }
th, td { border-bottom: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left;
         vertical-align: top; }
thead th { position: sticky; top: 0; z-index: 1; background: #f6f8fa;
           border-bottom: 2px solid #8c959f; font-weight: 600; }
thead th code { font-weight: normal; color: #57606a; }
tbody th { font-weight: normal; white-space: nowrap; }
tbody th .name { display: block; color: #57606a; font-size: 12px; }
tbody th.depth-0 { font-weight: 600; }
td { white-space: nowrap; cursor: help; }
td small { display: block; color: inherit; opacity: .75; font-size: 11px; }
tbody tr:hover th, tbody tr:hover td { box-shadow: inset 0 0 0 9999px rgba(0,0,0,.04); }
.tone-none { background: #dafbe1; color: #116329; }
.tone-consent { background: #fff1c2; color: #7d4e00; }
.tone-opt_in { background: #ffdcb5; color: #8a3c00; }
.tone-explicit { background: #ffd7d5; color: #a40e26; }
.tone-never { background: #e6e8eb; color: #424a53; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _breakable(key: str) -> str:
    """A dotted key that may wrap after each dot, so headers stay narrow."""
    return ".<wbr>".join(_e(part) for part in key.split("."))


def render_html(m: Matrix) -> str:
    """One self-contained page (inline CSS, no scripts, no external assets)."""
    version = m.policy_version[:12]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Policy matrix {_e(version)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>Policy matrix</h1>",
        f'<p class="meta">{_e(_generated_note(m))}</p>',
        "<p class=\"meta\">Rows are purposes (fideslang data uses, children indented under "
        "their parent); columns are data categories, one per category class of the pack, "
        "each probed with the representative category shown. Hover over a cell for the "
        "deciding rule (<code>file:line</code>).</p>",
        "<h2>Legend</h2>",
        '<ul class="legend">',
    ]
    for code, req in _legend(m):
        out.append(f'<li><span class="swatch tone-{_e(req.tone)}">{_e(req.label)}</span>'
                   f"<span><code>{_e(code)}</code>: {_e(req.meaning)}</span></li>")
    out += ["</ul>", f'<p class="note">{_e(_PROBE_NOTE)}</p>', "<nav>"]
    out += [f'<a href="#regime-{_e(r.name)}">{_e(r.name)}</a>' for r in m.regimes]
    out.append("</nav>")
    for regime in m.regimes:
        out += [f'<section id="regime-{_e(regime.name)}">',
                f"<h2>{_e(regime.name)}</h2>",
                f'<p class="juris">{_e(_jurisdiction_note(regime))}</p>',
                "<table>", "<thead>", "<tr>", '<th scope="col">purpose</th>']
        out += [f'<th scope="col">{_e(_column_title(c))}<br><code>{_breakable(c.category)}'
                f"</code></th>" for c in m.columns]
        out += ["</tr>", "</thead>", "<tbody>"]
        for row in m.purposes:
            out.append("<tr>")
            out.append(f'<th scope="row" class="depth-{row.depth}" '
                       f'style="padding-left: {0.6 + 1.5 * row.depth:.1f}em">'
                       f'<code>{_e(row.key)}</code><span class="name">{_e(row.name)}</span></th>')
            for column in m.columns:
                cell = m.cells[(regime.name, row.key, column.key)]
                req = requirement_of(cell.requirement)
                detail = cell.deny_reason if cell.requirement == NEVER else cell.rule
                out.append(f'<td class="tone-{_e(req.tone)}" '
                           f'title="{_e(_describe(regime, row, column, cell))}">'
                           f"{_e(req.label)}<small>{_e(detail)}</small></td>")
            out.append("</tr>")
        out += ["</tbody>", "</table>", "</section>"]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
