"""gRPC edge: servicers, proto<->domain conversion, error->status, health, reflection."""

from .server import SERVICE_NAMES, GrpcServer

__all__ = ["SERVICE_NAMES", "GrpcServer"]
