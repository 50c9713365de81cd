"""Scaling past one core: warm Check throughput with 1, 2 and 3 `serve --reuse-port`
processes on one port, all on the same PostgreSQL ledger and the same Redis.

Each process count is a group of its own (its own port, its own processes), all started
up front, so that the groups can be measured in interleaved rounds like every other
comparison of the suite, the one-process group being the baseline. The clients run in
separate load-generator processes (benchmarks/loadgen.py), one channel (one connection)
per client thread.

SO_REUSEPORT hands each new connection to one of the listening processes by a hash of its
addresses, so a handful of long-lived connections is often split unevenly (8 connections
over 2 processes: 4/4 only about a quarter of the time). The benchmark measures what the
processes can serve, not the luck of the hash: it opens connections one by one, sees from
the processes' decision logs which process took each (the probe Check is logged before it
is answered), and keeps those that give every process its share (8 clients over 3
processes: 3/3/2). Then each process is warmed through one of its connections: every
subject of the warm set is in every process's local cache before the clock starts.

CPU time is read from /proc for every server and load-generator process and for the whole
machine (/proc/stat), over each measured window, so the table can say how the cores were
split.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.redis_server import free_port

from . import load
from .services import ROOT, Server, start_serve


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores; /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class LoadGenerator:
    """One `python -m benchmarks.loadgen` process, spoken to one JSON line at a time."""

    def __init__(self, timeout: float = 120) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        timer = threading.Timer(self.timeout, self.proc.kill)  # never wait forever
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise RuntimeError(f"load generator {self.pid} exited ({self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.receive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Group:
    """`processes` serve processes on one port."""

    processes: int
    port: int
    servers: list[Server] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    #: per load generator: (channel id, index of the server process it reached)
    channels: list[list[tuple[int, int]]] = field(default_factory=list)
    #: connections opened to get there (the others were closed again)
    opened: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answered(self) -> list[int]:
        """Decisions each process has logged (its decisions.db, read-only)."""
        out = []
        for path in self.logs:
            if not path.exists():  # nothing logged yet
                out.append(0)
                continue
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
                out.append(int(db.execute("SELECT coalesce(max(seq), 0) FROM decisions")
                               .fetchone()[0]))
        return out


@dataclass
class Measured:
    """A group's interleaved rounds, merged."""

    run: load.Run = field(default_factory=load.Run)
    wall: float = 0.0
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    machine_cpu: float = 0.0
    answered: list[int] = field(default_factory=list)
    #: connections opened to give every process its share of the clients
    opened: int = 0

    def cores(self, cpu: float) -> float:
        return cpu / self.wall if self.wall else float("nan")

    @property
    def split(self) -> list[float]:
        total = sum(self.answered)
        return [100 * a / total if total else float("nan") for a in self.answered]

    def summary(self) -> dict[str, Any]:
        r = self.run
        return {"calls_per_s": r.rate, "p50_ms": r.p50, "p99_ms": r.p99, "calls": r.calls,
                "seconds": r.seconds, "errors": r.errors, "wall_s": self.wall,
                "server_cores": [self.cores(c) for c in self.server_cpu],
                "load_generator_cores": self.cores(self.client_cpu),
                "machine_cores": self.cores(self.machine_cpu),
                "answered_per_process": self.answered, "connections_opened": self.opened}


def start_groups(processes: Sequence[int], workdir: Path, ledger: str, redis_url: str
                 ) -> dict[int, Group]:
    """A group of n processes on a port of its own for each n; all processes start side by
    side (start-up is mostly CPU, and they would otherwise take turns)."""
    groups = {n: Group(n, free_port()) for n in processes}
    jobs = []
    for n, group in groups.items():
        for k in range(n):
            data = workdir / f"data-scale-{n}-{k}"
            shutil.rmtree(data, ignore_errors=True)
            group.logs.append(data / "decisions.db")
            jobs.append((group, k, data))

    def start(job: tuple[Group, int, Path]) -> Server:
        group, k, data = job
        return start_serve(f"scale-{group.processes}-{k}", data, ledger=ledger,
                           redis_url=redis_url, listen=group.target, extra=["--reuse-port"])

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [(job[0], pool.submit(start, job)) for job in jobs]
        # Every start is waited for, so that none is left running if another fails.
        errors = []
        for group, future in futures:
            try:
                group.servers.append(future.result())
            except Exception as exc:  # re-raised below, once all are accounted for
                errors.append(exc)
    if errors:
        for group in groups.values():
            for server in group.servers:
                server.stop()
        raise errors[0]
    return groups


