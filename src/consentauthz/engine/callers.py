"""The caller policy: which caller may call which RPC and, for `DecisionService.Check` and
`BatchCheck`, which purposes and data categories it may ask about (purpose binding).

It is a Casbin model and policy (`<policy dir>/callers/model.conf` and `policy.csv`,
docs/security.md); a plain `casbin.Enforcer` decides. The model must be the canonical
one below: its matcher walks role links only for callers, so purposes and categories
(caller-chosen strings) never reach casbin's role manager, and callers are checked
against the configured names before casbin sees them. No I/O: the texts are passed in.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable
from typing import Any

import casbin
from casbin.model import Model

from ..errors import PolicyError
from ..policy import Taxonomy
from ..policy.loader import split_policy_line
from .compiled import _model_signature

CALLER_MODEL = """\
[request_definition]
r = caller, rpc, purpose, category

[policy_definition]
p = caller, rpc, purpose, category

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.caller, p.caller) && keyMatch(r.rpc, p.rpc) && covers(r.purpose, p.purpose) \
&& covers(r.category, p.category)
"""
_SIGNATURE = _model_signature(CALLER_MODEL)

#: Any RPC, purpose or category.
ANY = "*"
#: The purpose/category of a request that has none (every RPC but the checks) or whose
#: value is not shaped like a taxonomy key: only `*` covers it.
NO_KEY = ""
#: The RPCs whose purposes and categories are bound.
CHECK_RPCS = frozenset({"DecisionService.Check", "DecisionService.BatchCheck"})
#: The shape of every fideslang key (dot-separated lower-case words); what the caller
#: policy can bind. Anything else is NO_KEY here (and INVALID_ARGUMENT or a deny later).
KEY = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*\Z")
MAX_KEY = 128
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_RPC = re.compile(r"([A-Za-z][A-Za-z0-9]*)\.(\*|[A-Za-z][A-Za-z0-9]*)\Z")
#: Memoised answers kept at most; (caller, rpc) pairs are few, keys are bounded by the
#: regex and length, and the memo is simply emptied when full.
MEMO_LIMIT = 65_536


def as_key(value: str) -> str:
    """`value` when it is shaped like a taxonomy key, else NO_KEY."""
    return value if len(value) <= MAX_KEY and KEY.match(value) else NO_KEY


def covers(requested: str, granted: str) -> bool:
    """A granted key covers itself and its descendants (fideslang keys are dot paths)."""
    if granted == ANY:
        return True
    return requested != NO_KEY and (requested == granted
                                    or requested.startswith(granted + "."))


class CallerPolicy:
    """A validated caller policy. Thread-safe; answers are memoised (the policy is fixed
    for the life of the process: a change to callers/ takes a restart)."""

    def __init__(self, model_text: str, policy_text: str, source: str, *,
                 rpcs: Collection[str], callers: Collection[str],
                 taxonomy: Taxonomy | None = None) -> None:
        self.source = source
        self.callers = frozenset(callers)
        problems: list[str] = []
        if _model_signature(model_text) != _SIGNATURE:
            raise PolicyError([f"{source}/model.conf: must be the consentauthz caller model "
                               "(docs/security.md) with exactly its request, policy, role, "
                               "effect and matcher definitions"])
        rules, links = self._parse(policy_text, source, set(rpcs), taxonomy, problems)
        if problems:
            raise PolicyError(problems)
        model = Model()
        model.load_model_from_text(CALLER_MODEL)
        enforcer: Any = casbin.Enforcer(model)
        enforcer.add_function("covers", covers)
        if rules:
            enforcer.add_named_policies("p", rules)
        if links:
            enforcer.add_named_grouping_policies("g", links)
        self._enforcer = enforcer
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str, str, str], bool] = {}

    @staticmethod
    def _parse(text: str, source: str, rpcs: set[str], taxonomy: Taxonomy | None,
               problems: list[str]) -> tuple[list[list[str]], list[list[str]]]:
        services = {r.split(".", 1)[0] for r in rpcs}
        rules: list[list[str]] = []
        links: list[list[str]] = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}/policy.csv:{lineno}"
            ptype, *fields = split_policy_line(line)
            if ptype == "g":
                if len(fields) != 2 or not all(NAME.match(f) for f in fields):
                    problems.append(f"{where}: a role line is `g, caller, group` (names of "
                                    "a-z 0-9 . _ -)")
                else:
                    links.append(fields)
                continue
            if ptype != "p":
                problems.append(f"{where}: unknown line type {ptype!r} (p or g)")
                continue
            if len(fields) != 4:
                problems.append(f"{where}: a rule is `p, caller, rpc, purpose, category`")
                continue
            caller, rpc, purpose, category = fields
            if not NAME.match(caller):
                problems.append(f"{where}: caller {caller!r} is not a caller or group name")
            if rpc != ANY:
                match = _RPC.match(rpc)
                if match is None:
                    problems.append(f"{where}: rpc {rpc!r} must be *, Service.* or "
                                    "Service.Method")
                elif match.group(2) == ANY and match.group(1) not in services:
                    problems.append(f"{where}: no service {match.group(1)!r} (known: "
                                    f"{', '.join(sorted(services))})")
                elif match.group(2) != ANY and rpc not in rpcs:
                    problems.append(f"{where}: no RPC {rpc!r}")
            for what, value, known in (
                    ("purpose", purpose, taxonomy.purposes if taxonomy else None),
                    ("category", category, taxonomy.categories if taxonomy else None)):
                if value == ANY:
                    continue
                if as_key(value) == NO_KEY:
                    problems.append(f"{where}: {what} {value!r} must be * or a taxonomy key")
                elif known is not None and value not in known:
                    problems.append(f"{where}: {what} {value!r} is not in the taxonomy")
            bound = purpose != ANY or category != ANY
            if bound and _RPC.match(rpc) and not rpc.endswith(".*") and rpc not in CHECK_RPCS:
                problems.append(f"{where}: only {' and '.join(sorted(CHECK_RPCS))} carry a "
                                f"purpose and category; a rule for {rpc} must use * for both")
            rules.append(fields)
        return rules, links

    def allows(self, caller: str, rpc: str, purpose: str = NO_KEY,
               category: str = NO_KEY) -> bool:
        """May `caller` call `rpc` (`Service.Method`) about this purpose and category?
        Callers that are not configured are refused without consulting casbin, and values
        not shaped like keys are NO_KEY, so nothing caller-chosen grows its state."""
        if caller not in self.callers:
            return False
        key = (caller, rpc, as_key(purpose), as_key(category))
        answer = self._memo.get(key)
        if answer is None:
            with self._lock:
                answer = bool(self._enforcer.enforce(*key))
                if len(self._memo) >= MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = answer
        return answer

    def allows_all(self, caller: str, rpc: str,
                   pairs: Iterable[tuple[str, str]]) -> bool:
        """`allows` for every (purpose, category) pair; one refusal refuses all."""
        return all(self.allows(caller, rpc, p, c) for p, c in set(pairs))
