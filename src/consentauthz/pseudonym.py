"""Keyed HMAC pseudonyms: how subject ids (and other caller-chosen keys) are stored."""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymizer:
    """HMAC-SHA256 under a secret key. The key never leaves this object."""

    __slots__ = ("_key", "_prefix")

    def __init__(self, key: bytes, key_id: str = "k1") -> None:
        if len(key) < 32:
            raise ValueError("pseudonymisation key must be at least 32 bytes")
        self._key = key
        self._prefix = key_id + ":"

    def __call__(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return self._prefix + digest[:40]

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymizer(key_id={self._prefix[:-1]!r})"
