"""Wires everything; owns start and stop order."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .auditing import Auditor
from .checker import Checker
from .config import ServeConfig, load_callers, load_tls, read_caller_policy
from .consent import (
    ConsentService,
    EntryCipher,
    Freshness,
    InvalidationListener,
    KeyKind,
    KeyMismatch,
    KeyStore,
    Ledger,
    LedgerPoller,
    LocalCache,
    MasterKeys,
    PostgresKeyStore,
    PostgresLedger,
    RedisStateCache,
    Sealer,
    SealingLedger,
    SoleWriter,
    SqliteKeyStore,
    SqliteLedger,
    check_key_ring,
    parse_master_ring,
)
from .datadir import DataDirLock, make_private
from .decisionlog import QueuedDecisionLog, RetentionJob, SqliteDecisionLog
from .domain import PolicyReload
from .engine import CompiledPolicy
from .errors import ConfigError, PolicyError
from .metrics import Metrics
from .policy import PolicyStore, load_policy_set
from .policy.watch import PolicyWatcher
from .pseudonym import Pseudonymizer, parse_key_ring
from .reload import PolicyHolder, PolicyReloader
from .server import COMPONENT_LEDGER, COMPONENT_REDIS, GrpcServer, caller_guard
from .telemetry import MetricsEndpoint, meter

log = logging.getLogger("consentauthz")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _key_file_text(path: Path, explicit: bool, what: str, why: str) -> str:
    """A key ring file; the embedded default creates a fresh random key in it, readable
    only by this user."""
    if not path.exists():
        if explicit:
            raise ConfigError(f"{what} key file {path} does not exist")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        log.warning("generated a new %s key in %s; back it up: %s", what, path, why)
    return path.read_text()


def load_key(config: ServeConfig) -> Pseudonymizer:
    """The pseudonymisation key ring (docs/auditing.md: one key per line, last is current)."""
    if config.pseudonym_key is not None:
        return Pseudonymizer(config.pseudonym_key)
    if config.ledger_url and config.pseudonym_key_file is None:
        raise ConfigError("with a shared --ledger every replica needs the same "
                          "pseudonymisation key: set CONSENTAUTHZ_PSEUDONYM_KEY or "
                          "--pseudonym-key-file (docs/operations.md)")
    path = config.key_file
    text = _key_file_text(path, config.pseudonym_key_file is not None, "pseudonymisation",
                          "without it the ledger can no longer be looked up by subject id")
    try:
        return parse_key_ring(text)
    except ValueError as exc:
        raise ConfigError(f"pseudonymisation key file {path}: {exc}") from None


def load_master_keys(config: ServeConfig) -> MasterKeys:
    """The master key ring that wraps per-subject keys (docs/security.md)."""
    try:
        if config.master_key is not None:
            return MasterKeys([("m1", config.master_key)])
        if config.ledger_url and config.master_key_file is None:
            raise ConfigError("with a shared --ledger every replica needs the same master key: "
                              "set CONSENTAUTHZ_MASTER_KEY or --master-key-file "
                              "(docs/security.md)")
        path = config.master_key_path
        text = _key_file_text(path, config.master_key_file is not None, "master",
                              "without it no sealed evidence or birth date can be read")
        return parse_master_ring(text)
    except ValueError as exc:
        raise ConfigError(f"master key: {exc}") from None


def _key_remedy(config: ServeConfig, kind: KeyKind) -> str:
    """What to do about a key ring the ledger refused (KeyMismatch), for this config."""
    if kind == "pseudonymisation":
        env, flag, path = ("CONSENTAUTHZ_PSEUDONYM_KEY", "--pseudonym-key-file",
                           config.key_file)
        embedded = config.pseudonym_key is None and config.pseudonym_key_file is None
    else:
        env, flag, path = ("CONSENTAUTHZ_MASTER_KEY", "--master-key-file",
                           config.master_key_path)
        embedded = config.master_key is None and config.master_key_file is None
    if config.ledger_url:
        return f"set {env} or {flag} to the key ring the other replicas use"
    restore = f"restore {path} from its backup, or " if embedded else ""
    return f"{restore}set {env} or {flag} to the key ring this ledger was written with"


def check_key_rings(ledger: Ledger, config: ServeConfig, pseudonymize: Pseudonymizer,
                    master: MasterKeys) -> None:
    """Refuse to serve with key rings other than the ones the ledger was written with
    (consent/fingerprints.py); record the fingerprints of keys it has not seen yet."""
    rings: tuple[tuple[KeyKind, dict[str, str]], ...] = (
        ("pseudonymisation", pseudonymize.fingerprints()), ("master", master.fingerprints()))
    for kind, fingerprints in rings:
        try:
            checked = check_key_ring(ledger, kind, fingerprints)
        except KeyMismatch as exc:
            raise ConfigError(f"refusing to start: {exc}: {_key_remedy(config, kind)} "
                              "(docs/security.md, key fingerprints)") from None
        if checked.adopted:
            log.warning("the ledger holds records but no %s key fingerprints (it was written "
                        "before they were kept): recorded those of this server's key ids "
                        "%s; from now on a server with other keys is refused", kind,
                        ", ".join(checked.recorded))
        elif checked.recorded:
            log.info("recorded the fingerprints of %s key ids %s in the ledger", kind,
                     ", ".join(checked.recorded))


def open_ledger(url: str | None, data_dir: Path, read_only: bool = False,
                partitions: int | None = None) -> Ledger:
    """The PostgreSQL ledger at `url` (`partitions`: for a new one), or the embedded SQLite
    one in the data dir."""
    if url:
        return PostgresLedger(url, partitions=partitions)
    return SqliteLedger(data_dir / "ledger.db", read_only=read_only)


def open_for_reading(url: str | None, data_dir: Path, master_key_file: Path | None) -> Ledger:
    """The ledger as offline readers (audit --data-dir, policy diff) open it: read-only,
    and opening sealed values when the master key ring is at hand (else they stay sealed)."""
    inner = open_ledger(url, data_dir, read_only=True)
    path = master_key_file or data_dir / "keys" / "master.key"
    keys = data_dir / "subject_keys.db"
    if not path.is_file() or (not url and not keys.is_file()):
        return inner
    try:
        master = parse_master_ring(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"master key file {path}: {exc}") from None
    store = PostgresKeyStore(url) if url else SqliteKeyStore(keys, read_only=True)
    return SealingLedger(inner, Sealer(master, store))


def open_key_store(url: str | None, data_dir: Path) -> KeyStore:
    """Where the wrapped per-subject keys live: beside the ledger, but not append-only."""
    return PostgresKeyStore(url) if url else SqliteKeyStore(data_dir / "subject_keys.db")


def compile_policy(directory: Path) -> CompiledPolicy:
    return CompiledPolicy(load_policy_set(directory))


_GATE_RESULTS: dict[str, list[str]] = {}


def checked_gate(directory: Path, candidate: CompiledPolicy) -> list[str]:
    """`authoring_gate`, remembered per content (policy version plus its test suites): the
    answer depends on nothing else, and start-ups and reloads ask about the same content
    again and again."""
    digest = hashlib.sha256(candidate.version.encode())
    for path in sorted(directory.rglob("*_test.yaml")):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    key = digest.hexdigest()
    if key not in _GATE_RESULTS:
        _GATE_RESULTS[key] = authoring_gate(directory, candidate)
    return list(_GATE_RESULTS[key])


def authoring_gate(directory: Path, candidate: CompiledPolicy) -> list[str]:
    """A candidate goes live only without lint errors and with every policy test passing
    (the same checks `policy lint` and `policy test` run for authors and CI), on the
    candidate as compiled: the pack is not loaded a second time. The cross-check of the
    cases against a plain casbin.Enforcer is bounded here (authoring/runner.py
    GATE_CASBIN_BUDGET); `policy test` runs it in full (docs/policy-authoring.md)."""
    from .authoring import load_suites, run_suites
    from .authoring.lint import lint_compiled
    from .authoring.runner import GATE_CASBIN_BUDGET

    try:
        suites = load_suites(directory)
    except PolicyError as exc:
        return [str(f) for f in lint_compiled(candidate, exc) if f.severity == "error"]
    problems = [str(f) for f in lint_compiled(candidate, suites) if f.severity == "error"]
    run = run_suites(candidate, suites, casbin_budget=GATE_CASBIN_BUDGET)
    problems += [f"{r.case.file}:{r.case.line}: test failed: {r.case.name}: "
                 + "; ".join(r.problems) for r in run.results if not r.passed]
    if not run.results:
        problems.append("no policy test cases: a policy ships with its tests")
    if run.casbin_checked < len(run.results):
        log.info("policy %s: %d of %d test cases cross-checked against plain casbin here "
                 "(%d rules); `consentauthz policy test` checks them all",
                 candidate.version[:12], run.casbin_checked, len(run.results),
                 len(candidate.rules))
    return problems


class App:
    def __init__(self, config: ServeConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics(meter())
        address = config.metrics_address
        self.metrics_endpoint = MetricsEndpoint(*address) if address else None
        data = config.data_dir
        make_private(data)  # personal data and keys: this user's only
        # Before anything opens a file in the data dir: it serves one server at a time.
        self._data_lock = DataDirLock.acquire(data)
        try:
            self._build(config)
        except BaseException:
            self._abandon()
            raise

    def _build(self, config: ServeConfig) -> None:
        data = config.data_dir
        policy_dir = config.policy_dir
        # Keep every version that ever decided, so its decisions can be replayed.
        self.policy_store = PolicyStore(data / "policies")
        self.policy = self._initial_policy(policy_dir)
        self.reloader = PolicyReloader(policy_dir, self.policy, self.policy_store,
                                       checked_gate, utc_now, self.metrics)
        self.watcher = (PolicyWatcher(policy_dir, self.reloader.reload,
                                      interval=config.watch_interval,
                                      debounce=config.watch_debounce)
                        if config.watch_policies else None)
        pseudonymize = load_key(config)
        # Evidence and birth dates are sealed under per-subject keys (consent/sealing.py).
        master = load_master_keys(config)
        self.ledger = SealingLedger(
            open_ledger(config.ledger_url, data, partitions=config.ledger_partitions),
            Sealer(master, open_key_store(config.ledger_url, data)))
        check_key_rings(self.ledger, config, pseudonymize, master)
        self.decision_store = SqliteDecisionLog(
            data / "decisions.db", fsync=config.decision_log_fsync,
            max_segment_bytes=config.decision_log_segment_bytes,
            retention_days=config.decision_log_retention_days)
        # Group commit by whichever caller finds no write in progress (no writer thread in
        # block mode). Block mode: no answer before its entry is committed; a full queue
        # slows callers down instead of losing entries.
        self.decision_log = QueuedDecisionLog(self.decision_store,
                                              mode=config.decision_log_mode)
        self.metrics.observe_decision_log(queue_depth=self.decision_log.queue_depth,
                                          dropped=self.decision_log.dropped)
        self.retention = (RetentionJob(self.decision_store, utc_now)
                          if config.decision_log_retention_days else None)
        # First: a database replaced after this read is noticed by the first poll.
        identity = self.ledger.identity()
        self.cache = LocalCache(config.cache_entries, watermark=self.ledger.heads())
        # Keys carry the ledger's identity: a Redis left over from another database (or
        # shared with one) can never be read as this ledger's state.
        self.redis = (RedisStateCache(config.redis_url, utc_now,
                                      self._redis_prefix(identity),
                                      config.redis_timeout,
                                      on_change=self._component(COMPONENT_REDIS),
                                      cipher=EntryCipher(master.derive(b"redis-cache/v1")),
                                      partitions=self.ledger.partitions,
                                      cluster=config.redis_cluster)
                      if config.redis_url else None)
        # A shared ledger has writers elsewhere: bound staleness by polling it, and hear
        # of writes at once through Redis when there is one. Each poll also notices a
        # ledger that went back or was replaced (docs/operations.md).
        self.freshness: Freshness = (
            LedgerPoller(self.ledger, self.cache, config.max_staleness,
                         on_change=self._component(COMPONENT_LEDGER), identity=identity,
                         on_replaced=self._ledger_replaced)
            if config.ledger_url else SoleWriter(self.cache))
        self.invalidations = (InvalidationListener(config.redis_url, self.redis.channel,
                                                   self.cache)
                              if self.redis is not None and config.redis_url
                              and config.ledger_url else None)
        self.consent = ConsentService(
            self.ledger, self.cache, pseudonymize,
            lambda: self.policy().policy.taxonomy, utc_now, self.metrics,
            freshness=self.freshness, shared=self.redis, shredder=self.ledger,
            clock_skew=timedelta(seconds=config.clock_skew))
        self.checker = Checker(self.consent, self.policy, self.decision_log,
                               utc_now, self.metrics)
        self.audit = Auditor(self.decision_store, self.ledger, self.policy_store, pseudonymize,
                             utc_now)
        # Transport and callers (docs/security.md): plaintext only on loopback; with
        # callers configured, every call is authenticated and checked by callers/ policy.
        self.server = GrpcServer(
            self.checker, self.consent, self.audit, lambda: self.policy.status,
            config.listen, config.workers, tls=load_tls(config), loopback=config.loopback,
            guard=caller_guard(load_callers(config.callers_file) if config.callers_file
                               else (), read_caller_policy(config.policy_dir),
                               self.policy().policy.taxonomy),
            reuse_port=config.reuse_port, health_listen=config.health_listen)

    def _redis_prefix(self, identity: str) -> str:
        return f"{self.config.redis_prefix}{identity}:"

    def _ledger_replaced(self, identity: str, heads: tuple[int, ...]) -> None:
        """The poller found the ledger went back or was replaced: nothing Redis holds for
        the old one is read again, and invalidations come from the new one's channel."""
        if self.redis is not None:
            self.redis.fence(heads, self._redis_prefix(identity))
            if self.invalidations is not None:
                self.invalidations.switch(self.redis.channel)

    def _abandon(self) -> None:
        """A start that failed half-way: close what was opened, free the data dir."""
        ledger = getattr(self, "ledger", None)
        # The queued log closes its store (and stops its writer thread, in drop mode).
        decisions = (getattr(self, "decision_log", None)
                     or getattr(self, "decision_store", None))
        try:
            if ledger is not None:
                ledger.close()
            if decisions is not None:
                decisions.close()
        finally:
            self._data_lock.release()

    def _component(self, name: str) -> Callable[[bool], None]:
        def changed(serving: bool) -> None:
            server = getattr(self, "server", None)
            if server is not None:
                server.set_component(name, serving)
                if name == COMPONENT_LEDGER:
                    # Without the ledger no state can be proven fresh: nothing is answered.
                    server.set_component("", serving)
        return changed

    def _initial_policy(self, policy_dir: Path) -> PolicyHolder:
        """The policy directory goes live at start-up only through the same gate as a hot
        reload; otherwise the version last live in this data dir keeps serving, and with
        none, the server does not start (a restart must not bypass the policy tests)."""
        now = utc_now()
        try:
            candidate = compile_policy(policy_dir)
            problems = checked_gate(policy_dir, candidate)
        except PolicyError as exc:
            candidate, problems = None, list(exc.problems)
        if candidate is not None and not problems:
            self.policy_store.save(candidate.policy)
            self.policy_store.set_live(candidate.version)
            return PolicyHolder(candidate, policy_dir, now)
        live = self.policy_store.live()
        if live is None:
            raise ConfigError(f"the policy in {policy_dir} does not pass its checks and no "
                              "earlier version was live in this data dir:\n  "
                              + "\n  ".join(problems))
        log.error("the policy in %s does not pass its checks; serving the last live version "
                  "%s:\n  %s", policy_dir, live[:12], "\n  ".join(problems))
        holder = PolicyHolder(CompiledPolicy(self.policy_store.load(live)), policy_dir, now)
        holder.reject(PolicyReload(now, False, candidate.version if candidate else "",
                                   tuple(problems)))
        return holder

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def health_port(self) -> int:
        """The plaintext health listener's port (--health-listen); 0 without one."""
        return self.server.health_port

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint else None

    def start(self) -> None:
        if self.config.tls_cert is None:  # GrpcServer refused this off loopback
            log.warning("listening in plaintext on loopback %s: only this machine can "
                        "connect (--tls-cert and --tls-key to serve others)", self.config.listen)
        else:
            log.info("listening with %s on %s", "mutual TLS" if self.config.client_ca
                     else "TLS (no client certificates)", self.config.listen)
        if self.config.callers_file is None:
            log.warning("no callers configured: every call is from 'anonymous' and may do "
                        "everything")
        else:
            log.info("callers from %s, caller policy from %s/callers", self.config.callers_file,
                     self.config.policy_dir)
        # Before the gRPC server: a port clash fails the start before any call is served.
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.start()
        if self.invalidations is not None:
            self.invalidations.start()
        self.freshness.start()
        if self.redis is not None:
            self.redis.start()
        self.server.start()
        if self.redis is not None:
            self.server.set_component(COMPONENT_REDIS, self.redis.ping())
        if isinstance(self.freshness, LedgerPoller):
            self._component(COMPONENT_LEDGER)(self.freshness.healthy)
        if self.retention is not None:
            self.retention.start()
        if self.watcher is not None:
            self.watcher.start()
            self.policy.set_watching(True)
        log.info("consentauthz serving on port %d, policy %s", self.port,
                 self.policy().version[:12])

    def stop(self, grace: float | None = 5.0) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.policy.set_watching(False)
        self.server.stop(grace)
        if self.retention is not None:
            self.retention.stop()
        self.decision_log.close()  # writes what is queued, then closes the store
        self.freshness.stop()
        if self.invalidations is not None:
            self.invalidations.stop()
        if self.redis is not None:
            self.redis.close()
        self.consent.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self._data_lock.release()

    def wait(self) -> None:
        self.server.wait()
