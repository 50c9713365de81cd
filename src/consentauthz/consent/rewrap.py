"""Subject keys re-wrapped under the newest master key, so that an old one can be retired
(`consentauthz keys rewrap | status | retire`; docs/security.md, "Master key management").

A subject key is wrapped (AES-GCM, the subject's pseudonym as associated data) under the
master key that was current when the key was made; every master key of the ring stays
able to unwrap what it wrapped, so the ring only ever grows. `rewrap` unwraps each live
subject key wrapped under an older master key and wraps it again under the current one,
writing it back only if the stored value is still the one it read (compare-and-swap): a
subject erased meanwhile stays erased, and it is safe while the service runs. The subject
keys themselves do not change, so the sealed evidence and birth dates in the ledger stay
as they are (re-wrapping retires a master key; it does not undo the exposure of one that
leaked together with a copy of the key store). Once no live key is wrapped under a master
key, `retire` removes it from the ledger's key fingerprints, after which servers start
without it in their ring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ConfigError
from .fingerprints import forget_key
from .ledger import Ledger
from .sealing import MasterKeys

PAGE = 500


class RewrappableStore(Protocol):
    def wrapped_page(self, after: str, limit: int) -> list[tuple[str, str]]:
        """(subject, wrapped key) of live keys (not destroyed) after `after`, by subject."""
        ...

    def swap_wrapped(self, subject: str, old: str, new: str) -> bool:
        """Store `new` for the subject if it still holds `old`; whether it did."""
        ...


def master_key_id(wrapped: str) -> str:
    """The id of the master key a stored subject key is wrapped under."""
    return wrapped.partition(":")[0]


def live_keys(store: RewrappableStore) -> Iterator[tuple[str, str]]:
    after = ""
    while True:
        page = store.wrapped_page(after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1][0]


def key_counts(store: RewrappableStore) -> dict[str, int]:
    """Live subject keys per master key id."""
    counts: dict[str, int] = {}
    for _, wrapped in live_keys(store):
        kid = master_key_id(wrapped)
        counts[kid] = counts.get(kid, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class RewrapReport:
    #: wrapped again under the current master key
    rewrapped: int = 0
    #: already under it
    current: int = 0
    #: changed by someone else between the read and the write (erased, or re-wrapped by
    #: another run): left as that writer left it
    changed_meanwhile: int = 0
    #: live keys per master key id afterwards
    by_key: dict[str, int] = field(default_factory=dict)


def rewrap(store: RewrappableStore, master: MasterKeys, *, dry_run: bool = False,
           progress: Callable[[int], None] = lambda done: None) -> RewrapReport:
    """Every live subject key under an older master key, wrapped again under the current
    one (`dry_run`: counted, not written). A key wrapped under a master key the ring lacks
    is an error (Unavailable from MasterKeys.unwrap) before anything more is written."""
    report = RewrapReport()
    done = 0
    for subject, wrapped in live_keys(store):
        done += 1
        if master_key_id(wrapped) == master.current:
            report.current += 1
        else:
            data_key = master.unwrap(wrapped, subject)
            again = master.wrap(data_key, subject)
            if dry_run or store.swap_wrapped(subject, wrapped, again):
                report.rewrapped += 1
            else:
                report.changed_meanwhile += 1
        if done % PAGE == 0:
            progress(done)
    progress(done)
    report.by_key = key_counts(store)
    return report


def retire(store: RewrappableStore, ledger: Ledger, master: MasterKeys, key_id: str) -> None:
    """Forget master key `key_id` in the ledger's fingerprints, so that servers may start
    without it. Refused (ConfigError) while it is the current key or any live subject key
    is still wrapped under it (run `rewrap` first, once every replica wraps new keys under
    the current key)."""
    if key_id == master.current:
        raise ConfigError(f"master key {key_id} is the current one (the ring's last line): "
                          "add a newer key, roll it out, and re-wrap first")
    left = key_counts(store).get(key_id, 0)
    if left:
        raise ConfigError(f"{left} subject keys are still wrapped under master key "
                          f"{key_id}: run `consentauthz keys rewrap` first")
    if not forget_key(ledger, "master", key_id):
        raise ConfigError(f"the ledger does not know master key {key_id}")
