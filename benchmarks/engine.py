"""In-process: the compiled engine against a plain casbin.Enforcer on the same files, and
where the start-up (load, compile, the authoring gate) spends its time."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consentauthz.domain import (
    CheckRequest,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    Effect,
    SubjectProfile,
    SubjectState,
)
from consentauthz.engine import CompiledPolicy, derive_facts
from consentauthz.engine.reference import reference_enforcer, reference_request
from consentauthz.policy import PolicySet, load_policy_set

from .subjects import ARCHETYPES, REQUESTS

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@dataclass
class EngineResult:
    pack: str
    rules: int
    jurisdictions: int
    load_s: float
    compile_s: float
    #: per decision, warm (candidates cached), microseconds
    mean_us: float
    p50_us: float
    p99_us: float
    #: first decision of a (jurisdiction, purpose, category) after compiling
    cold_p50_us: float
    casbin_ms: float | None = None  # plain Enforcer per decision (derive_facts + enforce)
    casbin_samples: int = 0
    casbin_build_s: float | None = None
    agree: bool | None = None  # engine and casbin gave the same allow/deny on every sample
    decisions: int = 0
    notes: list[str] = field(default_factory=list)


def _state(rng: random.Random, jurisdiction: str, purpose: str, category: str) -> SubjectState:
    """Five events: one about the requested purpose (grant, pre-ticked grant, withdrawal,
    objection or nothing), the rest from an archetype."""
    arch = ARCHETYPES[rng.randrange(len(ARCHETYPES))]
    collected = NOW - timedelta(days=rng.randrange(1, 600))
    events = []
    first = rng.choice(["grant", "pre_ticked", "withdraw", "object", "none", "grant"])
    specs = [(e.action, e.purpose, e.categories, e.method, e.explicit)
             for e in arch.events][: 4 if first != "none" else 5]
    if first != "none":
        action = {"grant": ConsentAction.GRANT, "pre_ticked": ConsentAction.GRANT,
                  "withdraw": ConsentAction.WITHDRAW, "object": ConsentAction.OBJECT}[first]
        method = (CollectionMethod.PRE_TICKED if first == "pre_ticked" else
                  CollectionMethod.AFFIRMATIVE if action is ConsentAction.GRANT
                  else CollectionMethod.UNSPECIFIED)
        specs.insert(rng.randrange(len(specs) + 1),
                     (action, purpose, (category,) if rng.random() < 0.5 else (), method,
                      rng.random() < 0.3))
    for seq, (action, p, cats, method, explicit) in enumerate(specs, start=1):
        events.append(ConsentEvent(
            record_id=f"rec-{seq}", sequence=seq, action=action, purpose=p,
            data_categories=tuple(cats), explicit=explicit, method=method,
            jurisdiction=jurisdiction, collected_at=collected, expires_at=None,
            source="web-form", notice_version="2026-01", recorded_at=collected))
    return SubjectState(profile=SubjectProfile(jurisdiction=jurisdiction),
                        events=tuple(events), sequence=len(events), version=len(events))


def samples(compiled: CompiledPolicy, probes: list[tuple[str, str, str]], n: int,
            seed: int = 7) -> list[tuple[CheckRequest, SubjectState]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        jurisdiction, purpose, category = rng.choice(probes)
        out.append((CheckRequest(subject_id="s", purpose=purpose, data_category=category,
                                 jurisdiction=jurisdiction),
                    _state(rng, jurisdiction, purpose, category)))
    return out


def shipped_probes(compiled: CompiledPolicy) -> list[tuple[str, str, str]]:
    codes = sorted(compiled.jurisdictions)
    return [(code, p, c) for code in codes for p, c in REQUESTS]


def _time_decisions(compiled: CompiledPolicy,
                    work: list[tuple[CheckRequest, SubjectState]]) -> list[int]:
    perf = time.perf_counter_ns
    out = []
    decide = compiled.decide
    for request, state in work:
        t = perf()
        decide(request, state, NOW)
        out.append(perf() - t)
    return out


@dataclass
class Prepared:
    """A pack loaded, compiled and warmed, with its requests, ready to be timed."""

    name: str
    policy: PolicySet
    compiled: CompiledPolicy
    work: list[tuple[CheckRequest, SubjectState]]
    load_s: float
    compile_s: float
    cold: list[int]
    warm: list[int] = field(default_factory=list)


def load_and_compile(directory: Path) -> tuple[PolicySet, CompiledPolicy, float, float]:
    """The pack, compiled, and the seconds each step took."""
    t = time.perf_counter()
    policy = load_policy_set(directory)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = CompiledPolicy(policy)
    return policy, compiled, load_s, time.perf_counter() - t


def prepare_pack(name: str, directory: Path, probes: list[tuple[str, str, str]] | None,
                 decisions: int) -> Prepared:
    policy, compiled, load_s, compile_s = load_and_compile(directory)
    work = samples(compiled, probes or shipped_probes(compiled), decisions)
    # Cold: the first decision for each key computes its candidate list.
    cold = _time_decisions(compiled, work[:200])
    _time_decisions(compiled, work)  # warm every key used below
    return Prepared(name, policy, compiled, work, load_s, compile_s, cold)


def time_warm(packs: list[Prepared], passes: int = 3, chunks: int = 3) -> None:
    """`passes` timed passes over each pack's requests, cut in `chunks` and interleaved
    across the packs chunk by chunk (the order rotating), so that a burst of load on this
    shared machine slows every pack alike instead of one pack's whole measurement."""
    k = 0
    for _ in range(passes):
        for c in range(chunks):
            for p in packs[k % len(packs):] + packs[:k % len(packs)]:
                size = -(-len(p.work) // chunks)
                p.warm += _time_decisions(p.compiled, p.work[c * size:(c + 1) * size])
            k += 1


def result_of(p: Prepared, casbin_samples: int) -> EngineResult:
    warm = sorted(p.warm)
    policy, compiled, work = p.policy, p.compiled, p.work
    result = EngineResult(
        pack=p.name, rules=len(policy.rules), jurisdictions=len(compiled.jurisdictions),
        load_s=p.load_s, compile_s=p.compile_s, mean_us=statistics.fmean(warm) / 1e3,
        p50_us=warm[len(warm) // 2] / 1e3, p99_us=warm[int(len(warm) * 0.99)] / 1e3,
        cold_p50_us=sorted(p.cold)[len(p.cold) // 2] / 1e3, decisions=len(warm))
    if casbin_samples:
        t = time.perf_counter()
        enforcer = reference_enforcer(policy)
        result.casbin_build_s = time.perf_counter() - t
        agree = True
        times = []
        tax, settings = policy.taxonomy, policy.settings
        for request, state in work[:casbin_samples]:
            t0 = time.perf_counter_ns()
            facts = derive_facts(state, request.purpose, request.data_category,
                                 request.jurisdiction, NOW, request.context, tax, settings)
            allowed = enforcer.enforce(*reference_request(
                compiled, request.jurisdiction, request.purpose, request.data_category,
                facts.tokens))
            times.append(time.perf_counter_ns() - t0)
            ours = compiled.decide(request, state, NOW).effect is Effect.ALLOW
            agree = agree and bool(allowed) == ours
        result.casbin_ms = statistics.median(times) / 1e6
        result.casbin_samples = len(times)
        result.agree = agree
    return result


@dataclass
class GateBreakdown:
    rules: int
    load_s: float
    compile_s: float
    lint_s: float  # lint_compiled on the compiled candidate, as the gate runs it
    suites_s: float  # run_suites as the gate runs it (casbin cross-check within its budget)
    suites_no_casbin_s: float | None
    cases: int
    problems: int
    #: cases the gate cross-checked against a plain casbin.Enforcer (`policy test`: all)
    casbin_checked: int = 0


def gate_breakdown(directory: Path) -> GateBreakdown:
    """What `authoring_gate` (app.py) does at every start-up and reload, step by step."""
    from consentauthz.authoring import load_suites, run_suites
    from consentauthz.authoring.lint import lint_compiled
    from consentauthz.authoring.runner import GATE_CASBIN_BUDGET

    policy, compiled, load_s, compile_s = load_and_compile(directory)
    suites = load_suites(directory)
    t = time.perf_counter()
    findings = [f for f in lint_compiled(compiled, suites) if f.severity == "error"]
    lint_s = time.perf_counter() - t
    t = time.perf_counter()
    run = run_suites(compiled, suites, casbin_budget=GATE_CASBIN_BUDGET)
    suites_s = time.perf_counter() - t
    fresh = CompiledPolicy(policy)  # cold candidate lists, as the gate's would be
    t = time.perf_counter()
    run_suites(fresh, suites, check_casbin=False)
    no_casbin_s = time.perf_counter() - t
    return GateBreakdown(len(policy.rules), load_s, compile_s, lint_s, suites_s, no_casbin_s,
                         len(run.results), len(findings) + run.failed, run.casbin_checked)


def profile_decide(directory: Path, decisions: int = 3_000) -> list[tuple[str, float]]:
    """cProfile over warm decisions: each function's cumulative share of decide()."""
    import cProfile
    import pstats

    compiled = CompiledPolicy(load_policy_set(directory))
    work = samples(compiled, shipped_probes(compiled), decisions)
    _time_decisions(compiled, work)
    profiler = cProfile.Profile()
    profiler.enable()
    _time_decisions(compiled, work)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = next((v[3] for (file, _, name), v in stats.items()
                  if name == "decide" and file.endswith("compiled.py")), 0.0)
    out = []
    for (file, _, name), (_, _, _, cumulative, _) in stats.items():
        if "consentauthz" in file and total:
            out.append((f"{name} ({Path(file).parent.name}/{Path(file).name})",
                        100 * cumulative / total))
    return sorted(out, key=lambda kv: -kv[1])[:10]
