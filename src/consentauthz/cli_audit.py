"""`consentauthz audit ...`: the auditors' commands. Each works against a running server
(`--target HOST:PORT`, over AuditService) or offline on a data dir or a copy of one
(`--data-dir DIR`, read-only), with the same output."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from . import cli_channel
from . import config as cfg
from .errors import ConfigError
from .v1 import audit_pb2, audit_pb2_grpc, consent_pb2, decision_pb2

_DECISIONS = {"allow": decision_pb2.DECISION_ALLOW, "deny": decision_pb2.DECISION_DENY}


class OfflineAudit:
    """AuditService's methods, answered from files: the same Auditor the server uses."""

    def __init__(self, data_dir: Path, key_file: Path | None, ledger_url: str | None,
                 master_key_file: Path | None = None) -> None:
        from .app import open_for_reading
        from .auditing import Auditor
        from .decisionlog import SqliteDecisionLog
        from .policy import PolicyStore
        from .pseudonym import Pseudonymizer, parse_key_ring
        from .server import convert

        self._convert = convert
        key_path = key_file or data_dir / "keys" / "pseudonym.key"
        self.has_key = key_path.is_file()
        ring = (parse_key_ring(key_path.read_text()) if self.has_key
                else Pseudonymizer(b"\0" * 32, "none"))
        self.auditor = Auditor(
            SqliteDecisionLog(data_dir / "decisions.db", read_only=True),
            open_for_reading(ledger_url, data_dir, master_key_file),
            PolicyStore(data_dir / "policies"), ring, lambda: datetime.now(UTC))

    def _need_key(self, subject_id: str) -> None:
        if subject_id and not self.has_key:
            raise ConfigError("looking up a subject needs the pseudonymisation key: pass "
                              "--pseudonym-key-file (the data dir copy has none)")

    def GetDecision(self, req: audit_pb2.GetDecisionRequest) -> Any:
        return self._convert.decision_record(self.auditor.get(req.decision_id),
                                             self.auditor.partitions)

    def QueryDecisions(self, req: audit_pb2.QueryDecisionsRequest) -> Any:
        self._need_key(req.subject_id)
        found, token = self.auditor.query(self._convert.decision_query(req), req.subject_id,
                                          req.page_size, req.page_token)
        return audit_pb2.QueryDecisionsResponse(
            decisions=[self._convert.decision_record(r, self.auditor.partitions)
                       for r in found], next_page_token=token)

    def VerifyChains(self, req: audit_pb2.VerifyChainsRequest) -> Any:
        held = [self._convert.checkpoint_from(c) for c in req.checkpoints]
        return audit_pb2.VerifyChainsResponse(
            chains=[self._convert.chain_report(r) for r in self.auditor.verify(held)])

    def GetCheckpoint(self, req: audit_pb2.GetCheckpointRequest) -> Any:
        return self._convert.checkpoint(self.auditor.checkpoint())

    def ReplayDecision(self, req: audit_pb2.ReplayDecisionRequest) -> Any:
        return self._convert.replay_response(self.auditor.replay(req.decision_id))

    def ExplainDecision(self, req: audit_pb2.ExplainDecisionRequest) -> Any:
        return self._convert.decision_story(self.auditor.story(req.decision_id))

    def GetSubjectReport(self, req: audit_pb2.GetSubjectReportRequest) -> Any:
        self._need_key(req.subject_id)
        return self._convert.subject_report(self.auditor.subject_report(req.subject_id))


def _port(ns: argparse.Namespace) -> tuple[Any, Callable[[], None]]:
    if ns.data_dir:
        offline = OfflineAudit(Path(ns.data_dir),
                               Path(ns.pseudonym_key_file) if ns.pseudonym_key_file else None,
                               cfg.ledger_url(ns.ledger),
                               Path(ns.master_key_file) if ns.master_key_file else None)
        return offline, lambda: None
    channel = cli_channel.open_channel(cfg.client_target(ns), cfg.client_security(ns))
    return audit_pb2_grpc.AuditServiceStub(channel), channel.close


def _when(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).isoformat()) if ts.seconds or ts.nanos else "-"


def _json(msg: Any) -> str:
    return json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True),
                      indent=2, sort_keys=True)


def _decision_name(value: int) -> str:
    return str(decision_pb2.Decision.Name(value)).removeprefix("DECISION_")


def _print_record_block(r: audit_pb2.DecisionRecord) -> None:
    print(f"{r.decision_id}  {_when(r.time)}  {_decision_name(r.decision)} {r.reason}")
    rows = [("caller", r.caller), ("subject (pseudonym)", r.subject_pseudonym),
            ("purpose", r.purpose), ("data category", r.data_category),
            ("jurisdiction", f"{r.jurisdiction or '(none)'} -> {r.regime}"),
            ("context", ", ".join(f"{k}={v}" for k, v in sorted(r.context.items())) or "-"),
            ("legal basis", r.legal_basis or "-"), ("rule", r.matched_rule or "-"),
            ("consent records", ", ".join(r.consent_record_ids) or "-"),
            ("policy version", r.policy_version), ("consistency token", r.consistency_token),
            ("trace id", r.trace_id or "-"), ("sequence", str(r.sequence)),
            ("entry hash", r.entry_hash)]
    for label, value in rows:
        print(f"  {label:<20} {value}")


