"""Past policy versions are kept content-addressed and load back exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from consentauthz.errors import NotFound, PolicyError
from consentauthz.policy import PolicyStore, load_policy_set
from tests.conftest import POLICIES


def test_versions_are_kept_and_reload_identically(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "store")
    first = load_policy_set(POLICIES)
    store.save(first)
    store.save(first)  # idempotent
    edited = tmp_path / "edited"
    shutil.copytree(POLICIES, edited)
    (edited / "gdpr.csv").write_text((edited / "gdpr.csv").read_text() + "\n# a comment\n")
    second = load_policy_set(edited)
    store.save(second)
    assert store.versions() == sorted([first.version, second.version])
    again = store.load(first.version)
    assert again.version == first.version and again.rules == first.rules
    assert again.files == first.files


def test_tampered_or_unknown_versions_are_refused(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "store")
    policy = load_policy_set(POLICIES)
    kept = store.save(policy)
    with pytest.raises(NotFound):
        store.load("0" * 64)
    with pytest.raises(NotFound):
        store.load("../etc")
    (kept / "ccpa.csv").write_text((kept / "ccpa.csv").read_text().replace("900", "901"))
    with pytest.raises(PolicyError, match="does not hash"):
        store.load(policy.version)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "p"
    shutil.copytree(POLICIES, broken)
    (broken / "settings.yaml").write_text("consent: [unclosed\n")
    with pytest.raises(PolicyError, match=r"settings\.yaml"):
        load_policy_set(broken)


def test_server_keeps_the_version_it_serves(server) -> None:
    version = server.app.policy().version
    assert PolicyStore(server.data_dir / "policies").versions() == [version]
