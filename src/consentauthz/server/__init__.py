"""gRPC edge: servicers, proto<->domain conversion, error->status, health, reflection."""

from .server import COMPONENT_LEDGER, COMPONENT_REDIS, SERVICE_NAMES, GrpcServer

__all__ = ["COMPONENT_LEDGER", "COMPONENT_REDIS", "SERVICE_NAMES", "GrpcServer"]
