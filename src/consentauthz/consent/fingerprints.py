"""Which keys a ledger was written with, kept in the ledger itself.

Pseudonyms and sealed values are only as consistent as the keys behind them: two servers
on one ledger with different pseudonymisation keys each file a subject under a pseudonym
of their own (a withdrawal recorded on one is never seen by the other), and with different
master keys one cannot open what the other sealed. So the ledger records a fingerprint of
every key of each ring it was written with (`key_fingerprint` in pseudonym.py: a keyed
hash of a fixed label, never the key), one JSON object per ring in `ledger_meta`, and a
server checks its rings against them before it serves:

- a key id the ledger knows with another fingerprint: refused (wrong key);
- a key id the ledger knows that the server's ring lacks: refused (records made with it
  would not be found, or not opened);
- a key id the ledger does not know yet (a new ledger, a key rotation): recorded.

A ledger from before fingerprints were kept gets those of the first server that starts
on it (`adopted`; app.py logs it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError, Unavailable
from .ledger import Ledger

KeyKind = Literal["pseudonymisation", "master"]

#: ledger_meta key of each ring's fingerprints
META_KEYS: Mapping[KeyKind, str] = {
    "pseudonymisation": "key_fingerprints.pseudonymisation",
    "master": "key_fingerprints.master",
}

_ATTEMPTS = 20  # compare-and-swap rounds lost to replicas starting at the same moment


class KeyMismatch(ConfigError):
    """The server's key ring does not match the one the ledger was written with."""

    def __init__(self, kind: KeyKind, key_id: str, missing: bool) -> None:
        self.kind = kind
        self.key_id = key_id
        #: True: the ring lacks a key the ledger was written with; False: the ring has a
        #: key of that id, but another key.
        self.missing = missing
        super().__init__(
            f"this ledger was written with {kind} key {key_id}, which this server's key ring "
            "lacks" if missing else
            f"{kind} key {key_id} is not the key this ledger was written with (its "
            "fingerprint differs)")


@dataclass(frozen=True, slots=True)
class RingCheck:
    #: Key ids whose fingerprints this check recorded (sorted).
    recorded: tuple[str, ...] = ()
    #: The ledger held records but no fingerprints of this ring: it was written before
    #: they were kept, and now has the ones of this server's ring.
    adopted: bool = False


def check_key_ring(ledger: Ledger, kind: KeyKind, fingerprints: Mapping[str, str]) -> RingCheck:
    """Compare `fingerprints` (key id -> fingerprint) with what the ledger recorded for
    this ring, and record the key ids it does not know yet. Raises KeyMismatch."""
    meta_key = META_KEYS[kind]
    for _ in range(_ATTEMPTS):
        stored = ledger.meta(meta_key)
        known = _parse(stored, meta_key)
        for key_id in sorted(fingerprints):
            if key_id in known and known[key_id] != fingerprints[key_id]:
                raise KeyMismatch(kind, key_id, missing=False)
        lacking = sorted(set(known) - set(fingerprints))
        if lacking:
            raise KeyMismatch(kind, lacking[0], missing=True)
        new = sorted(set(fingerprints) - set(known))
        if not new:
            return RingCheck()
        adopted = stored is None and ledger.head() > 0
        merged = json.dumps({**known, **{k: fingerprints[k] for k in new}}, sort_keys=True)
        if ledger.swap_meta(meta_key, stored, merged):
            return RingCheck(tuple(new), adopted)
        # Another server recorded meanwhile: compare with what it recorded.
    raise Unavailable(f"the ledger's {kind} key fingerprints keep changing")


def forget_key(ledger: Ledger, kind: KeyKind, key_id: str) -> bool:
    """Remove `key_id` from what the ledger recorded for this ring (a retired key: servers
    may then start without it); False when the ledger does not know it. The caller makes
    sure nothing needs the key any more (consent/rewrap.py)."""
    meta_key = META_KEYS[kind]
    for _ in range(_ATTEMPTS):
        stored = ledger.meta(meta_key)
        known = _parse(stored, meta_key)
        if key_id not in known:
            return False
        del known[key_id]
        if ledger.swap_meta(meta_key, stored, json.dumps(known, sort_keys=True)):
            return True
    raise Unavailable(f"the ledger's {kind} key fingerprints keep changing")


def _parse(stored: str | None, meta_key: str) -> dict[str, str]:
    if stored is None:
        return {}
    try:
        value = json.loads(stored)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"the ledger's {meta_key} entry (ledger_meta) is not a JSON "
                          "object of key id to fingerprint")
    return value
