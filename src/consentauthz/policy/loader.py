"""Read a policy directory into an immutable, content-hashed PolicySet.

This owns syntax (files, CSV lines, YAML, taxonomy extensions) and the version hash.
What the rules mean is the engine's business (engine.compile validates it).
"""

from __future__ import annotations

import gc
import hashlib
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import PolicyError
from .settings import PolicySettings, parse_settings
from .taxonomy import Taxonomy, build_taxonomy

MODEL_FILE = "model.conf"
SETTINGS_FILE = "settings.yaml"
TAXONOMY_FILE = "taxonomy.yaml"
#: One folder per regime added as data (policies/regimes/<regime>/): its rules (*.csv), its
#: settings.yaml and its *_test.yaml suites (docs/policy-authoring.md "Adding a regime").
REGIMES_DIR = "regimes"
#: Sub-directories that are not part of the decision policy (issue: caller authorisation).
EXCLUDED_DIRS = frozenset({"callers"})


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One Casbin policy line (`p, ...` or `g, ...`) and where it was written."""

    file: str
    line: int
    ptype: str
    fields: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class PolicySet:
    version: str
    model_text: str
    #: `p*` lines in load order (files sorted by path, then line order).
    rules: tuple[PolicyLine, ...]
    #: `g*` lines in load order.
    groupings: tuple[PolicyLine, ...]
    taxonomy: Taxonomy
    settings: PolicySettings
    #: Every file that went into the version hash, by relative path.
    files: Mapping[str, bytes]
    source: str


_BRACKETS = re.compile(r"[\[\]()]")


def split_policy_line(line: str) -> list[str]:
    """Split a CSV policy line exactly as pycasbin's load_policy_line does."""
    if line[:1] not in ("", ",") and _BRACKETS.search(line) is None:
        # Without brackets (nearly every line) pycasbin's walk is a plain split; only a
        # leading comma differs (the walk drops the empty first token).
        return [t.strip() for t in line.split(",")]
    return _split_bracketed(line)


def _split_bracketed(line: str) -> list[str]:
    """pycasbin's character walk: commas inside [...] or (...) do not split."""
    stack: list[str] = []
    tokens: list[str] = []
    for c in line:
        if c in "[(":
            stack.append(c)
            tokens[-1] += c
        elif c in "])":
            if stack:
                stack.pop()
            tokens[-1] += c
        elif c == "," and not stack:
            tokens.append("")
        elif not tokens:
            tokens.append(c)
        else:
            tokens[-1] += c
    return [t.strip() for t in tokens]


def _policy_files(root: Path) -> list[Path]:
    """The rule files: the pack's own first, then the regime folders', each by name (the
    order reports such as `policy matrix` list regimes in)."""
    return sorted(
        (p for p in root.rglob("*.csv")
         if p.is_file() and not (set(p.relative_to(root).parts[:-1]) & EXCLUDED_DIRS)),
        key=lambda p: (len(p.relative_to(root).parts), p.relative_to(root).parts))


def version_of(files: Mapping[str, bytes], fideslang_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"fideslang={fideslang_version}\n".encode())
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a policy is built.

    Loading and compiling a large pack allocates about ten objects per rule line and none
    of them in cycles; the collector, triggered every few hundred allocations, would scan
    the ever-growing young heap again and again (a third of the time at 100,000 rules).
    Reference counting still frees everything as usual."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def load_policy_set(root: Path) -> PolicySet:
    with paused_gc():
        return _load_policy_set(root)


def _load_policy_set(root: Path) -> PolicySet:
    root = root.resolve()
    if not (root / MODEL_FILE).is_file():
        raise PolicyError([f"{root}: no {MODEL_FILE} (is this a policy directory?)"])
    files: dict[str, bytes] = {}
    problems: list[str] = []

    def read(rel: str) -> str:
        data = (root / rel).read_bytes()
        files[rel] = data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{rel}: not UTF-8")
            return ""

    def read_yaml(rel: str) -> Any:
        if not (root / rel).is_file():
            return None
        try:
            return yaml.safe_load(read(rel))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise PolicyError([f"{rel}{line}: not valid YAML"]) from exc

    model_text = read(MODEL_FILE)
    settings_data = read_yaml(SETTINGS_FILE)
    if settings_data is None:
        raise PolicyError([f"{SETTINGS_FILE}: missing or empty"])
    taxonomy_data = read_yaml(TAXONOMY_FILE)
    regime_settings = {
        path.parent.name: (rel, read_yaml(rel))
        for path in sorted((root / REGIMES_DIR).glob(f"*/{SETTINGS_FILE}"))
        for rel in (path.relative_to(root).as_posix(),)}

    rules: list[PolicyLine] = []
    groupings: list[PolicyLine] = []
    intern = sys.intern
    for path in _policy_files(root):
        rel = path.relative_to(root).as_posix()
        for lineno, raw in enumerate(read(rel).splitlines(), start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            # Interned: a large pack repeats a few hundred names (regimes, keys, facts,
            # reasons) hundreds of thousands of times; one copy each keeps it small.
            tokens = [intern(t) for t in split_policy_line(text)]
            ptype = tokens[0]
            line = PolicyLine(rel, lineno, ptype, tuple(tokens[1:]), text)
            if ptype.startswith("p"):
                rules.append(line)
            elif ptype.startswith("g"):
                groupings.append(line)
            else:
                problems.append(f"{rel}:{lineno}: unknown line type {ptype!r}")

    settings = parse_settings(settings_data, SETTINGS_FILE, regime_settings)
    taxonomy = build_taxonomy(taxonomy_data, TAXONOMY_FILE)
    if problems:
        raise PolicyError(problems)
    return PolicySet(
        version=version_of(files, taxonomy.fideslang_version),
        model_text=model_text,
        rules=tuple(rules),
        groupings=tuple(groupings),
        taxonomy=taxonomy,
        settings=settings,
        files=MappingProxyType(files),
        source=str(root),
    )
