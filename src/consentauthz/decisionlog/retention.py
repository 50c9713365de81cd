"""Retention marks: what each retention run removed, so the rest still verifies.

Removing the oldest entries cuts the chain's start. Before a run deletes anything it
appends a mark to a small JSON manifest next to the segments; the newest mark is the
chain's new anchor (the first kept entry must link to `prev_hash`). `prev_hash` is the
entry hash of the last entry removed, and through the chain it commits to everything
before it; `removed_digest` commits to exactly the entries this run removed, so an archived
copy of the removed segments can be matched to the run that removed them.

The marks form their own little chain of arithmetic: the first run removed entries from
sequence 1, each later run from where the previous one stopped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..chain import GENESIS
from ..errors import ConsentAuthzError
from .segments import sync_directory

log = logging.getLogger("consentauthz.decisionlog")

MANIFEST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RetentionMark:
    #: The first entry kept.
    first_sequence: int
    #: Its prev_hash: the entry hash of the last entry removed.
    prev_hash: str
    #: How many entries this run removed (they began at first_sequence - removed).
    removed: int
    #: sha256 over the removed entries' entry hashes, in order, each followed by "\n".
    removed_digest: str
    #: When the run removed them.
    time: datetime
    #: The segment files it deleted.
    segments: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"first_sequence": self.first_sequence, "prev_hash": self.prev_hash,
                "removed": self.removed, "removed_digest": self.removed_digest,
                "time": self.time.isoformat(timespec="microseconds"),
                "segments": list(self.segments)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetentionMark:
        return cls(int(d["first_sequence"]), str(d["prev_hash"]), int(d["removed"]),
                   str(d["removed_digest"]), datetime.fromisoformat(d["time"]),
                   tuple(str(s) for s in d["segments"]))


def anchor(marks: Sequence[RetentionMark]) -> tuple[int, str]:
    """(sequence, hash) the first kept entry follows: genesis until a run removed some."""
    if not marks:
        return 0, GENESIS
    return marks[-1].first_sequence - 1, marks[-1].prev_hash


def inconsistency(marks: Sequence[RetentionMark]) -> str:
    """Why the marks do not describe contiguous removals from sequence 1 ("" if they do)."""
    start = 1
    for m in marks:
        if m.removed < 1 or m.first_sequence - m.removed != start:
            return (f"retention mark at {m.first_sequence} removed {m.removed} entries, "
                    f"which does not start at {start}")
        start = m.first_sequence
    return ""


def load_marks(path: Path) -> list[RetentionMark]:
    """The marks in `path`; none when no run ever removed anything."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        doc = json.loads(text)
        return [RetentionMark.from_dict(m) for m in doc["retention"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a decision-log retention manifest: {exc}") from exc


def save_marks(path: Path, marks: Sequence[RetentionMark]) -> None:
    """Replace the manifest atomically and durably: the marks must be on disk before the
    segments they describe are deleted, or a crash would leave an unanchored chain."""
    doc = {"format": MANIFEST_FORMAT, "retention": [m.to_dict() for m in marks]}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_directory(path.parent)


class Retains(Protocol):
    def apply_retention(self, now: datetime) -> RetentionMark | None: ...


class RetentionJob:
    """Applies a log's retention when started and then every `interval` seconds, on its
    own thread: deleting old segments is housekeeping, never part of answering a call."""

    def __init__(self, target: Retains, clock: Callable[[], datetime],
                 interval: float = 3600.0) -> None:
        self._target = target
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decisionlog-retention",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run_once(self) -> RetentionMark | None:
        try:
            mark = self._target.apply_retention(self._clock())
        except ConsentAuthzError:
            # The next run tries again; meanwhile the log only keeps more than it must.
            log.warning("decision-log retention failed", exc_info=True)
            return None
        if mark is not None:
            log.info("decision-log retention removed %d entries before sequence %d (%s)",
                     mark.removed, mark.first_sequence, ", ".join(mark.segments))
        return mark

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
