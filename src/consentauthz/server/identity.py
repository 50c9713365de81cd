"""Who is calling. The auth interceptor (auth.py) authenticates each call and binds the
caller's name for the duration of the handler; servicers read it with `caller_of`. With
no callers configured (the embedded default on loopback) every call is `anonymous`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import grpc

ANONYMOUS = "anonymous"

# A handler runs start to end on one worker thread, and the interceptor binds and resets
# the name around it on that thread, so a context variable carries it without touching
# the servicer context.
_CALLER: ContextVar[str] = ContextVar("consentauthz_caller", default=ANONYMOUS)


def caller_of(context: grpc.ServicerContext) -> str:
    """The authenticated caller of the call being handled (`anonymous` without callers)."""
    del context  # bound by the interceptor for this handler; see bound_caller
    return _CALLER.get()


@contextmanager
def bound_caller(name: str) -> Iterator[None]:
    token = _CALLER.set(name)
    try:
        yield
    finally:
        _CALLER.reset(token)
