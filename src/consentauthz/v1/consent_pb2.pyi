import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConsentAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_ACTION_UNSPECIFIED: _ClassVar[ConsentAction]
    CONSENT_ACTION_GRANT: _ClassVar[ConsentAction]
    CONSENT_ACTION_WITHDRAW: _ClassVar[ConsentAction]
    CONSENT_ACTION_OBJECT: _ClassVar[ConsentAction]
    CONSENT_ACTION_OPT_OUT_OF_SALE: _ClassVar[ConsentAction]
    CONSENT_ACTION_OPT_IN_TO_SALE: _ClassVar[ConsentAction]
    CONSENT_ACTION_LIMIT_SENSITIVE: _ClassVar[ConsentAction]

class CollectionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_METHOD_UNSPECIFIED: _ClassVar[CollectionMethod]
    COLLECTION_METHOD_AFFIRMATIVE: _ClassVar[CollectionMethod]
    COLLECTION_METHOD_PRE_TICKED: _ClassVar[CollectionMethod]
    COLLECTION_METHOD_IMPLIED: _ClassVar[CollectionMethod]
    COLLECTION_METHOD_PARENTAL: _ClassVar[CollectionMethod]
CONSENT_ACTION_UNSPECIFIED: ConsentAction
CONSENT_ACTION_GRANT: ConsentAction
CONSENT_ACTION_WITHDRAW: ConsentAction
CONSENT_ACTION_OBJECT: ConsentAction
CONSENT_ACTION_OPT_OUT_OF_SALE: ConsentAction
CONSENT_ACTION_OPT_IN_TO_SALE: ConsentAction
CONSENT_ACTION_LIMIT_SENSITIVE: ConsentAction
COLLECTION_METHOD_UNSPECIFIED: CollectionMethod
COLLECTION_METHOD_AFFIRMATIVE: CollectionMethod
COLLECTION_METHOD_PRE_TICKED: CollectionMethod
COLLECTION_METHOD_IMPLIED: CollectionMethod
COLLECTION_METHOD_PARENTAL: CollectionMethod

class RecordConsentRequest(_message.Message):
    __slots__ = ("subject_id", "purpose", "data_categories", "action", "explicit", "jurisdiction", "collected_at", "expires_at", "source", "notice_version", "method", "evidence", "idempotency_key")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOTICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    data_categories: _containers.RepeatedScalarFieldContainer[str]
    action: ConsentAction
    explicit: bool
    jurisdiction: str
    collected_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    source: str
    notice_version: str
    method: CollectionMethod
    evidence: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., data_categories: _Optional[_Iterable[str]] = ..., action: _Optional[_Union[ConsentAction, str]] = ..., explicit: _Optional[bool] = ..., jurisdiction: _Optional[str] = ..., collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., notice_version: _Optional[str] = ..., method: _Optional[_Union[CollectionMethod, str]] = ..., evidence: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RecordConsentResponse(_message.Message):
    __slots__ = ("record_id", "consistency_token")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    consistency_token: str
    def __init__(self, record_id: _Optional[str] = ..., consistency_token: _Optional[str] = ...) -> None: ...

class UpsertSubjectRequest(_message.Message):
    __slots__ = ("subject_id", "jurisdiction", "birth_date")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    jurisdiction: str
    birth_date: str
    def __init__(self, subject_id: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., birth_date: _Optional[str] = ...) -> None: ...

class UpsertSubjectResponse(_message.Message):
    __slots__ = ("consistency_token",)
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    consistency_token: str
    def __init__(self, consistency_token: _Optional[str] = ...) -> None: ...

class GetConsentStateRequest(_message.Message):
    __slots__ = ("subject_id", "consistency_token")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    consistency_token: str
    def __init__(self, subject_id: _Optional[str] = ..., consistency_token: _Optional[str] = ...) -> None: ...

class ConsentRecord(_message.Message):
    __slots__ = ("record_id", "purpose", "data_categories", "action", "explicit", "jurisdiction", "collected_at", "expires_at", "source", "notice_version", "method", "evidence", "consistency_token", "recorded_at")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOTICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    purpose: str
    data_categories: _containers.RepeatedScalarFieldContainer[str]
    action: ConsentAction
    explicit: bool
    jurisdiction: str
    collected_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    source: str
    notice_version: str
    method: CollectionMethod
    evidence: _containers.ScalarMap[str, str]
    consistency_token: str
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, record_id: _Optional[str] = ..., purpose: _Optional[str] = ..., data_categories: _Optional[_Iterable[str]] = ..., action: _Optional[_Union[ConsentAction, str]] = ..., explicit: _Optional[bool] = ..., jurisdiction: _Optional[str] = ..., collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., notice_version: _Optional[str] = ..., method: _Optional[_Union[CollectionMethod, str]] = ..., evidence: _Optional[_Mapping[str, str]] = ..., consistency_token: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsentState(_message.Message):
    __slots__ = ("jurisdiction", "birth_date", "records", "consistency_token", "erased_at")
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_FIELD_NUMBER: _ClassVar[int]
    jurisdiction: str
    birth_date: str
    records: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    consistency_token: str
    erased_at: _timestamp_pb2.Timestamp
    def __init__(self, jurisdiction: _Optional[str] = ..., birth_date: _Optional[str] = ..., records: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ..., consistency_token: _Optional[str] = ..., erased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class EraseSubjectResponse(_message.Message):
    __slots__ = ("consistency_token", "erased_at")
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERASED_AT_FIELD_NUMBER: _ClassVar[int]
    consistency_token: str
    erased_at: _timestamp_pb2.Timestamp
    def __init__(self, consistency_token: _Optional[str] = ..., erased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExportSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ExportSubjectResponse(_message.Message):
    __slots__ = ("json", "content_type")
    JSON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    json: str
    content_type: str
    def __init__(self, json: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class ExportSubjectChunk(_message.Message):
    __slots__ = ("data", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class ListConsentEventsRequest(_message.Message):
    __slots__ = ("subject_id", "page_size", "page_token")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    page_size: int
    page_token: str
    def __init__(self, subject_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConsentEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
