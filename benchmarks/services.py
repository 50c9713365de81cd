"""The processes a run starts: its own redis-server, `consentauthz serve` replicas, the
no-op floor server and the decision-log variants. Every one is started here, on loopback
and a free port, and stopped by its own process id.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from tests.redis_server import RedisServer

from .subjects import MASTER_KEY, PSEUDONYM_KEY

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "consentauthz"


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


class RedisProcess(RedisServer):
    """A redis-server of this run's own, started at once: the test suite's (its own free
    port, never the machine's 6379, no persistence), with a patient client for bulk
    loads."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])


@dataclass
class Server:
    """A server process that printed `... port N`; `ready_seconds` from spawn to that."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    ready_seconds: float
    output: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> tuple[float, float]:
        return rss_mb(self.proc.pid)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode or 0)


def _spawn(name: str, argv: Sequence[str], env: dict[str, str], timeout: float,
           pattern: str = r"port (\d+)") -> Server:
    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    port = 0
    # readline blocks; a timer kills a server that never gets ready.
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(pattern, line):
                port = int(m.group(1))
                break
    finally:
        timer.cancel()
    ready = time.perf_counter() - started
    if not port:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s:\n"
                           + "".join(seen[-30:]))
    server = Server(name, proc, port, ready, seen)

    def drain() -> None:  # so the process never blocks on a full pipe
        for line in proc.stdout or ():
            if len(server.output) < 10_000:
                server.output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    wait_ready(server.target)
    return server


def wait_ready(target: str, timeout: float = 20) -> None:
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    finally:
        channel.close()


def server_env() -> dict[str, str]:
    env = dict(os.environ, CONSENTAUTHZ_PSEUDONYM_KEY=PSEUDONYM_KEY.hex(),
               CONSENTAUTHZ_MASTER_KEY=MASTER_KEY.hex())
    # A run measures the server, not an exporter.
    for key in list(env):
        if key.startswith("OTEL_"):
            del env[key]
    return env


def start_serve(name: str, data_dir: Path, *, ledger: str | None = None,
                redis_url: str | None = None, policies: Path | None = None,
                extra: Sequence[str] = (), listen: str = "127.0.0.1:0",
                timeout: float = 120) -> Server:
    """`consentauthz serve` exactly as an operator runs it (the CLI, its defaults)."""
    argv = [str(BIN), "serve", "--listen", listen, "--data-dir", str(data_dir), "--no-watch"]
    if ledger:
        argv += ["--ledger", ledger]
    if redis_url:
        argv += ["--redis-url", redis_url]
    if policies:
        argv += ["--policies", str(policies)]
    return _spawn(name, [*argv, *extra], server_env(), timeout,
                  pattern=r"serving on port (\d+)")


def start_noop(workers: int = 16) -> Server:
    return _spawn("noop", [sys.executable, "-m", "benchmarks.noop_server", "--workers",
                           str(workers)], dict(os.environ), 30)


def start_variant(name: str, data_dir: Path, log: str, *, ledger: str, redis_url: str,
                  tracing: str = "default", timeout: float = 120) -> Server:
    """benchmarks/variant_server.py: the same App, with the decision log `log` and
    tracing `tracing` (default: as serve, no spans; exported: every span recorded and
    encoded for OTLP)."""
    return _spawn(name, [sys.executable, "-m", "benchmarks.variant_server", "--data-dir",
                         str(data_dir), "--log", log, "--ledger", ledger, "--redis-url",
                         redis_url, "--tracing", tracing], server_env(), timeout,
                  pattern=r"serving on port (\d+)")
