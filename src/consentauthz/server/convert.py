"""protobuf <-> domain. The only place (with the CLI client) that knows both.

A request that cannot be converted (an unknown enum value, a time out of range) is
rejected here, and with it every other field that is bad too: one INVALID_ARGUMENT names
them all. What conversion need not reject is left to validation.py, where the core
checks it (a consistency token that is not one travels as NOT_A_TOKEN for that reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from ..auditing import Replay, Story, SubjectReport
from ..auditing.report import PurposeUse
from ..chain import ChainReport
from ..consent.ledger import partition_of
from ..decisionlog.verify import Checkpoint, ledger_heads_ok
from ..domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    ConsentWrite,
    Decision,
    DecisionQuery,
    DecisionRecord,
    Effect,
    PolicyStatus,
    SubjectUpsert,
)
from ..v1 import audit_pb2, consent_pb2, decision_pb2, policy_pb2
from ..validation import (
    CLOCK_SKEW,
    NOT_A_TOKEN,
    Violations,
    check_query,
    check_upsert,
    check_write,
    format_token,
    parse_token,
    read_birth_date,
    read_page_size,
    read_token,
)

_ACTIONS = {
    consent_pb2.CONSENT_ACTION_GRANT: ConsentAction.GRANT,
    consent_pb2.CONSENT_ACTION_WITHDRAW: ConsentAction.WITHDRAW,
    consent_pb2.CONSENT_ACTION_OBJECT: ConsentAction.OBJECT,
    consent_pb2.CONSENT_ACTION_OPT_OUT_OF_SALE: ConsentAction.OPT_OUT_OF_SALE,
    consent_pb2.CONSENT_ACTION_OPT_IN_TO_SALE: ConsentAction.OPT_IN_TO_SALE,
    consent_pb2.CONSENT_ACTION_LIMIT_SENSITIVE: ConsentAction.LIMIT_SENSITIVE,
}
_ACTIONS_PB = {v: k for k, v in _ACTIONS.items()}
_METHODS = {
    consent_pb2.COLLECTION_METHOD_UNSPECIFIED: CollectionMethod.UNSPECIFIED,
    consent_pb2.COLLECTION_METHOD_AFFIRMATIVE: CollectionMethod.AFFIRMATIVE,
    consent_pb2.COLLECTION_METHOD_PRE_TICKED: CollectionMethod.PRE_TICKED,
    consent_pb2.COLLECTION_METHOD_IMPLIED: CollectionMethod.IMPLIED,
    consent_pb2.COLLECTION_METHOD_PARENTAL: CollectionMethod.PARENTAL,
}
_METHODS_PB = {v: k for k, v in _METHODS.items()}
_EFFECTS_PB = {Effect.ALLOW: decision_pb2.DECISION_ALLOW, Effect.DENY: decision_pb2.DECISION_DENY}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def read_time(v: Violations, msg: object, field: str, name: str = "") -> datetime | None:
    """The Timestamp `field` of `msg`; None when unset, or when it is no representable
    time (reported as `name`, default `field`)."""
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return None
    ts = getattr(msg, field)
    try:
        return datetime.fromtimestamp(ts.seconds, UTC).replace(microsecond=ts.nanos // 1000)
    except (ValueError, OverflowError, OSError):
        v.add(name or field, "is not a representable time")
        return None


def from_timestamp(msg: object, field: str) -> datetime | None:
    v = Violations()
    value = read_time(v, msg, field)
    v.raise_if_any()
    return value


def check_request(msg: decision_pb2.CheckRequest, prefix: str = "") -> CheckRequest:
    """Never fails: the checker validates the request, the token included, and names
    every bad field (under the item's prefix in a batch; `prefix` is not needed here)."""
    token = parse_token(msg.consistency_token)
    return CheckRequest(
        subject_id=msg.subject_id, purpose=msg.purpose, data_category=msg.data_category,
        jurisdiction=msg.jurisdiction, context=dict(msg.context),
        consistency_token=NOT_A_TOKEN if token is None else token[1], explain=msg.explain,
        token_partition=None if token is None else token[0])


def _position(token: str) -> int:
    parsed = parse_token(token)
    return parsed[1] if parsed is not None else 0


def check_response(decision: Decision, record: DecisionRecord,
                   token: str | None = None) -> decision_pb2.CheckResponse:
    return decision_pb2.CheckResponse(
        decision=_EFFECTS_PB[decision.effect], reason=decision.reason.value,
        legal_basis=decision.legal_basis, decision_id=record.decision_id,
        policy_version=decision.policy_version, matched_rule=record.matched_rule,
        consent_record_ids=list(decision.consent_record_ids),
        consistency_token=str(record.consistency_token) if token is None else token,
        regime=decision.regime,
        jurisdiction=decision.jurisdiction, explanation=list(decision.explanation))


def consent_write(msg: consent_pb2.RecordConsentRequest,
                  clock_skew: timedelta = CLOCK_SKEW) -> ConsentWrite:
    v = Violations()
    action = _ACTIONS.get(msg.action)
    if action is None:
        v.add("action", "is required (CONSENT_ACTION_GRANT, ...)" if not msg.action
              else "is not a known consent action")
    method = _METHODS.get(msg.method)
    if method is None:
        v.add("method", "is not a known collection method")
    collected_at = read_time(v, msg, "collected_at")
    expires_at = read_time(v, msg, "expires_at")
    write = ConsentWrite(
        subject_id=msg.subject_id, action=action or ConsentAction.GRANT, purpose=msg.purpose,
        data_categories=tuple(msg.data_categories), explicit=msg.explicit,
        method=method or CollectionMethod.UNSPECIFIED, jurisdiction=msg.jurisdiction,
        collected_at=collected_at, expires_at=expires_at, source=msg.source,
        notice_version=msg.notice_version, evidence=dict(msg.evidence),
        idempotency_key=msg.idempotency_key)
    if v.items:
        # The consent service never sees this request, so judge the other fields here,
        # as far as they can be without the fields that failed (their placeholders are
        # ignored) and without the live taxonomy (keys are checked for form only).
        unknown = frozenset(x.field for x in v.items)
        check_write(v, write, None, datetime.now(UTC), unknown, clock_skew=clock_skew)
        v.raise_if_any()
    return write


def subject_upsert(msg: consent_pb2.UpsertSubjectRequest) -> SubjectUpsert:
    v = Violations()
    upsert = SubjectUpsert(subject_id=msg.subject_id, jurisdiction=msg.jurisdiction,
                           birth_date=read_birth_date(v, msg.birth_date))
    if v.items:  # the consent service never sees it: report its other bad fields too
        check_upsert(v, upsert, datetime.now(UTC).date())
        v.raise_if_any()
    return upsert


def consent_record(ev: ConsentEvent, token: str | None = None) -> consent_pb2.ConsentRecord:
    """`token`: the record's consistency token (its partition and position; by default
    the bare position, as in a ledger of one partition)."""
    return consent_pb2.ConsentRecord(
        record_id=ev.record_id, purpose=ev.purpose, data_categories=list(ev.data_categories),
        action=_ACTIONS_PB[ev.action], explicit=ev.explicit, jurisdiction=ev.jurisdiction,
        collected_at=timestamp(ev.collected_at), expires_at=timestamp(ev.expires_at),
        source=ev.source, notice_version=ev.notice_version, method=_METHODS_PB[ev.method],
        evidence=dict(ev.evidence),
        consistency_token=str(ev.sequence) if token is None else token,
        recorded_at=timestamp(ev.recorded_at))


def decision_record(r: DecisionRecord, partitions: int = 1) -> audit_pb2.DecisionRecord:
    """`partitions`: the consent ledger's, so that the token names the partition too."""
    return audit_pb2.DecisionRecord(
        decision_id=r.decision_id, time=timestamp(r.time), caller=r.caller,
        subject_pseudonym=r.subject, purpose=r.purpose, data_category=r.data_category,
        jurisdiction=r.jurisdiction, regime=r.regime, decision=_EFFECTS_PB[r.decision],
        reason=r.reason.value, legal_basis=r.legal_basis, matched_rule=r.matched_rule,
        policy_version=r.policy_version, consent_record_ids=list(r.consent_record_ids),
        consistency_token=format_token(partition_of(r.subject, partitions),
                                       r.consistency_token, partitions),
        trace_id=r.trace_id, span_id=r.span_id,
        context=dict(r.context), prev_hash=r.prev_hash, entry_hash=r.entry_hash,
        sequence=r.sequence)


def decision_query(msg: audit_pb2.QueryDecisionsRequest) -> DecisionQuery:
    """The query's filters; the whole request (paging included) is validated here, so
    one error names every bad field (the reader checks its arguments again)."""
    v = Violations()
    effect = {decision_pb2.DECISION_ALLOW: Effect.ALLOW,
              decision_pb2.DECISION_DENY: Effect.DENY}.get(msg.decision)
    if msg.decision and effect is None:
        v.add("decision", "is not a known decision")
    query = DecisionQuery(purpose=msg.purpose, data_category=msg.data_category,
                          decision=effect, reason=msg.reason, caller=msg.caller,
                          start=read_time(v, msg, "start_time"),
                          end=read_time(v, msg, "end_time"))
    check_query(v, query, msg.subject_id)
    read_page_size(v, msg.page_size)
    read_token(v, msg.page_token, "page_token")
    v.raise_if_any()
    return query


def policy_status(s: PolicyStatus) -> policy_pb2.PolicyStatus:
    out = policy_pb2.PolicyStatus(
        policy_version=s.policy_version, loaded_at=timestamp(s.loaded_at), source=s.source,
        rule_count=s.rule_count, reloads_accepted=s.reloads_accepted,
        reloads_rejected=s.reloads_rejected, watching=s.watching)
    if s.last_reload is not None:
        out.last_reload.CopyFrom(policy_pb2.PolicyReload(
            time=timestamp(s.last_reload.time), accepted=s.last_reload.accepted,
            policy_version=s.last_reload.policy_version,
            problems=list(s.last_reload.problems)))
    return out


def chain_report(r: ChainReport) -> audit_pb2.ChainReport:
    return audit_pb2.ChainReport(
        name=r.name, ok=r.ok, entries=r.entries, head_sequence=r.head_sequence,
        head_hash=r.head_hash, broken_sequence=r.broken_sequence or 0, broken_id=r.broken_id,
        problem=r.problem)


def replay_response(r: Replay) -> audit_pb2.ReplayDecisionResponse:
    replayed = check_response(r.decision, r.record)
    replayed.matched_rule = str(r.decision.matched_rule) if r.decision.matched_rule else ""
    return audit_pb2.ReplayDecisionResponse(
        record=decision_record(r.record), confirmed=r.confirmed,
        differences=list(r.differences), replayed=replayed)


def decision_story(s: Story) -> audit_pb2.DecisionStory:
    return audit_pb2.DecisionStory(
        record=decision_record(s.record),
        consent_records=[consent_record(e) for e in s.consent_records],
        other_records=[consent_record(e) for e in s.other_records],
        explanation=list(s.replay.decision.explanation),
        replay_confirmed=s.replay.confirmed, replay_differences=list(s.replay.differences))


def subject_report(r: SubjectReport) -> audit_pb2.SubjectReport:
    return audit_pb2.SubjectReport(
        generated_at=timestamp(r.generated_at), decisions=r.decisions,
        uses=[audit_pb2.PurposeUse(
            purpose=u.purpose, allowed=u.allowed, denied=u.denied,
            first_use=timestamp(u.first), last_use=timestamp(u.last),
            callers=sorted(u.callers), data_categories=sorted(u.data_categories),
            legal_bases=sorted(u.legal_bases)) for u in r.uses],
        consent_records=[consent_record(e) for e in r.consent_records])


def subject_report_from(msg: audit_pb2.SubjectReport) -> SubjectReport:
    """Back to the domain, so the CLI renders a server's report with the same HTML code."""
    def ts(field_owner: object, name: str) -> datetime | None:
        return from_timestamp(field_owner, name)

    uses = tuple(PurposeUse(
        purpose=u.purpose, allowed=u.allowed, denied=u.denied, first=ts(u, "first_use"),
        last=ts(u, "last_use"), callers=set(u.callers), data_categories=set(u.data_categories),
        legal_bases=set(u.legal_bases)) for u in msg.uses)
    events = tuple(consent_event_from(c) for c in msg.consent_records)
    generated = ts(msg, "generated_at") or datetime.now(UTC)
    return SubjectReport(generated, msg.decisions, uses, events)


def consent_event_from(c: consent_pb2.ConsentRecord) -> ConsentEvent:
    collected = from_timestamp(c, "collected_at") or datetime.fromtimestamp(0, UTC)
    return ConsentEvent(
        record_id=c.record_id, sequence=_position(c.consistency_token),
        action=_ACTIONS[c.action], purpose=c.purpose, data_categories=tuple(c.data_categories),
        explicit=c.explicit, method=_METHODS[c.method], jurisdiction=c.jurisdiction,
        collected_at=collected, expires_at=from_timestamp(c, "expires_at"), source=c.source,
        notice_version=c.notice_version,
        recorded_at=from_timestamp(c, "recorded_at") or collected, evidence=dict(c.evidence))


def checkpoint(c: Checkpoint) -> audit_pb2.Checkpoint:
    return audit_pb2.Checkpoint(
        sequence=c.sequence, entry_hash=c.entry_hash, count=c.count, time=timestamp(c.time),
        consent_ledger=[audit_pb2.LedgerHead(partition=p, position=s, entry_hash=h)
                        for p, s, h in c.ledger])


def checkpoint_from(msg: audit_pb2.Checkpoint, field: str = "checkpoints") -> Checkpoint:
    v = Violations()
    checkpoint = _read_checkpoint(v, msg, field, "time")
    v.raise_if_any()
    return checkpoint


def checkpoints_from(msgs: Sequence[audit_pb2.Checkpoint],
                     field: str = "checkpoints") -> list[Checkpoint]:
    """Every held checkpoint, each bad one named by its index."""
    v = Violations()
    out = [_read_checkpoint(v, msg, f"{field}[{i}]", f"{field}[{i}].time")
           for i, msg in enumerate(msgs)]
    v.raise_if_any()
    return out


def _read_checkpoint(v: Violations, msg: audit_pb2.Checkpoint, field: str,
                     time_field: str) -> Checkpoint:
    if msg.sequence < 0 or len(msg.entry_hash) != 64:
        v.add(field, "is not a decision-log checkpoint")
    time = read_time(v, msg, "time", time_field)
    ledger = tuple((h.partition, h.position, h.entry_hash) for h in msg.consent_ledger)
    if not ledger_heads_ok(ledger):
        v.add(f"{field}.consent_ledger", "is not every ledger partition's head, in order")
    return Checkpoint(msg.sequence, msg.entry_hash, msg.count, time, ledger)
