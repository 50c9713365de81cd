"""OpenTelemetry: tracer and meter provider setup, the Prometheus scrape endpoint, span
and attribute names. (Metric instruments and their attributes live in metrics.py.)

Span names are `<component>.<Operation>`; attributes live under `consentauthz.*`. No
attribute ever carries a raw subject id: only the keyed pseudonym.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span

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


_TRACER: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The package's tracer, looked up once: the SDK's get_tracer is costly (it touches the
    warnings filters on every call) and this sits on every request's path. The proxy the
    API hands out follows a provider installed later."""
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(INSTRUMENTATION)
    return _TRACER


def setup_tracing(service_name: str, otlp: bool,
                  extra_processors: tuple[SpanProcessor, ...] = ()) -> TracerProvider | None:
    """Install an SDK tracer provider, so spans are recorded and exported. OTLP export is
    switched on by the standard OTEL_EXPORTER_OTLP_* variables, and sampling then follows
    the standard OTEL_TRACES_SAMPLER(_ARG) variables (default: parent-based, always on).

    With nothing to receive spans (no exporter, no processor) no SDK is installed: spans
    are the API's no-op ones, which cost a few microseconds where an SDK span, recorded or
    not, costs tens (docs/performance.md), and nobody would ever see them. A decision
    then still carries the caller's trace and span ids when the caller sent a trace
    context (W3C traceparent), and none otherwise: there is no trace of ours to link."""
    if not otlp and not extra_processors:
        return None
    provider = TracerProvider(resource=_resource(service_name))
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def _resource(service_name: str) -> Resource:
    return Resource.create({"service.name": service_name})


def setup_metrics(service_name: str, *, prometheus: bool, otlp: bool,
                  extra_readers: tuple[MetricReader, ...] = ()) -> MeterProvider:
    """Install the process's one SDK meter provider. `prometheus` adds a reader that
    answers scrapes of prometheus_client's default registry (see MetricsEndpoint); `otlp`
    pushes periodically to the endpoint in the standard OTEL_EXPORTER_OTLP_* variables."""
    readers: list[MetricReader] = []
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        # One scope (ours): its otel_scope_* labels would only add noise to every series.
        readers.append(PrometheusMetricReader(scope_info_enabled=False))
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    readers.extend(extra_readers)
    provider = MeterProvider(metric_readers=readers, resource=_resource(service_name))
    metrics.set_meter_provider(provider)
    return provider


class MetricsEndpoint:
    """Prometheus' scrape endpoint: `GET /metrics` over prometheus_client's default
    registry, where setup_metrics(prometheus=True) put the OpenTelemetry reader."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return self._server.server_port if self._server else self._requested_port

    def start(self) -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self._requested_port, self._host)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


def open_span(name: str) -> AbstractContextManager[Span]:
    """`tracer().start_as_current_span(name)`; with no tracer provider installed (no OTLP
    endpoint: setup_tracing), the current span itself. A no-op span would carry nothing
    of ours (its ids are the caller's, or none) and costs several microseconds to open
    and close, twice per Check."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return nullcontext(trace.get_current_span())
    return tracer().start_as_current_span(name)


def child_span(name: str) -> AbstractContextManager[Span]:
    """A span under the current one, when the current one is recorded; otherwise the
    current span itself. Under a parent-based sampler (the default, and what
    docs/operations.md recommends) an unrecorded parent has unrecorded children, so
    opening them would cost time and show nothing: the hot path opens none."""
    current = trace.get_current_span()
    if current.is_recording():
        return tracer().start_as_current_span(name)
    return nullcontext(current)


def current_ids() -> tuple[str, str]:
    """(trace_id, span_id) of the current span as hex, or empty strings."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def meter() -> metrics.Meter:
    return metrics.get_meter(INSTRUMENTATION)
