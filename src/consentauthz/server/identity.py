"""Who is calling. With no callers configured (the embedded default on loopback) every
call is from `anonymous`; mTLS and bearer-token identities plug in here."""

from __future__ import annotations

import grpc

ANONYMOUS = "anonymous"


def caller_of(context: grpc.ServicerContext) -> str:
    del context  # no caller configuration yet: every call is anonymous
    return ANONYMOUS
