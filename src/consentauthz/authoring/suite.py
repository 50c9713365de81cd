"""Policy test suites (`policies/**/*_test.yaml`): the file format and its parsing.

```yaml
name: GDPR consent lifecycle
now: 2026-06-01T12:00:00Z            # default decision time of every case
cases:
  - name: a grant allows
    subject: {jurisdiction: DE, age: 14}          # or birth_date: 2012-01-31; erased: true
    consent:                                      # ledger records, oldest first
      - {action: grant, purpose: marketing, method: affirmative, explicit: false,
         categories: [user.contact.email], collected_at: 2026-05-01T00:00:00Z,
         expires_at: 2027-05-01T00:00:00Z}
    check: {purpose: marketing.communications.email, data_category: user.contact.email,
            jurisdiction: DE, context: {gpc: "1"}, now: 2026-06-01T12:00:00Z}
    expect: {decision: ALLOW, reason: CONSENT_GIVEN, legal_basis: consent,
             rule: gdpr.csv:64}                   # legal_basis and rule are optional
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from ..domain import CollectionMethod, ConsentAction, Effect, Reason
from ..errors import PolicyError

SUITE_GLOB = "*_test.yaml"

_ACTIONS = {
    "grant": ConsentAction.GRANT, "withdraw": ConsentAction.WITHDRAW,
    "object": ConsentAction.OBJECT, "opt_out": ConsentAction.OPT_OUT_OF_SALE,
    "opt_in": ConsentAction.OPT_IN_TO_SALE, "limit_sensitive": ConsentAction.LIMIT_SENSITIVE,
}
_METHODS = {
    "affirmative": CollectionMethod.AFFIRMATIVE, "pre_ticked": CollectionMethod.PRE_TICKED,
    "implied": CollectionMethod.IMPLIED, "parental": CollectionMethod.PARENTAL,
}


@dataclass(frozen=True, slots=True)
class EventSpec:
    action: ConsentAction
    purpose: str
    categories: tuple[str, ...]
    method: CollectionMethod
    explicit: bool
    collected_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Expectation:
    decision: Effect
    reason: Reason
    legal_basis: str | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Case:
    suite: str
    name: str
    file: str
    line: int
    jurisdiction: str
    birth_date: date | None
    events: tuple[EventSpec, ...]
    purpose: str
    data_category: str
    check_jurisdiction: str
    context: Mapping[str, str]
    now: datetime
    expect: Expectation
    #: The subject was erased (before `now`).
    erased: bool = False

    @property
    def id(self) -> str:
        return f"{self.suite} :: {self.name}"


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    file: str
    cases: tuple[Case, ...] = field(default=())


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping (to report file:line)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PolicyError([f"{where}: {value!r} is not an ISO 8601 time"]) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise PolicyError([f"{where}: expected a time, got {value!r}"])


def _birth(subject: Mapping[str, Any], now: datetime, where: str) -> date | None:
    if "birth_date" in subject:
        return _time(subject["birth_date"], where).date()
    if "age" in subject:
        age = subject["age"]
        if not isinstance(age, int) or not 0 <= age < 130:
            raise PolicyError([f"{where}: age must be a whole number of years"])
        today = now.date()
        try:
            return today.replace(year=today.year - age)
        except ValueError:  # 29 February
            return today.replace(year=today.year - age, day=28)
    return None


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(d) - allowed - {"__line__"}
    if unknown:
        raise PolicyError([f"{where}: unknown key(s) {', '.join(sorted(unknown))}"])


def _event(d: Any, now: datetime, where: str) -> EventSpec:
    if not isinstance(d, dict):
        raise PolicyError([f"{where}: a consent record is a mapping"])
    where = f"{where.rsplit(':', 1)[0]}:{d.get('__line__', '?')}"
    _check_keys(d, {"action", "purpose", "categories", "method", "explicit", "collected_at",
                    "expires_at"}, where)
    action = _ACTIONS.get(str(d.get("action")))
    if action is None:
        raise PolicyError([f"{where}: action must be one of {', '.join(_ACTIONS)}"])
    method_name = d.get("method", "affirmative")
    method = _METHODS.get(str(method_name))
    if method is None:
        raise PolicyError([f"{where}: method must be one of {', '.join(_METHODS)}"])
    return EventSpec(
        action=action, purpose=str(d.get("purpose") or ""),
        categories=tuple(str(c) for c in d.get("categories") or ()), method=method,
        explicit=bool(d.get("explicit", False)),
        collected_at=_time(d["collected_at"], where) if "collected_at" in d
        else now - timedelta(days=1),
        expires_at=_time(d["expires_at"], where) if "expires_at" in d else None)


def _case(d: Any, suite: str, rel: str, default_now: datetime | None) -> Case:
    if not isinstance(d, dict):
        raise PolicyError([f"{rel}: every case is a mapping"])
    where = f"{rel}:{d.get('__line__', '?')}"
    _check_keys(d, {"name", "subject", "consent", "check", "expect"}, where)
    check = d.get("check")
    expect = d.get("expect")
    if not isinstance(check, dict) or not isinstance(expect, dict) or not d.get("name"):
        raise PolicyError([f"{where}: a case needs name, check and expect"])
    _check_keys(check, {"purpose", "data_category", "jurisdiction", "context", "now"}, where)
    _check_keys(expect, {"decision", "reason", "legal_basis", "rule"}, where)
    now = _time(check["now"], where) if "now" in check else default_now
    if now is None:
        raise PolicyError([f"{where}: no 'now' (set it on the check or the suite)"])
    subject = d.get("subject") or {}
    _check_keys(subject, {"jurisdiction", "birth_date", "age", "erased"}, where)
    try:
        decision = Effect(str(expect["decision"]).upper())
        reason = Reason(str(expect["reason"]))
    except (KeyError, ValueError):
        raise PolicyError([f"{where}: expect needs decision (ALLOW/DENY) and a known "
                           "reason code"]) from None
    context = {str(k): str(v) for k, v in (check.get("context") or {}).items()
               if k != "__line__"}
    return Case(
        suite=suite, name=str(d["name"]), file=rel, line=int(d.get("__line__", 0)),
        jurisdiction=str(subject.get("jurisdiction") or ""),
        birth_date=_birth(subject, now, where),
        events=tuple(_event(e, now, where) for e in d.get("consent") or ()),
        purpose=str(check.get("purpose") or ""),
        data_category=str(check.get("data_category") or ""),
        check_jurisdiction=str(check.get("jurisdiction") or ""),
        context=context, now=now,
        expect=Expectation(decision, reason,
                           None if "legal_basis" not in expect else str(expect["legal_basis"]
                                                                         or ""),
                           None if "rule" not in expect else str(expect["rule"])),
        erased=bool(subject.get("erased", False)))


def load_suites(root: Path) -> list[Suite]:
    suites = []
    for path in sorted(root.rglob(SUITE_GLOB)):
        rel = path.relative_to(root).as_posix()
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise PolicyError([f"{rel}:{mark.line + 1 if mark else '?'}: not valid YAML"]
                              ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise PolicyError([f"{rel}: a suite is a mapping with a 'cases' list"])
        name = str(data.get("name") or rel)
        default_now = _time(data["now"], rel) if "now" in data else None
        cases = tuple(_case(c, name, rel, default_now) for c in data["cases"])
        suites.append(Suite(name, rel, cases))
    return suites
