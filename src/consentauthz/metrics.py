"""The service's metrics: every instrument's name, unit, description and attributes.

Instruments are created here and nowhere else; a collaborator takes a `Metrics` in its
constructor and calls the method for what happened. `NO_METRICS` is the no-op twin.

Attribute values come from bounded vocabularies only (decision, reason code, taxonomy
purpose, regime, cache tier, RPC name): never a subject id, a pseudonym, a decision id or
anything else that names one person. A scraper keeps every label value it ever saw, and
no erasure request reaches it. Keys are short (`decision`, not `consentauthz.decision`):
the metric name carries the namespace, and the keys become Prometheus labels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Literal
from weakref import WeakKeyDictionary

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation

from .domain import Decision

DECISIONS = "consentauthz.decisions"
CHECK_DURATION = "consentauthz.check.duration"
CONSENT_CACHE = "consentauthz.consent.cache"
DECISIONLOG_QUEUE_DEPTH = "consentauthz.decisionlog.queue_depth"
DECISIONLOG_DROPPED = "consentauthz.decisionlog.dropped"
POLICY_RELOADS = "consentauthz.policy.reloads"

#: Seconds. A cached decision takes tens of microseconds; a ledger read or a slow disk
#: can take a good part of a second.
DURATION_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

CacheTier = Literal["local", "redis", "ledger"]
Rpc = Literal["Check", "BatchCheck"]


def _zero() -> int:
    return 0


class _Tally:
    """Counts by attribute values, read by an observable counter at each collection.

    The hot path counts two or three things per decision; an SDK counter's `add` costs
    about 4 us (it validates and hashes the attributes every time), a tally's about a
    tenth of that. What a scraper sees is the same monotonic sum."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, values: tuple[str, ...], n: int = 1) -> None:
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + n

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(n, dict(zip(self._names, values, strict=True)))
                for values, n in counts]


class _Shared:
    """What every Metrics on one meter shares."""

    def __init__(self) -> None:
        self.queue_depth: Callable[[], int] = _zero
        self.dropped: Callable[[], int] = _zero
        self.decisions = _Tally(("decision", "reason", "purpose", "regime"))
        self.cache = _Tally(("tier",))


# The SDK hands back the first instrument when the same name is registered again on a
# meter, callbacks included. So every Metrics on one meter reads the same sources and
# counts into the same tallies, and the latest observe_decision_log() wins (tests run
# many Apps in one process).
_SOURCES: WeakKeyDictionary[Meter, _Shared] = WeakKeyDictionary()
_SOURCES_LOCK = threading.Lock()


class Metrics:
    """The instruments of one meter, behind methods named for what happened."""

    def __init__(self, meter: Meter) -> None:
        with _SOURCES_LOCK:
            self._sources = _SOURCES.setdefault(meter, _Shared())
        self._decisions = self._sources.decisions
        self._cache = self._sources.cache
        meter.create_observable_counter(
            DECISIONS, callbacks=[self._decisions.observe], unit="{decision}",
            description="decisions answered (after their decision-log entry was accepted), "
                        "by decision, reason, purpose and regime")
        self._duration = meter.create_histogram(
            CHECK_DURATION, unit="s",
            description="time to decide (consent state + engine): one Check, or all the "
                        "items of one BatchCheck; by rpc",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        meter.create_observable_counter(
            CONSENT_CACHE, callbacks=[self._cache.observe], unit="{lookup}",
            description="consent state lookups by the tier that answered: local (in-process "
                        "cache), redis (shared by replicas) or ledger")
        self._reloads = meter.create_counter(
            POLICY_RELOADS, unit="{reload}", description="policy reload attempts by result")
        meter.create_observable_gauge(
            DECISIONLOG_QUEUE_DEPTH, callbacks=[self._observe_queue_depth], unit="{record}",
            description="decision records waiting to be written")
        meter.create_observable_counter(
            DECISIONLOG_DROPPED, callbacks=[self._observe_dropped], unit="{record}",
            description="decision records the decision log could not write")

    def decision(self, decision: Decision, purpose: str) -> None:
        self._decisions.add((decision.effect.value, decision.reason.value, purpose,
                             decision.regime))

    def check_duration(self, seconds: float, rpc: Rpc) -> None:
        self._duration.record(seconds, {"rpc": rpc})

    def cache_lookup(self, tier: CacheTier) -> None:
        self._cache.add((tier,))

    def policy_reload(self, accepted: bool) -> None:
        self._reloads.add(1, {"result": "accepted" if accepted else "rejected"})

    def observe_decision_log(self, *, queue_depth: Callable[[], int],
                             dropped: Callable[[], int]) -> None:
        """Read the decision log writer's queue depth and dropped count at each collection."""
        self._sources.queue_depth = queue_depth
        self._sources.dropped = dropped

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._sources.queue_depth())]

    def _observe_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._sources.dropped())]


#: Records nothing: the default for collaborators built without metrics (tests, tools).
NO_METRICS = Metrics(NoOpMeter("consentauthz"))
