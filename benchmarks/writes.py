"""Consent writes against a PostgreSQL ledger of one partition and of many, side by side
in the same run (issue 19; docs/performance.md, "Consent writes at scale").

Two real `consentauthz serve` processes, each on a fresh database of its own on the local
PostgreSQL (one made with `--ledger-partitions 1`, which is how a ledger from before
partitions is opened, the other with the default), no Redis (the ledger is what is
measured). For each number of clients the two are measured in interleaved rounds, so the
machine's noise falls on both alike. Every client is a gRPC channel of its own in one
load-generator process; each writes grants with evidence (as forms send them) for
subjects of its own.

    python -m benchmarks.writes [--clients 1,8,32] [--seconds 3] [--rounds 2] [--bulk N]

`--bulk N` measures the batch path instead, in-process (ConsentService.record_batch, as
`consent import` and RecordSignal will call it): N new subjects' grants with evidence and
idempotency keys, in batches of 1,000, against a sealed PostgreSQL ledger of 16
partitions, and beside it the same writes one by one (`record`, as RecordConsent does).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import load
from .scaling import machine_busy
from .services import RedisProcess, start_serve
from .subjects import create_database, drop_database

#: name -> (partitions, with a Redis): the design before partitions, the partitioned one,
#: and the partitioned one with the shared cache a deployment of replicas has (its writes
#: hold the partition's order across the write-through: two more round trips).
DESIGNS = {"1 partition": ("1", False), "16 partitions": ("16", False),
           "16 partitions + Redis": ("16", True)}


def measure(target: str, pid: int, clients: int, seconds: float, run_id: str
            ) -> tuple[load.Run, float]:
    """The run (its `cpu`: the server's CPU seconds) and the machine's busy CPU seconds
    meanwhile (all cores: server, PostgreSQL and the load generator)."""
    from .run import Stubs  # run imports this module

    stubs = Stubs.open(target, clients)
    try:
        parts = [[load.grant_request(f"w-{run_id}-{c}-{k}", k) for k in range(200)]
                 for c in range(clients)]
        cpu, busy = load.cpu_seconds(pid), machine_busy()
        run = load.concurrent(stubs.record, parts, seconds)
        run.cpu = load.cpu_seconds(pid) - cpu
        return run, machine_busy() - busy
    finally:
        stubs.close()


def bulk(n: int, size: int = 1000) -> tuple[float, float, float]:
    """Events/s through ConsentService.record_batch and one by one, in-process: (one by
    one, in batches recording one partition at a time, in batches as shipped: up to
    BATCH_WORKERS partitions at once), the two batch modes in interleaved rounds of n/4
    events each. Every figure writes new subjects of its own."""
    from datetime import UTC, datetime

    from consentauthz.config import shipped_policies
    from consentauthz.consent import ConsentService, LocalCache, PostgresLedger
    from consentauthz.consent.sealing import MasterKeys, PostgresKeyStore, Sealer, SealingLedger
    from consentauthz.consent.service import BATCH_WORKERS
    from consentauthz.domain import CollectionMethod, ConsentAction, ConsentWrite
    from consentauthz.policy import load_policy_set
    from consentauthz.pseudonym import Pseudonymizer

    taxonomy = load_policy_set(shipped_policies()).taxonomy
    name = f"ca_bench_bulk_{secrets.token_hex(4)}"
    url = create_database(name)
    try:
        ledger = SealingLedger(PostgresLedger(url, partitions=16),
                               Sealer(MasterKeys([("m1", b"m" * 32)]), PostgresKeyStore(url)))
        def service(workers: int) -> ConsentService:
            return ConsentService(ledger, LocalCache(10_000, watermark=ledger.heads()),
                                  Pseudonymizer(b"p" * 32), lambda: taxonomy,
                                  lambda: datetime.now(UTC), batch_workers=workers)

        svc = service(BATCH_WORKERS)  # for the writes one by one
        run = secrets.token_hex(3)

        def writes(kind: str, count: int) -> list[ConsentWrite]:
            return [ConsentWrite(
                f"{kind}-{run}-{i}@example.com", ConsentAction.GRANT,
                purpose="marketing.communications.email",
                data_categories=("user.contact.email",), method=CollectionMethod.AFFIRMATIVE,
                source="crm-import", notice_version="2026-01",
                idempotency_key=f"{kind}-{run}-{i}",
                evidence={"row": str(i), "file": "crm-export.csv"}) for i in range(count)]

        one = writes("single", max(n // 10, 200))
        started = time.perf_counter()
        for w in one:
            svc.record(w)
        single = len(one) / (time.perf_counter() - started)
        def batches(kind: str, svc: ConsentService, count: int) -> float:
            """Seconds to record `count` new subjects' grants in batches of `size`."""
            batch = writes(kind, count)
            started = time.perf_counter()
            for lo in range(0, count, size):
                svc.record_batch(batch[lo:lo + size])
            return time.perf_counter() - started

        # Interleaved rounds, each mode first in turn: the ledger grows as they run, and
        # this machine's load comes and goes.
        spent = {1: 0.0, BATCH_WORKERS: 0.0}
        rounds, per = 4, max(n // 4, size)
        for r in range(rounds):
            for workers in (1, BATCH_WORKERS) if r % 2 == 0 else (BATCH_WORKERS, 1):
                spent[workers] += batches(f"bulk{workers}-{r}", service(workers), per)
        serial, many = rounds * per / spent[1], rounds * per / spent[BATCH_WORKERS]
        assert ledger.verify().ok
        ledger.close()
        return single, serial, many
    finally:
        drop_database(name)


Measured = dict[tuple[str, int], tuple[load.Run, float]]


def side_by_side(clients: Sequence[int], seconds: float, rounds: int) -> Measured:
    """(design, clients) -> (the merged runs, the machine's busy CPU seconds), the designs
    measured in interleaved rounds against `serve` processes of their own."""
    names = {d: f"ca_bench_writes_{secrets.token_hex(4)}" for d in DESIGNS}
    servers = {}
    results: Measured = {}
    redis: RedisProcess | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k, (design, (partitions, shared)) in enumerate(DESIGNS.items()):
                url = create_database(names[design])
                if shared and redis is None:
                    redis = RedisProcess(Path(tmp) / "redis")
                servers[design] = start_serve(
                    design, Path(tmp) / str(k), ledger=url,
                    redis_url=redis.url if shared and redis is not None else None,
                    extra=["--ledger-partitions", partitions, "--workers", "64"])
            for n in clients:
                for r in range(rounds):
                    for design, server in servers.items():
                        run, spent = measure(server.target, server.pid, n, seconds,
                                             f"{r}-{secrets.token_hex(2)}")
                        merged, busy = results.get((design, n), (load.Run(), 0.0))
                        merged.merge(run)
                        results[(design, n)] = (merged, busy + spent)
                        print(f"  {design}, {n} clients, round {r + 1}: "
                              f"{run.rate:,.0f} writes/s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
        if redis is not None:
            redis.stop()
        for name in names.values():
            drop_database(name)
    return results


def describe(run: load.Run, busy: float) -> str:
    return (f"{run.rate:,.0f} writes/s, p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms, server "
            f"CPU {run.cpu_per_call_ms:.2f} ms/write, machine {busy / run.seconds:.1f} "
            "cores busy" + (f", {run.errors} errors" if run.errors else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writes")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bulk", type=int, default=0, metavar="N")
    parser.add_argument("--batch", type=int, default=1000, metavar="SIZE")
    ns = parser.parse_args(argv)
    if ns.bulk:
        single, serial, many = bulk(ns.bulk, ns.batch)
        print("| path | events/s |\n|---|---|")
        print(f"| one by one (`record`) | {single:,.0f} |")
        print(f"| batches of {ns.batch:,}, one partition at a time | {serial:,.0f} "
              f"({serial / single:.1f}x) |")
        print(f"| batches of {ns.batch:,} (`record_batch`, {ns.bulk:,} writes) | "
              f"{many:,.0f} ({many / single:.1f}x) |")
        return 0
    clients = [int(c) for c in ns.clients.split(",")]
    results = side_by_side(clients, ns.seconds, ns.rounds)
    print("| clients | " + " | ".join(DESIGNS) + " | 16 vs 1 partition |")
    print("|---|" + "---|" * (len(DESIGNS) + 1))
    for n in clients:
        cells = [describe(*results[(design, n)]) for design in DESIGNS]
        one, many = (results[(d, n)][0].rate for d in ("1 partition", "16 partitions"))
        print(f"| {n} | " + " | ".join(cells) + f" | {many / one:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
