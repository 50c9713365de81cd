"""gRPC edge: listener and transport security, caller authentication and authorisation,
servicers, proto<->domain conversion, error->status, health, reflection."""

from .auth import caller_guard
from .server import COMPONENT_LEDGER, COMPONENT_REDIS, SERVICE_NAMES, GrpcServer

__all__ = ["COMPONENT_LEDGER", "COMPONENT_REDIS", "SERVICE_NAMES", "GrpcServer", "caller_guard"]
