"""The gRPC server: listener (plaintext on loopback only, TLS, mutual TLS), the caller
interceptor, services, health and reflection, and the bounds that keep a few clients from
taking every worker thread: at most MAX_RPCS_PER_WORKER calls per worker admitted at once,
reflection streams (which hold a thread while open) on at most half the workers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ..auditing import Auditor
from ..checker import Checker
from ..consent import ConsentService
from ..domain import PolicyStatus
from ..errors import ConfigError
from ..v1 import audit_pb2, consent_pb2, decision_pb2, policy_pb2
from .auth import CallerGuard
from .limits import MAX_MESSAGE_BYTES
from .registration import register
from .servicers import AuditServicer, ConsentServicer, DecisionServicer, PolicyServicer

#: Refusals are logged where the caller guard logs its own (docs/security.md).
log = logging.getLogger("consentauthz.auth")
SERVICE_NAMES = (
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
)
#: Health-service names of the dependencies that can degrade without stopping the service.
COMPONENT_REDIS = "consentauthz.redis"
COMPONENT_LEDGER = "consentauthz.ledger"
#: Health probes admitted at once on the plaintext health listener (--health-listen).
HEALTH_CONCURRENT_RPCS = 8
#: Calls admitted at once (running, or queued for a worker thread), per worker. Beyond
#: that gRPC answers RESOURCE_EXHAUSTED at once instead of queueing without bound; a few
#: per worker absorb bursts of short calls (a client sending twice as many calls as there
#: are workers is normal).
MAX_RPCS_PER_WORKER = 4


def max_concurrent_rpcs(workers: int) -> int:
    return MAX_RPCS_PER_WORKER * workers


def max_reflection_streams(workers: int) -> int:
    """An open reflection stream holds a worker thread however idle it is (grpcio's
    servicer blocks reading the client's stream), so such streams may hold at most half
    the workers and unary calls always find one. With one worker, none."""
    return workers // 2


class ReflectionServicer(reflection.ReflectionServicer):
    """grpcio's reflection, refusing a stream beyond `limit` open at once with
    RESOURCE_EXHAUSTED. The caller guard runs first, so a refused caller takes no place.
    (No RPC of ours streams; one that did would need the same bound.)"""

    def __init__(self, service_names: tuple[str, ...], limit: int) -> None:
        super().__init__(service_names)
        self._limit = limit
        self._open = 0
        self._lock = threading.Lock()

    def ServerReflectionInfo(self, request_iterator: Any,
                             context: Any) -> Any:  # a grpc.ServicerContext here
        with self._lock:
            admitted = self._open < self._limit
            if admitted:
                self._open += 1
        if not admitted:
            log.warning("refused ServerReflection.ServerReflectionInfo: RESOURCE_EXHAUSTED: "
                        "%d streams open (peer %s)", self._limit, context.peer())
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self._limit} reflection streams are open, the most this server "
                          "allows (half its workers): close one and retry")
        held = [True]

        def release() -> None:  # once, when the call ends however it ends
            with self._lock:
                if held[0]:
                    held[0] = False
                    self._open -= 1
        if not context.add_callback(release):
            release()
        return super().ServerReflectionInfo(request_iterator, context)


class ServerTls(Protocol):
    """PEM contents (config.TlsFiles)."""

    @property
    def cert_chain(self) -> bytes: ...
    @property
    def private_key(self) -> bytes: ...
    @property
    def client_ca(self) -> bytes | None: ...


class _HealthServicer(health.HealthServicer):
    """grpcio-health-checking's `Watch` sends its first response while holding its lock;
    a `Watch` cancelled at that moment makes gRPC's event thread wait for the same lock,
    and the whole server stops answering (reproduced with the stock servicer). Health needs
    no credentials, so anyone could do that. `Watch` is therefore refused: load balancers
    and Kubernetes probe with `Check`, which is served as usual."""

    def Watch(self, request: Any, context: grpc.ServicerContext,
              send_response_callback: Any = None) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "health Watch is not offered; poll grpc.health.v1.Health/Check")


class GrpcServer:
    """`tls` None is plaintext, refused unless `loopback` (the listen address is one);
    with `tls.client_ca`, clients must present a certificate that chains to it. `guard`
    None: no callers configured, every call is `anonymous`, again only on loopback."""

    def __init__(self, checker: Checker, consent: ConsentService, audit: Auditor,
                 policy_status: Callable[[], PolicyStatus], listen: str, workers: int, *,
                 tls: ServerTls | None = None, loopback: bool = False,
                 guard: CallerGuard | None = None, reuse_port: bool = False,
                 health_listen: str | None = None) -> None:
        if tls is None and not loopback:
            raise ConfigError(f"refusing to listen in plaintext on the non-loopback address "
                              f"{listen}: pass --tls-cert and --tls-key (and --client-ca for "
                              "mutual TLS), or listen on 127.0.0.1 (docs/security.md)")
        if guard is None and not loopback:
            raise ConfigError(f"refusing to serve anonymous callers on the non-loopback address "
                              f"{listen}: name the callers with --callers (docs/security.md), "
                              "or listen on 127.0.0.1")
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
            interceptors=[guard] if guard is not None else None,
            maximum_concurrent_rpcs=max_concurrent_rpcs(workers),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     # Several processes on one port (serve --reuse-port): the kernel
                     # spreads connections over them; otherwise a second bind fails.
                     ("grpc.so_reuseport", 1 if reuse_port else 0)])
        # Not the generated add_*_to_server: requests that do not parse get
        # INVALID_ARGUMENT instead of grpcio's INTERNAL (registration.py).
        register(self._server, DecisionServicer(checker),
                 ConsentServicer(consent, audit.export), AuditServicer(audit),
                 PolicyServicer(policy_status))
        self.health = _HealthServicer(experimental_non_blocking=False)
        self._components: dict[str, bool] = {}
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        # grpcio's reflection, bounded (reflection.enable_server_reflection registers the
        # same servicer without the bound).
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
            max_reflection_streams(workers)), self._server)
        if tls is None:
            self.port = self._server.add_insecure_port(listen)
        else:
            self.port = self._server.add_secure_port(listen, grpc.ssl_server_credentials(
                [(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None))
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        # Health alone, in plaintext, for load balancers and kubelets that cannot present a
        # client certificate: the same servicer, so both ports tell the same status. It
        # answers nothing else (no reflection, no other service), Watch stays refused, and
        # a handful of threads bound what a prober can hold.
        self._health_server: grpc.Server | None = None
        self.health_port = 0
        if health_listen is not None:
            self._health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                maximum_concurrent_rpcs=HEALTH_CONCURRENT_RPCS,
                options=[("grpc.max_receive_message_length", 4096)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(health_listen)
            if self.health_port == 0:
                raise OSError(f"cannot listen on {health_listen}")

    def start(self) -> None:
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for name, serving in self._components.items():
            self._set(name, serving)

    def set_component(self, name: str, serving: bool) -> None:
        """A dependency's health under its own name (COMPONENT_*). A Redis outage shows
        here only: the service still answers correctly from the ledger (degraded), so the
        overall status stays SERVING."""
        self._components[name] = serving
        self._set(name, serving)

    def _set(self, name: str, serving: bool) -> None:
        self.health.set(name, health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop(self, grace: float | None) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        if self._health_server is not None:
            # Probes saw NOT_SERVING while the main port drained; now nothing.
            self._health_server.stop(None).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()
