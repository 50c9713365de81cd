"""Synthetic policy packs of any size that load, compile, lint clean and pass their tests.

A pack of N rule lines over many jurisdictions and purposes, shaped like a large real one:
- 40 regimes (`r00` .. `r39`, about as many as there are distinct privacy laws worth a
  regime), each under a strict base regime `strict` that also takes UNKNOWN;
- every ISO 3166-1 country and every ISO 3166-2 subdivision the engine accepts (about
  5,300 jurisdictions), each country and its subdivisions under one regime;
- N rules spread over the regimes, each on a (leaf purpose, leaf data category) pair of
  the fideslang taxonomy with one of eight facts, so that no rule shadows another and
  `policy lint` finds nothing (every rule decides some request);
- seven base rules under `strict` (legal obligation, erasure, objection, withdrawal,
  expiry, consent, deny by default);
- one test suite with a case per regime, which the authoring gate requires.

The model, settings and taxonomy extensions are copied from the shipped pack (the engine
only accepts the canonical model). Generation is deterministic: the same N gives the same
files, hence the same policy version.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pycountry
import yaml

from consentauthz.policy import load_policy_set

REGIMES = 40
_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?\Z")
#: fact -> (eft, reason, basis); none of these facts implies another, so two rules on
#: the same regime, purpose and category never shadow each other.
FACTS = {
    "consent": ("allow", "CONSENT_GIVEN", "consent"),
    "consent_withdrawn": ("deny", "CONSENT_WITHDRAWN", ""),
    "objected": ("deny", "OBJECTED", ""),
    "consent_expired": ("deny", "CONSENT_EXPIRED", ""),
    "consent_invalid": ("deny", "CONSENT_INVALID", ""),
    "gpc": ("deny", "GPC_OPT_OUT", ""),
    "sale_opted_out": ("deny", "OPTED_OUT", ""),
    "no_consent": ("deny", "NO_CONSENT", ""),
}
BASE_RULES = """\
# Base rules of the strict regime every synthetic regime sits under.
p, 100, strict, essential.legal_obligation, *, always, allow, LEGAL_OBLIGATION, legal_obligation
p, 110, strict, *, *, erased, deny, SUBJECT_ERASED,
p, 200, strict, *, *, objected, deny, OBJECTED,
p, 210, strict, *, *, consent_withdrawn, deny, CONSENT_WITHDRAWN,
p, 600, strict, *, *, consent_expired, deny, CONSENT_EXPIRED,
p, 610, strict, *, *, consent, allow, CONSENT_GIVEN, consent
p, 900, strict, *, *, always, deny, NO_CONSENT,
"""
COPIED = ("model.conf", "settings.yaml", "taxonomy.yaml")


@dataclass(frozen=True)
class PackInfo:
    path: Path
    rules: int
    jurisdictions: int
    regimes: int
    #: (jurisdiction, purpose, category) triples that reach synthetic rules, for requests.
    probes: tuple[tuple[str, str, str], ...]


def _jurisdictions() -> dict[str, list[str]]:
    """country -> [country, its subdivisions...], ISO codes the engine accepts."""
    out: dict[str, list[str]] = {}
    for country in sorted(c.alpha_2 for c in pycountry.countries):
        out[country] = [country]
    for sub in sorted(s.code for s in pycountry.subdivisions):
        if _JURISDICTION.match(sub) and sub[:2] in out:
            out[sub[:2]].append(sub)
    return out


def _leaves(shipped: Path) -> tuple[list[str], list[str]]:
    tax = load_policy_set(shipped).taxonomy
    # Not the purpose the base rules allow always (it would decide before the rule tested).
    purposes = sorted(k for k in tax.purposes if len(tax.purposes.subtree(k)) == 1
                      and k != "essential.legal_obligation")
    categories = sorted(k for k in tax.categories
                        if len(tax.categories.subtree(k)) == 1)
    return purposes, categories


def _settings_for_synthetic_regimes(path: Path) -> None:
    """The shipped settings, less what names the shipped pack's regimes (the remembered
    GPC opt-out's regimes): the synthetic pack has none of them, and the engine refuses a
    setting for a regime the pack lacks."""
    settings = yaml.safe_load(path.read_text()) or {}
    gpc = settings.get("gpc")
    if isinstance(gpc, dict):
        gpc.pop("remembered_opt_out", None)
        if not gpc:
            del settings["gpc"]
    path.write_text(yaml.safe_dump(settings, sort_keys=False))


def generate_pack(target: Path, rules: int, shipped: Path) -> PackInfo:
    """Write a pack of `rules` synthetic rule lines (plus 7 base rules) into `target`."""
    if target.exists():
        shutil.rmtree(target)
    (target / "tests").mkdir(parents=True)
    for name in COPIED:
        shutil.copyfile(shipped / name, target / name)
    _settings_for_synthetic_regimes(target / "settings.yaml")
    purposes, categories = _leaves(shipped)
    pairs = [(p, c) for p in purposes for c in categories]
    facts = list(FACTS)
    capacity = len(pairs) * len(facts)
    if rules > capacity * REGIMES:
        raise ValueError(f"at most {capacity * REGIMES} synthetic rules")

    countries = _jurisdictions()
    by_regime: dict[int, list[str]] = {}
    lines = ["# Jurisdiction -> regime (synthetic: every ISO code the engine accepts).",
             "g, UNKNOWN, strict"]
    lines += [f"g, r{k:02d}, strict" for k in range(REGIMES)]
    for i, (_, codes) in enumerate(sorted(countries.items())):
        for code in codes:
            lines.append(f"g, {code}, r{i % REGIMES:02d}")
            by_regime.setdefault(i % REGIMES, []).append(code)
    (target / "regimes.csv").write_text("\n".join(lines) + "\n")
    jurisdictions = sum(len(v) for v in countries.values())

    orders = []
    for k in range(REGIMES):
        order = list(pairs)
        random.Random(k).shuffle(order)
        orders.append(order)
    body = ["# Synthetic rules: regime, leaf purpose, leaf category, one fact each."]
    first: dict[int, tuple[str, str, int]] = {}
    for i in range(rules):
        regime, local = i % REGIMES, i // REGIMES
        purpose, category = orders[regime][local // len(facts)]
        fact = facts[local % len(facts)]
        eft, reason, basis = FACTS[fact]
        priority = 10 + 10 * (local % len(facts))
        body.append(f"p, {priority}, r{regime:02d}, {purpose}, {category}, {fact}, {eft}, "
                    f"{reason}, {basis}")
        first.setdefault(regime, (purpose, category, len(body)))
    (target / "rules.csv").write_text("\n".join(body) + "\n")
    (target / "base.csv").write_text(BASE_RULES)

    cases = []
    probes = []
    for k in range(REGIMES):
        code = by_regime[k][0]
        purpose, category, _ = first.get(k, (purposes[0], categories[0], 0))
        probes += [(c, orders[k][j][0], orders[k][j][1])
                   for j, c in enumerate(by_regime[k][:50])]
        cases.append(
            f"  - name: regime r{k:02d} ({code}) allows on consent\n"
            f"    consent:\n"
            f"      - {{action: grant, purpose: {purpose}, categories: [{category}], "
            f"collected_at: 2026-05-01T09:00:00Z}}\n"
            f"    check: {{purpose: {purpose}, data_category: {category}, "
            f"jurisdiction: {code}}}\n"
            f"    expect: {{decision: ALLOW, reason: CONSENT_GIVEN, legal_basis: consent}}\n"
            f"  - name: regime r{k:02d} ({code}) denies without consent\n"
            f"    check: {{purpose: {purpose}, data_category: {category}, "
            f"jurisdiction: {code}}}\n"
            f"    expect: {{decision: DENY, reason: NO_CONSENT}}\n")
    cases.append(
        "  - name: an unmapped jurisdiction falls to the strict regime\n"
        "    check: {purpose: marketing.communications.email, data_category: "
        "user.contact.email, jurisdiction: \"\"}\n"
        "    expect: {decision: DENY, reason: NO_CONSENT, rule: base.csv:8}\n")
    (target / "tests" / "synthetic_test.yaml").write_text(
        "name: synthetic pack smoke test (one case per regime)\n"
        "now: 2026-06-01T12:00:00Z\ncases:\n" + "".join(cases))
    return PackInfo(target, rules + 7, jurisdictions, REGIMES + 1, tuple(probes))
