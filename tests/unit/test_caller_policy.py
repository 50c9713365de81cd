"""The caller policy (engine/callers.py) on the shipped policies/callers/: bindings,
descendant coverage, the same answers as a plain casbin.Enforcer on the same files, and
no growth of casbin's state from caller-chosen strings. Also the callers-file parser
(typed certificate names, token hashes) and how the authenticator reads certificates and
tokens."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import casbin
import grpc
import pytest

from consentauthz.config import (
    EMPTY_SHA256,
    CallerConfig,
    certificate_name,
    load_callers,
    read_caller_policy,
)
from consentauthz.engine import callers as callers_module
from consentauthz.engine.callers import CALLER_MODEL, NO_KEY, CallerPolicy, as_key, covers
from consentauthz.errors import ConfigError, PolicyError
from consentauthz.server.auth import RPCS, Authenticator, Refused, certificate_names
from tests.certs import Pki
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
    ("auditor", "ServerReflection.ServerReflectionInfo", NO_KEY, NO_KEY, True),
    ("privacy-admin", "ServerReflection.ServerReflectionInfo", NO_KEY, NO_KEY, True),
    ("analytics-job", "ServerReflection.ServerReflectionInfo", NO_KEY, NO_KEY, False),
    ("crm", "ServerReflection.ServerReflectionInfo", NO_KEY, NO_KEY, False),
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


def test_reflection_is_an_rpc_of_the_caller_policy() -> None:
    assert {RPCS["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"],
            RPCS["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]} == \
        {"ServerReflection.ServerReflectionInfo"}
    policy = CallerPolicy(CALLER_MODEL, "p, ops, ServerReflection.*, *, *\n", "callers",
                          rpcs=set(RPCS.values()), callers=["ops", "crm"])
    assert policy.allows("ops", "ServerReflection.ServerReflectionInfo")
    assert not policy.allows("crm", "ServerReflection.ServerReflectionInfo")


def test_the_example_callers_file_parses() -> None:
    callers = {c.name: c for c in load_callers(POLICIES / "callers" / "callers.example.yaml")}
    assert set(callers) == set(CALLERS)
    assert callers["crm"].certificate_names == ("dns:crm.internal.example.com",)
    assert callers["email-service"].certificate_names == (
        "uri:spiffe://example.com/ns/mail/sa/email-service",)
    assert callers["privacy-admin"].certificate_names == ("cn:privacy-admin",)
    assert len(callers["privacy-admin"].token_sha256) == 2  # mid-rotation


def _callers(tmp_path: Path, *names: str) -> tuple[CallerConfig, ...]:
    path = tmp_path / "callers.yaml"
    path.write_text("callers:\n  - name: crm\n    certificate_names:\n"
                    + "".join(f"      - '{n}'\n" for n in names))
    return load_callers(path)


def test_certificate_names_are_typed_and_canonical(tmp_path: Path) -> None:
    (crm,) = _callers(tmp_path, "dns:CRM.Internal.example.com", "uri:spiffe://x.org/ns/a/sa/b",
                      "ip:10.0.0.1", "ip:2001:DB8:0:0:0:0:0:1", "cn:Privacy Admin")
    assert crm.certificate_names == ("dns:crm.internal.example.com",
                                     "uri:spiffe://x.org/ns/a/sa/b", "ip:10.0.0.1",
                                     "ip:2001:db8::1", "cn:Privacy Admin")


@pytest.mark.parametrize(("entry", "message"), [
    ("privacy-admin", "write dns:privacy-admin for a DNS subjectAltName, or "
                      "cn:privacy-admin for the CN"),
    ("spiffe://x.org/a", "write uri:spiffe://x.org/a"),
    ("10.0.0.1", "write ip:10.0.0.1"),
    ("email:admin@example.com", "email addresses in a certificate never identify a caller"),
    ("DNS:crm.example.com", "has no type"),
    ("dns:*.example.com", "not a DNS name"),
    ("dns:", "not a DNS name"),
    ("ip:10.0.0.0/8", "not an IP address"),
    ("uri:no-scheme", "not a URI"),
    ("cn: padded", "surrounding spaces"),
])
def test_bad_certificate_names_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match="certificate_names") as err:
        _callers(tmp_path, entry)
    assert message in str(err.value)


def test_the_same_name_written_twice_belongs_to_one_caller(tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text("callers:\n  - {name: a, certificate_names: ['ip:::1']}\n"
                    "  - {name: b, certificate_names: ['ip:0:0:0:0:0:0:0:1']}\n")
    with pytest.raises(ConfigError, match="'ip:::1' also belongs to 'a'"):
        load_callers(path)


def test_the_hash_of_the_empty_token_is_refused_without_printing_it(tmp_path: Path) -> None:
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256
    path = tmp_path / "callers.yaml"
    path.write_text(f"callers:\n  - {{name: crm, token_sha256: ['{'a' * 64}', "
                    f"'{EMPTY_SHA256}']}}\n")
    with pytest.raises(ConfigError, match=r"callers\[0\].*empty string") as err:
        load_callers(path)
    assert EMPTY_SHA256 not in str(err.value) and "a" * 64 not in str(err.value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_a_certificate_is_known_by_its_typed_sans_or_else_its_cn(pki: Pki) -> None:
    def names(**kwargs: str) -> frozenset[str]:
        return certificate_names(pki.client("c", **kwargs).cert_pem)

    assert names(common_name="privacy-admin") == {"cn:privacy-admin"}
    assert names(dns="CRM.example.com", common_name="privacy-admin") == {"dns:crm.example.com"}
    assert names(uri="spiffe://x.org/a") == {"uri:spiffe://x.org/a"}
    assert names(ip="2001:db8::1") == {"ip:2001:db8::1"}
    assert names(dns="a.example.com", uri="spiffe://x.org/a", ip="10.0.0.1",
                 email="a@example.com") == {"dns:a.example.com", "uri:spiffe://x.org/a",
                                            "ip:10.0.0.1"}
    # An email SAN names nobody, and the CN of a certificate with SANs is not looked at.
    assert names(email="privacy-admin", common_name="privacy-admin") == frozenset()
    with pytest.raises(ValueError):
        certificate_names(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize(("kind", "value"), [
    ("dns", "CRM.Example.com"), ("uri", "spiffe://x.org/ns/a"), ("ip", "10.0.0.1"),
    ("ip", "2001:DB8::0:1"), ("cn", "privacy-admin")])
def test_the_file_and_the_certificate_spell_a_name_alike(pki: Pki, kind: str,
                                                         value: str) -> None:
    arg = {"dns": "dns", "uri": "uri", "ip": "ip", "cn": "common_name"}[kind]
    assert certificate_names(pki.client("c", **{arg: value}).cert_pem) == \
        {certificate_name(kind, value)}


class Context:
    """What the authenticator reads of a call: its metadata and its TLS peer."""

    def __init__(self, metadata: Sequence[tuple[str, str]], pem: bytes | None = None) -> None:
        self._metadata = tuple(metadata)
        self._auth: Mapping[str, Sequence[bytes]] = {"x509_pem_cert": [pem]} if pem else {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self._auth


def _authenticate(authenticator: Authenticator, context: Context) -> str:
    return authenticator.authenticate(context)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", " ", "short", "x" * 15])
def test_empty_and_short_tokens_are_refused_whatever_is_configured(token: str) -> None:
    authenticator = Authenticator([
        CallerConfig("crm", token_sha256=(hashlib.sha256(token.strip().encode()).hexdigest(),
                                          EMPTY_SHA256)),
        CallerConfig("admin", token_sha256=(hashlib.sha256(b"x" * 16).hexdigest(),))])
    with pytest.raises(Refused) as err:
        _authenticate(authenticator, Context([("authorization", f"Bearer {token}")]))
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "empty or shorter than 16" in err.value.reason
    assert _authenticate(authenticator, Context([("authorization", "Bearer " + "x" * 16)])) \
        == "admin"


def test_the_certificate_and_not_its_flat_names_picks_the_caller(pki: Pki) -> None:
    authenticator = Authenticator([
        CallerConfig("privacy-admin", certificate_names=("cn:privacy-admin",)),
        CallerConfig("crm", certificate_names=("dns:crm.example.com",))])
    admin = pki.client("admin", common_name="privacy-admin").cert_pem
    assert _authenticate(authenticator, Context([], admin)) == "privacy-admin"
    for impostor in (pki.client("i1", email="privacy-admin").cert_pem,
                     pki.client("i2", uri="privacy-admin").cert_pem,
                     pki.client("i3", dns="privacy-admin").cert_pem,
                     pki.client("i4", uri="crm.example.com").cert_pem):
        with pytest.raises(Refused, match="names no configured caller"):
            _authenticate(authenticator, Context([], impostor))
