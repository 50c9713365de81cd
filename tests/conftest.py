"""Shared fixtures: real components only (SQLite files, a server on port 0, real channels)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consentauthz.app import App, compile_policy
from consentauthz.config import ServeConfig
from consentauthz.engine import CompiledPolicy
from consentauthz.telemetry import setup_metrics, setup_tracing
from consentauthz.v1 import (
    audit_pb2_grpc,
    consent_pb2_grpc,
    decision_pb2_grpc,
)
from tests.pg import fresh_database
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

# One tracer provider per process (OpenTelemetry allows exactly one); tests read spans
# from this exporter.
SPANS = InMemorySpanExporter()
setup_tracing("consentauthz-tests", otlp=False, extra_processors=(SimpleSpanProcessor(SPANS),))
# Likewise one meter provider: the Prometheus reader (scraped by tests that start a
# metrics endpoint) and an in-memory reader with delta temporality, so each collection
# holds only what happened since the previous one.
METRICS = InMemoryMetricReader(preferred_temporality=dict.fromkeys(
    (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter,
     ObservableGauge), AggregationTemporality.DELTA))
setup_metrics("consentauthz-tests", prometheus=True, otlp=False, extra_readers=(METRICS,))


@pytest.fixture(scope="session")
def shipped_policy() -> CompiledPolicy:
    return compile_policy(POLICIES)


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    SPANS.clear()
    yield SPANS


@pytest.fixture()
def metric_reader() -> Iterator[InMemoryMetricReader]:
    METRICS.get_metrics_data()  # drop what earlier tests recorded
    yield METRICS


@dataclass
class Running:
    app: App
    channel: grpc.Channel
    decisions: decision_pb2_grpc.DecisionServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    data_dir: Path


def start_server(data_dir: Path, policies: Path = POLICIES, *, watch: bool = False,
                 key_file: Path | None = None, **config: Any) -> Running:
    app = App(ServeConfig(listen="127.0.0.1:0", data_dir=data_dir, policies=policies,
                          workers=8, pseudonym_key=None if key_file else b"k" * 32,
                          pseudonym_key_file=key_file, watch_policies=watch,
                          watch_interval=0.05, watch_debounce=0.2, **config))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return Running(app, channel, decision_pb2_grpc.DecisionServiceStub(channel),
                   consent_pb2_grpc.ConsentServiceStub(channel),
                   audit_pb2_grpc.AuditServiceStub(channel), data_dir)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Running]:
    running = start_server(tmp_path / "data")
    try:
        yield running
    finally:
        running.channel.close()
        running.app.stop(grace=None)


@pytest.fixture()
def postgres_dsn() -> Iterator[str]:
    """A fresh, empty database on the local PostgreSQL server, dropped afterwards."""
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port (never the machine's 6379)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
