"""Three `consentauthz serve` processes sharing one PostgreSQL ledger and one Redis.

Real processes, real gRPC channels, a real redis-server (started here, killed and
restarted here) and a fresh PostgreSQL database. What a load balancer in front of them
would see: a write on one replica is honoured by every other, with a consistency token at
once and without one within the staleness bound, and Redis dying costs no wrong ALLOW.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consentauthz.v1 import consent_pb2, consent_pb2_grpc, decision_pb2, decision_pb2_grpc
from tests.pg import fresh_database
from tests.redis_server import RedisServer
from tests.scenario import check, decision_name, record
from tests.serve_process import position, serve_command, start_serve

EMAIL = "marketing.communications.email"
CATEGORY = "user.contact.email"
MAX_STALENESS = 1.0
KEY = "ab" * 32
MASTER = "cd" * 32


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[str]
    channel: grpc.Channel
    decisions: decision_pb2_grpc.DecisionServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    health: health_pb2_grpc.HealthStub

    def serving(self, service: str) -> bool:
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def start_replica(name: str, workdir: Path, dsn: str, redis_url: str,
                  listen: str = "127.0.0.1:0", *extra: str,
                  output: list[str] | None = None) -> Replica:
    """`output`: where to keep every line the process writes."""
    env = dict(os.environ, CONSENTAUTHZ_PSEUDONYM_KEY=KEY, CONSENTAUTHZ_MASTER_KEY=MASTER)
    command = serve_command(
        workdir / name, "--ledger", dsn, "--redis-url", redis_url,
        "--max-staleness", str(MAX_STALENESS), "--redis-timeout-ms", "50", *extra)
    command[command.index("--listen") + 1] = listen
    served = start_serve(command, env, output)
    return Replica(name, served.proc, served.channel, served.decisions, served.consent,
                   health_pb2_grpc.HealthStub(served.channel))


@dataclass
class Cluster:
    a: Replica
    b: Replica
    c: Replica
    redis: RedisServer
    dsn: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("replicas")
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    with fresh_database() as dsn:
        url = "postgresql://postgres@127.0.0.1:5432/" + dsn.rsplit("dbname=", 1)[1]
        replicas: list[Replica] = []
        try:
            for name in "abc":
                replicas.append(start_replica(name, workdir, url, redis_server.url))
            yield Cluster(*replicas, redis=redis_server, dsn=url)
        finally:
            for r in replicas:
                r.channel.close()
                r.proc.terminate()
            for r in replicas:
                assert r.proc.wait(timeout=20) == 0, f"replica {r.name} did not exit cleanly"
            redis_server.kill()


def grant(r: Replica, subject: str) -> str:
    return str(record(r, subject, "grant", EMAIL, categories=(CATEGORY,),  # type: ignore[arg-type]
                      jurisdiction="DE").consistency_token)


def withdraw(r: Replica, subject: str) -> str:
    return str(record(r, subject, "withdraw", EMAIL,  # type: ignore[arg-type]
                      categories=(CATEGORY,)).consistency_token)


def decide(r: Replica, subject: str, token: str = "") -> str:
    if not token:
        return decision_name(check(r, subject, EMAIL, CATEGORY, "DE"))  # type: ignore[arg-type]
    resp = r.decisions.Check(decision_pb2.CheckRequest(
        subject_id=subject, purpose=EMAIL, data_category=CATEGORY, jurisdiction="DE",
        consistency_token=token), timeout=10)
    return decision_name(resp)


def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until `predicate` held; fails past `timeout` (a correctness deadline)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "not reached within the deadline"
        time.sleep(0.005)
    return time.monotonic() - start


def test_grant_on_a_is_allowed_on_b_and_c(cluster: Cluster) -> None:
    token = grant(cluster.a, "grant-subject")
    assert decide(cluster.b, "grant-subject", token) == "ALLOW"
    assert decide(cluster.c, "grant-subject", token) == "ALLOW"


def test_withdraw_on_a_is_denied_on_b_with_the_token_at_once(cluster: Cluster) -> None:
    grant(cluster.a, "token-subject")
    until(lambda: decide(cluster.b, "token-subject") == "ALLOW", MAX_STALENESS * 5)
    token = withdraw(cluster.a, "token-subject")
    assert decide(cluster.b, "token-subject", token) == "DENY"
    assert decide(cluster.c, "token-subject", token) == "DENY"


def test_withdraw_on_a_is_denied_on_b_without_a_token_within_the_bound(
        cluster: Cluster) -> None:
    grant(cluster.a, "bound-subject")
    until(lambda: decide(cluster.b, "bound-subject") == "ALLOW", MAX_STALENESS * 5)
    withdraw(cluster.a, "bound-subject")
    took = until(lambda: decide(cluster.b, "bound-subject") == "DENY", MAX_STALENESS * 3)
    print(f"withdrawal on A honoured on B without a token after {took * 1000:.1f} ms")


def test_erasure_on_a_is_honoured_on_b_and_c(cluster: Cluster) -> None:
    token = grant(cluster.a, "erased-subject")
    until(lambda: decide(cluster.b, "erased-subject") == "ALLOW", MAX_STALENESS * 5)
    erased = cluster.a.consent.EraseSubject(consent_pb2.EraseSubjectRequest(
        subject_id="erased-subject"), timeout=10)
    assert position(erased.consistency_token) > position(token)
    for r in (cluster.b, cluster.c):
        resp = r.decisions.Check(decision_pb2.CheckRequest(
            subject_id="erased-subject", purpose=EMAIL, data_category=CATEGORY,
            jurisdiction="DE", consistency_token=erased.consistency_token), timeout=10)
        assert decision_name(resp) == "DENY"
        assert resp.reason == "SUBJECT_ERASED"
    with pytest.raises(grpc.RpcError) as err:  # nothing more is recorded about them
        grant(cluster.c, "erased-subject")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_is_serving_with_redis_up(cluster: Cluster) -> None:
    for r in (cluster.a, cluster.b, cluster.c):
        assert r.serving("") and r.serving("consentauthz.redis")
        assert r.serving("consentauthz.ledger")


def test_redis_killed_mid_traffic_gives_no_wrong_allow_and_comes_back(
        cluster: Cluster) -> None:
    subjects = [f"outage-{i}" for i in range(4)]
    for s in subjects:
        grant(cluster.a, s)
    for s in subjects:
        until(lambda s=s: decide(cluster.b, s) == "ALLOW"  # type: ignore[misc]
              and decide(cluster.c, s) == "ALLOW", MAX_STALENESS * 5)
    withdrawn: dict[str, tuple[str, float]] = {}  # subject -> (token, when)
    wrong: list[str] = []
    stop = threading.Event()

    def traffic(r: Replica) -> None:
        while not stop.is_set():
            for s in subjects:
                started = time.monotonic()
                with_token = withdrawn.get(s)
                try:
                    got = decide(r, s, with_token[0] if with_token else "")
                except grpc.RpcError as exc:  # UNAVAILABLE is a safe answer; ALLOW is not
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    continue
                if got == "ALLOW" and with_token is not None:
                    wrong.append(f"{r.name} allowed {s} with the withdrawal's token")
                plain = decide(r, s)
                if plain == "ALLOW" and with_token is not None \
                        and started - with_token[1] > MAX_STALENESS + 0.5:
                    wrong.append(f"{r.name} allowed {s} {started - with_token[1]:.2f}s "
                                 "after its withdrawal, past the staleness bound")

    threads = [threading.Thread(target=traffic, args=(r,)) for r in (cluster.b, cluster.c)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        cluster.redis.kill()
        for s in subjects[:2]:  # withdrawn while Redis is down: the ledger takes them
            token = withdraw(cluster.a, s)
            withdrawn[s] = (token, time.monotonic())
        cold_token = grant(cluster.a, "cold-subject")  # nobody has read it yet
        until(lambda: not cluster.b.serving("consentauthz.redis"), 10)
        assert cluster.b.serving("")  # degraded, still answering correctly
        time.sleep(MAX_STALENESS + 1.0)
        cluster.redis.start()  # back, and empty
        for s in subjects[2:]:
            token = withdraw(cluster.a, s)
            withdrawn[s] = (token, time.monotonic())
        until(lambda: all(r.serving("consentauthz.redis")
                          for r in (cluster.a, cluster.b, cluster.c)), 15)
        time.sleep(MAX_STALENESS + 0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not wrong, wrong
    for s in subjects:
        assert decide(cluster.b, s) == "DENY" and decide(cluster.c, s) == "DENY"
    # Redis came back empty; hot subjects keep serving from each replica's cache, and a
    # miss reads through the ledger and repopulates Redis.
    assert decide(cluster.c, "cold-subject", cold_token) == "ALLOW"
    client = cluster.redis.client()
    # The read through populates Redis on C's own thread (populate_soon), after answering.
    until(lambda: bool(client.keys(b"ca:*:{p*}head")), 10)
    # The prefix carries the ledger's identity (one, whatever the partitions populated).
    heads = client.keys(b"ca:*:{p*}head")
    assert len({h.split(b"{")[0] for h in heads}) == 1
    assert all(client.get(h) is not None for h in heads)
    assert client.dbsize() > 1
    # And a grant after the outage is honoured everywhere again.
    token = grant(cluster.a, "after-outage")
    assert decide(cluster.c, "after-outage", token) == "ALLOW"


def test_processes_share_one_port_with_reuse_port(cluster: Cluster,
                                                  tmp_path: Path) -> None:
    """serve --reuse-port: several processes on one port, the kernel spreads connections."""
    from tests.redis_server import free_port

    port = free_port()
    dsn = cluster.dsn
    procs = [start_replica(f"p{i}", tmp_path, dsn, cluster.redis.url, f"127.0.0.1:{port}",
                           "--reuse-port") for i in range(2)]
    try:
        token = grant(procs[0], "shared-port-subject")
        for _ in range(40):  # a new connection each time
            with grpc.insecure_channel(f"127.0.0.1:{port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                resp = decision_pb2_grpc.DecisionServiceStub(ch).Check(
                    decision_pb2.CheckRequest(
                        subject_id="shared-port-subject", purpose=EMAIL,
                        data_category=CATEGORY, jurisdiction="DE", consistency_token=token),
                    timeout=10)
                assert decision_name(resp) == "ALLOW"
    finally:
        for r in procs:
            r.channel.close()
            r.proc.terminate()
        for r in procs:
            assert r.proc.wait(timeout=20) == 0
    served = [len(list((tmp_path / f"p{i}").glob("decisions*.db"))) for i in range(2)]
    counts = [decisions_in(tmp_path / f"p{i}") for i in range(2)]
    assert all(served) and all(c > 0 for c in counts), counts


def decisions_in(data_dir: Path) -> int:
    import sqlite3
    with sqlite3.connect(data_dir / "decisions.db") as db:
        return int(db.execute("SELECT count(*) FROM decisions").fetchone()[0])
