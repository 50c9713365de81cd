"""Replicas sharing a partitioned PostgreSQL ledger and a real Redis Cluster (issue 19):
a partition's keys share a hash tag, so each script runs on the one node of its slot and
the partitions spread over the nodes; invalidations published on any node reach every
replica; a node that dies costs cache hits, never a stale answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consentauthz.cli import build_parser
from consentauthz.config import serve_config
from consentauthz.domain import ConsentAction
from consentauthz.errors import ConfigError
from consentauthz.v1 import consent_pb2, decision_pb2
from consentauthz.validation import parse_token
from tests.conftest import start_server
from tests.integration import test_shared_state
from tests.integration.test_partitioned_replicas import PARTS, SUBJECTS, grant, withdraw
from tests.integration.test_shared_state import Replica, read, wait_for
from tests.redis_cluster import RedisClusterProcesses
from tests.scenario import decision_name, field_violations, record
from tests.serve_process import pg_url

EMAIL = "marketing.communications.email"
CATEGORY = "user.contact.email"
make_replica = test_shared_state.make_replica


@pytest.fixture()
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def position(token: str) -> int:
    parsed = parse_token(token)
    assert parsed is not None
    return parsed[1]


def test_replicas_share_state_through_a_redis_cluster(
        make_replica: Callable[..., Replica], redis_cluster: RedisClusterProcesses,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_cluster.url, partitions=PARTS, cluster=True)
    b = make_replica(redis_cluster.url, partitions=PARTS, cluster=True)
    for subject in SUBJECTS.values():
        token = grant(a, subject)
        # Read-your-writes on another replica, from the cluster (A wrote it through).
        assert read(b, spans, position(token), subject) == ([ConsentAction.GRANT], "redis")
    heads = [b"ca:{p%d}head" % p for p in range(PARTS)]
    assert set(heads) <= set(redis_cluster.keys())
    # The partitions live on several nodes, each partition's keys on one.
    assert len({redis_cluster.node_of(h).port for h in heads}) > 1
    for subject in SUBJECTS.values():
        assert a.redis is not None
        entry = a.redis.entry_key(a.service.subject_key(subject))
        head = a.redis.head_key_of(a.service.partition(a.service.subject_key(subject)))
        assert redis_cluster.node_of(entry).port == redis_cluster.node_of(head).port
    # A withdrawal on A reaches B without a token: the invalidation was published by the
    # script on its partition's node, and B listens on another.
    for subject in SUBJECTS.values():
        withdraw(a, subject)
    for subject in SUBJECTS.values():
        wait_for(lambda s=subject: read(b, spans, 0, s)[0]  # type: ignore[misc]
                 == [ConsentAction.WITHDRAW], 10)


def test_a_dead_cluster_node_costs_hits_never_a_stale_answer(
        make_replica: Callable[..., Replica], redis_cluster: RedisClusterProcesses,
        spans: InMemorySpanExporter) -> None:
    a = make_replica(redis_cluster.url, partitions=PARTS, cluster=True)
    b = make_replica(redis_cluster.url, partitions=PARTS, cluster=True)
    subject = SUBJECTS[0]
    token = grant(a, subject)
    assert read(b, spans, position(token), subject) == ([ConsentAction.GRANT], "redis")
    assert a.redis is not None
    redis_cluster.node_of(a.redis.head_key_of(0)).kill()
    token = withdraw(a, subject)  # the ledger takes it; the write-through fails
    actions, tier = read(b, spans, position(token), subject)
    assert (actions, tier) == ([ConsentAction.WITHDRAW], "ledger")


def test_two_servers_on_a_partitioned_ledger_and_a_cluster_over_grpc(
        tmp_path: Path, postgres_dsn: str, redis_cluster: RedisClusterProcesses) -> None:
    """serve's wiring (--ledger-partitions default, --redis-cluster): tokens name the
    subject's partition, are honoured on the other server at once, and a token of another
    subject's partition or a bare position is refused naming the field."""
    ledger = pg_url(postgres_dsn)
    servers = [start_server(tmp_path / name, ledger_url=ledger, redis_url=redis_cluster.url,
                            redis_cluster=True, master_key=b"m" * 32) for name in "ab"]
    a, b = servers
    try:
        assert a.app.ledger.partitions == 16
        tokens = {}
        written: dict[str, list[str]] = {}
        for subject in ("ann@example.com", "ben@example.com", "cat@example.com"):
            granted = record(a, subject, "grant", EMAIL, categories=(CATEGORY,))
            part, dot, at = granted.consistency_token.partition(".")
            assert dot and part.isdigit() and at.isdigit()
            tokens[subject] = granted.consistency_token
            resp = b.decisions.Check(item(subject, granted.consistency_token))
            assert decision_name(resp) == "ALLOW"
            assert resp.consistency_token.partition(".")[0] == part
            withdrawn = record(b, subject, "withdraw", EMAIL, categories=(CATEGORY,))
            resp = a.decisions.Check(item(subject, withdrawn.consistency_token))
            assert decision_name(resp) == "DENY"
            written[subject] = [granted.consistency_token, withdrawn.consistency_token]
        # The subject's export names each record's token as its writes returned it.
        doc = json.loads(a.consent.ExportSubject(consent_pb2.ExportSubjectRequest(
            subject_id="ben@example.com")).json)
        assert [r["consistency_token"] for r in doc["consent_records"]] \
            == written["ben@example.com"]
        parts = {t.partition(".")[0] for t in tokens.values()}
        ann, other = "ann@example.com", next(
            s for s, t in tokens.items() if t.partition(".")[0] != tokens["ann@example.com"]
            .partition(".")[0])
        for bad in (tokens[other], "3", "99.1"):
            with pytest.raises(grpc.RpcError) as err:
                a.decisions.Check(item(ann, bad))
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "consistency_token" in field_violations(err.value)
        assert len(parts) > 1
    finally:
        for s in servers:
            s.channel.close()
            s.app.stop(grace=None)


def item(subject: str, token: str) -> decision_pb2.CheckRequest:
    return decision_pb2.CheckRequest(subject_id=subject, purpose=EMAIL, data_category=CATEGORY,
                                     jurisdiction="DE", consistency_token=token)


def test_cluster_mode_comes_from_the_flag_or_the_environment() -> None:
    parse = build_parser().parse_args
    assert serve_config(parse(["serve"]), {}).redis_cluster is False
    assert serve_config(parse(["serve", "--redis-cluster"]), {}).redis_cluster is True
    assert serve_config(parse(["serve"]), {"CONSENTAUTHZ_REDIS_CLUSTER": "1"}).redis_cluster
    assert not serve_config(parse(["serve"]), {"CONSENTAUTHZ_REDIS_CLUSTER": "0"}).redis_cluster
    with pytest.raises(ConfigError, match="CONSENTAUTHZ_REDIS_CLUSTER"):
        serve_config(parse(["serve"]), {"CONSENTAUTHZ_REDIS_CLUSTER": "maybe"})
