"""Imports point only downward (docs/architecture.md): a module imports from a lower layer
or its own package, never upward and never across (the wings never import each other).
New modules must be given a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "consentauthz"

LAYERS: dict[str, float] = {
    "domain": 0, "errors": 0,
    "chain": 0.5, "pseudonym": 0.5, "sqlite_files": 0.5, "telemetry": 0.5, "metrics": 0.5,
    "config": 0.5, "v1": 0.5, "datadir": 0.5,
    "policy": 1,
    "validation": 2,
    "engine": 3, "consent": 3, "decisionlog": 3,
    "checker": 4, "reload": 4, "authoring": 4, "auditing": 4,
    "server": 5,
    "app": 6,
    "cli_channel": 7, "cli_output": 7,
    "cli_audit": 7.5, "cli_ledger": 7.5, "cli_keys": 7.5, "cli_consent": 7.5,
    "cli": 8,
}


def _unit(path: Path) -> str:
    """The top-level module or package under consentauthz/ that a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a top-level module
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level > depth:  # from .. import x, out of a subpackage: the top
                names = [node.module] if node.module else [a.name for a in node.names]
            else:
                continue  # inside its own package
            out |= {n.split(".")[0] if node.level else n for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    # Absolute imports of ours, and relative ones that left their package.
    return ({n.split(".")[1] for n in out if n.startswith("consentauthz.")}
            | {n for n in out if n in LAYERS})


def test_every_module_has_a_layer() -> None:
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= LAYERS.keys(), f"give these a layer: {sorted(units - LAYERS.keys())}"


def test_imports_point_only_downward() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit in ("__init__", "__main__", "v1"):
            continue
        for target in _imported_units(path) - {unit}:
            if LAYERS[target] >= LAYERS[unit]:
                problems.append(f"{path.relative_to(PACKAGE)} imports {target} "
                                f"(layer {LAYERS.get(target)} >= {LAYERS[unit]})")
    assert not problems, "\n".join(problems)
