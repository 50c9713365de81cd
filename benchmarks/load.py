"""Load generators: one caller in a loop, or N concurrent callers (one thread and one
connection each), with per-call latencies from time.perf_counter_ns.

Each caller gets a channel of its own (a local subchannel pool: its own HTTP/2
connection), as separate client processes would have. Requests are built before the clock
starts, so the client's own work is the same for the floor and for consentauthz.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import grpc

from consentauthz.v1 import consent_pb2, decision_pb2

from .subjects import ARCHETYPES, REQUESTS, subject_id

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
TIMEOUT = 30.0


def channel(target: str) -> grpc.Channel:
    ch = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=20)
    return ch


def check_request(i: int, k: int = 0, token: str = "") -> decision_pb2.CheckRequest:
    """A Check for subject i: one of REQUESTS, under the subject's own jurisdiction."""
    purpose, category = REQUESTS[(i + k) % len(REQUESTS)]
    return decision_pb2.CheckRequest(
        subject_id=subject_id(i), purpose=purpose, data_category=category,
        jurisdiction=ARCHETYPES[i % len(ARCHETYPES)].jurisdiction, consistency_token=token)


def check_requests(subjects: Sequence[int], n: int) -> list[decision_pb2.CheckRequest]:
    return [check_request(subjects[j % len(subjects)], j // len(subjects)) for j in range(n)]


def batch_request(subjects: Sequence[int], size: int, offset: int = 0
                  ) -> decision_pb2.BatchCheckRequest:
    return decision_pb2.BatchCheckRequest(items=[
        check_request(subjects[(offset + j) % len(subjects)], offset + j) for j in range(size)])


def grant_request(subject: str, n: int = 0) -> consent_pb2.RecordConsentRequest:
    purposes = ("marketing.communications.email", "analytics", "personalize.content",
                "train_ai_system")
    return consent_pb2.RecordConsentRequest(
        subject_id=subject, purpose=purposes[n % len(purposes)],
        data_categories=["user.contact.email"] if n % 2 == 0 else [],
        action=consent_pb2.CONSENT_ACTION_GRANT,
        method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, source="web-form",
        notice_version="2026-01",
        evidence={"ip": "203.0.113.7", "form": "signup-v3", "user_agent": "Mozilla/5.0"})


@dataclass
class Run:
    """Per-call latencies (ns) and how long the calls took in all."""

    latencies: list[int] = field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0
    items: int = 0  # decisions, for batches
    errors: int = 0
    #: CPU seconds the server process used meanwhile (user + system, all its threads)
    cpu: float = 0.0

    def merge(self, other: Run) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.calls += other.calls
        self.items += other.items
        self.errors += other.errors
        self.cpu += other.cpu

    @property
    def cpu_per_call_ms(self) -> float:
        return 1000 * self.cpu / self.calls if self.calls else float("nan")

    def quantile(self, q: float) -> float:
        """In milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    @property
    def p50(self) -> float:
        return self.quantile(0.50)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def item_rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def sequential(call: Callable[[Any], Any], requests: Sequence[Any], items: int = 1) -> Run:
    """One caller, one call after the other, each request once."""
    run = Run()
    perf = time.perf_counter_ns
    started = perf()
    for req in requests:
        t = perf()
        call(req)
        run.latencies.append(perf() - t)
    run.seconds = (perf() - started) / 1e9
    run.calls = len(requests)
    run.items = run.calls * items
    return run


def for_seconds(call: Callable[[Any], Any], requests: Sequence[Any], seconds: float,
                items: int = 1) -> Run:
    """One caller cycling through `requests` for `seconds`."""
    run = Run()
    perf = time.perf_counter_ns
    started = perf()
    stop = started + int(seconds * 1e9)
    for req in cycle(requests):
        t = perf()
        if t >= stop:
            break
        call(req)
        run.latencies.append(perf() - t)
    run.seconds = (perf() - started) / 1e9
    run.calls = len(run.latencies)
    run.items = run.calls * items
    return run


def concurrent(calls: Sequence[Callable[[Any], Any]], requests: Sequence[Sequence[Any]],
               seconds: float, items: int = 1) -> Run:
    """len(calls) callers, caller k cycling through requests[k], for `seconds`."""
    n = len(calls)
    runs = [Run() for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    stop = [0]

    def caller(k: int) -> None:
        call, mine, run = calls[k], cycle(requests[k]), runs[k]
        lat = run.latencies
        perf = time.perf_counter_ns
        barrier.wait()
        while True:
            t = perf()
            if t >= stop[0]:
                break
            try:
                call(next(mine))
            except grpc.RpcError:
                run.errors += 1
                continue
            lat.append(perf() - t)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    started = time.perf_counter_ns()
    stop[0] = started + int(seconds * 1e9)
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = (time.perf_counter_ns() - started) / 1e9
    total = Run(seconds=elapsed)
    for r in runs:
        total.latencies += r.latencies
        total.errors += r.errors
    total.calls = len(total.latencies)
    total.items = total.calls * items
    return total


def alternate(calls: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]], n: int
              ) -> dict[str, Run]:
    """One caller, one call of each kind in turn (the order rotating), n calls per kind:
    the finest interleaving, so that a noisy neighbour slows every kind alike."""
    names = list(calls)
    runs = {name: Run() for name in names}
    perf = time.perf_counter_ns
    for j in range(n):
        k = j % len(names)
        for name in names[k:] + names[:k]:
            call, reqs = calls[name]
            t = perf()
            call(reqs[j % len(reqs)])
            dt = perf() - t
            run = runs[name]
            run.latencies.append(dt)
            run.seconds += dt / 1e9
            run.calls += 1
            run.items += 1
    return runs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all threads)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def on(pid: int, block: Callable[[int], Run]) -> Callable[[int], Run]:
    """`block`, also counting the CPU time process `pid` used while it ran."""
    def run(r: int) -> Run:
        before = cpu_seconds(pid)
        out = block(r)
        out.cpu = cpu_seconds(pid) - before
        return out
    return run


def interleave(rounds: int, blocks: dict[str, Callable[[int], Run]]) -> dict[str, Run]:
    """Run each block once per round, rotating their order every round, so that drift on
    a noisy machine falls on every target alike. Returns the merged runs."""
    names = list(blocks)
    out = {name: Run() for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out[name].merge(blocks[name](r))
    return out


def chunks(seq: Sequence[Any], parts: int) -> Iterator[Sequence[Any]]:
    size = max(1, len(seq) // parts)
    for k in range(parts):
        yield seq[k * size:(k + 1) * size]
