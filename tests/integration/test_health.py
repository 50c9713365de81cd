"""Health: Check answers without credentials; Watch is refused (it could freeze the server:
grpcio-health-checking sends Watch's first response under its lock, and a cancelled Watch
makes gRPC's event thread wait for that lock)."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Running


def test_check_serves_and_watch_is_refused(server: Running) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        next(iter(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cancelled_watches_do_not_freeze_the_server(server: Running) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel)

    def churn() -> None:
        for _ in range(20):
            calls = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(8)]
            for call in calls:
                call.cancel()

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
