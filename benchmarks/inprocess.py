"""Diagnosis in-process: the Checker without gRPC, with and without its parts, and the
steps of the cold paths, each timed on its own.

The Checker is the one `App` wires for `serve` (embedded SQLite ledger here; the state
comes from the in-process cache either way once warm), measured with the decision log as
served (QueuedDecisionLog over SQLite) and with the in-memory twin, first as `serve` runs
without an OTLP endpoint (the metrics SDK, no spans) and then with every span recorded
and exported (as with an endpoint and 100% sampling). The differences are what tracing and
the durable log cost per decision.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor

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
    EVENTS,
    MASTER_KEY,
    PSEUDONYM_KEY,
    REQUESTS,
    Renderer,
    first_seq,
    subject_id,
)
from .variant_server import EncodingExporter


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

        # What `serve` installs without an OTLP endpoint (cli.py cmd_serve): the metrics
        # SDK, and no tracing SDK (no spans).
        setup_metrics("consentauthz", prometheus=False, otlp=False)
        measure("no spans (serve without an OTLP endpoint)")
        # With an endpoint: every span recorded, batched and encoded for OTLP.
        setup_tracing("consentauthz", otlp=False,
                      extra_processors=(BatchSpanProcessor(EncodingExporter()),))
        measure("spans recorded and exported")

        attrs = {f"consentauthz.a{k}": "x" * 12 for k in range(14)}

        def span(_: Any) -> None:
            with tracer().start_as_current_span("engine.Check") as s:
                s.set_attributes(attrs)

        res.parts["one SDK span with 14 attributes, recorded and exported"] = _time(
            span, range(5000))
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
    ledger: Redis read (one round trip and decoding), and for a Redis miss the ledger read
    (the projection with the subject's key record, the key unwrapped, the birth date
    opened), and the Redis populate (as a call, and what a caller waits for when it is
    handed to the cache's own thread)."""
    out: dict[str, Timing] = {}
    assert app.redis is not None
    cache = app.redis
    plain = PostgresLedger(ledger_url)
    sealing = app.ledger
    try:
        keys = [renderer.pseudonymize(subject_id(i)) for i in subjects]
        out["Redis read (MGET head + entry, decrypt, decode)"] = _time(cache.read, keys)
        blobs = [(renderer.compact(i)[1], first_seq(i) + EVENTS) for i in subjects[:200]]
        out["state_from_bytes alone (no decryption)"] = _time(
            lambda bv: state_from_bytes(bv[0], 1, bv[1]), blobs)
        out["PostgresLedger.load (projection)"] = _time(plain.load, keys)
        out["SealingLedger.load (+ subject key in the same statement, unseal)"] = _time(
            sealing.load, keys)
        states = [sealing.load(k) for k in keys[:400]]
        pairs = list(zip(keys, states, strict=False))
        out["Redis populate (script)"] = _time(
            lambda kv: cache.populate(kv[0], kv[1], None, False), pairs[:200])
        perf = time.perf_counter_ns
        waits = []
        for key, state in pairs[200:]:
            t = perf()
            cache.populate_soon(key, state, None, False)
            waits.append(perf() - t)
            cache.wait_populated()  # not timed: the next call starts with the thread idle
        waits.sort()
        out["Redis populate_soon (what the caller waits for)"] = Timing(
            waits[len(waits) // 2] / 1e3, statistics.fmean(waits) / 1e3, len(waits))
    finally:
        plain.close()
    return out
