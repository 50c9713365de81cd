"""Diagnosis in-process: the Checker without gRPC, with and without its parts, and the
steps of the cold paths, each timed on its own.

The Checker is the one `App` wires for `serve` (embedded SQLite ledger here; the state
comes from the in-process cache either way once warm), measured with the decision log as
served (QueuedDecisionLog over SQLite) and with the in-memory twin, first before any
OpenTelemetry SDK is installed (spans are no-ops) and then with the SDK tracer and meter
providers `serve` installs. The differences are what tracing and the durable log cost
per decision.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consentauthz.app import App, utc_now
from consentauthz.checker import Checker
from consentauthz.config import ServeConfig
from consentauthz.consent import PostgresLedger
from consentauthz.consent.codec import state_from_bytes
from consentauthz.decisionlog import MemoryDecisionLog
from consentauthz.domain import CheckRequest, ConsentWrite, new_id
from consentauthz.telemetry import setup_metrics, setup_tracing, tracer

from .subjects import (
    ARCHETYPES,
    MASTER_KEY,
    PSEUDONYM_KEY,
    REQUESTS,
    Renderer,
    subject_id,
)


@dataclass
class Timing:
    p50_us: float
    mean_us: float
    n: int


def _time(fn: Callable[[Any], Any], args: Sequence[Any]) -> Timing:
    perf = time.perf_counter_ns
    out = []
    for a in args:
        t = perf()
        fn(a)
        out.append(perf() - t)
    out.sort()
    return Timing(out[len(out) // 2] / 1e3, statistics.fmean(out) / 1e3, len(out))


@dataclass
class CheckerResult:
    #: variant -> (Check per call, BatchCheck(1,000) per item)
    variants: dict[str, tuple[Timing, Timing]] = field(default_factory=dict)
    #: step -> time
    parts: dict[str, Timing] = field(default_factory=dict)


def _requests(n_subjects: int, n: int) -> list[CheckRequest]:
    out = []
    for j in range(n):
        i = j % n_subjects
        purpose, category = REQUESTS[(i + j // n_subjects) % len(REQUESTS)]
        out.append(CheckRequest(subject_id=f"inproc-{i}", purpose=purpose,
                                data_category=category,
                                jurisdiction=ARCHETYPES[i % len(ARCHETYPES)].jurisdiction))
    return out


def bench_checker(work: Path, policies: Path, subjects: int, calls: int) -> CheckerResult:
    res = CheckerResult()
    app = App(ServeConfig(listen="127.0.0.1:0", data_dir=work, policies=policies,
                          watch_policies=False, pseudonym_key=PSEUDONYM_KEY,
                          master_key=MASTER_KEY))
    try:
        now = datetime.now(UTC)
        for i in range(subjects):
            arch = ARCHETYPES[i % len(ARCHETYPES)]
            for ev in arch.events:
                app.consent.record(ConsentWrite(
                    subject_id=f"inproc-{i}", action=ev.action, purpose=ev.purpose,
                    data_categories=ev.categories, explicit=ev.explicit, method=ev.method,
                    jurisdiction=arch.jurisdiction, collected_at=now, source="web-form",
                    notice_version="2026-01", evidence={"ip": "203.0.113.9"}))
        reqs = _requests(subjects, calls)
        batch = reqs[:1000]
        memory = Checker(app.consent, app.policy, MemoryDecisionLog(), utc_now, app.metrics)
        served = app.checker

        def measure(label: str) -> None:
            for name, checker in (("in-memory log", memory),
                                  ("queued SQLite log, as served", served)):
                _time(lambda r, c=checker: c.check(r, "bench"), reqs[:subjects])  # warm
                one = _time(lambda r, c=checker: c.check(r, "bench"), reqs)
                many = _time(lambda b, c=checker: c.check_batch(b, "bench"), [batch] * 3)
                res.variants[f"{label}, {name}"] = (
                    one, Timing(many.p50_us / len(batch), many.mean_us / len(batch), 3))

        measure("spans no-op")
        # What `serve` installs (cli.py cmd_serve): spans and metrics become real.
        setup_tracing("consentauthz", otlp=False)
        setup_metrics("consentauthz", prometheus=False, otlp=False)
        measure("SDK spans")

        attrs = {f"consentauthz.a{k}": "x" * 12 for k in range(14)}

        def span(_: Any) -> None:
            with tracer().start_as_current_span("engine.Check") as s:
                s.set_attributes(attrs)

        res.parts["one SDK span with 14 attributes"] = _time(span, range(5000))
        res.parts["tracer() lookup (get_tracer)"] = _time(lambda _: tracer(), range(5000))
        res.parts["new_id() (UUIDv7)"] = _time(lambda _: new_id(), range(5000))
        res.parts["subject_key (HMAC pseudonym)"] = _time(
            app.consent.subject_key, [f"inproc-{i}" for i in range(5000)])
        key = app.consent.subject_key("inproc-0")
        res.parts["state_of, local cache hit"] = _time(
            lambda _: app.consent.state_of(key), range(5000))
        record = served.check(reqs[0], "bench").record
        fresh = [replace(record, decision_id=new_id()) for _ in range(2500)]
        res.parts["decision log append, queued SQLite (1 record)"] = _time(
            lambda r: app.decision_log.append([r]), fresh[:500])
        twin = MemoryDecisionLog()
        res.parts["decision log append, in-memory (1 record)"] = _time(
            lambda r: twin.append([r]), fresh[500:])
    finally:
        app.decision_log.close()
        app.consent.close()
    return res


def configured_app(work: Path, ledger_url: str, redis_url: str) -> App:
    """An App wired exactly as the `serve` replicas of the run (same ledger, Redis and
    keys), never started: its RedisStateCache and ledger are the servers' own."""
    return App(ServeConfig(listen="127.0.0.1:0", data_dir=work, watch_policies=False,
                           ledger_url=ledger_url, redis_url=redis_url,
                           pseudonym_key=PSEUDONYM_KEY, master_key=MASTER_KEY))


def close_app(app: App) -> None:
    app.decision_log.close()
    if app.redis is not None:
        app.redis.close()
    app.consent.close()


def bench_cold_steps(app: App, ledger_url: str, renderer: Renderer,
                     subjects: Sequence[int]) -> dict[str, Timing]:
    """The steps of a local miss, each on its own, with the servers' own Redis cache and
    ledger: Redis read (one pipelined round trip and decoding), and for a Redis miss the
    ledger read (the projection, then the subject's key and the sealed values opened),
    and the Redis populate."""
    out: dict[str, Timing] = {}
    assert app.redis is not None
    cache = app.redis
    plain = PostgresLedger(ledger_url)
    sealing = app.ledger
    try:
        keys = [renderer.pseudonymize(subject_id(i)) for i in subjects]
        out["Redis read (GET head + entry, decrypt, decode)"] = _time(cache.read, keys)
        blobs = [renderer.compact(i)[1] for i in subjects[:200]]
        out["state_from_bytes alone (no decryption)"] = _time(
            lambda b: state_from_bytes(b, 1), blobs)
        out["PostgresLedger.load (projection)"] = _time(plain.load, keys)
        out["SealingLedger.load (+ subject key, unseal)"] = _time(sealing.load, keys)
        states = [sealing.load(k) for k in keys[:200]]
        out["Redis populate (script)"] = _time(
            lambda kv: cache.populate(kv[0], kv[1], None, False), list(zip(keys, states,
                                                                           strict=False)))
    finally:
        plain.close()
    return out
