"""Where the SQLite decision log keeps its files, and how a full segment is sealed.

For the active file `DIR/decisions.db`:

    decisions.db                            the active segment: every append goes here
    decisions-000000000001-000000004711.db  sealed segments, named by the first and last
                                            sequence they hold; read-only once sealed
    decisions.retention.json                retention marks (retention.py)

The active segment keeps its name, so a log that never rotates is exactly the single
file it always was, and tools that open `decisions.db` see the newest entries. Sealing is
one rename of a closed file, so a crash leaves either the old name or the new one, never
a half-sealed segment; the chain needs no bookkeeping to continue across the cut because
each entry carries its predecessor's hash.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

ACTIVE_NAME = "decisions.db"
_DIGITS = 12


@dataclass(frozen=True, slots=True, order=True)
class Sealed:
    first: int
    last: int
    path: Path


class Layout:
    def __init__(self, active: Path) -> None:
        self.active = active
        self._pattern = re.compile(
            rf"^{re.escape(active.stem)}-(\d+)-(\d+){re.escape(active.suffix)}$")

    @classmethod
    def at(cls, directory_or_path: Path) -> Layout:
        """A directory holds `decisions.db` and its segments; a file path names the active
        segment itself (the segments go next to it)."""
        if directory_or_path.is_dir():
            return cls(directory_or_path / ACTIVE_NAME)
        return cls(directory_or_path)

    @property
    def manifest(self) -> Path:
        return self.active.with_name(self.active.stem + ".retention.json")

    def sealed_path(self, first: int, last: int) -> Path:
        return self.active.with_name(
            f"{self.active.stem}-{first:0{_DIGITS}d}-{last:0{_DIGITS}d}{self.active.suffix}")

    def sealed(self) -> list[Sealed]:
        """Sealed segments, oldest first."""
        found = []
        directory = self.active.parent
        if not directory.is_dir():
            return []
        for p in directory.iterdir():
            m = self._pattern.match(p.name)
            if m and p.is_file():
                found.append(Sealed(int(m[1]), int(m[2]), p))
        return sorted(found)


def seal_file(active: Path, target: Path) -> None:
    """Rename a closed active segment to its sealed name, then make it read-only.

    Only the rename must succeed (it is what seals); the permission change and the
    directory sync are best effort on top."""
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    os.rename(active, target)
    with contextlib.suppress(OSError):
        os.chmod(target, stat.S_IRUSR)  # read-only, and this user's only
    sync_directory(target.parent)


def sync_directory(directory: Path) -> None:
    """Make renames and deletions in `directory` durable (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
