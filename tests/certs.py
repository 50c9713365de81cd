"""Helpers for transport and caller tests: a throw-away PKI (a CA, a server certificate
for 127.0.0.1 and localhost, client certificates named by SANs of each type or by CN only;
real X.509 made with `cryptography`, written as PEM files), callers files, a server on
port 0."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consentauthz.app import App
from consentauthz.config import ServeConfig
from consentauthz.v1 import (
    audit_pb2_grpc,
    consent_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
    policy_pb2_grpc,
)
from tests.conftest import POLICIES


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path)


class Pki:
    """One CA; `server()` and `client()` issue certificates signed by it."""

    def __init__(self, directory: Path, name: str = "consentauthz test CA") -> None:
        self.directory = directory
        self._key = _key()
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._name = subject
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca = _write(directory, "ca", self._cert, self._key)

    def _issue(self, file_name: str, common_name: str, sans: list[x509.GeneralName],
               usage: x509.ObjectIdentifier, *, expired: bool = False) -> Issued:
        key = _key()
        now = datetime.now(UTC)
        start, end = ((now - timedelta(days=3), now - timedelta(days=1)) if expired
                      else (now - timedelta(minutes=5), now + timedelta(days=1)))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.directory, file_name, builder.sign(self._key, hashes.SHA256()), key)

    def server(self, name: str = "server", *, expired: bool = False) -> Issued:
        return self._issue(name, "consentauthz test server",
                           [x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                           ExtendedKeyUsageOID.SERVER_AUTH, expired=expired)

    def client(self, file_name: str, *, dns: str | None = None, common_name: str | None = None,
               uri: str | None = None, email: str | None = None,
               ip: str | None = None) -> Issued:
        """A client certificate: with `dns`/`uri`/`email`/`ip`, a subjectAltName entry of
        that type (and a CN that names no caller, to show it is ignored); with only
        `common_name`, no subjectAltName extension at all."""
        sans: list[x509.GeneralName] = []
        if dns:
            sans.append(x509.DNSName(dns))
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        if email:
            sans.append(x509.RFC822Name(email))
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        cn = common_name or ("ignored-when-san-present" if sans else file_name)
        return self._issue(file_name, cn, sans, ExtendedKeyUsageOID.CLIENT_AUTH)


# --- a server with callers, and clients for it -------------------------------------------

def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_callers(path: Path, callers: dict[str, dict[str, list[str]]]) -> Path:
    """A callers file; `callers` maps a name to its certificate_names/token_sha256."""
    path.write_text(yaml.safe_dump({"callers": [{"name": n, **entry}
                                                for n, entry in callers.items()]}))
    return path


def start_app(data_dir: Path, *, policies: Path = POLICIES, listen: str = "127.0.0.1:0",
              workers: int = 4, **config: Any) -> App:
    """A real server on port 0 (conftest.start_server waits on a plaintext channel, which
    a TLS port never answers)."""
    app = App(ServeConfig(listen=listen, data_dir=data_dir, policies=policies, workers=workers,
                          pseudonym_key=b"k" * 32, watch_policies=False, **config))
    app.start()
    return app


def ready(channel: grpc.Channel) -> grpc.Channel:
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


@dataclass
class Stubs:
    decisions: decision_pb2_grpc.DecisionServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    policy: policy_pb2_grpc.PolicyServiceStub


def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(decision_pb2_grpc.DecisionServiceStub(channel),
                 consent_pb2_grpc.ConsentServiceStub(channel),
                 audit_pb2_grpc.AuditServiceStub(channel),
                 policy_pb2_grpc.PolicyServiceStub(channel))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def check_request(subject: str = "alice", purpose: str = "marketing.communications.email",
                  category: str = "user.contact.email") -> decision_pb2.CheckRequest:
    return decision_pb2.CheckRequest(subject_id=subject, purpose=purpose,
                                     data_category=category, jurisdiction="DE")


def written(app: App) -> tuple[int, int]:
    """(ledger head, decision-log head): unchanged by a refused call."""
    return app.ledger.head(), app.decision_store.checkpoint().sequence
