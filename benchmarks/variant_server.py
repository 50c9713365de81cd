"""`consentauthz serve`, with a choice of decision log, for the "log on vs off" comparison.

There is no switch to turn the decision log off (every answer must have its entry), so
"off" is the in-memory twin: the same App as `serve` builds (src/consentauthz/app.py),
whose Checker then appends to a MemoryDecisionLog instead of the queued, durable SQLite
log. Logs:
- memory:       MemoryDecisionLog, nothing written anywhere ("off")
- sqlite:       the default: QueuedDecisionLog over SqliteDecisionLog, no fsync
- sqlite-fsync: as `serve --decision-log-fsync` (durable: fsync on every group commit)

Tracing and metrics are set up as `serve` sets them up (cli.py cmd_serve): with no OTLP
endpoint, no spans. `--tracing exported` records every span and exports it as OTLP does
(BatchSpanProcessor, spans encoded to OTLP protobuf), except that the bytes go nowhere
instead of to a collector: the cost a server pays with tracing on and sampling at 100%.
On SIGTERM it prints `variant-stats {...}`: decisions logged and dropped, read from the
log itself, and spans exported.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from consentauthz.app import App, utc_now
from consentauthz.checker import Checker
from consentauthz.config import ServeConfig
from consentauthz.decisionlog import MemoryDecisionLog
from consentauthz.server import GrpcServer
from consentauthz.telemetry import setup_metrics, setup_tracing


class EncodingExporter(SpanExporter):
    """OTLP's work up to the wire: encode each batch to protobuf bytes, then drop them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--log", choices=["memory", "sqlite", "sqlite-fsync"], required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--tracing", choices=["default", "exported"], default="default")
    ns = parser.parse_args(argv)
    import os

    exporter = EncodingExporter()
    setup_tracing("consentauthz", otlp=False, extra_processors=(
        (BatchSpanProcessor(exporter),) if ns.tracing == "exported" else ()))
    setup_metrics("consentauthz", prometheus=False, otlp=False)
    config = ServeConfig(
        listen="127.0.0.1:0", data_dir=Path(ns.data_dir), watch_policies=False,
        ledger_url=ns.ledger, redis_url=ns.redis_url,
        decision_log_fsync=ns.log == "sqlite-fsync",
        pseudonym_key=bytes.fromhex(os.environ["CONSENTAUTHZ_PSEUDONYM_KEY"]),
        master_key=bytes.fromhex(os.environ["CONSENTAUTHZ_MASTER_KEY"]))
    app = App(config)
    memory = None
    if ns.log == "memory":
        memory = MemoryDecisionLog()
        app.checker = Checker(app.consent, app.policy, memory, utc_now, app.metrics)
        # The same constructor call as App's, with this checker (no callers: no guard).
        app.server = GrpcServer(app.checker, app.consent, app.audit,
                                lambda: app.policy.status, config.listen, config.workers,
                                tls=None, loopback=config.loopback, guard=None)
    app.start()
    print(f"variant {ns.log} serving on port {app.port}", flush=True)
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        app.stop(grace=5.0)
        if memory is not None:
            logged, dropped = memory.checkpoint().count, 0
        else:
            from consentauthz.decisionlog import SqliteDecisionLog

            reader = SqliteDecisionLog(Path(ns.data_dir) / "decisions.db", read_only=True)
            logged, dropped = reader.checkpoint().count, app.decision_log.dropped()
            reader.close()
        print("variant-stats " + json.dumps({"logged": logged, "dropped": dropped,
                                              "spans": exporter.spans}), flush=True)
        done.set()

    signal.signal(signal.SIGTERM, stop)
    app.wait()
    done.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
