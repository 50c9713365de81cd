"""Transport: plaintext only on loopback, TLS, mutual TLS with caller identity from the
client certificate (typed names: a DNS, URI or IP SAN, or the CN of a certificate without
SANs; never an email SAN, never one type for another), bearer tokens over TLS, and the
CLI's client flags. Real certificates (tests/certs.py), a real server on port 0, real
channels."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consentauthz import cli
from consentauthz.app import App
from consentauthz.config import serve_config
from consentauthz.errors import ConfigError
from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2
from tests.certs import (
    Issued,
    Pki,
    bearer,
    check_request,
    ready,
    start_app,
    stubs,
    token_hash,
    write_callers,
    written,
)

CRM_DNS = "crm.internal.example.com"
EMAIL_SPIFFE = "spiffe://example.com/ns/mail/sa/email-service"
#: The privacy team's certificate has no SANs: its CN names it (`cn:privacy-admin`).
ADMIN = "privacy-admin"
ANALYTICS_IP = "10.0.0.1"


@dataclass
class Certs:
    pki: Pki
    server: Issued
    crm: Issued           # SAN DNS name
    email: Issued         # SAN URI (SPIFFE ID)
    auditor: Issued       # CN only, no SANs
    stranger: Issued      # SAN naming no caller
    cn_behind_san: Issued  # CN names a caller, but SANs win
    foreign: Issued       # signed by another CA
    admin: Issued         # CN privacy-admin, no SANs
    analytics: Issued     # SAN IP address
    #: From the client CA, with the admin's CN as a SAN of another type: none is the admin.
    impostors: dict[str, Issued]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    other = Pki(tmp_path_factory.mktemp("other-pki"), name="someone else's CA")
    return Certs(pki, pki.server(), pki.client("crm", dns=CRM_DNS),
                 pki.client("email", uri=EMAIL_SPIFFE),
                 pki.client("auditor", common_name="auditor"),
                 pki.client("stranger", dns="stranger.example.com"),
                 pki.client("cn-behind-san", dns="unlisted.example.com", common_name="auditor"),
                 other.client("foreign", dns=CRM_DNS),
                 pki.client("admin", common_name=ADMIN),
                 pki.client("analytics", ip=ANALYTICS_IP),
                 {"email-san": pki.client("impostor-email", email=ADMIN),
                  "uri-san": pki.client("impostor-uri", uri=ADMIN),
                  "dns-san": pki.client("impostor-dns", dns=ADMIN),
                  "email-san-and-cn": pki.client("impostor-email-cn", email=ADMIN,
                                                 common_name=ADMIN),
                  "crm-dns-as-uri": pki.client("impostor-crm-uri", uri=CRM_DNS)})


@pytest.fixture()
def tokens() -> dict[str, str]:
    return {"analytics-job": secrets.token_urlsafe(32), "crm": secrets.token_urlsafe(32)}


def callers_file(tmp_path: Path, tokens: dict[str, str]) -> Path:
    return write_callers(tmp_path / "callers.yaml", {
        "crm": {"certificate_names": [f"dns:{CRM_DNS.upper()}"],  # DNS names: any case
                "token_sha256": [token_hash(tokens["crm"])]},
        "email-service": {"certificate_names": [f"uri:{EMAIL_SPIFFE}"]},
        "auditor": {"certificate_names": ["cn:auditor"]},
        "privacy-admin": {"certificate_names": [f"cn:{ADMIN}"]},
        "analytics-job": {"certificate_names": [f"ip:{ANALYTICS_IP}"],
                          "token_sha256": [token_hash(tokens["analytics-job"])]},
    })


def mtls_channel(app: App, certs: Certs, client: Issued | None,
                 host: str = "127.0.0.1") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        certs.pki.ca.cert_pem, client.key_pem if client else None,
        client.cert_pem if client else None)
    return grpc.secure_channel(f"{host}:{app.port}", creds)


@pytest.fixture()
def mtls(tmp_path: Path, certs: Certs, tokens: dict[str, str]) -> Iterator[App]:
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key,
                    client_ca=certs.pki.ca.cert, callers_file=callers_file(tmp_path, tokens))
    try:
        yield app
    finally:
        app.stop(grace=None)


# --- plaintext ----------------------------------------------------------------------------

def test_plaintext_on_a_non_loopback_address_refuses_to_start(
        tmp_path: Path, tokens: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="refusing to listen in plaintext") as err:
        start_app(tmp_path / "data", listen="0.0.0.0:0",
                  callers_file=callers_file(tmp_path, tokens))
    assert "--tls-cert" in str(err.value)


def test_anonymous_callers_on_a_non_loopback_address_refuse_to_start(
        tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(ConfigError, match="--callers"):
        start_app(tmp_path / "data", listen="0.0.0.0:0", tls_cert=certs.server.cert,
                  tls_key=certs.server.key)


def test_a_secured_server_may_listen_beyond_loopback(
        tmp_path: Path, certs: Certs, tokens: dict[str, str]) -> None:
    app = start_app(tmp_path / "data", listen="0.0.0.0:0", tls_cert=certs.server.cert,
                    tls_key=certs.server.key, client_ca=certs.pki.ca.cert,
                    callers_file=callers_file(tmp_path, tokens))
    try:
        channel = ready(mtls_channel(app, certs, certs.crm))
        stubs(channel).decisions.Check(check_request())
        channel.close()
    finally:
        app.stop(grace=None)


# --- TLS ----------------------------------------------------------------------------------

def test_tls_without_client_certificates_uses_bearer_tokens(
        tmp_path: Path, certs: Certs, tokens: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key,
                    callers_file=callers_file(tmp_path, tokens))
    try:
        assert "listening with TLS (no client certificates)" in caplog.text
        assert "plaintext" not in caplog.text
        # Server authentication: by IP SAN and by DNS SAN.
        for host in ("127.0.0.1", "localhost"):
            channel = ready(grpc.secure_channel(
                f"{host}:{app.port}", grpc.ssl_channel_credentials(certs.pki.ca.cert_pem)))
            s = stubs(channel)
            resp = s.decisions.Check(check_request(purpose="analytics", category="user"),
                                     metadata=bearer(tokens["analytics-job"]))
            assert resp.decision_id
            with pytest.raises(grpc.RpcError) as err:
                s.decisions.Check(check_request())
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            # Health is open to load balancers.
            assert health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            channel.close()
        # A plaintext client gets nowhere.
        plain = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        with pytest.raises(grpc.RpcError) as err:
            stubs(plain).decisions.Check(check_request(), timeout=5,
                                          metadata=bearer(tokens["crm"]))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        app.stop(grace=None)


def test_tls_on_loopback_without_callers_is_anonymous(tmp_path: Path, certs: Certs) -> None:
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key)
    try:
        channel = ready(grpc.secure_channel(
            f"localhost:{app.port}", grpc.ssl_channel_credentials(certs.pki.ca.cert_pem)))
        s = stubs(channel)
        resp = s.decisions.Check(check_request())
        assert s.audit.GetDecision(audit_pb2.GetDecisionRequest(
            decision_id=resp.decision_id)).caller == "anonymous"
        channel.close()
    finally:
        app.stop(grace=None)


def test_a_client_that_does_not_trust_the_server_certificate_fails(
        tmp_path: Path, certs: Certs) -> None:
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key)
    try:
        channel = grpc.secure_channel(f"127.0.0.1:{app.port}", grpc.ssl_channel_credentials(
            certs.foreign.cert_pem))  # not the CA that signed the server
        with pytest.raises(grpc.RpcError) as err:
            stubs(channel).decisions.Check(check_request(), timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        app.stop(grace=None)


@pytest.mark.parametrize("problem", ["mismatched-key", "expired", "not-pem", "missing",
                                     "bad-client-ca"])
def test_bad_tls_files_refuse_the_start(tmp_path: Path, certs: Certs, problem: str) -> None:
    cert, key, client_ca = certs.server.cert, certs.server.key, None
    if problem == "mismatched-key":
        key = certs.crm.key
    elif problem == "expired":
        old = certs.pki.server("expired-server", expired=True)
        cert, key = old.cert, old.key
    elif problem == "not-pem":
        cert = tmp_path / "garbage.crt"
        cert.write_text("not a certificate\n")
    elif problem == "missing":
        key = tmp_path / "nowhere.key"
    else:
        client_ca = tmp_path / "ca.txt"
        client_ca.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"--tls-cert|--tls-key|--client-ca"):
        start_app(tmp_path / "data", tls_cert=cert, tls_key=key, client_ca=client_ca)


# --- mutual TLS ---------------------------------------------------------------------------

def test_the_certificate_names_the_caller_in_the_decision_log(mtls: App, certs: Certs) -> None:
    crm = stubs(ready(mtls_channel(mtls, certs, certs.crm)))
    resp = crm.decisions.Check(check_request())
    # The auditor's certificate has no SANs: its CN names it.
    auditor = stubs(ready(mtls_channel(mtls, certs, certs.auditor)))
    entry = auditor.audit.GetDecision(audit_pb2.GetDecisionRequest(
        decision_id=resp.decision_id))
    assert entry.caller == "crm"
    # A SPIFFE ID in a URI SAN works the same way.
    email = stubs(ready(mtls_channel(mtls, certs, certs.email, host="localhost")))
    resp = email.decisions.Check(check_request())
    assert auditor.audit.GetDecision(audit_pb2.GetDecisionRequest(
        decision_id=resp.decision_id)).caller == "email-service"
    # ... and the binding still applies to it.
    with pytest.raises(grpc.RpcError) as err:
        email.decisions.Check(check_request(category="user.health_and_medical"))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_each_certificate_name_matches_only_a_name_of_its_type(
        mtls: App, certs: Certs) -> None:
    export = consent_pb2.ExportSubjectRequest(subject_id="alice")
    # The admin's certificate (CN only) may export a subject's data ...
    admin = stubs(ready(mtls_channel(mtls, certs, certs.admin)))
    admin.consent.ExportSubject(export)
    # ... and an IP SAN names the analytics job.
    analytics = stubs(ready(mtls_channel(mtls, certs, certs.analytics)))
    resp = analytics.decisions.Check(check_request(purpose="analytics", category="user"))
    assert admin.audit.GetDecision(audit_pb2.GetDecisionRequest(
        decision_id=resp.decision_id)).caller == "analytics-job"
    # No certificate with `privacy-admin` as an email, URI or DNS SAN is the admin (with a
    # SAN extension the CN is not looked at), nor is crm's DNS name as a URI SAN crm.
    before = written(mtls)
    for kind, impostor in certs.impostors.items():
        s = stubs(ready(mtls_channel(mtls, certs, impostor)))
        for call, request in ((s.consent.ExportSubject, export),
                              (s.decisions.Check, check_request())):
            with pytest.raises(grpc.RpcError) as err:
                call(request)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, kind
            assert "names no configured caller" in err.value.details(), kind
    assert written(mtls) == before


@pytest.mark.parametrize("client", ["stranger", "cn_behind_san"])
def test_a_certificate_naming_no_caller_is_unauthenticated(
        mtls: App, certs: Certs, client: str, tokens: dict[str, str]) -> None:
    before = written(mtls)
    s = stubs(ready(mtls_channel(mtls, certs, getattr(certs, client))))
    for metadata in ([], bearer(tokens["crm"])):  # a valid token does not rescue it
        with pytest.raises(grpc.RpcError) as err:
            s.decisions.Check(check_request(), metadata=metadata)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert written(mtls) == before


@pytest.mark.parametrize("client", [None, "foreign"], ids=["no-certificate", "untrusted-ca"])
def test_without_a_trusted_client_certificate_the_handshake_fails(
        mtls: App, certs: Certs, client: str | None) -> None:
    before = written(mtls)
    channel = mtls_channel(mtls, certs, getattr(certs, client) if client else None)
    with pytest.raises(grpc.RpcError) as err:
        stubs(channel).decisions.Check(check_request(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    channel.close()
    assert written(mtls) == before


def test_a_token_beside_a_certificate_must_name_the_same_caller(
        mtls: App, certs: Certs, tokens: dict[str, str]) -> None:
    s = stubs(ready(mtls_channel(mtls, certs, certs.crm)))
    s.decisions.Check(check_request(), metadata=bearer(tokens["crm"]))
    for token in (tokens["analytics-job"], "unknown"):
        with pytest.raises(grpc.RpcError) as err:
            s.decisions.Check(check_request(), metadata=bearer(token))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --- the CLI's client side ----------------------------------------------------------------

def test_cli_client_commands_speak_mutual_tls_and_tokens(
        tmp_path: Path, certs: Certs, tokens: dict[str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key,
                    client_ca=certs.pki.ca.cert, callers_file=callers_file(tmp_path, tokens))
    target = ["--target", f"127.0.0.1:{app.port}", "--ca", str(certs.pki.ca.cert)]
    ask = ["check", "--subject", "alice", "--purpose", "marketing.communications.email",
           "--category", "user.contact.email", "--jurisdiction", "DE", "--json"]
    try:
        assert cli.main([*ask, *target, "--cert", str(certs.crm.cert),
                         "--key", str(certs.crm.key)]) == 0
        decision_id = json.loads(capsys.readouterr().out)["decision_id"]
        # The same through the environment, and an audit command.
        monkeypatch.setenv("CONSENTAUTHZ_CERT", str(certs.auditor.cert))
        monkeypatch.setenv("CONSENTAUTHZ_KEY", str(certs.auditor.key))
        assert cli.main(["audit", "show", decision_id, *target]) == 0
        assert "crm" in capsys.readouterr().out
        # Without a client certificate the server is unreachable.
        monkeypatch.delenv("CONSENTAUTHZ_CERT")
        monkeypatch.delenv("CONSENTAUTHZ_KEY")
        assert cli.main([*ask, *target]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
    finally:
        app.stop(grace=None)


def test_cli_sends_tokens_over_tls_and_refuses_plaintext_off_loopback(
        tmp_path: Path, certs: Certs, tokens: dict[str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key,
                    callers_file=callers_file(tmp_path, tokens))
    ask = ["check", "--subject", "alice", "--purpose", "analytics", "--category", "user",
           "--target", f"localhost:{app.port}", "--ca", str(certs.pki.ca.cert)]
    try:
        assert cli.main(ask) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        monkeypatch.setenv("CONSENTAUTHZ_TOKEN", tokens["analytics-job"])
        assert cli.main(ask) == 0
        assert "decision id" in capsys.readouterr().out
        assert cli.main([*ask, f"--auth-token={tokens['crm']}"]) == 1  # the flag wins
        assert "PERMISSION_DENIED" in capsys.readouterr().err
        # A token is never sent in plaintext beyond loopback.
        assert cli.main(["check", "--subject", "a", "--purpose", "analytics", "--category",
                         "user", "--target", "192.0.2.1:50051"]) == 2
        err = capsys.readouterr().err
        assert "refusing to send a bearer token in plaintext" in err
        assert tokens["analytics-job"] not in err
    finally:
        app.stop(grace=None)


def test_a_refused_call_decides_nothing_under_mtls(mtls: App, certs: Certs) -> None:
    before = written(mtls)
    s = stubs(ready(mtls_channel(mtls, certs, certs.auditor)))
    with pytest.raises(grpc.RpcError) as err:
        s.decisions.BatchCheck(decision_pb2.BatchCheckRequest(items=[check_request()]))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert written(mtls) == before


def test_probes_without_a_certificate_use_the_plaintext_health_listener(
        tmp_path: Path, certs: Certs, tokens: dict[str, str]) -> None:
    """Under mutual TLS a load balancer's probe holds no client certificate, so it cannot
    reach health on the main port; `--health-listen` answers health, and only health, in
    plaintext, with the same status the main port has (issue 14, item 5)."""
    app = start_app(tmp_path / "data", tls_cert=certs.server.cert, tls_key=certs.server.key,
                    client_ca=certs.pki.ca.cert, callers_file=callers_file(tmp_path, tokens),
                    health_listen="127.0.0.1:0")
    plain = grpc.insecure_channel(f"127.0.0.1:{app.health_port}")
    try:
        no_cert = mtls_channel(app, certs, None)
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(no_cert).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # no handshake
        no_cert.close()

        probe = health_pb2_grpc.HealthStub(plain)
        for service in ("", "consentauthz.v1.DecisionService"):
            assert probe.Check(health_pb2.HealthCheckRequest(service=service),
                               timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # Only health is there.
        with pytest.raises(grpc.RpcError) as err:
            stubs(plain).decisions.Check(check_request(), timeout=5)
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # The same status as the main port, whatever changes it.
        app.server.set_component("", False)
        assert probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status \
            == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        plain.close()
        app.stop(grace=None)


def test_the_health_listener_is_off_unless_asked_for(tmp_path: Path) -> None:
    ns = cli.build_parser().parse_args(["serve", "--health-listen", "127.0.0.1:8081"])
    assert serve_config(ns, {}).health_listen == "127.0.0.1:8081"
    ns = cli.build_parser().parse_args(["serve"])
    assert serve_config(ns, {}).health_listen is None
    assert serve_config(ns, {"CONSENTAUTHZ_HEALTH_LISTEN": "0.0.0.0:8081"}).health_listen \
        == "0.0.0.0:8081"
    with pytest.raises(ConfigError):
        serve_config(cli.build_parser().parse_args(["serve", "--health-listen", "nope"]), {})
