"""Bytes that are no valid request message get INVALID_ARGUMENT, never INTERNAL.

grpcio itself answers INTERNAL when a request does not parse, before the servicer runs;
server/registration.py's deserializers turn that into a field violation on `request`.
Every RPC of every service (read from the descriptors, so new ones are covered) is sent,
over a real channel, one request per string field anywhere in its request message with
that string's bytes replaced by invalid UTF-8, and one truncated message. Nothing may be
written, and the server keeps answering.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from consentauthz.v1 import audit_pb2, consent_pb2, decision_pb2, policy_pb2
from tests.conftest import Running
from tests.scenario import check, decision_name, field_violations

MODULES: tuple[ModuleType, ...] = (decision_pb2, consent_pb2, audit_pb2, policy_pb2)
METHODS = [method for module in MODULES
           for service in module.DESCRIPTOR.services_by_name.values()
           for method in service.methods]

MARKER = "MALFORMED-UTF8-PROBE"
#: As long as MARKER, so every length prefix stays right: an overlong '/', a lone
#: surrogate, a cut-off 3-byte sequence and bytes that never occur in UTF-8.
BAD_UTF8 = b"a\xc0\xafb\xed\xa0\x80c\xe2\x82d\xff".ljust(len(MARKER), b"\xfe")
#: Field 1, length-delimited, 5 bytes announced and 2 sent.
TRUNCATED = b"\x0a\x05ab"

Path = tuple[FieldDescriptor, ...]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def string_paths(desc: Descriptor, depth: int = 0) -> Iterator[Path]:
    """Every string field reachable from `desc` (map keys and values included)."""
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (field,)
        elif _is_map(field):
            for part in field.message_type.fields:
                if part.type == FieldDescriptor.TYPE_STRING:
                    yield (field, part)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            for rest in string_paths(field.message_type, depth + 1):
                yield (field, *rest)


def set_marker(msg: Message, path: Path) -> None:
    field, rest = path[0], path[1:]
    value: Any = getattr(msg, field.name)
    if _is_map(field):
        entry = field.message_type
        if rest[0].name == "key":
            if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING:
                value[MARKER] = "v"
            else:
                value[MARKER].SetInParent()
        else:
            value["k"] = MARKER
    elif field.type == FieldDescriptor.TYPE_STRING:
        if field.is_repeated:
            value.append(MARKER)
        else:
            setattr(msg, field.name, MARKER)
    else:
        child = value.add() if field.is_repeated else value
        set_marker(child, rest)


def bad_utf8(method: MethodDescriptor, path: Path) -> bytes:
    msg = message_factory.GetMessageClass(method.input_type)()
    set_marker(msg, path)
    data = msg.SerializeToString()
    assert data.count(MARKER.encode()) == 1
    return data.replace(MARKER.encode(), BAD_UTF8)


def cases() -> Iterator[Any]:
    for method in METHODS:
        for path in string_paths(method.input_type):
            yield pytest.param(method, bad_utf8(method, path), "a string field is not valid "
                               "UTF-8", id=f"{method.name}-{'.'.join(f.name for f in path)}")
        yield pytest.param(method, TRUNCATED, "the bytes are not a well-formed protobuf "
                           "message", id=f"{method.name}-truncated")


CASES = list(cases())


def test_every_rpc_is_covered() -> None:
    covered = {c.values[0].full_name for c in CASES}
    assert covered == {m.full_name for m in METHODS}
    assert len(METHODS) >= 14


def test_malformed_bytes_are_invalid_argument(server: Running) -> None:
    s = server
    head, logged = s.app.ledger.head(), s.app.decision_store.checkpoint().sequence
    for case in CASES:
        method, payload, problem = case.values
        call = s.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (case.id, err.value)
        assert field_violations(err.value) == {
            "request": f"not a valid {method.input_type.name}: {problem}"}, case.id
    # Nothing was written, and the server still answers.
    assert s.app.ledger.head() == head
    assert s.app.decision_store.checkpoint().sequence == logged
    assert decision_name(check(s, "after-malformed@example.org",
                               "marketing.communications.email", "user.contact.email",
                               "DE")) == "DENY"
