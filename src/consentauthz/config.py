"""The only place that reads the environment, flags and config files."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path("var")
ENV_PREFIX = "CONSENTAUTHZ_"


def shipped_policies() -> Path:
    """The policy pack beside this checkout (editable install) or in the working directory."""
    candidates = [Path.cwd() / "policies", Path(__file__).resolve().parents[2] / "policies"]
    for c in candidates:
        if (c / "model.conf").is_file():
            return c
    raise ConfigError("no policy directory found: pass --policies DIR")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    policies: Path | None = None
    workers: int = 16
    cache_entries: int = 100_000
    decision_log_fsync: bool = False
    #: "block" (default: back-pressure, no loss) or "drop" (counted in a metric)
    decision_log_mode: Literal["block", "drop"] = "block"
    decision_log_segment_bytes: int | None = None
    decision_log_retention_days: float | None = None
    #: Raw key bytes (from the environment); otherwise read from pseudonym_key_file.
    pseudonym_key: bytes | None = field(default=None, repr=False)
    pseudonym_key_file: Path | None = None
    otlp: bool = False
    #: HOST:PORT of the Prometheus scrape endpoint; None serves none.
    metrics_listen: str | None = None
    #: A plaintext listener answering grpc.health.v1 only (for probes that hold no client
    #: certificate under mutual TLS); None: health is on the main port only.
    health_listen: str | None = None
    otlp_metrics: bool = False
    watch_policies: bool = True
    watch_interval: float = 0.5
    watch_debounce: float = 1.0
    #: postgresql://... shared by every replica; None: the embedded SQLite ledger.
    ledger_url: str | None = field(default=None, repr=False)  # may carry a password
    #: Partitions of a new PostgreSQL ledger (None: the default; an existing ledger keeps
    #: its own, and naming another number is refused).
    ledger_partitions: int | None = None
    #: redis://... (or rediss://) shared by every replica; None: no shared cache.
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "ca:"
    #: --redis-url names a node of a Redis Cluster.
    redis_cluster: bool = False
    #: Seconds a Redis call may take before the replica answers from the ledger instead.
    redis_timeout: float = 0.05
    #: Without a consistency token, a check may miss writes at most this many seconds old
    #: (with a shared ledger; the embedded default has no staleness at all).
    max_staleness: float = 1.0
    #: How far in the future a consent record's collected_at may be (callers' clocks run
    #: ahead); such a record counts from its collected time.
    clock_skew: float = 300.0
    #: Let several serve processes share the port (SO_REUSEPORT; docs/performance.md).
    reuse_port: bool = False
    #: TLS on the gRPC port: server certificate chain and key (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle for client certificates: set, it turns on mutual TLS.
    client_ca: Path | None = None
    #: YAML file naming the callers (client-certificate names, hashed bearer tokens);
    #: None: every call is from `anonymous` (allowed only on loopback).
    callers_file: Path | None = None
    #: Master key ring wrapping the per-subject evidence keys (raw bytes from the
    #: environment); otherwise read from master_key_file.
    master_key: bytes | None = field(default=None, repr=False)
    master_key_file: Path | None = None

    @property
    def policy_dir(self) -> Path:
        return self.policies if self.policies is not None else shipped_policies()

    @property
    def key_file(self) -> Path:
        return self.pseudonym_key_file or self.data_dir / "keys" / "pseudonym.key"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "keys" / "master.key"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return host_port(self.metrics_listen, "metrics listen address") \
            if self.metrics_listen else None

    @property
    def loopback(self) -> bool:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}:\Z")


def ledger_url(value: str | None) -> str | None:
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--ledger must be a postgresql:// URL (the embedded SQLite ledger "
                          "is the default without --ledger)")
    return value or None


def _redis_url(value: str | None) -> str | None:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--redis-url must be a redis://, rediss:// or unix:// URL")
    return value or None


def _env(env: Mapping[str, str], name: str) -> str | None:
    return env.get(ENV_PREFIX + name) or None


def _hex_key(env: Mapping[str, str], name: str) -> bytes | None:
    text = _env(env, name)
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be hex") from None


def shared_ledger(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> str | None:
    """The postgresql:// ledger of `--ledger` or $CONSENTAUTHZ_LEDGER (None: the embedded
    one), for the offline commands that open it (`ledger ...`, `keys ...`)."""
    env = os.environ if env is None else env
    return ledger_url(getattr(ns, "ledger", None) or _env(env, "LEDGER"))


def key_store_config(ns: argparse.Namespace,
                     env: Mapping[str, str] | None = None) -> ServeConfig:
    """What `keys ...` needs to open the key store, the ledger and the master key ring
    from where `serve` takes them: the data dir, `--ledger`, and the ring (`--master-key-
    file`, $CONSENTAUTHZ_MASTER_KEY, $CONSENTAUTHZ_MASTER_KEY_FILE or the data dir's)."""
    env = os.environ if env is None else env
    master_file = getattr(ns, "master_key_file", None) or _env(env, "MASTER_KEY_FILE")
    return ServeConfig(
        data_dir=Path(getattr(ns, "data_dir", None) or _env(env, "DATA_DIR")
                      or DEFAULT_DATA_DIR),
        ledger_url=shared_ledger(ns, env), master_key=_hex_key(env, "MASTER_KEY"),
        master_key_file=Path(master_file) if master_file else None)


def serve_config(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    env = os.environ if env is None else env
    key = _hex_key(env, "PSEUDONYM_KEY")
    key_file = ns.pseudonym_key_file or _env(env, "PSEUDONYM_KEY_FILE")
    otlp = any(env.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    otlp_metrics = any(env.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    metrics_listen = ns.metrics_listen or _env(env, "METRICS_LISTEN")
    if metrics_listen:
        host_port(metrics_listen, "--metrics-listen")
    health_listen = getattr(ns, "health_listen", None) or _env(env, "HEALTH_LISTEN")
    if health_listen:
        host_port(health_listen, "--health-listen")
    segment_mb = getattr(ns, "decision_log_segment_mb", None)
    retention = getattr(ns, "decision_log_retention_days", None)
    if retention and not segment_mb:
        raise ConfigError("--decision-log-retention-days needs --decision-log-segment-mb "
                          "(only sealed segments are ever deleted)")
    if (segment_mb is not None and segment_mb < 1) or (retention is not None and retention <= 0):
        raise ConfigError("--decision-log-segment-mb and --decision-log-retention-days must "
                          "be positive")
    redis_prefix = getattr(ns, "redis_prefix", None) or _env(env, "REDIS_PREFIX") or "ca:"
    cluster_env = (_env(env, "REDIS_CLUSTER") or "").lower()
    if cluster_env not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError("CONSENTAUTHZ_REDIS_CLUSTER must be 1 (a Redis Cluster) or 0")
    redis_cluster = bool(getattr(ns, "redis_cluster", False)) or cluster_env in (
        "1", "true", "yes")
    if not _PREFIX_RE.match(redis_prefix):
        raise ConfigError("--redis-prefix must be 1-32 letters, digits, '_', '.' or '-' "
                          "followed by ':'")
    redis_timeout_ms = getattr(ns, "redis_timeout_ms", 50)
    max_staleness = getattr(ns, "max_staleness", 1.0)
    if redis_timeout_ms <= 0 or max_staleness <= 0:
        raise ConfigError("--redis-timeout-ms and --max-staleness must be positive")
    clock_skew = getattr(ns, "clock_skew", None)
    if clock_skew is None:
        try:
            clock_skew = float(_env(env, "CLOCK_SKEW") or 300.0)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}CLOCK_SKEW must be a number of seconds") from None
    if not 0 <= clock_skew <= 86400:
        raise ConfigError("--clock-skew must be from 0 to 86400 seconds")
    master = _hex_key(env, "MASTER_KEY")
    master_file = getattr(ns, "master_key_file", None) or _env(env, "MASTER_KEY_FILE")
    tls_cert = getattr(ns, "tls_cert", None) or _env(env, "TLS_CERT")
    tls_key = getattr(ns, "tls_key", None) or _env(env, "TLS_KEY")
    client_ca = getattr(ns, "client_ca", None) or _env(env, "CLIENT_CA")
    callers = getattr(ns, "callers", None) or _env(env, "CALLERS")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if client_ca and not tls_cert:
        raise ConfigError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if getattr(ns, "reuse_port", False) and not (getattr(ns, "ledger", None)
                                                 or _env(env, "LEDGER")):
        raise ConfigError("--reuse-port needs a shared --ledger postgresql://...: processes on "
                          "one port are replicas, and the embedded SQLite ledger has one writer")
    if ns.workers < 1 or ns.cache_entries < 1:
        raise ConfigError("--workers and --cache-entries must be positive")
    flag = getattr(ns, "ledger_partitions", None)
    partitions_text = str(flag) if flag is not None else _env(env, "LEDGER_PARTITIONS")
    partitions = None
    if partitions_text:
        if not partitions_text.isdigit() or not 1 <= int(partitions_text) <= 1024:
            raise ConfigError("--ledger-partitions must be a whole number from 1 to 1024")
        partitions = int(partitions_text)
    return ServeConfig(
        listen=ns.listen or _env(env, "LISTEN") or DEFAULT_LISTEN,
        data_dir=Path(ns.data_dir or _env(env, "DATA_DIR") or DEFAULT_DATA_DIR),
        policies=Path(p) if (p := ns.policies or _env(env, "POLICIES")) else None,
        workers=ns.workers,
        cache_entries=ns.cache_entries,
        decision_log_fsync=ns.decision_log_fsync,
        decision_log_mode="drop" if getattr(ns, "decision_log_mode", "") == "drop" else "block",
        decision_log_segment_bytes=segment_mb * 1_000_000 if segment_mb else None,
        decision_log_retention_days=retention,
        pseudonym_key=key,
        pseudonym_key_file=Path(key_file) if key_file else None,
        otlp=otlp and env.get("OTEL_TRACES_EXPORTER", "otlp") != "none",
        metrics_listen=metrics_listen,
        health_listen=health_listen,
        otlp_metrics=otlp_metrics and env.get("OTEL_METRICS_EXPORTER", "otlp") != "none",
        watch_policies=not ns.no_watch,
        ledger_url=ledger_url(getattr(ns, "ledger", None) or _env(env, "LEDGER")),
        ledger_partitions=partitions,
        redis_url=_redis_url(getattr(ns, "redis_url", None) or _env(env, "REDIS_URL")),
        redis_prefix=redis_prefix,
        redis_cluster=redis_cluster,
        redis_timeout=redis_timeout_ms / 1000,
        max_staleness=max_staleness,
        clock_skew=clock_skew,
        reuse_port=bool(getattr(ns, "reuse_port", False)),
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        client_ca=Path(client_ca) if client_ca else None,
        callers_file=Path(callers) if callers else None,
        master_key=master,
        master_key_file=Path(master_file) if master_file else None,
    )


def client_target(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return str(ns.target or _env(env, "TARGET") or DEFAULT_TARGET)


# --- transport security and callers (docs/security.md) ---------------------------------

#: A caller's name as it appears in the caller policy and in every decision-log entry.
CALLER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
#: SHA-256 of the empty string: what `printf '%s' "$TOKEN" | sha256sum` prints when $TOKEN
#: is unset. Never a token hash.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: The types of certificate name in the callers file: `dns:`, `uri:` and `ip:` match the
#: subjectAltName entries of that type; `cn:` the subject CN of a certificate that has no
#: subjectAltName extension at all. Email SANs never identify a caller.
CERTIFICATE_NAME_TYPES = ("dns", "uri", "ip", "cn")
_DNS_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*\Z")
_URI = re.compile(r"[a-z][a-z0-9+.-]*:[^\s]+\Z")
#: The identity of every call when no callers are configured; not a configurable name.
RESERVED_CALLER = "anonymous"
CALLER_POLICY_DIR = "callers"
CALLER_MODEL_FILE = "model.conf"
CALLER_POLICY_FILE = "policy.csv"


@dataclass(frozen=True, slots=True)
class CallerConfig:
    """One entry of the callers file: who a caller is, and how it proves it."""

    name: str
    #: Client-certificate names that authenticate as this caller under mutual TLS, typed
    #: and canonical (certificate_name): `dns:<name>` (lower case), `uri:<uri>`,
    #: `ip:<address>` (as `ipaddress` prints it), `cn:<common name>`.
    certificate_names: tuple[str, ...] = ()
    #: SHA-256 (lower-case hex) of each bearer token accepted for this caller; more than
    #: one while a token is being rotated.
    token_sha256: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM contents behind --tls-cert, --tls-key and --client-ca, checked to parse."""

    cert_chain: bytes
    private_key: bytes
    #: Set: mutual TLS, client certificates must chain to one of these.
    client_ca: bytes | None


@dataclass(frozen=True, slots=True)
class CallerPolicyText:
    """The caller policy in `<policy dir>/callers/`, as written."""

    model_text: str
    policy_text: str
    source: str


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def certificate_name(kind: str, value: str) -> str:
    """The canonical `kind:value` of a certificate name, as the callers file lists it and
    as server/auth.py derives it from a client certificate: DNS names compare without
    case, IP addresses by value, URIs and CNs exactly. ValueError when `value` is not a
    name of that kind."""
    if kind == "dns":
        name = value.lower()
        if len(name) > 253 or not _DNS_NAME.match(name):
            raise ValueError(f"{value!r} is not a DNS name")
        return f"dns:{name}"
    if kind == "uri":
        if not _URI.match(value):
            raise ValueError(f"{value!r} is not a URI (scheme:...)")
        return f"uri:{value}"
    if kind == "ip":
        try:
            return f"ip:{ipaddress.ip_address(value)}"
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    if kind == "cn":
        if not value or value != value.strip():
            raise ValueError("a CN must be non-empty, without surrounding spaces")
        return f"cn:{value}"
    raise ValueError(f"unknown certificate name type {kind!r}")


def _certificate_name(entry: str, where: str) -> str:
    """A typed entry, canonical. Untyped entries are refused rather than given a default
    type: until typed names they matched any kind of name, and no default keeps that."""
    kind, colon, value = entry.partition(":")
    if not colon or kind not in CERTIFICATE_NAME_TYPES:
        if kind.lower() in ("email", "rfc822", "rfc822name", "mail"):
            raise ConfigError(f"{where}: {entry!r}: email addresses in a certificate never "
                              "identify a caller; use dns:, uri:, ip: or cn:")
        how = (f"uri:{entry}" if "://" in entry else f"ip:{entry}" if _is_ip(entry) else
               f"dns:{entry} for a DNS subjectAltName, or cn:{entry} for the CN of a "
               "certificate without subjectAltName")
        raise ConfigError(f"{where}: certificate name {entry!r} has no type (dns:, uri:, ip: "
                          f"or cn:): write {how}")
    try:
        return certificate_name(kind, value)
    except ValueError as exc:
        raise ConfigError(f"{where}: certificate name {entry!r}: {exc}") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def load_callers(path: Path) -> tuple[CallerConfig, ...]:
    """Parse the callers file (format: policies/callers/callers.example.yaml). Every problem
    is a ConfigError naming the entry, never a token hash's value."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"callers file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"callers file {path}: not valid YAML") from None
    if not isinstance(data, dict) or set(data) != {"callers"} \
            or not isinstance(data["callers"], list) or not data["callers"]:
        raise ConfigError(f"callers file {path}: must be a mapping with one key, 'callers', "
                          "a non-empty list")
    callers: list[CallerConfig] = []
    seen_names: set[str] = set()
    owner: dict[str, str] = {}
    for i, entry in enumerate(data["callers"]):
        where = f"callers file {path}: callers[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping")
        unknown = set(entry) - {"name", "certificate_names", "token_sha256"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        name = entry.get("name")
        if not isinstance(name, str) or not CALLER_NAME.match(name):
            raise ConfigError(f"{where}: name must be 1-64 characters of a-z 0-9 . _ - "
                              "(starting with a letter or digit)")
        if name == RESERVED_CALLER:
            raise ConfigError(f"{where}: {RESERVED_CALLER!r} is reserved for unauthenticated "
                              "calls when no callers are configured")
        if name in seen_names:
            raise ConfigError(f"{where}: caller {name!r} is listed twice")
        seen_names.add(name)
        cert_names = tuple(_certificate_name(c, f"{where}.certificate_names")
                           for c in _strings(entry.get("certificate_names"),
                                             f"{where}.certificate_names"))
        hashes = _strings(entry.get("token_sha256"), f"{where}.token_sha256")
        if not cert_names and not hashes:
            raise ConfigError(f"{where}: caller {name!r} has neither certificate_names nor "
                              "token_sha256, so it can never authenticate")
        if any(not _SHA256_HEX.match(h) for h in hashes):
            raise ConfigError(f"{where}: token_sha256 entries must be 64 lower-case hex "
                              "digits: the SHA-256 of the token, never the token itself")
        if EMPTY_SHA256 in hashes:
            raise ConfigError(f"{where}: a token_sha256 entry is the SHA-256 of the empty "
                              "string (was $TOKEN unset when it was computed?)")
        for cert in cert_names:
            if owner.setdefault(f"cert:{cert}", name) != name:
                raise ConfigError(f"{where}: certificate name {cert!r} also belongs to "
                                  f"{owner[f'cert:{cert}']!r}")
        for h in hashes:
            if owner.setdefault(f"token:{h}", name) != name:
                raise ConfigError(f"{where}: a token hash of {name!r} also belongs to "
                                  f"{owner[f'token:{h}']!r}")
        callers.append(CallerConfig(name, cert_names, hashes))
    return tuple(callers)


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def load_tls(config: ServeConfig) -> TlsFiles | None:
    """The server's TLS material, parsed and checked, so a wrong file fails the start with
    a clear message instead of every handshake later. None: plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain = _read_file(config.tls_cert, "--tls-cert")
    key = _read_file(config.tls_key, "--tls-key")
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise ConfigError(f"--tls-cert {config.tls_cert}: not a PEM certificate chain") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"--tls-key {config.tls_key}: not an unencrypted PEM private "
                          "key") from None
    leaf = certs[0]
    if private.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"--tls-key {config.tls_key} does not belong to the first "
                          f"certificate in --tls-cert {config.tls_cert}")
    moment = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
        raise ConfigError(f"--tls-cert {config.tls_cert}: the certificate is valid from "
                          f"{leaf.not_valid_before_utc.isoformat()} to "
                          f"{leaf.not_valid_after_utc.isoformat()}, not now")
    client_ca = None
    if config.client_ca is not None:
        client_ca = _read_file(config.client_ca, "--client-ca")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(f"--client-ca {config.client_ca}: not a PEM certificate "
                              "bundle") from None
    return TlsFiles(chain, key, client_ca)


def read_caller_policy(policy_dir: Path) -> CallerPolicyText | None:
    """`<policy dir>/callers/{model.conf,policy.csv}`; None when the folder is absent."""
    folder = policy_dir / CALLER_POLICY_DIR
    if not folder.is_dir():
        return None
    texts = []
    for name in (CALLER_MODEL_FILE, CALLER_POLICY_FILE):
        try:
            texts.append((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"caller policy {folder}: {name} is missing or not UTF-8 "
                              "text") from None
    return CallerPolicyText(texts[0], texts[1], str(folder))


@dataclass(frozen=True, slots=True, repr=False)
class ClientSecurity:
    """How a client command reaches a secured server: TLS (with these roots, else the
    system's), a client certificate for mutual TLS, a bearer token. PEM contents."""

    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never the key or the token
        return (f"ClientSecurity(tls={self.tls}, ca={self.ca is not None}, "
                f"cert={self.cert is not None}, token={self.token is not None})")


def client_security(ns: argparse.Namespace, env: Mapping[str, str] | None = None) \
        -> ClientSecurity:
    """--ca/--cert/--key/--tls/--auth-token, or CONSENTAUTHZ_CA, _CERT, _KEY, _TOKEN."""
    env = os.environ if env is None else env
    ca = getattr(ns, "ca", None) or _env(env, "CA")
    cert = getattr(ns, "cert", None) or _env(env, "CERT")
    key = getattr(ns, "key", None) or _env(env, "KEY")
    token = getattr(ns, "auth_token", None) or _env(env, "TOKEN")
    if bool(cert) != bool(key):
        raise ConfigError("--cert and --key go together")
    return ClientSecurity(
        tls=bool(getattr(ns, "tls", False) or ca or cert),
        ca=_read_file(Path(ca), "--ca") if ca else None,
        cert=_read_file(Path(cert), "--cert") if cert else None,
        key=_read_file(Path(key), "--key") if key else None,
        token=token.strip() if token else None)
