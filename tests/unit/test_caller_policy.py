"""The caller policy (engine/callers.py) on the shipped policies/callers/: bindings,
descendant coverage, the same answers as a plain casbin.Enforcer on the same files, and
no growth of casbin's state from caller-chosen strings. Also the callers-file parser."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import casbin
import pytest

from consentauthz.config import load_callers, read_caller_policy
from consentauthz.engine import callers as callers_module
from consentauthz.engine.callers import CALLER_MODEL, NO_KEY, CallerPolicy, as_key, covers
from consentauthz.errors import PolicyError
from consentauthz.server.auth import RPCS
from tests.conftest import POLICIES

CALLERS = ("crm", "email-service", "analytics-job", "auditor", "privacy-admin")
PURPOSES = ("marketing", "marketing.communications", "marketing.communications.email",
            "marketing.communications.sms", "personalize", "analytics",
            "analytics.reporting.ad_performance", "functional.service.improve",
            "essential.service.security", NO_KEY, "Marketing", "marketing.", "*")
CATEGORIES = ("user", "user.contact", "user.contact.email", "user.name",
              "user.health_and_medical", "user.health_and_medical.genetic", "user.behavior",
              NO_KEY, "*")


@pytest.fixture(scope="module")
def shipped(shipped_policy: Any) -> CallerPolicy:
    text = read_caller_policy(POLICIES)
    assert text is not None
    return CallerPolicy(text.model_text, text.policy_text, text.source,
                        rpcs=set(RPCS.values()), callers=CALLERS,
                        taxonomy=shipped_policy.policy.taxonomy)


@pytest.mark.parametrize(("caller", "rpc", "purpose", "category", "allowed"), [
    ("crm", "ConsentService.RecordConsent", NO_KEY, NO_KEY, True),
    ("crm", "DecisionService.Check", "marketing.communications.email", "user.health_and_medical",
     True),
    ("crm", "DecisionService.BatchCheck", "functional.service.improve", "user", True),
    ("crm", "DecisionService.Check", "analytics", "user", False),
    ("crm", "ConsentService.EraseSubject", NO_KEY, NO_KEY, False),
    ("crm", "AuditService.GetDecision", NO_KEY, NO_KEY, False),
    ("email-service", "DecisionService.Check", "marketing.communications.email",
     "user.contact.email", True),
    ("email-service", "DecisionService.BatchCheck", "marketing.communications.email",
     "user.name", True),
    ("email-service", "DecisionService.Check", "marketing.communications.email",
     "user.health_and_medical", False),
    ("email-service", "DecisionService.Check", "marketing.communications", "user.contact",
     False),  # broader than its binding: it covers SMS too
    ("email-service", "DecisionService.Check", "personalize", "user.contact", False),
    ("email-service", "ConsentService.RecordConsent", NO_KEY, NO_KEY, False),
    ("analytics-job", "DecisionService.Check", "analytics.reporting", "user.behavior", True),
    ("analytics-job", "ConsentService.RecordConsent", NO_KEY, NO_KEY, False),
    ("analytics-job", "ConsentService.GetConsentState", NO_KEY, NO_KEY, False),
    ("auditor", "AuditService.QueryDecisions", NO_KEY, NO_KEY, True),
    ("auditor", "PolicyService.GetStatus", NO_KEY, NO_KEY, True),
    ("auditor", "DecisionService.Check", "analytics", "user", False),
    ("auditor", "ConsentService.GetConsentState", NO_KEY, NO_KEY, False),
    ("privacy-admin", "ConsentService.EraseSubject", NO_KEY, NO_KEY, True),
    ("privacy-admin", "ConsentService.ExportSubject", NO_KEY, NO_KEY, True),
    ("privacy-admin", "AuditService.GetSubjectReport", NO_KEY, NO_KEY, True),
    ("privacy-admin", "DecisionService.Check", "marketing", "user", False),
    ("nobody", "PolicyService.GetStatus", NO_KEY, NO_KEY, False),
    ("mailers", "DecisionService.Check", "marketing.communications.email", "user.contact",
     False),  # a group is not a caller
])
def test_shipped_bindings(shipped: CallerPolicy, caller: str, rpc: str, purpose: str,
                          category: str, allowed: bool) -> None:
    assert shipped.allows(caller, rpc, purpose, category) is allowed


def test_keys_cover_their_descendants_only() -> None:
    assert covers("marketing.communications.email", "marketing.communications")
    assert covers("marketing.communications", "marketing.communications")
    assert not covers("marketing.communications", "marketing.communications.email")
    assert not covers("marketing.communicationsx", "marketing.communications")
    assert covers(NO_KEY, "*") and not covers(NO_KEY, "marketing")
    assert as_key("Marketing") == as_key("a b") == as_key("x" * 129) == as_key("a..b") == NO_KEY
    assert as_key("marketing.communications.email") == "marketing.communications.email"


def plain_enforcer() -> Any:
    """casbin.Enforcer on the shipped files as written, with the model's `covers`."""
    logging.getLogger("casbin").setLevel(logging.CRITICAL + 1)
    folder = POLICIES / "callers"
    enforcer = casbin.Enforcer(str(folder / "model.conf"), str(folder / "policy.csv"))
    enforcer.add_function("covers", covers)
    return enforcer


