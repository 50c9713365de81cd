"""The floor: a no-op DecisionService on a grpc.server configured like consentauthz's.

Same thread pool (size from --workers, consentauthz's default 16), same message limits
and options as src/consentauthz/server/server.py, no interceptor (consentauthz has none
without --callers), no tracing. `Check` returns a canned CheckResponse of the size a real
one has, `BatchCheck` one canned result per item, so the floor pays the same protobuf
(de)serialisation and HTTP/2 framing as the real call and nothing else.

Run as `python -m benchmarks.noop_server --workers 16`; prints `serving on port N`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from consentauthz.server.server import MAX_MESSAGE_BYTES
from consentauthz.v1 import decision_pb2, decision_pb2_grpc

#: Field values of a typical real answer (lengths match what consentauthz returns).
CANNED = decision_pb2.CheckResponse(
    decision=decision_pb2.DECISION_ALLOW, reason="CONSENT_GIVEN", legal_basis="consent",
    decision_id="0196f0c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d",
    policy_version="3f" * 32,
    matched_rule="gdpr.csv:64: p, 610, gdpr, gdpr_consent_required, *, consent, allow, "
                 "CONSENT_GIVEN, consent",
    consent_record_ids=["0196f0c2-0000-7a3b-9c4d-5e6f7a8b9c0d"],
    consistency_token="6000123", regime="gdpr", jurisdiction="DE")


class NoopDecisions(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self) -> None:
        self._batches: dict[int, decision_pb2.BatchCheckResponse] = {}
        self._lock = threading.Lock()

    def Check(self, request: Any, context: Any) -> Any:
        return CANNED

    def BatchCheck(self, request: Any, context: Any) -> Any:
        n = len(request.items)
        found = self._batches.get(n)
        if found is None:
            found = decision_pb2.BatchCheckResponse(
                results=[decision_pb2.BatchCheckResult(response=CANNED)] * n)
            with self._lock:
                self._batches[n] = found
        return found


def build_server(workers: int, listen: str) -> tuple[grpc.Server, int]:
    # Exactly the constructor call of consentauthz.server.server.GrpcServer.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        interceptors=None,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(NoopDecisions(), server)
    port = server.add_insecure_port(listen)
    return server, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--listen", default="127.0.0.1:0")
    ns = parser.parse_args(argv)
    server, port = build_server(ns.workers, ns.listen)
    server.start()
    print(f"noop serving on port {port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(None))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
