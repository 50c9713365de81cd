"""`consentauthz consent export`: a subject's Art. 15/20 export from a running server,
streamed (ExportSubjectStream), so its size is never limited by one message. (The other
`consent` commands are still in cli.py; new ones of the group go here.)"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .v1 import consent_pb2


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


def register(csub: Any, common_client: Callable[[argparse.ArgumentParser], None]) -> None:
    export = csub.add_parser(
        "export", help="everything held on a subject (GDPR Art. 15/20), as JSON",
        epilog="example: consentauthz consent export --subject alice@example.com "
               "--output alice.json")
    export.add_argument("--subject", required=True)
    export.add_argument("--output", metavar="FILE", help="write here (mode 0600) instead "
                        "of standard output")
    common_client(export)
    export.set_defaults(client=cmd_export)
