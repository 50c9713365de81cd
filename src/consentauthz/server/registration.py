"""Servicers onto a grpc.Server, with request parsing that cannot end in INTERNAL.

grpcio answers a request whose bytes do not parse (a string field that is not UTF-8, a
truncated message) with INTERNAL before any of our code runs. Here every method's handler
is built from the generated service descriptors instead, with a deserializer that turns
`DecodeError` into a `MalformedRequest` marker, and the handler answers the marker with
INVALID_ARGUMENT and a field violation on `request`. Nothing else differs from the
generated `add_*Servicer_to_server` functions: same method names, request and response
types, registered methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from ..errors import InvalidArgument
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
from .status import invalid_argument_status

#: (descriptor module, generated gRPC module) of every service this package defines.
_MODULES: tuple[tuple[ModuleType, ModuleType], ...] = (
    (decision_pb2, decision_pb2_grpc),
    (consent_pb2, consent_pb2_grpc),
    (audit_pb2, audit_pb2_grpc),
    (policy_pb2, policy_pb2_grpc),
)


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """What a method gets instead of a request whose bytes did not parse."""

    message: str
    problem: str

    @property
    def description(self) -> str:
        return f"not a valid {self.message}: {self.problem}"


def parser(message_class: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    """`message_class.FromString`, except that bytes which do not parse give a marker."""
    name = message_class.DESCRIPTOR.name

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            # The parser's own text is not echoed; it only tells the two cases apart.
            if "utf-8" in str(exc).lower():
                return MalformedRequest(name, "a string field is not valid UTF-8")
            return MalformedRequest(name, "the bytes are not a well-formed protobuf message")

    return parse


def guarded(method: Callable[[Any, grpc.ServicerContext], Any]
            ) -> Callable[[Any, grpc.ServicerContext], Any]:
    """`method`, answering a MalformedRequest with INVALID_ARGUMENT on `request`."""
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            error = InvalidArgument.single("request", request.description)
            context.abort_with_status(rpc_status.to_status(invalid_argument_status(error)))
        return method(request, context)

    return handle


def _handler(servicer: object, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    if method.client_streaming:
        raise TypeError(f"{method.full_name}: client streaming is not supported here")
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    # A server stream (ExportSubjectStream): one request, parsed the same guarded way.
    make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
            else grpc.unary_unary_rpc_method_handler)
    return make(guarded(getattr(servicer, method.name)), request_deserializer=parser(request),
                response_serializer=response.SerializeToString)


def _service_of(servicer: object) -> ServiceDescriptor:
    """The service whose generated `<Service>Servicer` base class `servicer` extends."""
    found = [service for pb2, pb2_grpc in _MODULES
             for service in pb2.DESCRIPTOR.services_by_name.values()
             if isinstance(servicer, getattr(pb2_grpc, f"{service.name}Servicer"))]
    if len(found) != 1:
        raise TypeError(f"{type(servicer).__name__} implements {len(found)} of this "
                        "package's services; register one servicer per service")
    service: ServiceDescriptor = found[0]
    return service


def handlers(servicer: object) -> tuple[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
    """(full service name, handler per method name) for one servicer."""
    service = _service_of(servicer)
    return service.full_name, {m.name: _handler(servicer, m) for m in service.methods}


def register(server: grpc.Server, *servicers: object) -> None:
    """Add each servicer's service to `server` (as the generated add_*_to_server do)."""
    names = set()
    for servicer in servicers:
        name, methods = handlers(servicer)
        if name in names:
            raise TypeError(f"{name} is registered twice")
        names.add(name)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))
        # grpcio >= 1.63 (as generated code does); grpc-stubs predates the method.
        server.add_registered_method_handlers(name, methods)  # type: ignore[attr-defined]
