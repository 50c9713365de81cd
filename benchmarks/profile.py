"""py-spy over a running server: where its GIL time goes.

Sampled with `--gil` (only stacks that hold the GIL: one GIL is what bounds a Python
server's throughput), `--nonblocking` (the server is not paused to be sampled) and
`--function` (per function, not per line). The raw output (collapsed stacks) is summarised
three ways: by component (each sample goes to the innermost frame that belongs to a
component, so a lock notify inside the decision log counts for the decision log), self
time per function, and inclusive time per consentauthz function.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: (component, path fragments); checked from the innermost frame outwards, first match wins.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("OpenTelemetry tracing (spans, attributes)",
     ("/opentelemetry/trace/", "/opentelemetry/sdk/trace/", "/opentelemetry/context/",
      "/opentelemetry/util/", "/opentelemetry/attributes/", "consentauthz/telemetry.py")),
    ("OpenTelemetry metrics", ("/opentelemetry/metrics/", "/opentelemetry/sdk/metrics/",
                               "consentauthz/metrics.py")),
    ("decision log (queue, hash chain, SQLite)", ("consentauthz/decisionlog/",
                                                  "consentauthz/chain.py")),
    ("consent state (pseudonym, caches, Redis, ledger)",
     ("consentauthz/consent/", "consentauthz/pseudonym.py", "/redis/", "/psycopg")),
    ("engine (facts, rules)", ("consentauthz/engine/",)),
    ("request validation", ("consentauthz/validation.py",)),
    ("checker (decision record, ids)", ("consentauthz/checker.py", "consentauthz/domain.py")),
    ("server edge (convert, servicers, status)", ("consentauthz/server/",
                                                  "/google/protobuf/")),
    ("gRPC Python server (poll loop, thread pool)", ("/grpc/", "concurrent/futures/")),
    ("policy holder, app", ("consentauthz/",)),
)


def py_spy() -> str | None:
    """The py-spy binary beside this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    samples: int
    rate: int = 0
    seconds: float = 0.0
    components: list[tuple[str, float]] = field(default_factory=list)
    self_time: list[tuple[str, float]] = field(default_factory=list)
    inclusive: list[tuple[str, float]] = field(default_factory=list)
    raw_path: str = ""
    error: str = ""
    #: calls the server answered while it was sampled (set by the caller)
    calls: float = 0.0

    @property
    def gil_seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0

    @property
    def gil_us_per_call(self) -> float:
        return 1e6 * self.gil_seconds / self.calls if self.calls else float("nan")


def record(pid: int, seconds: float, output: Path, rate: int = 250) -> subprocess.Popen[str]:
    binary = py_spy()
    assert binary is not None
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
         str(rate), "--format", "raw", "--function", "--gil", "--nonblocking",
         "--full-filenames", "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _split(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    return (m.group("func"), m.group("file")) if m else (frame.strip(), "")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.removeprefix("consentauthz/").removeprefix(".11/")


def _component(files: list[str]) -> str:
    for path in reversed(files):
        for name, fragments in COMPONENTS:
            if any(f in path for f in fragments):
                return name
    return "other (interpreter, threading)"


def summarise(raw: Path, rate: int, seconds: float, top: int = 12) -> Profile:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_split(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        func, path = frames[-1]
        own[f"{func} ({_short(path)})"] += n
        comp[_component([p for _, p in frames])] += n
        for name in {f"{f} ({_short(p)})" for f, p in frames if "consentauthz/" in p}:
            incl[name] += n
    if not total:
        return Profile(0, rate, seconds, raw_path=str(raw), error="no samples")
    return Profile(
        total, rate, seconds,
        [(name, 100 * c / total) for name, c in comp.most_common()],
        [(name, 100 * c / total) for name, c in own.most_common(top)],
        [(name, 100 * c / total) for name, c in incl.most_common(top)],
        str(raw))
