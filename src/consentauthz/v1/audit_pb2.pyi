import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from consentauthz.v1 import consent_pb2 as _consent_pb2
from consentauthz.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "time", "caller", "subject_pseudonym", "purpose", "data_category", "jurisdiction", "regime", "decision", "reason", "legal_basis", "matched_rule", "policy_version", "consent_record_ids", "consistency_token", "trace_id", "span_id", "context", "prev_hash", "entry_hash", "sequence")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    REGIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSENT_RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time: _timestamp_pb2.Timestamp
    caller: str
    subject_pseudonym: str
    purpose: str
    data_category: str
    jurisdiction: str
    regime: str
    decision: _decision_pb2.Decision
    reason: str
    legal_basis: str
    matched_rule: str
    policy_version: str
    consent_record_ids: _containers.RepeatedScalarFieldContainer[str]
    consistency_token: str
    trace_id: str
    span_id: str
    context: _containers.ScalarMap[str, str]
    prev_hash: str
    entry_hash: str
    sequence: int
    def __init__(self, decision_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., subject_pseudonym: _Optional[str] = ..., purpose: _Optional[str] = ..., data_category: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., regime: _Optional[str] = ..., decision: _Optional[_Union[_decision_pb2.Decision, str]] = ..., reason: _Optional[str] = ..., legal_basis: _Optional[str] = ..., matched_rule: _Optional[str] = ..., policy_version: _Optional[str] = ..., consent_record_ids: _Optional[_Iterable[str]] = ..., consistency_token: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., prev_hash: _Optional[str] = ..., entry_hash: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class GetDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class QueryDecisionsRequest(_message.Message):
    __slots__ = ("subject_id", "purpose", "decision", "start_time", "end_time", "page_size", "page_token", "reason", "data_category", "caller")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    decision: _decision_pb2.Decision
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    reason: str
    data_category: str
    caller: str
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., decision: _Optional[_Union[_decision_pb2.Decision, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., reason: _Optional[str] = ..., data_category: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class QueryDecisionsResponse(_message.Message):
    __slots__ = ("decisions", "next_page_token")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    next_page_token: str
    def __init__(self, decisions: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyChainsRequest(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("sequence", "entry_hash", "count", "time", "consent_ledger")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CONSENT_LEDGER_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    entry_hash: str
    count: int
    time: _timestamp_pb2.Timestamp
    consent_ledger: _containers.RepeatedCompositeFieldContainer[LedgerHead]
    def __init__(self, sequence: _Optional[int] = ..., entry_hash: _Optional[str] = ..., count: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consent_ledger: _Optional[_Iterable[_Union[LedgerHead, _Mapping]]] = ...) -> None: ...

class LedgerHead(_message.Message):
    __slots__ = ("partition", "position", "entry_hash")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    partition: int
    position: int
    entry_hash: str
    def __init__(self, partition: _Optional[int] = ..., position: _Optional[int] = ..., entry_hash: _Optional[str] = ...) -> None: ...

class ChainReport(_message.Message):
    __slots__ = ("name", "ok", "entries", "head_sequence", "head_hash", "broken_sequence", "broken_id", "problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BROKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    entries: int
    head_sequence: int
    head_hash: str
    broken_sequence: int
    broken_id: str
    problem: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., entries: _Optional[int] = ..., head_sequence: _Optional[int] = ..., head_hash: _Optional[str] = ..., broken_sequence: _Optional[int] = ..., broken_id: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class VerifyChainsResponse(_message.Message):
    __slots__ = ("chains",)
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    chains: _containers.RepeatedCompositeFieldContainer[ChainReport]
    def __init__(self, chains: _Optional[_Iterable[_Union[ChainReport, _Mapping]]] = ...) -> None: ...

class ReplayDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class ReplayDecisionResponse(_message.Message):
    __slots__ = ("record", "confirmed", "differences", "replayed")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    record: DecisionRecord
    confirmed: bool
    differences: _containers.RepeatedScalarFieldContainer[str]
    replayed: _decision_pb2.CheckResponse
    def __init__(self, record: _Optional[_Union[DecisionRecord, _Mapping]] = ..., confirmed: _Optional[bool] = ..., differences: _Optional[_Iterable[str]] = ..., replayed: _Optional[_Union[_decision_pb2.CheckResponse, _Mapping]] = ...) -> None: ...

class ExplainDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class DecisionStory(_message.Message):
    __slots__ = ("record", "consent_records", "other_records", "explanation", "replay_confirmed", "replay_differences")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CONSENT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    OTHER_RECORDS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    REPLAY_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    REPLAY_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    record: DecisionRecord
    consent_records: _containers.RepeatedCompositeFieldContainer[_consent_pb2.ConsentRecord]
    other_records: _containers.RepeatedCompositeFieldContainer[_consent_pb2.ConsentRecord]
    explanation: _containers.RepeatedScalarFieldContainer[str]
    replay_confirmed: bool
    replay_differences: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, record: _Optional[_Union[DecisionRecord, _Mapping]] = ..., consent_records: _Optional[_Iterable[_Union[_consent_pb2.ConsentRecord, _Mapping]]] = ..., other_records: _Optional[_Iterable[_Union[_consent_pb2.ConsentRecord, _Mapping]]] = ..., explanation: _Optional[_Iterable[str]] = ..., replay_confirmed: _Optional[bool] = ..., replay_differences: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSubjectReportRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class PurposeUse(_message.Message):
    __slots__ = ("purpose", "allowed", "denied", "first_use", "last_use", "callers", "data_categories", "legal_bases")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    FIRST_USE_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_FIELD_NUMBER: _ClassVar[int]
    CALLERS_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASES_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    allowed: int
    denied: int
    first_use: _timestamp_pb2.Timestamp
    last_use: _timestamp_pb2.Timestamp
    callers: _containers.RepeatedScalarFieldContainer[str]
    data_categories: _containers.RepeatedScalarFieldContainer[str]
    legal_bases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, purpose: _Optional[str] = ..., allowed: _Optional[int] = ..., denied: _Optional[int] = ..., first_use: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_use: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., callers: _Optional[_Iterable[str]] = ..., data_categories: _Optional[_Iterable[str]] = ..., legal_bases: _Optional[_Iterable[str]] = ...) -> None: ...

class SubjectReport(_message.Message):
    __slots__ = ("generated_at", "decisions", "uses", "consent_records")
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    CONSENT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    generated_at: _timestamp_pb2.Timestamp
    decisions: int
    uses: _containers.RepeatedCompositeFieldContainer[PurposeUse]
    consent_records: _containers.RepeatedCompositeFieldContainer[_consent_pb2.ConsentRecord]
    def __init__(self, generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decisions: _Optional[int] = ..., uses: _Optional[_Iterable[_Union[PurposeUse, _Mapping]]] = ..., consent_records: _Optional[_Iterable[_Union[_consent_pb2.ConsentRecord, _Mapping]]] = ...) -> None: ...
