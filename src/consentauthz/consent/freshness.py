"""How current a replica's cached consent state is known to be, without a consistency token.

With one process writing the ledger (the embedded SQLite default) every write passes
through this process, so what it has applied is current: `SoleWriter`. With a ledger that
several replicas share, a `LedgerPoller` asks the ledger every so often which subjects
changed since it last asked and drops them from the local cache. A poll that started at
time t and saw head h proves that every write committed before t is at or below h and has
been applied; so while the newest successful poll started at most `max_staleness` ago, a
state current as of h misses no write older than `max_staleness`. That is the staleness
bound (docs/operations.md); past it, no proof is left and reads go to the ledger itself.
Redis pub/sub usually applies a write within milliseconds; the poller is the bound that
holds when Redis is slow, down, or lost a message.

Each poll also checks that the ledger is still the one the cached states came from: its
identity is the same (a dropped and recreated database has another, whatever its head), and
its head is not below the highest position this replica has applied (its own writes and
Redis invalidations included, not only earlier polls): a restored backup reuses positions.
Either way every cache tier is dropped (`on_replaced` for the shared one, first, then the
local cache), one CRITICAL line is logged, and reads go to the ledger.

With one process writing (SoleWriter, the embedded SQLite ledger) nothing of the kind can
happen while it runs: the process owns its data dir, and a restored one is read afresh at
start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import ConsentAuthzError
from .cache import LocalCache
from .ledger import Ledger

log = logging.getLogger("consentauthz.consent")

#: Changes read per poll; more than this and the local cache is simply emptied.
POLL_BATCH = 10_000


class Freshness(Protocol):
    def floor(self) -> int | None:
        """A ledger position every usable state must be current as of; None when nothing
        proves freshness now (read the ledger)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SoleWriter:
    """This process makes every ledger write, and applies each to its cache as it makes it:
    the cache's watermark is the ledger head."""

    def __init__(self, cache: LocalCache) -> None:
        self._cache = cache

    def floor(self) -> int | None:
        return self._cache.watermark

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class LedgerPoller:
    """`identity`: the ledger's identity the cached states belong to (None: the first poll
    takes the ledger's). `on_replaced(identity, head)`: the ledger went back or was replaced;
    make the shared cache tier unusable for what it held (called before the local cache is
    dropped, on the poller's thread)."""

    def __init__(self, ledger: Ledger, cache: LocalCache, max_staleness: float,
                 interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None,
                 identity: str | None = None,
                 on_replaced: Callable[[str, int], None] | None = None) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        self._ledger = ledger
        self._cache = cache
        self._max_staleness = max_staleness
        self._interval = interval if interval is not None else max_staleness / 4
        self._clock = clock
        self._on_change = on_change
        self._identity = identity
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        self._polled: int | None = None
        self._proof: tuple[float, int] | None = None
        self._healthy = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def healthy(self) -> bool:
        """Whether the newest poll succeeded."""
        return self._healthy

    @property
    def max_staleness(self) -> float:
        return self._max_staleness

    @property
    def identity(self) -> str | None:
        """The identity of the ledger the cached states belong to."""
        return self._identity

    def poll_once(self) -> bool:
        started = self._clock()
        # Before asking the ledger: every position in it was committed before the snapshot
        # the answer comes from, so that snapshot must hold it.
        applied = self._cache.highest
        if self._polled is None:
            self._polled = self._cache.watermark
        try:
            seen = self._ledger.changes(self._polled, POLL_BATCH)
        except ConsentAuthzError:
            self._set_healthy(False)
            return False
        head = seen.head
        if self._identity is None:
            self._identity = seen.identity
        if seen.identity != self._identity or head < applied:
            self._replaced(seen.identity, head, applied)
        elif len(seen.entries) >= POLL_BATCH:
            self._cache.clear(head)
        else:
            self._cache.note_writes(seen.entries, head)
        with self._lock:
            self._polled = head
            self._proof = (started, head)
        self._set_healthy(True)
        return True

    def _replaced(self, identity: str, head: int, applied: int) -> None:
        """The ledger went back (a restore, a failover that lost commits) or is another one
        (a database dropped and recreated): positions are being reused, so nothing cached
        can be trusted. The shared tier first, so that nothing refills the local cache from
        it once it is empty."""
        if identity != self._identity:
            what = f"was replaced (identity {self._identity} is now {identity}, head {head})"
        else:
            what = f"went back (head {head}, below position {applied} this replica applied)"
        log.critical("the consent ledger %s: dropping every cached consent state and "
                     "answering from the ledger", what)
        if self._on_replaced is not None:
            try:
                self._on_replaced(identity, head)
            except Exception:  # the local cache must be dropped whatever happens here
                log.exception("fencing the shared consent cache off failed")
        self._cache.reset(head)
        self._identity = identity

    def _set_healthy(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            if healthy:
                log.warning("consent ledger reachable again: cached state is fresh again")
            else:
                log.warning("consent ledger unreachable: cached consent state can no longer "
                            "be proven fresh; checks read the ledger (and fail closed)")
            if self._on_change is not None:
                self._on_change(healthy)

    def floor(self) -> int | None:
        with self._lock:
            proof = self._proof
        if proof is None or self._clock() - proof[0] > self._max_staleness:
            return None
        return proof[1]

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="consentauthz-ledger-poller",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one failure
                log.exception("ledger poll failed")
                self._set_healthy(False)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
