import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyReload(_message.Message):
    __slots__ = ("time", "accepted", "policy_version", "problems")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    accepted: bool
    policy_version: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accepted: _Optional[bool] = ..., policy_version: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("policy_version", "loaded_at", "source", "rule_count", "last_reload", "reloads_accepted", "reloads_rejected", "watching")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RULE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_FIELD_NUMBER: _ClassVar[int]
    RELOADS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RELOADS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    policy_version: str
    loaded_at: _timestamp_pb2.Timestamp
    source: str
    rule_count: int
    last_reload: PolicyReload
    reloads_accepted: int
    reloads_rejected: int
    watching: bool
    def __init__(self, policy_version: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., rule_count: _Optional[int] = ..., last_reload: _Optional[_Union[PolicyReload, _Mapping]] = ..., reloads_accepted: _Optional[int] = ..., reloads_rejected: _Optional[int] = ..., watching: _Optional[bool] = ...) -> None: ...