def test_same_answers_as_a_plain_casbin_enforcer(shipped: CallerPolicy) -> None:
    plain = plain_enforcer()
    checked = 0
    for caller, rpc, purpose, category in itertools.product(
            CALLERS, sorted(RPCS.values()), PURPOSES, CATEGORIES):
        if rpc not in callers_module.CHECK_RPCS and (purpose, category) != (NO_KEY, NO_KEY):
            continue  # the server asks about other RPCs with no purpose and category
        expected = bool(plain.enforce(caller, rpc, as_key(purpose), as_key(category)))
        assert shipped.allows(caller, rpc, purpose, category) is expected, \
            (caller, rpc, purpose, category)
        checked += 1
    assert checked > 1000


def test_caller_chosen_strings_do_not_grow_casbin_state(
        shipped: CallerPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callers_module, "MEMO_LIMIT", 50)
    roles = shipped._enforcer.get_role_manager().all_roles
    shipped.allows("crm", "DecisionService.Check", "marketing", "user")
    size = len(roles)
    for i in range(500):
        assert not shipped.allows(f"intruder-{i}", "DecisionService.Check", "marketing", "user")
        shipped.allows("crm", "DecisionService.Check", f"marketing.x{i}", f"user.y{i}")
        shipped.allows("crm", "DecisionService.Check", f"not a key {i}", "user")
    assert len(roles) == size
    assert len(shipped._memo) <= 50


@pytest.mark.parametrize(("model", "policy", "message"), [
    (CALLER_MODEL.replace("keyMatch(r.rpc, p.rpc)", "true"), "", "caller model"),
    (CALLER_MODEL, "p, crm, *, marketing\n", "a rule is"),
    (CALLER_MODEL, "p, CRM, *, *, *\n", "not a caller or group name"),
    (CALLER_MODEL, "p, crm, Nope.*, *, *\n", "no service 'Nope'"),
    (CALLER_MODEL, "p, crm, decision-service, *, *\n", "must be *, Service.* or"),
    (CALLER_MODEL, "p, crm, *, Marketing, *\n", "must be * or a taxonomy key"),
    (CALLER_MODEL, "p, crm, AuditService.GetDecision, *, user\n", "must use * for both"),
    (CALLER_MODEL, "g, crm\n", "a role line is"),
])
def test_invalid_caller_policies_are_refused(model: str, policy: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        CallerPolicy(model, policy, "callers", rpcs=set(RPCS.values()), callers=["crm"])
    assert message in str(err.value)


def test_a_wildcard_rule_allows_everything_to_its_caller() -> None:
    policy = CallerPolicy(CALLER_MODEL, "p, root, *, *, *\n", "callers",
                          rpcs=set(RPCS.values()), callers=["root"])
    for rpc in RPCS.values():
        assert policy.allows("root", rpc, "anything.at.all", "Not A Key")
    assert not policy.allows("other", "DecisionService.Check", "marketing", "user")


def test_the_example_callers_file_parses() -> None:
    callers = {c.name: c for c in load_callers(POLICIES / "callers" / "callers.example.yaml")}
    assert set(callers) == set(CALLERS)
    assert callers["crm"].certificate_names == ("crm.internal.example.com",)
    assert len(callers["privacy-admin"].token_sha256) == 2  # mid-rotation
