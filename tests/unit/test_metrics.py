"""Metrics in-process: what each collaborator counts, on a meter provider of the test's own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from consentauthz import metrics as m
from consentauthz.checker import Checker
from consentauthz.cli import build_parser
from consentauthz.config import host_port, serve_config
from consentauthz.consent import ConsentService, LocalCache, MemoryLedger
from consentauthz.decisionlog import MemoryDecisionLog
from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentWrite,
    DecisionRecord,
)
from consentauthz.engine import CompiledPolicy
from consentauthz.errors import ConfigError, InvalidArgument, Unavailable
from consentauthz.metrics import DURATION_BUCKETS, Metrics
from consentauthz.pseudonym import Pseudonymizer
from tests.metricdata import key, points, sums

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EMAIL = "marketing.communications.email"


class FailingLog(MemoryDecisionLog):
    """A real in-memory log whose disk is full."""

    def append(self, records: Sequence[DecisionRecord]) -> list[DecisionRecord]:
        raise Unavailable("decision log unavailable")


@dataclass
class Measured:
    provider: MeterProvider
    reader: InMemoryMetricReader
    metrics: Metrics


@pytest.fixture()
def measured() -> Iterator[Measured]:
    reader = InMemoryMetricReader()  # cumulative: each read shows totals so far
    provider = MeterProvider(metric_readers=[reader])
    yield Measured(provider, reader, Metrics(provider.get_meter("consentauthz")))
    provider.shutdown()


def build(policy: CompiledPolicy, metrics: Metrics,
          log: MemoryDecisionLog | None = None) -> tuple[Checker, ConsentService]:
    pseudonymize = Pseudonymizer(b"x" * 32)
    consent = ConsentService(MemoryLedger(), LocalCache(100), pseudonymize,
                             lambda: policy.policy.taxonomy, lambda: NOW, metrics)
    checker = Checker(consent, lambda: policy, log or MemoryDecisionLog(),
                      lambda: NOW, metrics)
    return checker, consent


def request(subject: str, **kw: object) -> CheckRequest:
    fields: dict[str, object] = {"purpose": EMAIL, "data_category": "user.contact.email",
                                 "jurisdiction": "DE", **kw}
    return CheckRequest(subject_id=subject, **fields)  # type: ignore[arg-type]


def test_checks_count_decisions_durations_and_cache_tiers(
        shipped_policy: CompiledPolicy, measured: Measured) -> None:
    checker, consent = build(shipped_policy, measured.metrics)
    consent.record(ConsentWrite(subject_id="alice", action=ConsentAction.GRANT, purpose=EMAIL,
                                method=CollectionMethod.AFFIRMATIVE, source="web",
                                notice_version="v1"))
    checker.check(request("alice"), caller="crm")  # cached by the write: local
    checker.check(request("bob"), caller="crm")  # never seen: ledger
    checker.check(request("bob"), caller="crm")  # now cached: local
    # Items that fail validation are not decisions and are not timed.
    results = checker.check_batch([request("carol"), InvalidArgument.single("x", "bad"),
                                   request("carol", purpose="no.such.purpose")], caller="crm")
    assert [type(r) is InvalidArgument for r in results] == [False, True, True]

    data = measured.reader.get_metrics_data()
    assert sums(data, m.DECISIONS) == {
        key(decision="ALLOW", reason="CONSENT_GIVEN", purpose=EMAIL, regime="gdpr"): 1,
        key(decision="DENY", reason="NO_CONSENT", purpose=EMAIL, regime="gdpr"): 3,
    }
    assert sums(data, m.CONSENT_CACHE) == {key(tier="local"): 2, key(tier="ledger"): 2}
    durations = {point.attributes["rpc"]: point for _, point in points(data, m.CHECK_DURATION)}
    assert durations["Check"].count == 3 and durations["BatchCheck"].count == 1
    assert tuple(durations["Check"].explicit_bounds) == DURATION_BUCKETS
    assert 0 < durations["Check"].sum < 3 * DURATION_BUCKETS[-1]


def test_a_decision_the_log_refused_is_not_counted(
        shipped_policy: CompiledPolicy, measured: Measured) -> None:
    checker, _ = build(shipped_policy, measured.metrics, log=FailingLog())
    with pytest.raises(Unavailable):
        checker.check(request("alice"), caller="crm")
    assert sums(measured.reader.get_metrics_data(), m.DECISIONS) == {}


def test_decision_log_is_observed_through_callbacks(measured: Measured) -> None:
    data = measured.reader.get_metrics_data()
    assert [p.value for _, p in points(data, m.DECISIONLOG_QUEUE_DEPTH)] == [0]
    assert [p.value for _, p in points(data, m.DECISIONLOG_DROPPED)] == [0]
    queue, dropped = [7], [2]
    measured.metrics.observe_decision_log(queue_depth=lambda: queue[0],
                                          dropped=lambda: dropped[0])
    data = measured.reader.get_metrics_data()
    assert [p.value for _, p in points(data, m.DECISIONLOG_QUEUE_DEPTH)] == [7]
    assert [p.value for _, p in points(data, m.DECISIONLOG_DROPPED)] == [2]
    # A second Metrics on the same meter (another App in this process) takes over: the SDK
    # keeps the first instrument, so the sources must be shared.
    again = Metrics(measured.provider.get_meter("consentauthz"))
    again.observe_decision_log(queue_depth=lambda: 1, dropped=lambda: 5)
    data = measured.reader.get_metrics_data()
    assert [p.value for _, p in points(data, m.DECISIONLOG_QUEUE_DEPTH)] == [1]
    assert [p.value for _, p in points(data, m.DECISIONLOG_DROPPED)] == [5]


def test_policy_reloads_are_counted_by_result(measured: Measured) -> None:
    measured.metrics.policy_reload(accepted=True)
    measured.metrics.policy_reload(accepted=False)
    measured.metrics.policy_reload(accepted=False)
    assert sums(measured.reader.get_metrics_data(), m.POLICY_RELOADS) == {
        key(result="accepted"): 1, key(result="rejected"): 2}


def test_no_metrics_is_the_default(shipped_policy: CompiledPolicy) -> None:
    pseudonymize = Pseudonymizer(b"x" * 32)
    consent = ConsentService(MemoryLedger(), LocalCache(10), pseudonymize,
                             lambda: shipped_policy.policy.taxonomy, lambda: NOW)
    checker = Checker(consent, lambda: shipped_policy, MemoryDecisionLog(),
                      lambda: NOW)
    assert checker.check(request("alice"), caller="crm").decision.reason.value == "NO_CONSENT"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:9464", ("localhost", 9464)),
    ("[::1]:9464", ("::1", 9464)),
])
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text, "x") == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:port", "host:70000"])
def test_bad_host_port_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        host_port(text, "x")


def test_metrics_config_comes_from_the_flag_or_the_environment() -> None:
    parse = build_parser().parse_args
    assert serve_config(parse(["serve"]), {}).metrics_listen is None
    env = {"CONSENTAUTHZ_METRICS_LISTEN": "127.0.0.1:9464"}
    assert serve_config(parse(["serve"]), env).metrics_address == ("127.0.0.1", 9464)
    flag = parse(["serve", "--metrics-listen", "0.0.0.0:9000"])
    assert serve_config(flag, env).metrics_address == ("0.0.0.0", 9000)
    with pytest.raises(ConfigError, match="--metrics-listen"):
        serve_config(parse(["serve", "--metrics-listen", "9464"]), {})


@pytest.mark.parametrize(("env", "otlp_metrics"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
      "OTEL_METRICS_EXPORTER": "none"}, False),
])
def test_otlp_metric_export_follows_the_otel_variables(env: dict[str, str],
                                                       otlp_metrics: bool) -> None:
    config = serve_config(build_parser().parse_args(["serve"]), env)
    assert config.otlp_metrics is otlp_metrics
