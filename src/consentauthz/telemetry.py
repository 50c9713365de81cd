"""OpenTelemetry: tracer setup, span and attribute names.

Span names are `<component>.<Operation>`; attributes live under `consentauthz.*`. No
attribute ever carries a raw subject id: only the keyed pseudonym.
"""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

INSTRUMENTATION = "consentauthz"

ATTR_SUBJECT = "consentauthz.subject"  # pseudonym
ATTR_PURPOSE = "consentauthz.purpose"
ATTR_CATEGORY = "consentauthz.data_category"
ATTR_JURISDICTION = "consentauthz.jurisdiction"
ATTR_REGIME = "consentauthz.regime"
ATTR_DECISION = "consentauthz.decision"
ATTR_REASON = "consentauthz.reason"
ATTR_LEGAL_BASIS = "consentauthz.legal_basis"
ATTR_RULE = "consentauthz.matched_rule"
ATTR_POLICY_VERSION = "consentauthz.policy_version"
ATTR_DECISION_ID = "consentauthz.decision_id"
ATTR_CONSISTENCY_TOKEN = "consentauthz.consistency_token"  # noqa: S105 - a name
ATTR_CONSENT_RECORDS = "consentauthz.consent_record_ids"
ATTR_CALLER = "consentauthz.caller"
ATTR_CACHE_TIER = "consentauthz.cache.tier"
ATTR_BATCH_SIZE = "consentauthz.batch_size"


def tracer() -> trace.Tracer:
    return trace.get_tracer(INSTRUMENTATION)


def setup_tracing(service_name: str, otlp: bool,
                  extra_processors: tuple[SpanProcessor, ...] = ()) -> TracerProvider:
    """Install an SDK tracer provider so spans (and the trace ids in the decision log) are
    real. OTLP export is switched on by the standard OTEL_EXPORTER_OTLP_* variables."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def current_ids() -> tuple[str, str]:
    """(trace_id, span_id) of the current span as hex, or empty strings."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def meter() -> metrics.Meter:
    return metrics.get_meter(INSTRUMENTATION)