def connect(group: Group, gens: Sequence[LoadGenerator], clients: int) -> None:
    """Give client k a connection to process k mod n: open channels one at a time, see
    which process logged the probe, keep or close it."""
    per_gen = clients // len(gens)
    group.channels = []
    for g, gen in enumerate(gens):
        needed = Counter(k % group.processes for k in range(g * per_gen, (g + 1) * per_gen))
        kept: list[tuple[int, int]] = []
        attempts = 0
        while needed:
            attempts += 1
            group.opened += 1
            if attempts > 40 * per_gen:
                raise RuntimeError(f"SO_REUSEPORT did not spread connections over "
                                   f"{group.processes} processes: still need {dict(needed)}")
            before = group.answered()
            cid = int(gen.call("open", target=group.target)["channel"])
            after = group.answered()
            took = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a != b]
            if len(took) == 1 and needed[took[0]]:
                kept.append((cid, took[0]))
                needed[took[0]] -= 1
                if not needed[took[0]]:
                    del needed[took[0]]
            else:
                gen.call("close", channel=cid)
        group.channels.append(kept)


def warm(groups: Sequence[Group], gens: Sequence[LoadGenerator], subjects: Sequence[int]
         ) -> None:
    """Every subject once through one connection to each process, all processes at once."""
    chosen: dict[int, list[int]] = {g: [] for g in range(len(gens))}
    for group in groups:
        done: set[int] = set()
        for g, kept in enumerate(group.channels):
            for cid, server in kept:
                if server not in done:
                    done.add(server)
                    chosen[g].append(cid)
    busy = [g for g, ids in chosen.items() if ids]
    for g in busy:
        gens[g].send("warm", channels=chosen[g], subjects=list(subjects))
    for g in busy:
        gens[g].receive()


def measure(group: Group, gens: Sequence[LoadGenerator], subjects: Sequence[int],
            seconds: float, into: Measured) -> None:
    """One round: every load generator runs its clients for `seconds`, simultaneously."""
    pids = [s.pid for s in group.servers]
    gen_pids = [g.pid for g in gens]
    server_before = [load.cpu_seconds(p) for p in pids]
    client_before = sum(load.cpu_seconds(p) for p in gen_pids)
    machine_before = machine_busy()
    started = time.perf_counter()
    for g, gen in enumerate(gens):
        # Each generator cycles over its own half of the warm set.
        gen.send("run", channels=[cid for cid, _ in group.channels[g]],
                 subjects=list(subjects[g::len(gens)]), seconds=seconds)
    answers = [gen.receive() for gen in gens]
    wall = time.perf_counter() - started
    into.machine_cpu += machine_busy() - machine_before
    into.client_cpu += sum(load.cpu_seconds(p) for p in gen_pids) - client_before
    server_cpu = [load.cpu_seconds(p) - b for p, b in zip(pids, server_before, strict=True)]
    into.server_cpu = [a + b for a, b in
                       zip(into.server_cpu or [0.0] * len(pids), server_cpu, strict=True)]
    into.wall += wall
    into.run.seconds += max(a["seconds"] for a in answers)
    for a in answers:
        into.run.latencies += a["latencies"]
        into.run.errors += a["errors"]
    into.run.calls = len(into.run.latencies)
    into.run.items = into.run.calls


def redis_reads(client: redis.Redis) -> int:
    info = client.info("stats")
    return int(info["keyspace_hits"]) + int(info["keyspace_misses"])


def run(processes: Sequence[int], clients: int, generators: int, subjects: Sequence[int],
        rounds: int, seconds: float, workdir: Path, ledger: str, redis_url: str,
        log: Callable[[str], None]) -> tuple[dict[int, Measured], int]:
    """The measured groups, and the Redis reads made while they were measured (0 when
    every Check was answered from the processes' local caches)."""
    groups: dict[int, Group] = {}
    gens: list[LoadGenerator] = []
    try:
        log(f"scaling: starting {sum(processes)} serve --reuse-port processes "
            f"({' + '.join(map(str, processes))} on {len(processes)} ports)")
        groups = start_groups(processes, workdir, ledger, redis_url)
        gens = [LoadGenerator() for _ in range(generators)]
        log(f"scaling: connecting {clients} clients per group from {generators} load "
            f"generator processes, warming every process with {len(subjects):,} subjects")
        for group in groups.values():
            connect(group, gens, clients)
        warm(list(groups.values()), gens, subjects)
        out = {n: Measured() for n in processes}
        before = {n: g.answered() for n, g in groups.items()}
        log(f"scaling: {rounds} interleaved rounds x {seconds} s per process count")
        order = list(processes)
        with closing(redis.Redis.from_url(redis_url)) as client:
            reads = redis_reads(client)
            for r in range(rounds):
                for n in order[r % len(order):] + order[:r % len(order)]:
                    measure(groups[n], gens, subjects, seconds, out[n])
            reads = redis_reads(client) - reads
        for n, g in groups.items():
            out[n].answered = [a - b for a, b in zip(g.answered(), before[n], strict=True)]
            out[n].opened = g.opened
        return out, reads
    finally:
        for gen in gens:
            gen.stop()
        servers = [s for g in groups.values() for s in g.servers]
        if servers:
            with ThreadPoolExecutor(len(servers)) as pool:
                list(pool.map(lambda s: s.stop(), servers))
