"""gRPC servicers: convert, call the core, convert back, map errors. Nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.propagators.textmap import TextMapPropagator

from ..auditing import Auditor
from ..auditing.export import document_chunks, document_text
from ..checker import Checker
from ..consent import ConsentService
from ..domain import CheckRequest, PolicyStatus
from ..errors import ConsentAuthzError, InvalidArgument, ResourceExhausted
from ..telemetry import ATTR_CALLER, open_span
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
from ..validation import validate_batch_size
from . import convert
from .identity import caller_of
from .limits import EXPORT_CHUNK_BYTES, MAX_MESSAGE_BYTES
from .status import abort, to_status

audit_log = logging.getLogger("consentauthz.audit")


@contextmanager
def rpc(context: grpc.ServicerContext, name: str) -> Iterator[str]:
    """Span `server.<name>` continuing the caller's trace; errors -> status at one point."""
    carrier = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    # Most calls carry no trace context: then there is nothing to extract or attach.
    token = (otel_context.attach(propagate.extract(carrier))
             if not _propagated_fields().isdisjoint(carrier) else None)
    try:
        with open_span(f"server.{name}") as span:
            caller = caller_of(context)
            if span.is_recording():
                span.set_attribute(ATTR_CALLER, caller)
            try:
                yield caller
            except grpc.RpcError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
                span.record_exception(exc) if not isinstance(exc, InvalidArgument) else None
                abort(context, exc)
    finally:
        if token is not None:
            otel_context.detach(token)


_FIELDS: tuple[TextMapPropagator | None, frozenset[str]] = (None, frozenset())


