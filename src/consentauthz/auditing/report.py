"""Subject access report (GDPR Art. 15): which purposes, callers and data categories used
this person's data, when, and on what basis; plus the consent records held."""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..domain import ConsentEvent, DecisionRecord, Effect


@dataclass(slots=True)
class PurposeUse:
    purpose: str
    allowed: int = 0
    denied: int = 0
    first: datetime | None = None
    last: datetime | None = None
    callers: set[str] = field(default_factory=set)
    data_categories: set[str] = field(default_factory=set)
    legal_bases: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class SubjectReport:
    generated_at: datetime
    decisions: int
    uses: tuple[PurposeUse, ...]
    consent_records: tuple[ConsentEvent, ...]


def build_report(decisions: Iterable[DecisionRecord], consent: Iterable[ConsentEvent],
                 now: datetime) -> SubjectReport:
    uses: dict[str, PurposeUse] = {}
    count = 0
    for d in decisions:
        count += 1
        use = uses.setdefault(d.purpose, PurposeUse(d.purpose))
        if d.decision is Effect.ALLOW:
            use.allowed += 1
            use.data_categories.add(d.data_category)
            use.legal_bases.add(d.legal_basis)
            use.callers.add(d.caller)
            use.first = min(use.first or d.time, d.time)
            use.last = max(use.last or d.time, d.time)
        else:
            use.denied += 1
    return SubjectReport(now, count, tuple(sorted(uses.values(), key=lambda u: u.purpose)),
                         tuple(consent))


def report_dict(r: SubjectReport) -> dict[str, Any]:
    return {
        "generated_at": r.generated_at.isoformat(),
        "decisions": r.decisions,
        "uses": [{
            "purpose": u.purpose, "allowed": u.allowed, "denied": u.denied,
            "first_use": u.first.isoformat() if u.first else None,
            "last_use": u.last.isoformat() if u.last else None,
            "callers": sorted(u.callers), "data_categories": sorted(u.data_categories),
            "legal_bases": sorted(u.legal_bases),
        } for u in r.uses],
        "consent_records": [{
            "record_id": e.record_id, "action": e.action.value, "purpose": e.purpose,
            "data_categories": list(e.data_categories), "method": e.method.value,
            "explicit": e.explicit, "collected_at": e.collected_at.isoformat(),
            "expires_at": e.expires_at.isoformat() if e.expires_at else None,
            "source": e.source, "notice_version": e.notice_version,
        } for e in r.consent_records],
    }


_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1d2230}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .6rem;
border-bottom:1px solid #dde1ea;vertical-align:top}th{background:#f3f5f9}
code{font-size:.9em}.muted{color:#5b6475}
"""


def render_html(r: SubjectReport) -> str:
    e = html.escape
    uses = "".join(
        f"<tr><td><code>{e(u.purpose)}</code></td><td>{u.allowed}</td><td>{u.denied}</td>"
        f"<td>{e(', '.join(sorted(u.data_categories)) or '-')}</td>"
        f"<td>{e(', '.join(sorted(u.legal_bases)) or '-')}</td>"
        f"<td>{e(', '.join(sorted(u.callers)) or '-')}</td>"
        f"<td>{e(u.first.isoformat() if u.first else '-')}<br>"
        f"{e(u.last.isoformat() if u.last else '')}</td></tr>" for u in r.uses)
    records = "".join(
        f"<tr><td>{e(c.collected_at.isoformat())}</td><td>{e(c.action.value)}</td>"
        f"<td><code>{e(c.purpose or 'all purposes')}</code></td>"
        f"<td>{e(', '.join(c.data_categories) or 'all')}</td>"
        f"<td>{e(c.method.value.lower())}{' (explicit)' if c.explicit else ''}</td>"
        f"<td>{e(c.source or '-')} / {e(c.notice_version or '-')}</td></tr>"
        for c in r.consent_records)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Your data: access report</title>
<style>{_CSS}</style></head><body>
<h1>How your personal data was used</h1>
<p class="muted">Access report under GDPR Art. 15, generated {e(r.generated_at.isoformat())}.
{r.decisions} decision(s) about the use of your data are on record.</p>
<h2>Uses by purpose</h2>
<table><thead><tr><th>purpose</th><th>allowed</th><th>refused</th><th>data categories used</th>
<th>legal basis</th><th>by (internal service)</th><th>first / last use</th></tr></thead>
<tbody>{uses or '<tr><td colspan="7">none</td></tr>'}</tbody></table>
<h2>Your consent choices on record</h2>
<table><thead><tr><th>when</th><th>choice</th><th>purpose</th><th>data categories</th>
<th>how</th><th>channel / notice</th></tr></thead>
<tbody>{records or '<tr><td colspan="6">none</td></tr>'}</tbody></table>
</body></html>
"""
