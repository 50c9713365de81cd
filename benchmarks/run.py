"""`make bench` (python -m benchmarks): every scenario of issue 7 in one run, one table.

Order: synthetic packs -> the engine in-process against a plain casbin.Enforcer -> the
authoring gate step by step and `serve` start-up with the largest pack -> the Checker
in-process, with and without spans and the durable log (diagnosis) -> subject datasets
(loaded once, then reused) -> a redis-server and the no-op floor server of this run's own
-> for each dataset a real `consentauthz serve` on its PostgreSQL ledger and the Redis:
cold paths; on the large one also the warm Check and BatchCheck against the floor, py-spy
profiles, consent writes, a second replica, the decision-log variants and groups of 1, 2
and 3 `serve --reuse-port` processes on one port (benchmarks/scaling.py) -> the table on
stdout and (full runs only) in docs/performance.md between its markers; raw numbers in
var/bench/results.json. Every comparison runs in the same process run as its baseline,
alternating call by call or in interleaved rounds.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consentauthz.policy import load_policy_set
from consentauthz.v1 import consent_pb2, consent_pb2_grpc, decision_pb2, decision_pb2_grpc

from . import engine as eng
from . import inprocess as inproc
from . import load, packs, report, scaling, subjects, writes
from . import profile as prof
from .report import Row, met, ms, rate, us, x
from .services import ROOT, RedisProcess, Server, start_noop, start_serve, start_variant

POLICIES = ROOT / "policies"
SECTIONS = ("engine", "startup", "inprocess", "grpc", "writes")
WORK = ROOT / "var" / "bench"
DOC = ROOT / "docs" / "performance.md"


@dataclass(frozen=True)
class Plan:
    quick: bool
    pack_sizes: tuple[int, ...]
    casbin_samples: dict[str, int]
    engine_decisions: int
    gate_pack: int
    datasets: tuple[int, int]
    seq_rounds: int
    seq_per_round: int
    conc_rounds: int
    conc_seconds: float
    cold_samples: int
    batch_rounds: int
    write_calls: int
    write_seconds: float
    replica_trials: int
    log_rounds: int
    log_seconds: float
    profile_seconds: float
    warm_subjects: int = 2_000
    clients: int = 8
    #: serve --reuse-port processes per group (benchmarks/scaling.py); the first is the baseline
    scale_processes: tuple[int, ...] = (1, 2, 3)
    scale_rounds: int = 4
    scale_seconds: float = 2.0
    scale_subjects: int = 1_000
    scale_generators: int = 2
    #: calls per variant for the 1-client tracing comparison
    log_one_calls: int = 2_000


FULL = Plan(False, (100, 1_000, 10_000, 100_000),
            {"shipped": 300, "100": 300, "1000": 100, "10000": 10, "100000": 3},
            3_000, 100_000, (100_000, 1_000_000), 8, 500, 6, 1.5, 2_000, 4, 300, 4.0, 30,
            6, 1.5, 8.0)
QUICK = Plan(True, (100, 1_000, 10_000),
             {"shipped": 100, "100": 100, "1000": 30, "10000": 3},
             1_000, 1_000, (10_000, 50_000), 4, 250, 3, 0.75, 300, 2, 100, 1.5, 5,
             2, 0.75, 2.0, warm_subjects=500, scale_rounds=2, scale_seconds=1.0,
             scale_subjects=300, log_one_calls=300)


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src", "policies"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout.split()
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory": mem,
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(), "platform": platform.platform(),
        "commit": commit + (" (with uncommitted changes in src/ or policies/)" if dirty
                            else ""),
        "redis": next((w.split("=", 1)[1] for w in redis_v if w.startswith("v=")), ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@dataclass
class Results:
    plan: Plan
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, prof.Profile] = field(default_factory=dict)
    profile_error: str = ""
    notes: list[str] = field(default_factory=list)


# -- the engine, in-process -------------------------------------------------------------------

def run_engine(plan: Plan, res: Results) -> dict[int, packs.PackInfo]:
    log("generating synthetic packs")
    infos = {n: packs.generate_pack(WORK / "packs" / f"rules-{n}", n, POLICIES)
             for n in plan.pack_sizes}
    log("engine in-process: loading and compiling the shipped pack and the synthetic ones")
    prepared = [eng.prepare_pack("shipped pack", POLICIES, None, plan.engine_decisions)]
    keys = ["shipped"]
    for n, info in infos.items():
        prepared.append(eng.prepare_pack(f"{n:,} synthetic rules", info.path,
                                         list(info.probes), plan.engine_decisions))
        keys.append(str(n))
    log("engine in-process: warm decisions, all packs interleaved")
    eng.time_warm(prepared)
    results = []
    for key, p in zip(keys, prepared, strict=True):
        log(f"engine in-process: plain casbin.Enforcer on the {p.name}")
        results.append(eng.result_of(p, plan.casbin_samples.get(key, 0)))
    del prepared
    res.raw["engine"] = [asdict(r) for r in results]
    for r in results:
        res.rows.append(Row(
            "Engine, in-process", f"decision, warm: {r.pack} ({r.rules:,} rules, "
            f"{r.jurisdictions:,} jurisdictions)",
            f"p50 {us(r.p50_us)}, mean {us(r.mean_us)}, p99 {us(r.p99_us)}",
            f"plain casbin.Enforcer {ms(r.casbin_ms)} (n={r.casbin_samples})"
            if r.casbin_ms is not None else "",
            f"{x(r.casbin_ms * 1000 / r.p50_us)} faster" if r.casbin_ms else "",
            "≤ 10 µs", met(r.p50_us <= 10.0)))
    synthetic = [r for r in results if "synthetic" in r.pack]
    if len(synthetic) >= 2:
        lo, hi = synthetic[0], synthetic[-1]
        spread = hi.p50_us / lo.p50_us
        res.rows.append(Row(
            "Engine, in-process", f"flat in rules: {lo.rules:,} -> {hi.rules:,} rules",
            f"p50 {us(lo.p50_us)} -> {us(hi.p50_us)}", "", x(spread),
            "flat (≤ 1.5x)", met(spread <= 1.5)))
    at10k = next((r for r in results if r.rules >= 10_000 and r.casbin_ms), None)
    if at10k is not None:
        speedup = at10k.casbin_ms * 1000 / at10k.p50_us
        res.rows.append(Row(
            "Engine, in-process", f"vs plain casbin.Enforcer at {at10k.rules:,} rules",
            f"engine p50 {us(at10k.p50_us)}", f"Enforcer {ms(at10k.casbin_ms)}",
            x(speedup), "≥ 1,000x", met(speedup >= 1000)))
    disagree = [r.pack for r in results if r.agree is False]
    if disagree:
        res.notes.append(f"engine and plain casbin disagreed on some samples: {disagree}")
    cold = results[-1]
    res.rows.append(Row("Engine, in-process",
                        f"decision, first use of a key ({cold.rules:,} rules)",
                        f"p50 {us(cold.cold_p50_us)}", "", "", "", ""))
    shares = eng.profile_decide(POLICIES)
    res.raw["engine_profile"] = shares
    wanted = [(n, v) for n, v in shares if n.split(" ")[0] in
              ("derive_facts", "_describe", "first_match", "_explained", "subtree")]
    res.rows.append(Row("Engine, in-process", "where decide() spends its time (cProfile, "
                        "shipped pack, cumulative share)",
                        "; ".join(f"{n.split(' ')[0]} {v:.0f}%" for n, v in wanted),
                        "", "", "", ""))
    return infos


def run_startup(plan: Plan, res: Results, infos: dict[int, packs.PackInfo]) -> None:
    big = infos[plan.gate_pack]
    log(f"authoring gate, step by step, {plan.gate_pack:,} rules")
    gate = eng.gate_breakdown(big.path)
    res.raw["gate"] = asdict(gate)
    no_casbin = (f"; the same suites without the casbin cross-check "
                 f"{gate.suites_no_casbin_s:.2f} s" if gate.suites_no_casbin_s is not None
                 else "")
    res.rows.append(Row(
        "Start-up", f"authoring gate, {gate.rules:,} rules, {gate.cases} test cases",
        f"load {gate.load_s:.2f} s, compile {gate.compile_s:.2f} s, lint {gate.lint_s:.2f} s, "
        f"suites {gate.suites_s:.2f} s with the casbin cross-check on {gate.casbin_checked} of "
        f"{gate.cases} cases (the gate's budget; `policy test` checks all){no_casbin}",
        "", "", "", ""))
    ready: dict[str, tuple[float, float, float]] = {}
    for name, directory in (("shipped", POLICIES), (f"{plan.gate_pack:,}", big.path)):
        log(f"serve start-up with the {name} pack")
        data = WORK / f"data-ready-{name.replace(',', '')}"
        shutil.rmtree(data, ignore_errors=True)
        server = start_serve("ready", data, policies=directory, timeout=600)
        rss, hwm = server.rss()
        ready[name] = (server.ready_seconds, rss, hwm)
        server.stop()
    res.raw["ready"] = ready
    base_s, base_rss, _ = ready["shipped"]
    big_s, big_rss, big_hwm = ready[f"{plan.gate_pack:,}"]
    res.rows.append(Row(
        "Start-up", f"`serve` ready with {plan.gate_pack:,} rules (spawn -> serving)",
        f"{big_s:.1f} s", f"shipped pack {base_s:.1f} s", x(big_s / base_s), "≤ 3 s",
        met(big_s <= 3.0)))
    res.rows.append(Row(
        "Start-up", f"`serve` RSS with {plan.gate_pack:,} rules, ready",
        f"{big_rss:.0f} MB (peak during start-up {big_hwm:.0f} MB)",
        f"shipped pack {base_rss:.0f} MB", x(big_rss / base_rss),
        "≤ 300 MB", met(big_rss <= 300)))


def run_inprocess(plan: Plan, res: Results) -> None:
    log("Checker in-process: with and without spans and the durable log")
    data = WORK / "data-inprocess"
    shutil.rmtree(data, ignore_errors=True)
    r = inproc.bench_checker(data, POLICIES, 40 if plan.quick else 100,
                             1_000 if plan.quick else 3_000)
    res.raw["inprocess"] = {"variants": {k: [asdict(a), asdict(b)]
                                         for k, (a, b) in r.variants.items()},
                            "parts": {k: asdict(v) for k, v in r.parts.items()}}
    for name, (one, item) in r.variants.items():
        res.rows.append(Row("Checker in-process (diagnosis)", f"Checker, warm: {name}",
                            f"check p50 {us(one.p50_us)}; check_batch {us(item.mean_us)}/item",
                            "", "", "", ""))
    for name, t in r.parts.items():
        res.rows.append(Row("Checker in-process (diagnosis)", name, f"p50 {us(t.p50_us)}",
                            "", "", "", ""))


# -- the gRPC stack -----------------------------------------------------------------------------

@dataclass
class Stubs:
    target: str
    check: list[Callable[[Any], Any]]
    batch: list[Callable[[Any], Any]]
    record: list[Callable[[Any], Any]]
    channels: list[Any]

    @classmethod
    def open(cls, target: str, n: int) -> Stubs:
        check, batch, record, channels = [], [], [], []
        for _ in range(n):
            ch = load.channel(target)
            d = decision_pb2_grpc.DecisionServiceStub(ch)
            c = consent_pb2_grpc.ConsentServiceStub(ch)
            check.append(lambda r, d=d: d.Check(r, timeout=load.TIMEOUT))
            batch.append(lambda r, d=d: d.BatchCheck(r, timeout=load.TIMEOUT))
            record.append(lambda r, c=c: c.RecordConsent(r, timeout=load.TIMEOUT))
            channels.append(ch)
        return cls(target, check, batch, record, channels)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def warm_up(stubs: Stubs, subjects_: Sequence[int], clients: int) -> int:
    """Read every subject once (fills this replica's cache); the number of Checks made."""
    reqs = [load.check_request(i) for i in subjects_]
    parts = list(load.chunks(reqs, clients))
    threads = [threading.Thread(target=lambda k=k: [stubs.check[k](r) for r in parts[k]])
               for k in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(len(p) for p in parts)


def run_cold(plan: Plan, res: Results, label: str, server: Server, floor: Stubs,
             redis: RedisProcess, warm: Sequence[int], redis_cold: Sequence[int],
             ledger_cold: Sequence[int]) -> dict[str, load.Run]:
    """Warm, Redis-hit and ledger-hit Checks (each cold subject asked once), alternating
    call by call with the floor. Redis' own counters say which tier answered."""
    stubs = Stubs.open(server.target, 1)
    client = redis.client()
    tiers: dict[str, list[int]] = {"redis": [0, 0], "ledger": [0, 0]}

    def counters() -> tuple[int, int]:
        info = client.info("stats")
        return int(info["keyspace_hits"]), int(info["keyspace_misses"])

    try:
        warm_up(stubs, warm, 1)
        warm_reqs = load.check_requests(warm, plan.cold_samples)
        hits, misses = counters()
        # Calls alternate one by one; Redis' counters are read around the run, and only
        # the cold kinds touch Redis (the warm ones are local hits, the floor is not ours).
        runs = load.alternate({
            "floor": (floor.check[0], warm_reqs),
            "warm": (stubs.check[0], warm_reqs),
            "redis": (stubs.check[0], [load.check_request(i) for i in redis_cold]),
            "ledger": (stubs.check[0], [load.check_request(i) for i in ledger_cold]),
        }, plan.cold_samples)
        h, m = counters()
        # A Redis hit reads head and entry (2 hits); a ledger read misses the entry, then
        # populates (its script reads the head and misses the entry again): 2 hits, 2 misses.
        ledger_calls = (m - misses) / 2
        redis_calls = (h - hits - 2 * ledger_calls) / 2
        tiers["redis"] = [round(redis_calls), 0]
        tiers["ledger"] = [round(ledger_calls), 0]
    finally:
        stubs.close()
        client.close()
    res.raw.setdefault("cold", {})[label] = {k: _summary(v) for k, v in runs.items()}
    res.raw.setdefault("cold_tiers", {})[label] = tiers
    w = runs["warm"]
    for key, what, target, limit in (
            ("redis", "local miss, Redis hit", "adds ≤ 0.15 ms", 0.15),
            ("ledger", "local and Redis miss, ledger hit", "adds ≤ 1 ms", 1.0)):
        r = runs[key]
        added = r.p50 - w.p50
        seen = (f"Redis' counters: {tiers[key][0]:,} of {r.calls:,} answered by "
                f"{'Redis' if key == 'redis' else 'the ledger'}")
        res.rows.append(Row(
            "Check, cold", f"{what}, 1 client ({label})",
            f"p50 {ms(r.p50)}, p99 {ms(r.p99)} ({seen})", f"warm p50 {ms(w.p50)}",
            f"+{ms(added)}", target, met(added <= limit)))
    return runs


def _summary(run: load.Run) -> dict[str, Any]:
    return {"p50_ms": run.p50, "p99_ms": run.p99, "calls": run.calls, "seconds": run.seconds,
            "calls_per_s": run.rate, "items_per_s": run.item_rate, "errors": run.errors}


def run_warm(plan: Plan, res: Results, server: Server, noop: Server) -> None:
    warm = list(range(plan.warm_subjects))
    stubs = Stubs.open(server.target, plan.clients)
    floor = Stubs.open(noop.target, plan.clients)
    try:
        n = plan.clients
        warm_up(stubs, warm, n)
        reqs = load.check_requests(warm, plan.seq_rounds * plan.seq_per_round)
        for _ in range(200):
            floor.check[0](reqs[0])
        per = plan.seq_per_round

        log("Check, 1 client, warm vs floor")
        cpu = {pid: load.cpu_seconds(pid) for pid in (noop.pid, server.pid)}
        one = load.alternate({"floor": (floor.check[0], reqs), "check": (stubs.check[0], reqs)},
                             plan.seq_rounds * per)
        one["floor"].cpu = load.cpu_seconds(noop.pid) - cpu[noop.pid]
        one["check"].cpu = load.cpu_seconds(server.pid) - cpu[server.pid]
        f1, c1 = one["floor"], one["check"]
        res.rows.append(Row(
            "Check, warm", "no-op call on the same server stack (the floor), 1 client",
            f"p50 {ms(f1.p50)}, p99 {ms(f1.p99)}; server CPU {ms(f1.cpu_per_call_ms)}/call",
            "", "", "", ""))
        res.rows.append(Row("Check, warm", "Check, 1 client, p50",
                            f"{ms(c1.p50)}; server CPU {ms(c1.cpu_per_call_ms)}/call",
                            f"floor {ms(f1.p50)}", x(c1.p50 / f1.p50), "≤ 1.3x",
                            met(c1.p50 / f1.p50 <= 1.3)))
        res.rows.append(Row("Check, warm", "Check, 1 client, p99",
                            ms(c1.p99), f"floor {ms(f1.p99)}", x(c1.p99 / f1.p99), "≤ 1.5x",
                            met(c1.p99 / f1.p99 <= 1.5)))

        log(f"Check, {n} clients, warm vs floor")
        parts = list(load.chunks(reqs, n))
        conc = load.interleave(plan.conc_rounds, {
            "floor": load.on(noop.pid, lambda r: load.concurrent(floor.check, parts,
                                                                 plan.conc_seconds)),
            "check": load.on(server.pid, lambda r: load.concurrent(stubs.check, parts,
                                                                   plan.conc_seconds))})
        f8, c8 = conc["floor"], conc["check"]
        res.rows.append(Row(
            "Check, warm", f"no-op call (the floor), {n} clients",
            f"{rate(f8.rate)}, p50 {ms(f8.p50)}, p99 {ms(f8.p99)}; server CPU "
            f"{ms(f8.cpu_per_call_ms)}/call", "", "", "", ""))
        res.rows.append(Row("Check, warm", f"Check, {n} clients, throughput",
                            f"{rate(c8.rate)}; server CPU {ms(c8.cpu_per_call_ms)}/call",
                            f"floor {rate(f8.rate)}", x(c8.rate / f8.rate),
                            "≥ 0.75x", met(c8.rate / f8.rate >= 0.75)))
        res.rows.append(Row("Check, warm", f"Check, {n} clients, p99",
                            f"{ms(c8.p99)} (p50 {ms(c8.p50)})", f"floor {ms(f8.p99)}",
                            x(c8.p99 / f8.p99), "≤ 5 ms", met(c8.p99 <= 5.0)))
        if c8.errors or c1.errors:
            res.notes.append(f"Check errors: {c1.errors + c8.errors}")

        log("BatchCheck 100 and 1,000 vs floor")
        batches = {size: [load.batch_request(warm, size, k * size) for k in range(4)]
                   for size in (100, 1000)}
        calls = {100: 10, 1000: 2} if not plan.quick else {100: 5, 1000: 1}

        def bblock(stub: Callable[[Any], Any], size: int) -> Callable[[int], load.Run]:
            return lambda r: load.sequential(
                stub, [batches[size][(r + j) % 4] for j in range(calls[size])], items=size)

        b = load.interleave(plan.batch_rounds, {
            f"{kind}{size}": load.on((noop if kind == "floor" else server).pid, bblock(
                (floor if kind == "floor" else stubs).batch[0], size))
            for size in (100, 1000) for kind in ("floor", "check")})
        for size in (100, 1000):
            fb, cb = b[f"floor{size}"], b[f"check{size}"]
            target, status = ("≥ 100,000 decisions/s", met(cb.item_rate >= 100_000)) \
                if size == 1000 else ("", "")
            res.rows.append(Row(
                "BatchCheck", f"{size:,} items, 1 client",
                f"{rate(cb.item_rate, 'decisions/s')} ({1e6 / cb.item_rate:.0f} µs/item, "
                f"p50 {ms(cb.p50)} per call; server CPU "
                f"{1e6 * cb.cpu / max(cb.items, 1):.0f} µs/item)",
                f"floor {rate(fb.item_rate, 'items/s')} ({1e6 / fb.item_rate:.1f} µs/item)",
                x(cb.item_rate / fb.item_rate), target, status))
        res.raw["warm"] = {"one": {k: _summary(v) for k, v in one.items()},
                           "eight": {k: _summary(v) for k, v in conc.items()},
                           "batch": {k: _summary(v) for k, v in b.items()}}
        run_profiles(plan, res, server, noop, stubs, floor, parts, batches[1000])
    finally:
        stubs.close()
        floor.close()


def run_profiles(plan: Plan, res: Results, server: Server, noop: Server, stubs: Stubs,
                 floor: Stubs, parts: list[Sequence[Any]], batches: list[Any]) -> None:
    if prof.py_spy() is None:
        res.profile_error = ("py-spy is not installed (`make bench` installs it; "
                             "`pip install py-spy`)")
        return
    secs = plan.profile_seconds
    jobs: list[tuple[str, Server, Callable[[], load.Run]]] = [
        (f"Check, {plan.clients} clients", server,
         lambda: load.concurrent(stubs.check, parts, secs + 1.0)),
        ("BatchCheck 1,000", server,
         lambda: load.for_seconds(stubs.batch[0], batches, secs + 1.0, items=1000)),
        (f"floor, {plan.clients} clients", noop,
         lambda: load.concurrent(floor.check, parts, secs + 1.0)),
    ]
    for name, target, job in jobs:
        log(f"py-spy profile: {name} ({secs:.0f} s)")
        slug = name.split(",")[0].lower().replace(" ", "-").replace(",", "")
        out = WORK / f"profile-{slug}-{'batch' if 'Batch' in name else plan.clients}.txt"
        spy = prof.record(target.pid, secs, out)
        time.sleep(0.7)  # py-spy attaches
        during = job()
        spy_out, _ = spy.communicate(timeout=120)
        if not out.exists():
            res.profile_error = f"py-spy failed: {spy_out.strip()[-300:]}"
            return
        p = prof.summarise(out, 250, secs)
        p.raw_path = str(out.relative_to(ROOT))
        # Calls while py-spy sampled (the load ran a little longer on both sides).
        p.calls = during.rate * secs
        res.profiles[name] = p
        res.raw.setdefault("profile_runs", {})[name] = _summary(during)


def run_writes(plan: Plan, res: Results, server: Server) -> None:
    """Grants with evidence, as forms send them, to 500 subjects of this run's own (the
    bulk-loaded subjects stay as loaded, so the next run can cache them again)."""
    log("RecordConsent, 1 and 8 clients")
    stubs = Stubs.open(server.target, plan.clients)
    run_id = secrets.token_hex(3)
    ids = [f"write-{run_id}-{k}" for k in range(500)]
    try:
        one = load.sequential(stubs.record[0], [load.grant_request(ids[j % len(ids)], j)
                                                for j in range(plan.write_calls)])
        parts = list(load.chunks([load.grant_request(ids[j % len(ids)], j)
                                  for j in range(4_000)], plan.clients))
        many = load.concurrent(stubs.record, parts, plan.write_seconds)
    finally:
        stubs.close()
    res.raw["writes"] = {"one": _summary(one), "eight": _summary(many)}
    res.rows.append(Row("Consent writes", "RecordConsent, 1 client",
                        f"p50 {ms(one.p50)}, p99 {ms(one.p99)} ({rate(one.rate, 'writes/s')})",
                        "", "", "", ""))
    res.rows.append(Row("Consent writes", f"RecordConsent, {plan.clients} clients",
                        f"{rate(many.rate, 'writes/s')}, p50 {ms(many.p50)}, "
                        f"p99 {ms(many.p99)}", "", "", "",
                        "" if not many.errors else f"{many.errors} errors"))


def run_replicas(plan: Plan, res: Results, a: Server, ledger: str, redis_url: str) -> None:
    log("withdrawal on replica A -> enforced on replica B")
    data = WORK / "data-replica-b"
    shutil.rmtree(data, ignore_errors=True)
    b = start_serve("replica-b", data, ledger=ledger, redis_url=redis_url)
    sa, sb = Stubs.open(a.target, 1), Stubs.open(b.target, 1)
    purpose, category = subjects.REQUESTS[0]
    run_id = secrets.token_hex(3)
    after_ack: list[float] = []
    with_token: list[float] = []
    wrong = 0
    try:
        for t in range(plan.replica_trials):
            sid = f"replica-{run_id}-{t}"

            def check(stub: Stubs, token: str = "", sid: str = sid) -> int:
                resp = stub.check[0](decision_pb2.CheckRequest(
                    subject_id=sid, purpose=purpose, data_category=category,
                    jurisdiction="DE", consistency_token=token))
                return int(resp.decision)

            grant = sa.record[0](consent_pb2.RecordConsentRequest(
                subject_id=sid, purpose=purpose, data_categories=[category],
                action=consent_pb2.CONSENT_ACTION_GRANT, jurisdiction="DE",
                method=consent_pb2.COLLECTION_METHOD_AFFIRMATIVE, source="web-form",
                notice_version="2026-01"))
            assert check(sb, grant.consistency_token) == decision_pb2.DECISION_ALLOW
            assert check(sb) == decision_pb2.DECISION_ALLOW  # now in B's local cache
            withdrawn = sa.record[0](consent_pb2.RecordConsentRequest(
                subject_id=sid, purpose=purpose, data_categories=[category],
                action=consent_pb2.CONSENT_ACTION_WITHDRAW))
            acked = time.perf_counter()
            deadline = acked + 10
            while check(sb) != decision_pb2.DECISION_DENY:
                if time.perf_counter() > deadline:
                    wrong += 1
                    break
            after_ack.append((time.perf_counter() - acked) * 1000)
            t0 = time.perf_counter()
            if check(sb, withdrawn.consistency_token) != decision_pb2.DECISION_DENY:
                wrong += 1
            with_token.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    finally:
        sa.close()
        sb.close()
        b.stop()
    after_ack.sort()
    with_token.sort()

    def q(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    res.raw["replicas"] = {"after_ack_ms": after_ack, "with_token_ms": with_token,
                           "not_enforced": wrong}
    res.rows.append(Row(
        "Replicas", "withdrawal on A -> first DENY on B, no token (from A's ack)",
        f"p50 {ms(q(after_ack, .5))}, p99 {ms(q(after_ack, .99))}, "
        f"max {ms(after_ack[-1])} (n={len(after_ack)})", "staleness bound 1 s", "", "",
        "" if not wrong else f"**{wrong} not enforced**"))
    res.rows.append(Row(
        "Replicas", "Check on B with the withdrawal's consistency token",
        f"DENY on the first call; p50 {ms(q(with_token, .5))}", "", "", "", ""))


def run_log_variants(plan: Plan, res: Results, ledger: str, redis_url: str) -> None:
    log("decision log: memory (off) vs SQLite vs SQLite + fsync (durable)")
    servers: dict[str, Server] = {}
    stubs: dict[str, Stubs] = {}
    made: dict[str, int] = {}
    warm = list(range(plan.warm_subjects))
    try:
        for kind in ("memory", "sqlite", "sqlite-fsync", "traced"):
            data = WORK / f"data-log-{kind}"
            shutil.rmtree(data, ignore_errors=True)
            servers[kind] = start_variant(
                f"log-{kind}", data, "sqlite" if kind == "traced" else kind, ledger=ledger,
                redis_url=redis_url, tracing="exported" if kind == "traced" else "default")
            stubs[kind] = Stubs.open(servers[kind].target, plan.clients)
            made[kind] = warm_up(stubs[kind], warm, plan.clients)
        reqs = load.check_requests(warm, 4_000)
        parts = list(load.chunks(reqs, plan.clients))
        runs = load.interleave(plan.log_rounds, {
            kind: (lambda r, kind=kind: load.concurrent(stubs[kind].check, parts,
                                                        plan.log_seconds))
            for kind in servers})
        for kind, run in runs.items():
            made[kind] += run.calls
        one = load.alternate({kind: (stubs[kind].check[0], reqs) for kind in ("sqlite", "traced")},
                             plan.log_one_calls)
        for kind, run in one.items():
            made[kind] += run.calls
    finally:
        for s in stubs.values():
            s.close()
        for s in servers.values():
            s.stop()
    stats = {}
    for kind, server in servers.items():
        line = next((ln for ln in server.output if ln.startswith("variant-stats ")), "")
        stats[kind] = json.loads(line.split(" ", 1)[1]) if line else {}
    res.raw["log"] = {"runs": {k: _summary(v) for k, v in runs.items()}, "stats": stats,
                      "answered": made, "one": {k: _summary(v) for k, v in one.items()}}
    off = runs["memory"]
    for kind, label in (("sqlite", "SQLite, no fsync (the default)"),
                        ("sqlite-fsync", "SQLite + fsync (durable)")):
        run = runs[kind]
        cost = 1 - run.rate / off.rate
        logged = stats.get(kind, {}).get("logged")
        dropped = stats.get(kind, {}).get("dropped")
        complete = logged == made[kind] and dropped == 0
        durable = kind == "sqlite-fsync"
        res.rows.append(Row(
            "Decision log", f"{label}, {plan.clients} clients",
            f"{rate(run.rate)}; {logged:,} logged of {made[kind]:,} answered, "
            f"{dropped} dropped" if logged is not None else rate(run.rate),
            f"in-memory log (off) {rate(off.rate)}", f"-{100 * cost:.0f}%",
            "≤ 15% cost, zero drops" if durable else "",
            met(cost <= 0.15 and complete) if durable else
            ("" if complete else "**entries missing**")))
    base, traced = runs["sqlite"], runs["traced"]
    spans = stats.get("traced", {}).get("spans")
    res.rows.append(Row(
        "Tracing", f"every span recorded and exported (OTLP encoding, 100% sampled), "
        f"{plan.clients} clients",
        f"{rate(traced.rate)}, p99 {ms(traced.p99)}"
        + (f"; {spans:,} spans exported" if spans is not None else ""),
        f"no OTLP endpoint (the default: no spans) {rate(base.rate)}",
        f"-{100 * (1 - traced.rate / base.rate):.0f}%", "", ""))
    res.rows.append(Row(
        "Tracing", "every span recorded and exported, 1 client, p50",
        f"{ms(one['traced'].p50)} (p99 {ms(one['traced'].p99)})",
        f"no spans {ms(one['sqlite'].p50)} (p99 {ms(one['sqlite'].p99)})",
        f"+{1e3 * (one['traced'].p50 - one['sqlite'].p50):.0f} µs", "", ""))


def run_scaling(plan: Plan, res: Results, ledger: str, redis_url: str) -> None:
    """Warm Check throughput with 1, 2 and 3 `serve --reuse-port` processes on one port."""
    log("scaling past one core: serve --reuse-port processes on one port")
    out, reads = scaling.run(plan.scale_processes, plan.clients, plan.scale_generators,
                             list(range(plan.scale_subjects)), plan.scale_rounds,
                             plan.scale_seconds, WORK, ledger, redis_url, log)
    res.raw["scaling"] = {str(n): m.summary() for n, m in out.items()}
    res.raw["scaling_redis_reads"] = reads
    if reads > 100:
        res.notes.append(f"scaling: {reads:,} Redis reads while measuring (the local caches "
                         "were meant to answer every Check)")
    cores = os.cpu_count() or 0
    base_n = plan.scale_processes[0]
    base = out[base_n]
    for n, m in out.items():
        r = m.run
        server = m.cores(sum(m.server_cpu))
        client = m.cores(m.client_cpu)
        rest = max(0.0, m.cores(m.machine_cpu) - server - client)
        per = " + ".join(f"{m.cores(c):.2f}" for c in m.server_cpu)
        cpu = (f"server CPU {ms(1000 * sum(m.server_cpu) / max(r.calls, 1))}/call; "
               f"CPU in cores of {cores}: servers {server:.2f}"
               + (f" ({per})" if n > 1 else "")
               + f", load generator {client:.2f}, rest of the machine {rest:.2f}")
        split = ("; calls per process " + "/".join(f"{v:.0f}%" for v in m.split)
                 if n > 1 else "")
        measured = (f"{rate(r.rate)}, p50 {ms(r.p50)}, p99 {ms(r.p99)}{split}; {cpu}"
                    + (f"; {r.errors} errors" if r.errors else ""))
        if n == base_n:
            res.rows.append(Row(
                "Scaling, one port", f"Check, {plan.clients} clients, {n} process"
                f"{'es' if n > 1 else ''} (`serve --reuse-port`, the baseline)",
                measured, "", "", "", ""))
        else:
            res.rows.append(Row(
                "Scaling, one port", f"Check, {plan.clients} clients, {n} processes on one "
                "port (SO_REUSEPORT)", measured,
                f"{base_n} process{'es' if base_n > 1 else ''} {rate(base.run.rate)}",
                x(r.rate / base.run.rate), "", ""))


def run_dataset(plan: Plan, res: Results, ds: subjects.Dataset, redis: RedisProcess,
                noop: Server, full: bool) -> None:
    label = f"{ds.subjects:,} subjects"
    client = redis.client()
    client.flushall()
    before = redis.used_memory()
    cached = int(ds.subjects * 0.9)
    renderer = subjects.Renderer(ds.base)
    # Wired as the replicas are (never started): its Redis cache writes the entries.
    orchestrator = WORK / f"data-orchestrator-{ds.subjects}"
    shutil.rmtree(orchestrator, ignore_errors=True)
    app = inproc.configured_app(orchestrator, ds.url, redis.url)
    try:
        run_dataset_with(plan, res, ds, redis, noop, full, app, renderer, cached, before,
                         label)
    finally:
        inproc.close_app(app)
    if full:
        run_log_variants(plan, res, ds.url, redis.url)
        run_scaling(plan, res, ds.url, redis.url)


def run_dataset_with(plan: Plan, res: Results, ds: subjects.Dataset, redis: RedisProcess,
                     noop: Server, full: bool, app: Any, renderer: subjects.Renderer,
                     cached: int, before: int, label: str) -> None:
    assert app.redis is not None
    log(f"{label}: caching {cached:,} of them in Redis")
    t = time.perf_counter()
    head, changed = subjects.ledger_now(ds.url, ds.head)
    stored = subjects.populate_redis(app.redis, redis.url, renderer, 0, cached, head,
                                     changed)
    per_subject = (redis.used_memory() - before) / stored
    sizes = subjects.redis_entry_stats(app.redis, redis.url, renderer,
                                       list(range(0, cached, max(1, cached // 200))))
    res.raw.setdefault("redis", {})[label] = {"subjects": stored, "bytes_per_subject":
                                              per_subject, "sizes": sizes,
                                              "seconds": time.perf_counter() - t}
    res.rows.append(Row(
        "Redis", f"memory per subject, 5 consent events ({stored:,} cached)",
        f"{per_subject:.0f} bytes (used_memory delta / subjects)",
        f"entry: key {sizes['key_bytes']:.0f} B + value {sizes['value_bytes']:.0f} B "
        f"(state {sizes['state_bytes']:.0f} B compressed); MEMORY USAGE "
        f"{sizes['memory_usage']:.0f} B", "", "≤ 300 bytes", met(per_subject <= 300)))
    data = WORK / f"data-a-{ds.subjects}"
    shutil.rmtree(data, ignore_errors=True)
    log(f"{label}: starting replica A")
    a = start_serve("replica-a", data, ledger=ds.url, redis_url=redis.url)
    try:
        warm = range(plan.warm_subjects)
        n = plan.cold_samples
        redis_cold = range(cached // 2, cached // 2 + n)
        ledger_cold = range(cached, min(ds.subjects, cached + n))
        floor = Stubs.open(noop.target, 1)
        try:
            log(f"{label}: cold paths")
            run_cold(plan, res, label, a, floor, redis, list(warm), list(redis_cold),
                     list(ledger_cold))
        finally:
            floor.close()
        if full:
            log(f"{label}: the steps of the cold paths, one by one")
            steps = inproc.bench_cold_steps(app, ds.url, renderer,
                                            list(range(cached // 3, cached // 3 + 500)))
            res.raw["cold_steps"] = {k: asdict(v) for k, v in steps.items()}
            for name, t in steps.items():
                res.rows.append(Row("Check, cold", f"step: {name}", f"p50 {us(t.p50_us)}",
                                    "", "", "", ""))
            run_warm(plan, res, a, noop)
            run_writes(plan, res, a)
            run_replicas(plan, res, a, ds.url, redis.url)
        rss, hwm = a.rss()
        res.raw.setdefault("rss", {})[label] = {"rss_mb": rss, "hwm_mb": hwm,
                                                "ready_s": a.ready_seconds}
        res.rows.append(Row("Server", f"replica A RSS after the runs ({label} in the ledger)",
                            f"{rss:.0f} MB (peak {hwm:.0f} MB); ready in "
                            f"{a.ready_seconds:.1f} s", "", "", "", ""))
    finally:
        code = a.stop()
        if code:
            res.notes.append(f"replica A ({label}) exited with {code}")


def profile_section(res: Results) -> list[str]:
    if res.profile_error or not res.profiles:
        return [f"Profile: not taken: {res.profile_error or 'no profile run'}", ""]
    names = list(res.profiles)
    out = ["Profiles (py-spy `--gil --nonblocking`: only samples in which a thread held the "
           "GIL; raw collapsed stacks in "
           + ", ".join(f"`{p.raw_path}`" for p in res.profiles.values()) + "). Each sample "
           "is charged to the innermost component on its stack:", "",
           "| Component | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names),
           "| **GIL time per call** | " + " | ".join(
               f"**{p.gil_us_per_call:,.0f} µs**" for p in res.profiles.values()) + " |"]
    components: list[str] = []
    for p in res.profiles.values():
        components += [c for c, _ in p.components if c not in components]
    for c in components:
        cells = []
        for p in res.profiles.values():
            share = dict(p.components).get(c)
            cells.append(f"{share:.0f}% ({share * p.gil_us_per_call / 100:,.0f} µs)"
                         if share else "-")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    first = res.profiles[names[0]]
    out += ["", f"{names[0]}: the functions where the GIL was held longest (self time):", "",
            "| Function | share |", "|---|---|"]
    out += [f"| `{name}` | {share:.1f}% |" for name, share in first.self_time]
    out += ["", f"{names[0]}: consentauthz functions by inclusive time:", "",
            "| Function | share |", "|---|---|"]
    out += [f"| `{name}` | {share:.1f}% |" for name, share in first.inclusive]
    return [*out, ""]


def sample_sizes(p: Plan) -> str:
    enforcer = ", ".join(f"{v} at {k}" for k, v in p.casbin_samples.items())
    return (f"Samples: engine {3 * p.engine_decisions:,} timed decisions per pack (after one "
            f"warm-up pass; in 9 chunks interleaved across the packs), plain Enforcer "
            f"{enforcer} rules; "
            f"Check 1 client {p.seq_rounds * p.seq_per_round:,} calls per side, alternating "
            f"call by call with the floor; {p.clients} clients {p.conc_rounds} interleaved "
            f"rounds x {p.conc_seconds} s per side; cold paths {p.cold_samples:,} subjects per "
            f"tier, each asked once, alternating call by call with warm Checks and the floor; "
            f"BatchCheck {p.batch_rounds} rounds per size; RecordConsent "
            f"{p.write_calls} calls, then {p.write_seconds} s with {p.clients} clients; "
            f"{p.replica_trials} withdrawals across replicas; decision-log variants "
            f"{p.log_rounds} rounds x {p.log_seconds} s each; scaling "
            f"{'/'.join(map(str, p.scale_processes))} `serve --reuse-port` processes, "
            f"{p.clients} clients from {p.scale_generators} load-generator processes, "
            f"{p.scale_rounds} interleaved rounds x {p.scale_seconds} s per process count, "
            f"{p.scale_subjects:,} warm subjects; profiles "
            f"{p.profile_seconds:.0f} s each. Subjects: {p.datasets[0]:,} and "
            f"{p.datasets[1]:,} in the ledger, 90% of them cached in Redis; the warm set is "
            f"{p.warm_subjects:,} subjects.")


def generated(res: Results) -> str:
    m = res.machine
    lines = [
        f"Run of {m['date']}{' (BENCH_QUICK=1: scaled down)' if res.plan.quick else ''}: "
        f"{m['nproc']} cores, {m['cpu']}, {m['memory']}; load average (1, 5, 15 min) at "
        f"start {m['load_average']}, at the end {m.get('load_average_end', '-')}; "
        f"Python {m['python']}; redis-server {m['redis']}; "
        f"commit {m['commit']}.",
        "",
        report.table(res.rows),
        "",
        sample_sizes(res.plan),
        "",
    ]
    lines += profile_section(res)
    if res.notes:
        lines += ["Notes from the run:", ""] + [f"- {n}" for n in res.notes] + [""]
    return "\n".join(lines)


def run_writes_at_scale(plan: Plan, res: Results) -> None:
    """Issue 19's targets: RecordConsent on a ledger of 16 partitions beside one of one
    partition (the design before partitions) in the same run, and the batch path."""
    clients = (1, 8) if plan.quick else (1, 8, 32)
    log(f"consent writes at scale: {', '.join(map(str, clients))} clients, 1 vs 16 "
        "partitions")
    measured = writes.side_by_side(clients, 1.0 if plan.quick else 3.0,
                                   1 if plan.quick else 3)
    for n in clients:
        one, _ = measured[("1 partition", n)]
        many, busy = measured[("16 partitions", n)]
        target = ">= 2,000 writes/s" if n == 32 else ""
        res.rows.append(Row(
            "Consent writes at scale", f"RecordConsent, {n} clients, 16 partitions",
            writes.describe(many, busy), f"{one.rate:,.0f} writes/s (1 partition)",
            f"{many.rate / one.rate:.2f}x" if one.rate else "", target,
            ("met" if many.rate >= 2_000 else "missed") if target else ""))
    events = 2_000 if plan.quick else 20_000
    log(f"consent writes in batches: {events:,} events")
    single, serial, batched = writes.bulk(events)
    res.rows.append(Row(
        "Consent writes at scale", "record_batch of 1,000 (in-process, sealed, 16 partitions)",
        f"{batched:,.0f} events/s", f"{single:,.0f} writes/s one by one; {serial:,.0f} "
        "events/s recording one partition at a time",
        f"{batched / single:.1f}x", ">= 10,000 events/s",
        "met" if batched >= 10_000 else "missed"))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a scaled-down smoke run of about a minute (also "
                             "BENCH_QUICK=1); it leaves docs/performance.md alone")
    parser.add_argument("--drop-data", action="store_true",
                        help="drop the cached subject databases and exit")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not rewrite the table in docs/performance.md")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only these sections (repeatable; the docs are then left "
                             "alone)")
    ns = parser.parse_args(argv)
    only = set(ns.only or SECTIONS)
    if ns.drop_data:
        for name in subjects.bench_databases():
            subjects.drop_database(name)
            log(f"dropped {name}")
        return 0
    plan = QUICK if (ns.quick or os.environ.get("BENCH_QUICK") == "1") else FULL
    try:
        subjects.bench_databases()
    except Exception as exc:
        raise SystemExit(f"PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust "
                         f"auth), as for `make test` (tests/pg.py says how): {exc}") from None
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    res = Results(plan, machine())
    log(f"{'quick' if plan.quick else 'full'} run on {res.machine['nproc']} cores, "
        f"{res.machine['cpu']}")
    if only & {"engine", "startup"}:
        infos = run_engine(plan, res) if "engine" in only else {
            n: packs.generate_pack(WORK / "packs" / f"rules-{n}", n, POLICIES)
            for n in plan.pack_sizes}
        if "startup" in only:
            run_startup(plan, res, infos)
    if "inprocess" in only:
        run_inprocess(plan, res)
    if "grpc" not in only:
        plan_datasets: tuple[int, ...] = ()
    else:
        plan_datasets = plan.datasets
    taxonomy = load_policy_set(POLICIES).taxonomy
    datasets = []
    for n in plan_datasets:
        log(f"subjects: {n:,}")
        datasets.append(subjects.ensure_dataset(n, taxonomy, log))
    res.raw["datasets"] = [asdict(d) | {"base": d.base.isoformat()} for d in datasets]
    if datasets:
        redis = RedisProcess(WORK / "redis")
        noop = start_noop()
        try:
            for k, ds in enumerate(datasets):
                run_dataset(plan, res, ds, redis, noop, full=k == len(datasets) - 1)
        finally:
            noop.stop()
            redis.stop()
    if "writes" in only:
        run_writes_at_scale(plan, res)
    took = time.perf_counter() - started
    res.machine["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    gen = [d.generated_seconds for d in datasets if d.generated_seconds]
    res.notes.append(f"the run took {took / 60:.1f} min"
                     + (f", of which {sum(gen) / 60:.1f} min loading subjects (reused by the "
                        "next run)" if gen else " (subject databases reused)"))
    res.raw["seconds"] = took
    res.raw["machine"] = res.machine
    res.raw["profiles"] = {k: asdict(v) for k, v in res.profiles.items()}
    (WORK / "results.json").write_text(json.dumps(res.raw, indent=2, default=str))
    print(report.plain(res.rows))
    for name, p in res.profiles.items():
        print(f"\nprofile {name}: {p.gil_us_per_call:,.0f} µs of GIL per call")
        for comp, share in p.components[:6]:
            print(f"  {share:5.1f}%  {comp}")
    for note in res.notes:
        print(f"note: {note}")
    if ns.no_docs or only != set(SECTIONS) or plan.quick:
        # A smoke run or a partial one never replaces the full run's table.
        log(f"{DOC.relative_to(ROOT)} left as it was (only a full run rewrites its table)")
    else:
        report.write_section(DOC, generated(res))
        log(f"wrote the table to {DOC.relative_to(ROOT)}")
    return 0
