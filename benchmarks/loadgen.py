"""A load-generator process for the scaling scenario (benchmarks/scaling.py).

The clients of `serve --reuse-port` processes run in processes of their own, so that the
load generator's GIL is not the servers' and its CPU time can be told apart from theirs.
Each channel is one HTTP/2 connection (a local subchannel pool), and SO_REUSEPORT hands a
whole connection to one server process, so the parent opens channels one at a time and
keeps those that landed where it needs them.

Driven over stdin/stdout, one JSON object per line, one answer per command:

    {"op": "open", "target": T}         -> {"channel": n}: a new one, after one Check on it
                                           (so the process that took the connection has
                                           answered, and logged, once)
    {"op": "close", "channel": n}       -> {}
    {"op": "warm", "channels": [...], "subjects": [...]}
                                        -> {"calls": n}: each subject once on each channel
    {"op": "run", "channels": [...], "subjects": [...], "seconds": s}
                                        -> {"latencies": [ns, ...], "seconds", "errors"}:
                                           one thread per channel, load.concurrent
    {"op": "quit"}                      -> exits
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from consentauthz.v1 import decision_pb2_grpc

from . import load


class Generator:
    def __init__(self) -> None:
        self.channels: dict[int, grpc.Channel] = {}
        self.checks: dict[int, Callable[[Any], Any]] = {}
        self.requests: dict[tuple[int, ...], list[Sequence[Any]]] = {}
        self.opened = 0

    def open(self, target: str) -> dict[str, Any]:
        ch = load.channel(target)
        stub = decision_pb2_grpc.DecisionServiceStub(ch)
        n = self.opened
        self.opened += 1
        self.channels[n] = ch
        self.checks[n] = lambda r, stub=stub: stub.Check(r, timeout=load.TIMEOUT)
        self.checks[n](load.check_request(0))
        return {"channel": n}

    def close(self, channel: int) -> dict[str, Any]:
        self.channels.pop(channel).close()
        del self.checks[channel]
        return {}

    def warm(self, channels: Sequence[int], subjects: Sequence[int]) -> dict[str, Any]:
        reqs = [load.check_request(i) for i in subjects]
        def each(n: int) -> None:
            for r in reqs:
                self.checks[n](r)

        threads = [threading.Thread(target=each, args=(n,)) for n in channels]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"calls": len(reqs) * len(channels)}

    def run(self, channels: Sequence[int], subjects: Sequence[int], seconds: float
            ) -> dict[str, Any]:
        key = tuple(channels)
        if key not in self.requests:  # built once, before any clock starts
            reqs = load.check_requests(subjects, 500 * len(channels))
            self.requests[key] = list(load.chunks(reqs, len(channels)))
        run = load.concurrent([self.checks[n] for n in channels], self.requests[key],
                              seconds)
        return {"latencies": run.latencies, "seconds": run.seconds, "errors": run.errors}


def main() -> int:
    gen = Generator()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        out = getattr(gen, op)(**cmd)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    for ch in gen.channels.values():
        ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
