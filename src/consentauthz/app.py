"""Wires everything; owns start and stop order."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from .auditing import AuditReader
from .checker import Checker
from .config import ServeConfig
from .consent import ConsentService, LocalCache, SqliteLedger
from .decisionlog import SqliteDecisionLog
from .engine import CompiledPolicy
from .errors import ConfigError
from .policy import PolicyStore, load_policy_set
from .pseudonym import Pseudonymizer
from .server import GrpcServer

log = logging.getLogger("consentauthz")


def utc_now() -> datetime:
    return datetime.now(UTC)


def load_key(config: ServeConfig) -> bytes:
    if config.pseudonym_key is not None:
        return config.pseudonym_key
    path = config.key_file
    if not path.exists():
        if config.pseudonym_key_file is not None:
            raise ConfigError(f"pseudonymisation key file {path} does not exist")
        # Embedded default: a fresh random key, readable only by this user. Back it up:
        # without it the ledger can no longer be looked up by subject id.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        log.warning("generated a new pseudonymisation key in %s; back it up", path)
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"pseudonymisation key file {path} must hold hex") from None


class PolicyHolder:
    """The active policy. Swapping is one reference assignment: no request sees half."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self._current = compiled

    def __call__(self) -> CompiledPolicy:
        return self._current

    def swap(self, compiled: CompiledPolicy) -> None:
        self._current = compiled


def compile_policy(directory: Path) -> CompiledPolicy:
    return CompiledPolicy(load_policy_set(directory))


class App:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.policy = PolicyHolder(compile_policy(config.policy_dir))
        # Keep every version that ever decided, so its decisions can be replayed.
        self.policy_store = PolicyStore(data / "policies")
        self.policy_store.save(self.policy().policy)
        pseudonymize = Pseudonymizer(load_key(config))
        self.ledger = SqliteLedger(data / "ledger.db")
        self.decision_log = SqliteDecisionLog(data / "decisions.db",
                                              fsync=config.decision_log_fsync)
        self.consent = ConsentService(
            self.ledger, LocalCache(config.cache_entries), pseudonymize,
            lambda: self.policy().policy.taxonomy, utc_now)
        self.checker = Checker(self.consent, self.policy, self.decision_log, pseudonymize,
                               utc_now)
        self.audit = AuditReader(self.decision_log, pseudonymize)
        self.server = GrpcServer(self.checker, self.consent, self.audit, config.listen,
                                 config.workers)

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        if self.config.loopback:
            log.info("listening in plaintext on loopback")
        else:
            log.warning("listening in plaintext on a non-loopback address %s",
                        self.config.listen)
        log.warning("no callers configured: every call is from 'anonymous' and may do "
                    "everything")
        self.server.start()
        log.info("consentauthz serving on port %d, policy %s", self.port,
                 self.policy().version[:12])

    def stop(self, grace: float | None = 5.0) -> None:
        self.server.stop(grace)
        self.decision_log.close()
        self.consent.close()

    def wait(self) -> None:
        self.server.wait()
