"""The lock files agree with pyproject.toml: every declared dependency is pinned, at a
version its range allows, with hashes; the run set is the test set's subset at the same
versions. (Editing a range without `make lock` fails here, not on someone's fresh clone.)"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)")


def _lock(name: str) -> dict[str, tuple[Version, int]]:
    """package -> (version, number of hashes) from a `--generate-hashes` lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in pins, f"{name}: {current} pinned twice"
            pins[current] = (Version(m.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    build = (ROOT / "requirements" / "build.in").read_text().splitlines()
    reqs += [Requirement(r) for r in build if r.strip() and not r.startswith("#")]
    return reqs


def _brought_by_extras(req: Requirement) -> list[Requirement]:
    """What `pkg[extra]` adds, from the installed package's own metadata."""
    out: list[Requirement] = []
    if not req.extras:
        return out
    for line in metadata.requires(req.name) or ():
        dep = Requirement(line)
        if dep.marker is not None and any(
                dep.marker.evaluate({"extra": e}) for e in req.extras):
            out.append(dep)
    return out


@pytest.mark.parametrize(("lock", "extra"), [("run.lock", None), ("test.lock", "test")])
def test_every_declared_dependency_is_pinned_in_range_with_hashes(
        lock: str, extra: str | None) -> None:
    pins = _lock(lock)
    problems = []
    for req in _declared(extra):
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} is not in {lock}")
            continue
        version, _ = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{lock} pins {req.name}=={version}, outside {req.specifier}")
        for wanted in _brought_by_extras(req):
            if canonicalize_name(wanted.name) not in pins:
                problems.append(f"{lock} lacks {wanted.name}, which {req} brings")
    problems += [f"{lock}: {n} has no hash" for n, (_, h) in pins.items() if h == 0]
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_the_run_set_is_the_test_sets_subset_at_the_same_versions() -> None:
    run, test = _lock("run.lock"), _lock("test.lock")
    differing = {n: (v, test.get(n, (None, 0))[0]) for n, (v, _) in run.items()
                 if n not in test or test[n][0] != v}
    assert not differing, f"run.lock and test.lock disagree (run `make lock`): {differing}"
