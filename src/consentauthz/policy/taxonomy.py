"""The fideslang vocabulary: data uses (purposes) and data categories as hierarchies.

The default taxonomy comes from the fideslang package; a policy pack may add keys under
existing parents (policies/taxonomy.yaml).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from types import MappingProxyType
from typing import Any

from ..errors import PolicyError


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Dot-separated keys where a key covers its descendants."""

    parents: Mapping[str, str | None]
    names: Mapping[str, str] = field(default_factory=dict)
    _lineage: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)
    _subtree: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        below: dict[str, list[str]] = {key: [] for key in self.parents}
        for key in sorted(self.parents):
            parent = self.parents[key]
            while parent is not None:
                below[parent].append(key)
                parent = self.parents.get(parent)
        for key, descendants in below.items():
            self._subtree[key] = (key, *descendants)
        for key in self.parents:
            chain = [key]
            parent = self.parents[key]
            while parent is not None:
                chain.append(parent)
                parent = self.parents.get(parent)
            self._lineage[key] = tuple(chain)

    def __contains__(self, key: object) -> bool:
        return key in self.parents

    def __len__(self) -> int:
        return len(self.parents)

    def __iter__(self) -> Iterator[str]:
        return iter(self.parents)

    def keys(self) -> Iterable[str]:
        return self.parents.keys()

    def lineage(self, key: str) -> tuple[str, ...]:
        """The key, its parent, its grandparent, ... up to the root."""
        return self._lineage[key]

    def lineage_or_empty(self, key: str) -> tuple[str, ...]:
        """As `lineage`, and () for a key not in the hierarchy (which nothing covers)."""
        return self._lineage.get(key, ())

    def subtree(self, key: str) -> tuple[str, ...]:
        """The key and every key below it (itself first)."""
        return self._subtree.get(key, (key,))

    def covers(self, ancestor: str, key: str) -> bool:
        """True when `ancestor` is `key` or one of its ancestors."""
        lineage = self._lineage.get(key)
        return lineage is not None and ancestor in lineage


@dataclass(frozen=True, slots=True)
class Taxonomy:
    purposes: Hierarchy
    categories: Hierarchy
    #: Which fideslang release the defaults came from; part of the policy version.
    fideslang_version: str


def _defaults() -> tuple[dict[str, str | None], dict[str, str | None], dict[str, str],
                         dict[str, str]]:
    from fideslang.default_taxonomy import DEFAULT_TAXONOMY

    uses = {u.fides_key: u.parent_key for u in DEFAULT_TAXONOMY.data_use}
    cats = {c.fides_key: c.parent_key for c in DEFAULT_TAXONOMY.data_category}
    use_names = {u.fides_key: str(u.name or u.fides_key) for u in DEFAULT_TAXONOMY.data_use}
    cat_names = {c.fides_key: str(c.name or c.fides_key) for c in DEFAULT_TAXONOMY.data_category}
    return uses, cats, use_names, cat_names


def _extend(kind: str, base: dict[str, str | None], names: dict[str, str],
            entries: Any, source: str) -> list[str]:
    problems: list[str] = []
    if entries is None:
        return problems
    if not isinstance(entries, list):
        return [f"{source}: '{kind}' must be a list"]
    for i, entry in enumerate(entries):
        where = f"{source}: {kind}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping with fides_key and parent_key")
            continue
        key, parent = entry.get("fides_key"), entry.get("parent_key")
        if not isinstance(key, str) or not isinstance(parent, str):
            problems.append(f"{where}: fides_key and parent_key are required strings")
        elif key in base:
            problems.append(f"{where}: {key!r} already exists")
        elif parent not in base:
            problems.append(f"{where}: parent_key {parent!r} is not a known key")
        elif not key.startswith(parent + ".") or "." in key[len(parent) + 1:]:
            problems.append(f"{where}: {key!r} must be a direct child of {parent!r}")
        else:
            base[key] = parent
            names[key] = str(entry.get("name") or key)
    return problems


def build_taxonomy(extensions: Mapping[str, Any] | None, source: str) -> Taxonomy:
    uses, cats, use_names, cat_names = _defaults()
    ext = extensions or {}
    problems = _extend("data_uses", uses, use_names, ext.get("data_uses"), source)
    problems += _extend("data_categories", cats, cat_names, ext.get("data_categories"), source)
    unknown = set(ext) - {"data_uses", "data_categories"}
    problems += [f"{source}: unknown section {k!r}" for k in sorted(unknown)]
    if problems:
        raise PolicyError(problems)
    return Taxonomy(
        purposes=Hierarchy(MappingProxyType(uses), MappingProxyType(use_names)),
        categories=Hierarchy(MappingProxyType(cats), MappingProxyType(cat_names)),
        fideslang_version=_dist_version("fideslang"),
    )
