"""Metrics over the wire: Checks on a real server are counted, timed and scraped by
Prometheus, and no subject id (or its pseudonym) ever reaches a metric."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from consentauthz import metrics as m
from consentauthz.app import App
from consentauthz.config import ServeConfig
from consentauthz.pseudonym import Pseudonymizer
from consentauthz.v1 import (
    audit_pb2_grpc,
    consent_pb2,
    consent_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
)
from tests.conftest import POLICIES, Running
from tests.metricdata import key, points, sums
from tests.scenario import check, decision_name, record

EMAIL = "marketing.communications.email"
CONTACT_EMAIL = "user.contact.email"
#: The only attribute keys a metric may carry: each has a bounded set of values.
ALLOWED_ATTRIBUTES = {"decision", "reason", "purpose", "regime", "rpc", "tier", "result"}


def item(subject: str, jurisdiction: str = "DE") -> decision_pb2.CheckRequest:
    return decision_pb2.CheckRequest(subject_id=subject, purpose=EMAIL,
                                      data_category=CONTACT_EMAIL, jurisdiction=jurisdiction)


def test_checks_are_counted_by_decision_reason_purpose_and_regime(
        server: Running, metric_reader: InMemoryMetricReader) -> None:
    record(server, "alice", "grant", EMAIL)
    allow = check(server, "alice", EMAIL, CONTACT_EMAIL, "DE")  # cached by the write
    first = check(server, "bob", EMAIL, CONTACT_EMAIL, "DE")  # never seen: the ledger
    second = check(server, "bob", EMAIL, CONTACT_EMAIL, "DE")  # now cached
    batch = server.decisions.BatchCheck(decision_pb2.BatchCheckRequest(
        items=[item("carol", "US-CA"), item("dave", "US-CA")]))
    assert (decision_name(allow), allow.reason, allow.regime) == ("ALLOW", "CONSENT_GIVEN",
                                                                  "gdpr")
    assert decision_name(first) == decision_name(second) == "DENY"

    data = metric_reader.get_metrics_data()
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for resp in [allow, first, second, *(r.response for r in batch.results)]:
        k = key(decision=decision_name(resp), reason=resp.reason, purpose=EMAIL,
                regime=resp.regime)
        expected[k] = expected.get(k, 0) + 1
    assert sums(data, m.DECISIONS) == expected
    assert sum(expected.values()) == 5 and len(expected) >= 3  # allow, gdpr deny, ccpa
    assert sums(data, m.CONSENT_CACHE) == {key(tier="local"): 2, key(tier="ledger"): 3}
    counts = {p.attributes["rpc"]: p.count for _, p in points(data, m.CHECK_DURATION)}
    assert counts == {"Check": 3, "BatchCheck": 1}  # one observation per call


@pytest.fixture()
def scraped_server(tmp_path: Path) -> Iterator[tuple[App, grpc.Channel]]:
    app = App(ServeConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                          data_dir=tmp_path / "data", policies=POLICIES, workers=4,
                          pseudonym_key=b"k" * 32, watch_policies=False))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, channel
    finally:
        channel.close()
        app.stop(grace=None)
    assert app.metrics_endpoint is not None
    with pytest.raises(OSError):  # stopped with the app
        scrape(app.metrics_endpoint.port)


def scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def test_prometheus_scrape_shows_the_metrics_with_labels(
        scraped_server: tuple[App, grpc.Channel]) -> None:
    app, channel = scraped_server
    assert app.metrics_port not in (None, 0)
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    stub.Check(item("scrape-erin"))
    stub.Check(item("scrape-erin"))

    families = {f.name: f for f in text_string_to_metric_families(scrape(app.metrics_port))}
    # The process's counters: earlier tests in this process add to them.
    decisions = {tuple(sorted(s.labels.items())): s.value
                 for s in families["consentauthz_decisions"].samples
                 if s.name == "consentauthz_decisions_total"}
    assert decisions[key(decision="DENY", reason="NO_CONSENT", purpose=EMAIL,
                         regime="gdpr")] >= 2
    assert {k for labels in decisions for k, _ in labels} == {"decision", "reason", "purpose",
                                                              "regime"}
    buckets = [s for s in families["consentauthz_check_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["rpc"] == "Check"]
    assert [s.labels["le"] for s in buckets][:2] == ["1e-05", "2.5e-05"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 2
    tiers = {s.labels["tier"] for s in families["consentauthz_consent_cache"].samples}
    # The registry is process-wide: earlier tests may have added "redis".
    assert {"local", "ledger"} <= tiers <= {"local", "redis", "ledger"}
    assert families["consentauthz_decisionlog_queue_depth"].type == "gauge"
    assert families["consentauthz_decisionlog_dropped"].type == "counter"


def test_no_subject_id_reaches_a_metric(scraped_server: tuple[App, grpc.Channel],
                                        metric_reader: InMemoryMetricReader) -> None:
    app, channel = scraped_server
    subject = "privacy-probe-8c1f@example.com"
    pseudonym = Pseudonymizer(b"k" * 32)(subject).split(":", 1)[1]
    running = Running(app, channel, decision_pb2_grpc.DecisionServiceStub(channel),
                      consent_pb2_grpc.ConsentServiceStub(channel),
                      audit_pb2_grpc.AuditServiceStub(channel), app.config.data_dir)
    record(running, subject, "grant", EMAIL)
    check(running, subject, EMAIL, CONTACT_EMAIL, "DE")
    running.decisions.BatchCheck(decision_pb2.BatchCheckRequest(
        items=[item(subject), item(subject, "US-CA")]))
    running.consent.GetConsentState(consent_pb2.GetConsentStateRequest(subject_id=subject))

    text = scrape(app.metrics_port)
    assert "consentauthz_decisions_total" in text
    for secret in (subject, "privacy-probe", pseudonym[:12]):
        assert secret not in text
    for family in text_string_to_metric_families(text):
        if family.name.startswith("consentauthz_"):
            for sample in family.samples:
                assert set(sample.labels) <= ALLOWED_ATTRIBUTES | {"le"}, sample
    seen = list(points(metric_reader.get_metrics_data()))
    assert seen
    for name, point in seen:
        assert set(point.attributes) <= ALLOWED_ATTRIBUTES, name
        for value in point.attributes.values():
            assert "privacy-probe" not in str(value) and pseudonym[:12] not in str(value)