def _print_consent(c: consent_pb2.ConsentRecord, valid: str = "") -> None:
    action = str(consent_pb2.ConsentAction.Name(c.action)).removeprefix("CONSENT_ACTION_")
    method = str(consent_pb2.CollectionMethod.Name(c.method)).removeprefix(
        "COLLECTION_METHOD_").lower()
    print(f"  {c.record_id}  {action} {c.purpose or 'all purposes'} "
          f"[{', '.join(c.data_categories) or 'all categories'}] {method}"
          f"{' explicit' if c.explicit else ''}{valid}")
    print(f"      collected {_when(c.collected_at)}, expires {_when(c.expires_at)}, "
          f"notice {c.notice_version or '-'}, source {c.source or '-'}, ledger #"
          f"{c.consistency_token}")
    for key, value in sorted(c.evidence.items()):
        print(f"      evidence {key}: {value}")


def cmd_show(ns: argparse.Namespace) -> int:
    port, close = _port(ns)
    try:
        story = port.ExplainDecision(audit_pb2.ExplainDecisionRequest(
            decision_id=ns.decision_id))
    finally:
        close()
    if ns.json:
        print(_json(story))
        return 0
    _print_record_block(story.record)
    print("consent records the decision rests on:")
    for c in story.consent_records:
        _print_consent(c)
    if not story.consent_records:
        print("  (none)")
    if story.other_records:
        print("other records in effect at the time:")
        for c in story.other_records:
            _print_consent(c)
    print("explanation (replayed with the same policy version and consent state):")
    for line in story.explanation:
        print(f"  | {line}")
    print("replay: " + ("confirms the logged decision" if story.replay_confirmed else
                        "DIFFERS: " + "; ".join(story.replay_differences)))
    return 0


def cmd_replay(ns: argparse.Namespace) -> int:
    port, close = _port(ns)
    try:
        resp = port.ReplayDecision(audit_pb2.ReplayDecisionRequest(decision_id=ns.decision_id))
    finally:
        close()
    if ns.json:
        print(_json(resp))
    elif resp.confirmed:
        print(f"confirmed: {ns.decision_id} replays to {_decision_name(resp.replayed.decision)}"
              f" {resp.replayed.reason} under policy {resp.record.policy_version[:12]} at "
              f"ledger position {resp.record.consistency_token}")
    else:
        print(f"NOT confirmed: {ns.decision_id}")
        for d in resp.differences:
            print(f"  {d}")
    return 0 if resp.confirmed else 1


def _held_checkpoints(paths: list[str] | None) -> list[audit_pb2.Checkpoint]:
    """Checkpoint files as `audit checkpoint` writes them: one JSON object per line."""
    from .decisionlog import Checkpoint
    from .server.convert import checkpoint

    held = []
    for path in paths or []:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                held.append(checkpoint(Checkpoint.from_json(line)))
    return held


def cmd_checkpoint(ns: argparse.Namespace) -> int:
    from .decisionlog import Checkpoint

    port, close = _port(ns)
    try:
        msg = port.GetCheckpoint(audit_pb2.GetCheckpointRequest())
    finally:
        close()
    when = msg.time.ToDatetime(tzinfo=UTC) if msg.HasField("time") else None
    ledger = tuple((h.partition, h.position, h.entry_hash) for h in msg.consent_ledger)
    line = Checkpoint(msg.sequence, msg.entry_hash, msg.count, when, ledger).to_json()
    if ns.append:
        with Path(ns.append).open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(f"appended checkpoint #{msg.sequence} to {ns.append}")
    else:
        print(line)
    return 0


def cmd_verify(ns: argparse.Namespace) -> int:
    port, close = _port(ns)
    try:
        resp = port.VerifyChains(audit_pb2.VerifyChainsRequest(
            checkpoints=_held_checkpoints(ns.checkpoint)))
    finally:
        close()
    if ns.json:
        print(_json(resp))
    for chain in resp.chains:
        if ns.json:
            continue
        if chain.ok:
            print(f"{chain.name}: ok, {chain.entries} entries, head #{chain.head_sequence} "
                  f"{chain.head_hash}")
        else:
            print(f"{chain.name}: BROKEN at entry #{chain.broken_sequence}"
                  f"{' (' + chain.broken_id + ')' if chain.broken_id else ''}: "
                  f"{chain.problem}")
    return 0 if all(c.ok for c in resp.chains) else 1


_COLUMNS = ("time", "decision_id", "decision", "reason", "purpose", "data_category",
            "jurisdiction", "regime", "caller", "legal_basis", "matched_rule",
            "policy_version", "subject_pseudonym", "trace_id")


