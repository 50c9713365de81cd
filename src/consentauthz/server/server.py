"""The gRPC server: listener, services, health and reflection."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..auditing import Auditor
from ..checker import Checker
from ..consent import ConsentService
from ..domain import PolicyStatus
from ..v1 import (
    audit_pb2,
    audit_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from .servicers import AuditServicer, ConsentServicer, DecisionServicer, PolicyServicer

SERVICE_NAMES = (
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
)
#: Health-service names of the dependencies that can degrade without stopping the service.
COMPONENT_REDIS = "consentauthz.redis"
COMPONENT_LEDGER = "consentauthz.ledger"
#: Large enough for a full batch of maximal requests, small enough to bound memory.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class GrpcServer:
    def __init__(self, checker: Checker, consent: ConsentService, audit: Auditor,
                 policy_status: Callable[[], PolicyStatus], listen: str, workers: int) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(
            DecisionServicer(checker), self._server)
        consent_pb2_grpc.add_ConsentServiceServicer_to_server(
            ConsentServicer(consent), self._server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(audit), self._server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(
            PolicyServicer(policy_status), self._server)
        self.health = health.HealthServicer()
        self._components: dict[str, bool] = {}
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")

    def start(self) -> None:
        self._server.start()
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

    def wait(self) -> None:
        self._server.wait_for_termination()
