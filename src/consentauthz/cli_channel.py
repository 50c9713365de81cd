"""The client commands' connection to a server: plaintext, TLS or mutual TLS, and a
bearer token (docs/security.md). Shared by `check`, `consent`, `policy status`, `audit`."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from typing import Any

import grpc

from .config import ENV_PREFIX, ClientSecurity
from .errors import ConfigError


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, trusting the system's CAs (implied by --ca/--cert)")
    p.add_argument("--ca", metavar="PEM", help=f"CA bundle that signed the server's "
                   f"certificate (or ${ENV_PREFIX}CA)")
    p.add_argument("--cert", metavar="PEM", help=f"client certificate for mutual TLS (or "
                   f"${ENV_PREFIX}CERT)")
    p.add_argument("--key", metavar="PEM", help=f"its private key (or ${ENV_PREFIX}KEY)")
    p.add_argument("--auth-token", metavar="TOKEN",
                   help=f"bearer token naming the caller; prefer ${ENV_PREFIX}TOKEN, which "
                   "other users cannot see in the process list")


def _loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization: Bearer` on a plaintext channel to a loopback server (gRPC
    only attaches call credentials to secure channels)."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any],
                              client_call_details: Any, request: Any) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._metadata]
        return continuation(client_call_details._replace(metadata=metadata), request)


def open_channel(target: str, security: ClientSecurity) -> grpc.Channel:
    if security.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=security.ca, private_key=security.key,
            certificate_chain=security.cert)
        if security.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(security.token))
        return grpc.secure_channel(target, credentials)
    channel = grpc.insecure_channel(target)
    if not security.token:
        return channel
    if not _loopback(target):
        channel.close()
        raise ConfigError(f"refusing to send a bearer token in plaintext to {target}: "
                          "connect with TLS (--tls or --ca)")
    return grpc.intercept_channel(channel, _BearerToken(security.token))
