"""`consentauthz serve | check | explain | consent | audit | ledger | keys | policy`: the
server, its gRPC client commands and the policy authors' tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from . import __version__, cli_audit, cli_channel, cli_consent, cli_keys, cli_ledger
from . import config as cfg
from .cli_output import enum_name, to_json
from .errors import ConsentAuthzError
from .v1 import (
    consent_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)


class Client:
    def __init__(self, target: str, security: cfg.ClientSecurity | None = None) -> None:
        self.channel = cli_channel.open_channel(target, security or cfg.ClientSecurity())
        self.decisions = decision_pb2_grpc.DecisionServiceStub(self.channel)
        self.consent = consent_pb2_grpc.ConsentServiceStub(self.channel)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)


def _print_check(resp: decision_pb2.CheckResponse) -> None:
    print(f"{enum_name(decision_pb2.Decision, resp.decision, 'DECISION_')}  {resp.reason}")
    rows = [("legal basis", resp.legal_basis or "-"),
            ("jurisdiction", f"{resp.jurisdiction or '(none)'} -> {resp.regime}"),
            ("rule", resp.matched_rule or "(no rule matched)"),
            ("consent records", ", ".join(resp.consent_record_ids) or "-"),
            ("decision id", resp.decision_id),
            ("policy version", resp.policy_version[:12]),
            ("consistency token", resp.consistency_token)]
    for label, value in rows:
        print(f"  {label:<18} {value}")
    for line in resp.explanation:
        print(f"  | {line}")


def cmd_check(client: Client, ns: argparse.Namespace) -> int:
    req = decision_pb2.CheckRequest(
        subject_id=ns.subject, purpose=ns.purpose, data_category=ns.category,
        jurisdiction=ns.jurisdiction or "", consistency_token=ns.token or "",
        explain=ns.explain)
    if ns.gpc:
        req.context["gpc"] = "1"
    resp = client.decisions.Check(req)
    print(to_json(resp)) if ns.json else _print_check(resp)
    return 0


def _policy_dir(ns: argparse.Namespace) -> Path:
    return Path(ns.dir) if ns.dir else cfg.shipped_policies()


def cmd_policy_test(ns: argparse.Namespace) -> int:
    from .app import compile_policy
    from .authoring import load_suites, print_report, run_suites, write_junit

    directory = _policy_dir(ns)
    run = run_suites(compile_policy(directory), load_suites(directory))
    print_report(run, sys.stdout, verbose=ns.verbose, coverage=ns.coverage)
    if ns.junit:
        write_junit(run, Path(ns.junit))
    if not run.results:
        print(f"no test suites (*_test.yaml) under {directory}", file=sys.stderr)
        return 1
    if ns.fail_under is not None and run.coverage < ns.fail_under:
        print(f"rule coverage {run.coverage:.1f}% is below {ns.fail_under}%", file=sys.stderr)
        return 1
    return 0 if run.failed == 0 else 1


def cmd_policy_diff(ns: argparse.Namespace) -> int:
    from .app import compile_policy, open_for_reading
    from .authoring.diff import diff, format_report, report_json
    from .decisionlog import SqliteDecisionLog
    from .domain import DecisionQuery

    data = Path(ns.data_dir or cfg.DEFAULT_DATA_DIR)
    candidate = compile_policy(Path(ns.candidate))
    log = SqliteDecisionLog(data / "decisions.db", read_only=True)
    ledger = open_for_reading(cfg.ledger_url(ns.ledger), data, None)
    try:
        report = diff(log, ledger, candidate,
                      DecisionQuery(purpose=ns.purpose or "", start=_dt(ns.since),
                                    end=_dt(ns.until)),
                      limit=ns.limit, sample=ns.sample)
    finally:
        log.close()
        ledger.close()
    print(json.dumps(report_json(report), indent=2) if ns.json else format_report(report))
    return 0


def _dt(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_policy_matrix(ns: argparse.Namespace) -> int:
    from .app import compile_policy
    from .authoring.matrix import build_matrix, render_html, render_markdown

    compiled = compile_policy(_policy_dir(ns))
    codes = list(ns.jurisdiction or ())
    if ns.by_jurisdiction:
        # Every code the pack maps, then what it answers for codes it does not map.
        codes += [c for c in compiled.jurisdictions if c != "UNKNOWN"] + ["US", ""]
    matrix = build_matrix(compiled, codes)
    cli_audit.emit(render_html(matrix) if ns.format == "html" else render_markdown(matrix),
                   ns.output)
    return 0


def cmd_policy_lint(ns: argparse.Namespace) -> int:
    from .authoring.lint import has_errors, lint

    findings = lint(_policy_dir(ns))
    for finding in findings:
        print(finding)
    errors = sum(f.severity == "error" for f in findings)
    print(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if has_errors(findings) else 0


def cmd_policy_status(client: Client, ns: argparse.Namespace) -> int:
    resp = client.policy.GetStatus(policy_pb2.GetPolicyStatusRequest())
    if ns.json:
        print(to_json(resp))
        return 0
    print(f"policy {resp.policy_version} ({resp.rule_count} rules) live since "
          f"{resp.loaded_at.ToDatetime(tzinfo=UTC).isoformat()}")
    print(f"  source {resp.source}; watching: {'yes' if resp.watching else 'no'}; reloads "
          f"accepted {resp.reloads_accepted}, refused {resp.reloads_rejected}")
    if resp.HasField("last_reload"):
        r = resp.last_reload
        print(f"  last attempt {r.time.ToDatetime(tzinfo=UTC).isoformat()}: "
              f"{'accepted' if r.accepted else 'REFUSED'} {r.policy_version[:12]}")
        for problem in r.problems:
            print(f"    {problem}")
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from .app import App
    from .telemetry import setup_metrics, setup_tracing

    # Whatever the server creates (ledger, decision log, keys, kept policies) is this
    # user's only, however the process was started (docs/security.md).
    os.umask(0o077)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    config = cfg.serve_config(ns)
    setup_tracing("consentauthz", config.otlp)
    setup_metrics("consentauthz", prometheus=config.metrics_listen is not None,
                  otlp=config.otlp_metrics)
    app = App(config)
    app.start()
    print(f"consentauthz listening on {config.listen.rsplit(':', 1)[0]}:{app.port} "
          f"(data dir {config.data_dir}, policy {app.policy().version[:12]})", flush=True)
    if config.health_listen:
        print(f"health (grpc.health.v1, plaintext) on "
              f"{config.health_listen.rsplit(':', 1)[0]}:{app.health_port}", flush=True)
    if config.metrics_listen:
        print(f"metrics on http://{config.metrics_listen.rsplit(':', 1)[0]}:"
              f"{app.metrics_port}/metrics", flush=True)

    def stop(signum: int, frame: object) -> None:
        app.server.health.enter_graceful_shutdown()
        app.stop(grace=5.0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app.wait()
    return 0


def _common_client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help=f"server address (default {cfg.DEFAULT_TARGET}, "
                   f"or ${cfg.ENV_PREFIX}TARGET)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    cli_channel.add_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consentauthz", description=__doc__)
    parser.add_argument("--version", action="version", version=f"consentauthz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help=f"HOST:PORT (default {cfg.DEFAULT_LISTEN})")
    serve.add_argument("--data-dir", help=f"ledger and decision log (default "
                       f"./{cfg.DEFAULT_DATA_DIR})")
    serve.add_argument("--policies", help="policy directory (default: the shipped policies/)")
    serve.add_argument("--workers", type=int, default=16)
    serve.add_argument("--cache-entries", type=int, default=100_000)
    serve.add_argument("--decision-log-fsync", action="store_true",
                       help="fsync the decision log on every commit (survives power loss)")
    serve.add_argument("--decision-log-mode", choices=["block", "drop"], default="block",
                       help="when the log writer cannot keep up: callers wait (block, the "
                       "default) or entries are dropped and counted (drop)")
    serve.add_argument("--decision-log-segment-mb", type=int,
                       help="seal the active decision-log segment past this size")
    serve.add_argument("--decision-log-retention-days", type=float,
                       help="delete sealed segments whose newest entry is older than this")
    serve.add_argument("--pseudonym-key-file",
                       help="key ring for subject pseudonyms (default DATA_DIR/keys/pseudonym.key, "
                            "generated; env CONSENTAUTHZ_PSEUDONYM_KEY)")
    serve.add_argument("--ledger", metavar="URL",
                       help="postgresql://... ledger shared by replicas (default: SQLite in "
                            "the data dir; env CONSENTAUTHZ_LEDGER)")
    serve.add_argument("--ledger-partitions", type=int, metavar="N",
                       help="partitions of a new PostgreSQL ledger (default 16; an existing "
                            "one keeps its own: docs/operations.md, sizing; env "
                            "CONSENTAUTHZ_LEDGER_PARTITIONS)")
    serve.add_argument("--redis-url", metavar="URL",
                       help="redis://... consent cache shared by replicas (env "
                            "CONSENTAUTHZ_REDIS_URL)")
    serve.add_argument("--redis-cluster", action="store_true",
                       help="--redis-url names a node of a Redis Cluster (env "
                            "CONSENTAUTHZ_REDIS_CLUSTER=1; docs/operations.md)")
    serve.add_argument("--redis-prefix", metavar="PREFIX",
                       help="key prefix, e.g. 'ca:' (default), to share one Redis")
    serve.add_argument("--redis-timeout-ms", type=float, default=50,
                       help="answer from the ledger when Redis takes longer (default 50)")
    serve.add_argument("--max-staleness", type=float, default=1.0, metavar="SECONDS",
                       help="without a consistency token, the oldest write a check may miss "
                            "(shared ledger only; default 1.0)")
    serve.add_argument("--clock-skew", type=float, metavar="SECONDS",
                       help="how far in the future a consent record's collected_at may be; "
                            "it counts from then (default 300; env CONSENTAUTHZ_CLOCK_SKEW)")
    serve.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (TLS)")
    serve.add_argument("--tls-key", metavar="PEM", help="server private key (TLS)")
    serve.add_argument("--client-ca", metavar="PEM",
                       help="CA bundle for client certificates: turns on mutual TLS")
    serve.add_argument("--callers", metavar="YAML",
                       help="who may call: client-certificate names and hashed bearer tokens "
                            "(docs/security.md); default: everyone is 'anonymous', loopback only")
    serve.add_argument("--master-key-file", metavar="FILE",
                       help="key ring wrapping per-subject evidence keys (default "
                            "DATA_DIR/keys/master.key, generated; env CONSENTAUTHZ_MASTER_KEY)")
    serve.add_argument("--reuse-port", action="store_true",
                       help="share the port with other serve processes (SO_REUSEPORT); each "
                            "needs its own --data-dir and the same --ledger and --redis-url")
    serve.add_argument("--no-watch", action="store_true",
                       help="do not hot-reload the policy directory when it changes")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help=f"serve Prometheus metrics on http://HOST:PORT/metrics (default "
                       f"off, or ${cfg.ENV_PREFIX}METRICS_LISTEN)")
    serve.add_argument("--health-listen", metavar="HOST:PORT",
                       help=f"also answer grpc.health.v1 in plaintext here, for probes "
                       f"without a client certificate under mutual TLS (default off, or "
                       f"${cfg.ENV_PREFIX}HEALTH_LISTEN)")
    serve.set_defaults(run=cmd_serve)

    check = sub.add_parser("check", help="may this purpose use this data of this subject?")
    check.add_argument("--subject", required=True)
    check.add_argument("--purpose", required=True)
    check.add_argument("--category", required=True, help="fideslang data category")
    check.add_argument("--jurisdiction")
    check.add_argument("--gpc", action="store_true", help="the request carried Sec-GPC: 1")
    check.add_argument("--token", help="consistency token from a consent write")
    check.add_argument("--explain", action="store_true")
    _common_client(check)
    check.set_defaults(client=cmd_check)
    cli_consent.register(sub, _common_client)

    policy = sub.add_parser("policy", help="policy authoring: test, lint, matrix, diff")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    ptest = psub.add_parser("test", help="run the policy's *_test.yaml suites")
    ptest.add_argument("dir", nargs="?", help="policy directory (default: the shipped one)")
    ptest.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    ptest.add_argument("--coverage", action="store_true", help="list rules no case exercised")
    ptest.add_argument("--fail-under", type=float, metavar="PCT",
                       help="fail when rule coverage is below PCT")
    ptest.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    ptest.set_defaults(run=cmd_policy_test)

    pdiff = psub.add_parser("diff", help="which logged decisions a candidate policy flips")
    pdiff.add_argument("--candidate", required=True, metavar="DIR", help="candidate policy")
    pdiff.add_argument("--data-dir", help=f"server data dir, or a copy (default "
                       f"./{cfg.DEFAULT_DATA_DIR})")
    pdiff.add_argument("--ledger", metavar="URL", help="the postgresql:// ledger the server "
                       "used (default: DATA_DIR/ledger.db)")
    pdiff.add_argument("--purpose", help="only decisions for this purpose")
    pdiff.add_argument("--since", help="ISO 8601 time")
    pdiff.add_argument("--until", help="ISO 8601 time")
    pdiff.add_argument("--limit", type=int, help="newest N decisions at most")
    pdiff.add_argument("--sample", type=float, metavar="FRACTION",
                       help="replay a random fraction (0-1) of the decisions")
    pdiff.add_argument("--json", action="store_true")
    pdiff.set_defaults(run=cmd_policy_diff)
    pmatrix = psub.add_parser("matrix", help="purposes x data categories x regimes -> the "
                              "legal basis required")
    pmatrix.add_argument("dir", nargs="?", help="policy directory (default: the shipped one)")
    pmatrix.add_argument("--format", choices=["md", "html"], default="md")
    pmatrix.add_argument("--jurisdiction", action="append", metavar="CODE",
                         help="one table for this jurisdiction (repeatable): a code the "
                              "pack does not map, such as US, is shown as answered, under "
                              "every regime")
    pmatrix.add_argument("--by-jurisdiction", action="store_true",
                         help="one table per jurisdiction the pack maps, then the bare US "
                              "and none (what a lawyer reads per state or country)")
    pmatrix.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    pmatrix.set_defaults(run=cmd_policy_matrix)
    plint = psub.add_parser("lint", help="find dead, shadowed and untested rules")
    plint.add_argument("dir", nargs="?", help="policy directory (default: the shipped one)")
    plint.set_defaults(run=cmd_policy_lint)
    pstatus = psub.add_parser("status", help="the policy version a running server uses")
    _common_client(pstatus)
    pstatus.set_defaults(client=cmd_policy_status)

    explain = sub.add_parser("explain", help="check, and say in plain language why")
    for arg in ("--subject", "--purpose", "--category"):
        explain.add_argument(arg, required=True)
    explain.add_argument("--jurisdiction")
    explain.add_argument("--gpc", action="store_true")
    explain.add_argument("--token")
    _common_client(explain)
    explain.set_defaults(client=cmd_check, explain=True)

    cli_audit.register(sub)
    cli_ledger.register(sub)
    cli_keys.register(sub)
    return parser


def _report_rpc_error(exc: grpc.RpcError) -> int:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    print(f"error: {code.name}: {details}", file=sys.stderr)
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    details_list: list[Any] = list(status.details) if status else []
    for detail in details_list:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            for v in bad.field_violations:
                print(f"  {v.field}: {v.description}", file=sys.stderr)
    return 2 if code is grpc.StatusCode.INVALID_ARGUMENT else 1


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if hasattr(ns, "run"):
            run: Callable[[argparse.Namespace], int] = ns.run
            return run(ns)
        client = Client(cfg.client_target(ns), cfg.client_security(ns))
        try:
            command: Callable[[Client, argparse.Namespace], int] = ns.client
            return command(client, ns)
        finally:
            client.channel.close()
    except grpc.RpcError as exc:
        return _report_rpc_error(exc)
    except (ConsentAuthzError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
