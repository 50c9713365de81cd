"""A plain casbin.Enforcer on the same policy: the semantics the engine must reproduce."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import casbin

from ..policy import PolicySet
from .compiled import CompiledPolicy


def taxonomy_links(policy: PolicySet) -> list[str]:
    """The fideslang hierarchy as casbin role links (g2 for purposes, g3 for categories)."""
    tax = policy.taxonomy
    lines = [f"g2, {k}, {p}" for k, p in tax.purposes.parents.items() if p is not None]
    lines += [f"g3, {k}, {p}" for k, p in tax.categories.parents.items() if p is not None]
    return lines


def reference_enforcer(policy: PolicySet, workdir: Path | None = None) -> Any:
    """Build casbin.Enforcer(model.conf, rules) with the taxonomy links added, in load order."""
    logging.getLogger("casbin").setLevel(logging.CRITICAL + 1)
    if workdir is None:
        # casbin reads both files while it is constructed; nothing is left behind.
        with tempfile.TemporaryDirectory(prefix="consentauthz-ref-") as tmp:
            return reference_enforcer(policy, Path(tmp))
    model, csv = write_reference_files(policy, workdir)
    return casbin.Enforcer(str(model), str(csv))


def write_reference_files(policy: PolicySet, workdir: Path) -> tuple[Path, Path]:
    """model.conf and one policy.csv (rules, groupings, taxonomy links, in load order):
    what any Casbin implementation can load to decide as the engine does."""
    model = workdir / "model.conf"
    model.write_text(policy.model_text)
    csv = workdir / "policy.csv"
    body = [line.text for line in policy.rules] + [line.text for line in policy.groupings]
    csv.write_text("\n".join(body + taxonomy_links(policy)) + "\n")
    return model, csv


def reference_request(compiled: CompiledPolicy, jurisdiction: str, purpose: str,
                      category: str, facts: frozenset[str]) -> tuple[Any, ...]:
    return (compiled.jurisdiction_token(jurisdiction), purpose, category, tuple(sorted(facts)))
