"""The project's own files agree with each other (issue 17, item 7): one version, written
in pyproject.toml and reported by the installed CLI; the license the package declares is
the LICENSE shipped; the CHANGELOG has an entry for the version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import consentauthz

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "consentauthz"


def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table: dict[str, object] = data["project"]
    return table


def test_the_version_is_written_once_and_reported_by_the_cli() -> None:
    version = str(project()["version"])
    assert consentauthz.__version__ == version
    done = subprocess.run([str(BIN), "--version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == f"consentauthz {version}"


def test_the_license_is_the_one_declared() -> None:
    assert project()["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_changelog_has_the_current_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{project()['version']}]" in changelog
    assert "## [Unreleased]" in changelog
