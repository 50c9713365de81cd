"""Past policy versions, content-addressed under the data dir, so any logged decision can be
re-evaluated with the exact policy that made it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import NotFound, PolicyError
from .loader import PolicySet, load_policy_set


class PolicyStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, policy: PolicySet) -> Path:
        """Idempotent: a version already kept is left as it is."""
        target = self.root / policy.version
        if target.is_dir():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        for name, data in policy.files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            os.replace(staging, target)  # atomic: a version dir is complete or absent
        except OSError:
            if not target.is_dir():
                raise
        return target

    def load(self, version: str) -> PolicySet:
        if len(version) != 64 or not all(c in "0123456789abcdef" for c in version):
            raise NotFound("not a policy version")
        path = self.root / version
        if not path.is_dir():
            raise NotFound(f"policy version {version[:12]} is not kept here")
        policy = load_policy_set(path)
        if policy.version != version:
            raise PolicyError([f"{path}: content does not hash to its version (tampered, or "
                               "a different fideslang release)"])
        return policy

    def set_live(self, version: str) -> None:
        """Remember which version went live last (atomically), for a restart that finds the
        policy directory broken."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".LIVE.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / "LIVE")

    def live(self) -> str | None:
        path = self.root / "LIVE"
        if not path.is_file():
            return None
        version = path.read_text().strip()
        return version if (self.root / version).is_dir() else None

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))