def _propagated_fields() -> frozenset[str]:
    """The metadata keys the installed propagators read (OTEL_PROPAGATORS may change them
    from the default traceparent, tracestate and baggage)."""
    global _FIELDS
    textmap = propagate.get_global_textmap()
    if _FIELDS[0] is not textmap:
        _FIELDS = (textmap, frozenset(f.lower() for f in textmap.fields))
    return _FIELDS[1]


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    def Check(self, request: decision_pb2.CheckRequest,
              context: grpc.ServicerContext) -> Any:
        with rpc(context, "Check") as caller:
            outcome = self._checker.check(convert.check_request(request), caller)
            return convert.check_response(outcome.decision, outcome.record, outcome.token)

    def BatchCheck(self, request: decision_pb2.BatchCheckRequest,
                   context: grpc.ServicerContext) -> Any:
        with rpc(context, "BatchCheck") as caller:
            validate_batch_size(len(request.items))
            items: list[CheckRequest | InvalidArgument] = [
                convert.check_request(item, f"items[{i}].")
                for i, item in enumerate(request.items)]
            # Results are added in place: a message handed to a repeated field is copied.
            response = decision_pb2.BatchCheckResponse()
            add = response.results.add
            # An item ahead of the ledger gets its own UNAVAILABLE; the others are answered.
            for result in self._checker.check_batch(items, caller):
                if isinstance(result, ConsentAuthzError):
                    add(error=to_status(result))
                else:
                    add(response=convert.check_response(result.decision, result.record,
                                                        result.token))
            return response


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, consent: ConsentService, export: Callable[[str], dict[str, Any]]
                 ) -> None:
        self._consent = consent
        self._export = export

    def RecordConsent(self, request: consent_pb2.RecordConsentRequest,
                      context: grpc.ServicerContext) -> Any:
        with rpc(context, "RecordConsent"):
            result = self._consent.record(
                convert.consent_write(request, self._consent.clock_skew))
            return consent_pb2.RecordConsentResponse(
                record_id=result.record_id, consistency_token=result.token)

    def UpsertSubject(self, request: consent_pb2.UpsertSubjectRequest,
                      context: grpc.ServicerContext) -> Any:
        with rpc(context, "UpsertSubject"):
            result = self._consent.upsert_subject(convert.subject_upsert(request))
            return consent_pb2.UpsertSubjectResponse(consistency_token=result.token)

    def GetConsentState(self, request: consent_pb2.GetConsentStateRequest,
                        context: grpc.ServicerContext) -> Any:
        with rpc(context, "GetConsentState"):
            state = self._consent.get_state(request.subject_id, request.consistency_token)
            subject = self._consent.subject_key(request.subject_id)
            token = self._consent.token_of
            return consent_pb2.ConsentState(
                jurisdiction=state.profile.jurisdiction,
                birth_date=state.profile.birth_date.isoformat() if state.profile.birth_date
                else "",
                records=[convert.consent_record(e, token(subject, e.sequence))
                         for e in state.events],
                consistency_token=token(subject, state.sequence),
                erased_at=convert.timestamp(state.profile.erased_at))

    def EraseSubject(self, request: consent_pb2.EraseSubjectRequest,
                     context: grpc.ServicerContext) -> Any:
        with rpc(context, "EraseSubject") as caller:
            result = self._consent.erase(request.subject_id, caller)
            # Who asked, for the record (the pseudonym, never the subject id).
            audit_log.info("subject %s erased at the request of caller %s",
                           self._consent.subject_key(request.subject_id), caller)
            state = self._consent.get_state(request.subject_id)
            return consent_pb2.EraseSubjectResponse(
                consistency_token=result.token,
                erased_at=convert.timestamp(state.profile.erased_at))

    def ExportSubject(self, request: consent_pb2.ExportSubjectRequest,
                      context: grpc.ServicerContext) -> Any:
        with rpc(context, "ExportSubject") as caller:
            text = document_text(self._export(request.subject_id))
            size = len(text.encode())
            if size > MAX_MESSAGE_BYTES - 1024:  # the response's own fields fit in that
                raise ResourceExhausted(
                    f"the subject's export is {size:,} bytes, over the "
                    f"{MAX_MESSAGE_BYTES:,} a response may carry: use ExportSubjectStream "
                    "(`consentauthz consent export`), which sends it in chunks")
            audit_log.info("subject %s exported at the request of caller %s",
                           self._consent.subject_key(request.subject_id), caller)
            return consent_pb2.ExportSubjectResponse(json=text,
                                                     content_type="application/json")

    def ExportSubjectStream(self, request: consent_pb2.ExportSubjectRequest,
                            context: grpc.ServicerContext) -> Iterator[Any]:
        with rpc(context, "ExportSubjectStream") as caller:
            document = self._export(request.subject_id)  # bad input fails before a chunk
            audit_log.info("subject %s exported (streamed) at the request of caller %s",
                           self._consent.subject_key(request.subject_id), caller)
            content_type = "application/json"
            for data in document_chunks(document, EXPORT_CHUNK_BYTES):
                yield consent_pb2.ExportSubjectChunk(data=data, content_type=content_type)
                content_type = ""

    def ListConsentEvents(self, request: consent_pb2.ListConsentEventsRequest,
                          context: grpc.ServicerContext) -> Any:
        with rpc(context, "ListConsentEvents"):
            events, next_token = self._consent.history(
                request.subject_id, request.page_size, request.page_token)
            subject = self._consent.subject_key(request.subject_id)
            return consent_pb2.ListConsentEventsResponse(
                events=[convert.consent_record(e, self._consent.token_of(subject, e.sequence))
                        for e in events], next_page_token=next_token)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, reader: Auditor) -> None:
        self._reader = reader

    def VerifyChains(self, request: audit_pb2.VerifyChainsRequest,
                     context: grpc.ServicerContext) -> Any:
        with rpc(context, "VerifyChains"):
            held = convert.checkpoints_from(request.checkpoints)
            return audit_pb2.VerifyChainsResponse(
                chains=[convert.chain_report(r) for r in self._reader.verify(held)])

    def GetCheckpoint(self, request: audit_pb2.GetCheckpointRequest,
                      context: grpc.ServicerContext) -> Any:
        with rpc(context, "GetCheckpoint"):
            return convert.checkpoint(self._reader.checkpoint())

    def ReplayDecision(self, request: audit_pb2.ReplayDecisionRequest,
                       context: grpc.ServicerContext) -> Any:
        with rpc(context, "ReplayDecision"):
            return convert.replay_response(self._reader.replay(request.decision_id))

    def ExplainDecision(self, request: audit_pb2.ExplainDecisionRequest,
                        context: grpc.ServicerContext) -> Any:
        with rpc(context, "ExplainDecision"):
            return convert.decision_story(self._reader.story(request.decision_id))

    def GetSubjectReport(self, request: audit_pb2.GetSubjectReportRequest,
                         context: grpc.ServicerContext) -> Any:
        with rpc(context, "GetSubjectReport"):
            return convert.subject_report(self._reader.subject_report(request.subject_id))

    def GetDecision(self, request: audit_pb2.GetDecisionRequest,
                    context: grpc.ServicerContext) -> Any:
        with rpc(context, "GetDecision"):
            return convert.decision_record(self._reader.get(request.decision_id),
                                           self._reader.partitions)

    def QueryDecisions(self, request: audit_pb2.QueryDecisionsRequest,
                       context: grpc.ServicerContext) -> Any:
        with rpc(context, "QueryDecisions"):
            found, next_token = self._reader.query(
                convert.decision_query(request), request.subject_id, request.page_size,
                request.page_token)
            return audit_pb2.QueryDecisionsResponse(
                decisions=[convert.decision_record(r, self._reader.partitions) for r in found],
                next_page_token=next_token)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, status: Callable[[], PolicyStatus]) -> None:
        self._status = status

    def GetStatus(self, request: policy_pb2.GetPolicyStatusRequest,
                  context: grpc.ServicerContext) -> Any:
        with rpc(context, "GetStatus"):
            return convert.policy_status(self._status())
