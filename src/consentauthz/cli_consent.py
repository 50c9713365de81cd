"""`consentauthz consent ...`: record and read consent through a running server (grant,
withdraw, object, opt-out, opt-in, limit-sensitive, subject, show, history) and a
subject's Art. 15/20 export, streamed (ExportSubjectStream), so its size is never limited
by one message."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from .cli_output import enum_name, to_json
from .v1 import consent_pb2

_ACTIONS = {
    "grant": consent_pb2.CONSENT_ACTION_GRANT,
    "withdraw": consent_pb2.CONSENT_ACTION_WITHDRAW,
    "object": consent_pb2.CONSENT_ACTION_OBJECT,
    "opt-out": consent_pb2.CONSENT_ACTION_OPT_OUT_OF_SALE,
    "opt-in": consent_pb2.CONSENT_ACTION_OPT_IN_TO_SALE,
    "limit-sensitive": consent_pb2.CONSENT_ACTION_LIMIT_SENSITIVE,
}
_METHODS = {
    "affirmative": consent_pb2.COLLECTION_METHOD_AFFIRMATIVE,
    "pre-ticked": consent_pb2.COLLECTION_METHOD_PRE_TICKED,
    "implied": consent_pb2.COLLECTION_METHOD_IMPLIED,
    "parental": consent_pb2.COLLECTION_METHOD_PARENTAL,
}


def _ts(text: str | None) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def _print_record(r: consent_pb2.ConsentRecord) -> None:
    action = enum_name(consent_pb2.ConsentAction, r.action, "CONSENT_ACTION_")
    method = enum_name(consent_pb2.CollectionMethod, r.method, "COLLECTION_METHOD_")
    cats = ",".join(r.data_categories) or "*"
    expires = r.expires_at.ToDatetime(tzinfo=UTC).isoformat() if r.HasField("expires_at") \
        else "-"
    print(f"  #{r.consistency_token:<6} {action:<16} {r.purpose or '*'} [{cats}] "
          f"{method.lower()}{' explicit' if r.explicit else ''} "
          f"collected {r.collected_at.ToDatetime(tzinfo=UTC).isoformat()} expires {expires} "
          f"notice {r.notice_version or '-'} source {r.source or '-'} id {r.record_id}")


def cmd_consent_write(client: Any, ns: argparse.Namespace) -> int:
    evidence = {}
    for item in ns.evidence or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--evidence takes KEY=VALUE, got {item!r}")
        evidence[key] = value
    req = consent_pb2.RecordConsentRequest(
        subject_id=ns.subject, purpose=ns.purpose or "", data_categories=ns.category or [],
        action=_ACTIONS[ns.action], explicit=ns.explicit,
        jurisdiction=ns.jurisdiction or "", source=ns.source or "",
        notice_version=ns.notice_version or "",
        method=(_METHODS[ns.method] if ns.method
                else consent_pb2.COLLECTION_METHOD_UNSPECIFIED), evidence=evidence,
        idempotency_key=ns.idempotency_key or "",
        collected_at=_ts(ns.collected_at), expires_at=_ts(ns.expires_at))
    resp = client.consent.RecordConsent(req)
    if ns.json:
        print(to_json(resp))
    else:
        print(f"recorded {ns.action} as {resp.record_id}; "
              f"consistency token {resp.consistency_token}")
    return 0


def cmd_subject(client: Any, ns: argparse.Namespace) -> int:
    resp = client.consent.UpsertSubject(consent_pb2.UpsertSubjectRequest(
        subject_id=ns.subject, jurisdiction=ns.jurisdiction or "",
        birth_date=ns.birth_date or ""))
    print(to_json(resp) if ns.json else
          f"subject updated; consistency token {resp.consistency_token}")
    return 0


def cmd_show(client: Any, ns: argparse.Namespace) -> int:
    resp = client.consent.GetConsentState(consent_pb2.GetConsentStateRequest(
        subject_id=ns.subject))
    if ns.json:
        print(to_json(resp))
        return 0
    print(f"jurisdiction {resp.jurisdiction or '(none)'}, birth date "
          f"{resp.birth_date or '(unknown)'}, as of token {resp.consistency_token}")
    if not resp.records:
        print("  no consent records")
    for r in resp.records:
        _print_record(r)
    return 0


def cmd_history(client: Any, ns: argparse.Namespace) -> int:
    token, events = "", []
    while True:
        resp = client.consent.ListConsentEvents(consent_pb2.ListConsentEventsRequest(
            subject_id=ns.subject, page_size=500, page_token=token))
        events.extend(resp.events)
        token = resp.next_page_token
        if not token:
            break
    if ns.json:
        print(json.dumps([json_format.MessageToDict(e, preserving_proto_field_name=True)
                          for e in events], indent=2))
        return 0
    if not events:
        print("no consent events")
    for e in events:
        _print_record(e)
    return 0


def cmd_export(client: Any, ns: argparse.Namespace) -> int:
    chunks = client.consent.ExportSubjectStream(
        consent_pb2.ExportSubjectRequest(subject_id=ns.subject))
    if not ns.output:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk.data)
        sys.stdout.buffer.flush()
        return 0
    target = Path(ns.output)
    # Personal data: this user's only, and never a partial file under the final name.
    partial = target.with_name(f".{target.name}.partial")
    size = 0
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk.data)
                size += len(chunk.data)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    print(f"wrote {size:,} bytes to {target}", file=sys.stderr)
    return 0


def register(sub: Any, common_client: Callable[[argparse.ArgumentParser], None]) -> None:
    consent = sub.add_parser("consent", help="record and read consent")
    csub = consent.add_subparsers(dest="consent_command", required=True)
    for action in _ACTIONS:
        w = csub.add_parser(action, help=f"record a {action}")
        w.add_argument("--subject", required=True)
        w.add_argument("--purpose", required=action in ("grant", "withdraw", "object"))
        w.add_argument("--category", action="append", help="data category (repeatable; "
                       "none = all)")
        w.add_argument("--jurisdiction")
        w.add_argument("--source", default="cli", help="collecting channel (default cli)")
        w.add_argument("--notice-version", help="which notice text the person saw")
        w.add_argument("--collected-at", help="ISO 8601 time (default now)")
        w.add_argument("--idempotency-key")
        w.add_argument("--evidence", action="append", metavar="KEY=VALUE")
        if action in ("grant", "opt-in"):
            w.add_argument("--method", choices=list(_METHODS), default="affirmative")
            w.add_argument("--explicit", action="store_true")
            w.add_argument("--expires-at", help="ISO 8601 time")
        else:
            w.set_defaults(method=None, explicit=False, expires_at=None)
        common_client(w)
        w.set_defaults(client=cmd_consent_write, action=action)
    subj = csub.add_parser("subject", help="record the subject's jurisdiction and birth date")
    subj.add_argument("--subject", required=True)
    subj.add_argument("--jurisdiction")
    subj.add_argument("--birth-date", help="YYYY-MM-DD")
    common_client(subj)
    subj.set_defaults(client=cmd_subject)
    show = csub.add_parser("show", help="the consent records in effect")
    show.add_argument("--subject", required=True)
    common_client(show)
    show.set_defaults(client=cmd_show)
    hist = csub.add_parser("history", help="every consent event (the proof)")
    hist.add_argument("--subject", required=True)
    common_client(hist)
    hist.set_defaults(client=cmd_history)
    export = csub.add_parser(
        "export", help="everything held on a subject (GDPR Art. 15/20), as JSON",
        epilog="example: consentauthz consent export --subject alice@example.com "
               "--output alice.json")
    export.add_argument("--subject", required=True)
    export.add_argument("--output", metavar="FILE", help="write here (mode 0600) instead "
                        "of standard output")
    common_client(export)
    export.set_defaults(client=cmd_export)
