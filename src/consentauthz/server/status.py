"""Errors -> gRPC status, at one point. Messages never echo request values."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import ConsentAuthzError, InvalidArgument, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger("consentauthz.server")


def invalid_argument_status(exc: InvalidArgument) -> status_pb2.Status:
    details = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
        for v in exc.violations
    ])
    packed = any_pb2.Any()
    packed.Pack(details)
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT,
                             message=f"invalid request: {exc}", details=[packed])


def to_status(exc: BaseException) -> status_pb2.Status:
    if isinstance(exc, InvalidArgument):
        return invalid_argument_status(exc)
    if isinstance(exc, NotFound):
        return status_pb2.Status(code=code_pb2.NOT_FOUND, message=str(exc))
    if isinstance(exc, Unavailable):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    if isinstance(exc, ResourceExhausted):
        return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    if isinstance(exc, ConsentAuthzError):
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(exc))
    # A bug must not become an answer: fail closed with a retryable error and keep the
    # details (which may hold request data) out of the response.
    log.error("unexpected error while serving a request", exc_info=exc)
    return status_pb2.Status(code=code_pb2.UNAVAILABLE,
                             message="internal error; no decision or write was made")


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    context.abort_with_status(rpc_status.to_status(to_status(exc)))
