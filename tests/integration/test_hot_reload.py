"""Safe hot reload: only a version that loads, lints clean and passes its tests goes live."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consentauthz.policy import PolicyStore
from consentauthz.v1 import policy_pb2, policy_pb2_grpc
from tests.conftest import POLICIES, Running, start_server
from tests.scenario import check, decision_name

NEW_PURPOSE = "analytics.reporting.churn_forecast"
RULE = (f"p, 504, gdpr, {NEW_PURPOSE}, user.behavior, always, allow, LEGITIMATE_INTEREST, "
        "legitimate_interests")
TAXONOMY = f"""
  - fides_key: {NEW_PURPOSE}
    parent_key: analytics.reporting
    name: Churn forecast
"""
CASE = f"""
  - name: churn forecasting on behaviour data rests on legitimate interests
    check: {{purpose: {NEW_PURPOSE}, data_category: user.behavior.purchase_history,
            jurisdiction: DE}}
    expect: {{decision: EXPECTED, reason: LEGITIMATE_INTEREST}}
"""


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    policies = Path(shutil.copytree(POLICIES, tmp_path / "policies"))
    running = start_server(tmp_path / "data", policies, watch=True)
    try:
        yield running, policies
    finally:
        running.channel.close()
        running.app.stop(grace=None)


def status(s: Running) -> policy_pb2.PolicyStatus:
    return policy_pb2_grpc.PolicyServiceStub(s.channel).GetStatus(
        policy_pb2.GetPolicyStatusRequest())


def wait_for(s: Running, accepted: int, rejected: int) -> policy_pb2.PolicyStatus:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = status(s)
        if (now.reloads_accepted, now.reloads_rejected) == (accepted, rejected):
            return now
        time.sleep(0.05)
    raise AssertionError(f"reloads never reached {accepted}/{rejected}: {status(s)}")


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def add_purpose_and_rule(policies: Path) -> None:
    text = (policies / "taxonomy.yaml").read_text()
    (policies / "taxonomy.yaml").write_text(text.replace("data_categories:",
                                                         TAXONOMY.strip("\n") + "\n"
                                                         "data_categories:", 1))
    append(policies / "gdpr.csv", RULE + "\n")


def test_broken_edits_never_go_live_and_good_ones_do(live: tuple[Running, Path]) -> None:
    s, policies = live
    first = status(s)
    assert first.watching and first.policy_version == s.app.policy().version
    assert decision_name(check(s, "ann", NEW_PURPOSE.rsplit(".", 1)[0],
                               "user.behavior.purchase_history", "DE")) == "DENY"

    # 1. Does not load: an unknown fact. Refused, visible, the old version keeps serving.
    append(policies / "gdpr.csv", "p, 503, gdpr, *, *, objectd, deny, OBJECTED,\n")
    refused = wait_for(s, 0, 1)
    assert not refused.last_reload.accepted
    assert any(p.startswith("gdpr.csv:") and "objectd" in p for p in refused.last_reload.problems)
    assert refused.policy_version == first.policy_version
    (policies / "gdpr.csv").write_text((POLICIES / "gdpr.csv").read_text())

    # 2. Loads and lints, but its own test fails: refused.
    add_purpose_and_rule(policies)
    (policies / "tests" / "churn_test.yaml").write_text(
        "name: churn\nnow: 2026-06-01T12:00:00Z\ncases:" + CASE.replace("EXPECTED", "DENY"))
    refused = wait_for(s, 0, 2)
    assert any("test failed" in p and "churn_test.yaml" in p
               for p in refused.last_reload.problems), refused.last_reload.problems
    assert s.app.policy().version == first.policy_version

    # 3. Fixed test: goes live, atomically, while checks keep flowing.
    seen: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            resp = check(s, "ann", "essential.service", "user.contact.email", "DE")
            assert resp.reason == "CONTRACT"
            seen.add(resp.policy_version)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        (policies / "tests" / "churn_test.yaml").write_text(
            "name: churn\nnow: 2026-06-01T12:00:00Z\ncases:"
            + CASE.replace("EXPECTED", "ALLOW"))
        live_now = wait_for(s, 1, 2)
    finally:
        stop.set()
        worker.join()
    assert live_now.last_reload.accepted and not live_now.last_reload.problems
    assert live_now.policy_version != first.policy_version
    assert seen <= {first.policy_version, live_now.policy_version}
    resp = check(s, "ann", NEW_PURPOSE, "user.behavior.purchase_history", "DE")
    assert (decision_name(resp), resp.reason) == ("ALLOW", "LEGITIMATE_INTEREST")
    assert resp.policy_version == live_now.policy_version
    assert resp.matched_rule.startswith("gdpr.csv:") and "churn_forecast" in resp.matched_rule
    # Both versions are kept for replay.
    assert set(PolicyStore(s.data_dir / "policies").versions()) == {
        first.policy_version, live_now.policy_version}


def test_a_restart_does_not_bypass_the_gate(tmp_path: Path) -> None:
    from consentauthz.errors import ConfigError

    policies = Path(shutil.copytree(POLICIES, tmp_path / "policies"))
    data = tmp_path / "data"
    first = start_server(data, policies)
    good = first.app.policy().version
    first.channel.close()
    first.app.stop(grace=None)
    # An edit that loads but fails its own tests: deny-by-default turned into allow.
    gdpr = policies / "gdpr.csv"
    gdpr.write_text(gdpr.read_text().replace(
        "p, 619, gdpr, gdpr_consent_required, *, always, deny, NO_CONSENT,",
        "p, 619, gdpr, gdpr_consent_required, *, always, allow, NO_CONSENT, consent"))
    again = start_server(data, policies)
    try:
        assert again.app.policy().version == good
        now = status(again)
        assert now.policy_version == good and not now.last_reload.accepted
        assert any("test failed" in p for p in now.last_reload.problems)
        assert check(again, "nobody", "marketing", "user.contact.email", "DE").reason == \
            "NO_CONSENT"
    finally:
        again.channel.close()
        again.app.stop(grace=None)
    # A data dir where nothing was ever live: the server refuses to start.
    with pytest.raises(ConfigError, match="does not pass its checks"):
        start_server(tmp_path / "fresh", policies)
