"""Keyed HMAC pseudonyms: how subject ids (and other caller-chosen keys) are stored.

Values are canonicalised first (Unicode NFC): "Zoë" typed on one system and on another
may arrive as different code points for the same text, and a withdrawal or an erasure
sent under one spelling must reach the records made under the other. Validation
(validation.check_subject_id) refuses what canonicalisation will not fix: surrounding
whitespace and control characters. Case is left alone (docs/api.md says why).
"""

from __future__ import annotations

import hmac
import unicodedata
from collections.abc import Sequence

#: What a key fingerprint is the keyed hash of: never the key, never anything secret.
_FINGERPRINT_LABEL = b"consentauthz key fingerprint v1"


def key_fingerprint(key: bytes) -> str:
    """A short, stable name for a secret key that reveals nothing about it: HMAC-SHA256
    under the key of a fixed label (docs/security.md: key fingerprints). Two servers with
    the same key id but different keys get different fingerprints."""
    return hmac.digest(key, _FINGERPRINT_LABEL, "sha256").hex()[:32]


def canonical(value: str) -> str:
    """The one spelling of a caller-chosen id that is pseudonymised (NFC). ASCII ids (most
    e-mail addresses and database keys) are their own canonical form."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


class Pseudonymizer:
    """HMAC-SHA256 under a secret key ring. Keys never leave this object.

    The current key pseudonymises new subjects; the ring's other keys (older ones, or a
    new one not current yet during a rolling rotation, docs/auditing.md) stay so that a
    subject first seen under another key is still found (`all`), which is how a lookup by
    raw subject id keeps working across key rotations.
    """

    __slots__ = ("_keys",)

    def __init__(self, key: bytes, key_id: str = "k1",
                 previous: Sequence[tuple[str, bytes]] = ()) -> None:
        ring = [*previous, (key_id, key)]
        for kid, k in ring:
            if len(k) < 32:
                raise ValueError("pseudonymisation key must be at least 32 bytes")
            if not kid or ":" in kid:
                raise ValueError("a key id is a short name without ':'")
        if len({kid for kid, _ in ring}) != len(ring):
            raise ValueError("key ids must be unique")
        self._keys = tuple(reversed(ring))  # current first

    @staticmethod
    def _one(key_id: str, key: bytes, value: str) -> str:
        # hmac.digest: the one-shot form, a third of hmac.new's cost (once per decision).
        digest = hmac.digest(key, value.encode("utf-8"), "sha256").hex()
        return f"{key_id}:{digest[:40]}"

    def __call__(self, value: str) -> str:
        key_id, key = self._keys[0]
        return self._one(key_id, key, canonical(value))

    def all(self, value: str) -> tuple[str, ...]:
        """The value's pseudonym under every key of the ring, current key first."""
        value = canonical(value)
        return tuple(self._one(kid, k, value) for kid, k in self._keys)

    @property
    def key_id(self) -> str:
        return self._keys[0][0]

    def fingerprints(self) -> dict[str, str]:
        """Key id -> key_fingerprint, for every key of the ring."""
        return {kid: key_fingerprint(k) for kid, k in self._keys}

    def __repr__(self) -> str:  # never print a key
        return f"Pseudonymizer(key_ids={[kid for kid, _ in self._keys]!r})"


def parse_key_ring(text: str) -> Pseudonymizer:
    """A key file: one key per line, the last is current (the others in any order). A line
    is `<key id>:<hex>` or just `<hex>` (key id k1). Blank lines and # comments are
    skipped."""
    keys: list[tuple[str, bytes]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, hexkey = line.partition(":")
        if not sep:
            key_id, hexkey = "k1", line
        try:
            keys.append((key_id.strip(), bytes.fromhex(hexkey.strip())))
        except ValueError:
            raise ValueError("a pseudonymisation key is hex") from None
    if not keys:
        raise ValueError("the key file holds no key")
    *previous, (current_id, current) = keys
    return Pseudonymizer(current, current_id, previous)
