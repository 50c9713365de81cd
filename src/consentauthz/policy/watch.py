"""Watch a policy directory and report settled changes (debounced)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("consentauthz.policy")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """(path, size, mtime) of every file; editors' temporary and hidden files excluded."""
    entries = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if any(part.startswith(".") or part.endswith("~") for part in rel.parts):
            continue
        try:
            if path.is_file():
                st = path.stat()
                entries.append((rel.as_posix(), st.st_size, st.st_mtime_ns))
        except OSError:
            continue  # deleted while we looked: the next poll sees the settled state
    return tuple(sorted(entries))


class PolicyWatcher:
    """Polls (portable, no inotify needed); calls `on_change` once the files have stopped
    changing for `debounce` seconds, so a multi-file edit is loaded as one version."""

    def __init__(self, directory: Path, on_change: Callable[[], object],
                 interval: float = 0.5, debounce: float = 1.0) -> None:
        self._directory = directory
        self._on_change = on_change
        self._interval = interval
        self._debounce = debounce
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        seen = fingerprint(self._directory)
        changed_at: float | None = None
        while not self._stop.wait(self._interval):
            now = fingerprint(self._directory)
            if now != seen:
                seen, changed_at = now, time.monotonic()
            elif changed_at is not None and time.monotonic() - changed_at >= self._debounce:
                changed_at = None
                try:
                    self._on_change()
                except Exception:
                    log.exception("policy reload failed unexpectedly")