def _row(r: audit_pb2.DecisionRecord) -> dict[str, str]:
    d = {c: str(getattr(r, c)) for c in _COLUMNS}
    d["time"] = _when(r.time)
    d["decision"] = _decision_name(r.decision)
    return d


def cmd_query(ns: argparse.Namespace) -> int:
    port, close = _port(ns)
    req = audit_pb2.QueryDecisionsRequest(
        subject_id=ns.subject or "", purpose=ns.purpose or "", data_category=ns.category or "",
        decision=(_DECISIONS[ns.decision] if ns.decision else
                  decision_pb2.DECISION_UNSPECIFIED), reason=ns.reason or "",
        caller=ns.caller or "", page_size=min(ns.limit, 1000))
    for field, text in (("start_time", ns.since), ("end_time", ns.until)):
        if text:
            value = datetime.fromisoformat(text)
            getattr(req, field).FromDatetime(
                (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC))
    found: list[audit_pb2.DecisionRecord] = []
    try:
        while len(found) < ns.limit:
            resp = port.QueryDecisions(req)
            found.extend(resp.decisions)
            if not resp.next_page_token:
                break
            req.page_token = resp.next_page_token
    finally:
        close()
    found = found[:ns.limit]
    fmt = "jsonl" if ns.json else ns.format
    if fmt == "jsonl":
        for r in found:
            print(json.dumps(json_format.MessageToDict(r, preserving_proto_field_name=True),
                             sort_keys=True))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(_COLUMNS))
        writer.writeheader()
        writer.writerows(_row(r) for r in found)
        sys.stdout.write(out.getvalue())
    else:
        if not found:
            print("no decisions")
        for r in found:
            row = _row(r)
            print(f"{row['time']}  {row['decision_id']}  {row['decision']:<5} "
                  f"{row['reason']:<26} {row['purpose']} / {row['data_category']}  "
                  f"{row['jurisdiction'] or '-'}->{row['regime']}  {row['caller']}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from .auditing import render_html, report_dict
    from .server.convert import subject_report_from

    port, close = _port(ns)
    try:
        resp = port.GetSubjectReport(audit_pb2.GetSubjectReportRequest(subject_id=ns.subject))
    finally:
        close()
    report = subject_report_from(resp)
    text = (render_html(report) if ns.format == "html"
            else json.dumps(report_dict(report), indent=2) + "\n")
    emit(text, ns.output)
    return 0


def emit(text: str, output: str | None) -> None:
    """Write a rendered document to a file (and say so) or to stdout."""
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="a running server (default "
                   f"{cfg.DEFAULT_TARGET}, or ${cfg.ENV_PREFIX}TARGET)")
    p.add_argument("--data-dir", help="work offline on this data dir (or a copy), read-only")
    p.add_argument("--pseudonym-key-file", help="with --data-dir: the HMAC key ring "
                   "(default DATA_DIR/keys/pseudonym.key)")
    p.add_argument("--ledger", metavar="URL", help="with --data-dir: the postgresql:// "
                   "ledger the server used (default: DATA_DIR/ledger.db)")
    p.add_argument("--master-key-file", help="with --data-dir: the master key ring, to read "
                   "sealed evidence (default DATA_DIR/keys/master.key when present)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    cli_channel.add_flags(p)


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify, query, show, replay the decision log")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="check the hash chains (exit 1 when broken)")
    verify.add_argument("--checkpoint", action="append", metavar="FILE",
                        help="checkpoints held by a third party (JSON lines); each must "
                        "still be in the chain")
    _source(verify)
    verify.set_defaults(run=cmd_verify)
    cp = asub.add_parser("checkpoint", help="the decision log's head, for a third party "
                         "to hold (one JSON line)")
    cp.add_argument("--append", metavar="FILE", help="append to this checkpoint file")
    _source(cp)
    cp.set_defaults(run=cmd_checkpoint)
    show = asub.add_parser("show", help="the whole story of one decision")
    show.add_argument("decision_id")
    _source(show)
    show.set_defaults(run=cmd_show)
    replay = asub.add_parser("replay", help="re-evaluate with the policy and consent state "
                             "it used (exit 1 when it differs)")
    replay.add_argument("decision_id")
    _source(replay)
    replay.set_defaults(run=cmd_replay)
    query = asub.add_parser("query", help="find decisions (newest first)")
    query.add_argument("--subject", help="raw subject id (pseudonymised on the way in)")
    query.add_argument("--purpose")
    query.add_argument("--category")
    query.add_argument("--decision", choices=list(_DECISIONS))
    query.add_argument("--reason")
    query.add_argument("--caller")
    query.add_argument("--since", help="ISO 8601 time")
    query.add_argument("--until", help="ISO 8601 time")
    query.add_argument("--limit", type=int, default=50)
    query.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")
    _source(query)
    query.set_defaults(run=cmd_query)
    report = asub.add_parser("report", help="subject access report (GDPR Art. 15)")
    report.add_argument("--subject", required=True)
    report.add_argument("--format", choices=["json", "html"], default="json")
    report.add_argument("--output", metavar="FILE")
    _source(report)
    report.set_defaults(run=cmd_report)
