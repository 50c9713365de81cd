"""How current a replica's cached consent state is known to be, without a consistency token.

Positions are per ledger partition (consent/ledger.py), so everything here is too. With
one process writing the ledger (the embedded SQLite default) every write passes through
this process, so what it has applied is current: `SoleWriter`. With a ledger that several
replicas share, a `LedgerPoller` asks the ledger every so often which subjects changed
since it last asked (every partition, one statement) and drops them from the local cache.
A poll that started at time t and saw head h of a partition proves that every write to it
committed before t is at or below h and has been applied; so while the newest successful
poll started at most `max_staleness` ago, a state current as of h misses no write older
than `max_staleness`. That is the staleness
bound (docs/operations.md); past it, no proof is left and reads go to the ledger itself.
Redis pub/sub usually applies a write within milliseconds; the poller is the bound that
holds when Redis is slow, down, or lost a message.

Each poll also checks that the ledger is still the one the cached states came from: its
identity is the same (a dropped and recreated database has another, whatever its head), and
no partition's head is below the highest position this replica has applied to it (its own writes and
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
    def floor(self, part: int) -> int | None:
        """A position of partition `part` every usable state of its subjects must be
        current as of; None when nothing proves freshness now (read the ledger)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SoleWriter:
    """This process makes every ledger write, and applies each to its cache as it makes it:
    the cache's watermarks are the ledger's heads."""

    def __init__(self, cache: LocalCache) -> None:
        self._cache = cache

    def floor(self, part: int) -> int | None:
        return self._cache.watermark_of(part)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class LedgerPoller:
    """`identity`: the ledger's identity the cached states belong to (None: the first poll
    takes the ledger's). `on_replaced(identity, heads)`: the ledger went back or was replaced;
    make the shared cache tier unusable for what it held (called before the local cache is
    dropped, on the poller's thread)."""

    def __init__(self, ledger: Ledger, cache: LocalCache, max_staleness: float,
                 interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None,
                 identity: str | None = None,
                 on_replaced: Callable[[str, tuple[int, ...]], None] | None = None) -> None:
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
        self._polled: tuple[int, ...] | None = None
        self._proof: tuple[float, tuple[int, ...]] | None = None
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
        applied = self._cache.highests
        if self._polled is None:
            self._polled = self._cache.watermarks
        try:
            seen = self._ledger.changes(self._polled, POLL_BATCH)
        except ConsentAuthzError:
            self._set_healthy(False)
            return False
        heads = seen.heads
        if len(heads) != len(applied):
            # Repartitioned under a running replica (`ledger migrate` is run with the
            # service stopped): nothing cached, nor any position, means anything now.
            log.critical("the consent ledger has %d partitions, this replica started with "
                         "%d: restart it", len(heads), len(applied))
            self._set_healthy(False)
            return False
        if self._identity is None:
            self._identity = seen.identity
        back = [p for p, head in enumerate(heads) if head < applied[p]]
        if seen.identity != self._identity or back:
            self._replaced(seen.identity, heads, back, applied)
        elif len(seen.entries) >= POLL_BATCH:
            self._cache.clear(heads)
        else:
            self._cache.note_writes(seen.entries, heads)
        with self._lock:
            self._polled = heads
            self._proof = (started, heads)
        self._set_healthy(True)
        return True

    def _replaced(self, identity: str, heads: tuple[int, ...], back: list[int],
                  applied: tuple[int, ...]) -> None:
        """The ledger went back (a restore, a failover that lost commits) or is another one
        (a database dropped and recreated): positions are being reused, so nothing cached
        can be trusted. The shared tier first, so that nothing refills the local cache from
        it once it is empty."""
        if identity != self._identity:
            what = (f"was replaced (identity {self._identity} is now {identity}, "
                    f"{sum(heads)} entries)")
        else:
            part = back[0]
            what = (f"went back (partition {part}: head {heads[part]}, below position "
                    f"{applied[part]} this replica applied)")
        log.critical("the consent ledger %s: dropping every cached consent state and "
                     "answering from the ledger", what)
        if self._on_replaced is not None:
            try:
                self._on_replaced(identity, heads)
            except Exception:  # the local cache must be dropped whatever happens here
                log.exception("fencing the shared consent cache off failed")
        self._cache.reset(heads)
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

    def floor(self, part: int) -> int | None:
        with self._lock:
            proof = self._proof
        if proof is None or self._clock() - proof[0] > self._max_staleness:
            return None
        return proof[1][part]

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
