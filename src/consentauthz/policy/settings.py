"""Numeric policy settings that rules refer to through facts (ages, consent lifetime)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import MappingProxyType
from typing import Any

from ..errors import PolicyError


@dataclass(frozen=True, slots=True)
class PolicySettings:
    #: A grant without expires_at stops being valid this long after it was collected.
    consent_lifetime: timedelta
    #: Per jurisdiction, the age below which consent must come from a holder of parental
    #: responsibility: GDPR Art. 8 (settings.yaml), COPPA's 13 for the US states (their
    #: regime folders' settings.yaml); `default` for jurisdictions in neither.
    digital_consent_age: Mapping[str, int]
    digital_consent_age_default: int
    #: CCPA §1798.120(c): below this age sale/share needs an opt-in ...
    ccpa_minor_opt_in_age: int
    #: ... and below this age the opt-in must come from a parent or guardian.
    ccpa_parental_authorisation_age: int
    #: Where consent below the digital consent age is given jointly by the child and a
    #: holder of parental responsibility (France, Loi 78-17 art. 45) ...
    joint_consent_jurisdictions: frozenset[str] = frozenset()
    #: ... and whether that also holds for jurisdictions without an age of their own
    #: (unknown ones: the stricter reading).
    joint_consent_default: bool = False
    #: GDPR Art. 21(2)-(3): the purposes that are direct marketing; an objection to one of
    #: them covers all of them.
    direct_marketing_purposes: tuple[str, ...] = ()
    #: Regimes where a GPC signal from a known consumer is that consumer's opt-out, to be
    #: remembered (CCPA 11 CCR §7025(c)(1), (c)(5); the states' universal opt-out rules),
    #: with the date from which their law requires it.
    gpc_remembered_from: Mapping[str, date] = field(
        default_factory=lambda: MappingProxyType({}))
    #: RCW 19.373.070(2)(h): a signed authorisation to sell consumer health data expires at
    #: most this many years after it is signed; a grant recorded with a later expiry (or
    #: none) is no such authorisation.
    authorisation_years: int = 1
    #: Jurisdictions whose parental consent age comes from a regime folder (the US states):
    #: from that age on, only the consumer's own grant is their consent.
    own_consent_jurisdictions: frozenset[str] = frozenset()

    def consent_age(self, jurisdiction: str) -> int:
        return self.digital_consent_age.get(jurisdiction, self.digital_consent_age_default)

    def own_consent_required(self, jurisdiction: str) -> bool:
        """Whether, from the parental consent age on, only the subject's own grant is their
        consent: the US states ("the consumer's consent"), and jurisdictions the pack does
        not map (the stricter reading). Under the GDPR a parent's consent given before the
        digital consent age stays valid (EDPB Guidelines 05/2020)."""
        return (jurisdiction in self.own_consent_jurisdictions
                or jurisdiction not in self.digital_consent_age)

    def joint_consent(self, jurisdiction: str) -> bool:
        if jurisdiction in self.digital_consent_age:
            return jurisdiction in self.joint_consent_jurisdictions
        return self.joint_consent_default


def _int(data: Mapping[str, Any], key: str, where: str, problems: list[str],
         low: int, high: int) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"{where}.{key}: must be an integer from {low} to {high}")
        return low
    return value


def _regime_settings(regimes: Mapping[str, tuple[str, Any]], ages: dict[str, int],
                     remembered: dict[str, date], problems: list[str],
                     default_age: int) -> frozenset[str]:
    """A regime folder's own settings.yaml (policies/regimes/<regime>/): the age below
    which a parent must consent, per jurisdiction the regime covers, and the date from
    which a GPC signal is the consumer's remembered opt-out under it. Returns the
    jurisdictions given an age."""
    codes: set[str] = set()
    for regime, (source, data) in sorted(regimes.items()):
        if data is None:  # only comments: nothing of its own
            continue
        if not isinstance(data, dict):
            problems.append(f"{source}: must be a mapping")
            continue
        unknown = sorted(set(data) - {"parental_consent_age", "gpc_remembered_from"})
        if unknown:
            problems.append(f"{source}: unknown settings {', '.join(map(str, unknown))} "
                            "(known: parental_consent_age, gpc_remembered_from)")
        raw = data.get("parental_consent_age") or {}
        if not isinstance(raw, dict):
            problems.append(f"{source}: parental_consent_age must map jurisdictions to ages")
            raw = {}
        for code in raw:
            if str(code) in ages:
                problems.append(f"{source}: parental_consent_age.{code} is set twice")
            # No higher than the default: a jurisdiction the pack does not map is held to
            # the default, and must never be answered more loosely than a mapped one.
            ages[str(code)] = _int(raw, code, f"{source}: parental_consent_age", problems,
                                   13, default_age)
            codes.add(str(code))
        since = data.get("gpc_remembered_from")
        if since is not None:
            if not isinstance(since, date):
                problems.append(f"{source}: gpc_remembered_from must be a date (YYYY-MM-DD)")
            elif regime in remembered:
                problems.append(f"{source}: gpc_remembered_from for {regime} is also in "
                                "the pack's settings.yaml")
            else:
                remembered[regime] = since
    return frozenset(codes)


def parse_settings(data: Any, source: str,
                   regimes: Mapping[str, tuple[str, Any]] | None = None) -> PolicySettings:
    """`regimes`: regime name -> (file, parsed YAML) of each regime folder's settings."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: must be a mapping"])
    consent = data.get("consent") or {}
    gdpr = data.get("gdpr") or {}
    ccpa = data.get("ccpa") or {}
    lifetime = _int(consent, "default_lifetime_days", f"{source}: consent", problems, 1, 36500)
    ages_raw = gdpr.get("digital_consent_age") or {}
    if not isinstance(ages_raw, dict):
        problems.append(f"{source}: gdpr.digital_consent_age must be a mapping")
        ages_raw = {}
    default_age = _int(ages_raw, "default", f"{source}: gdpr.digital_consent_age", problems,
                       13, 18)
    ages = {}
    for code in ages_raw:
        if code != "default":
            ages[str(code)] = _int(ages_raw, code, f"{source}: gdpr.digital_consent_age",
                                   problems, 13, 18)
    minor = _int(ccpa, "minor_opt_in_age", f"{source}: ccpa", problems, 1, 21)
    parental = _int(ccpa, "parental_authorisation_age", f"{source}: ccpa", problems, 1, 21)
    if parental > minor:
        problems.append(f"{source}: ccpa.parental_authorisation_age exceeds minor_opt_in_age")
    joint_raw = gdpr.get("joint_parental_consent") or {}
    if not isinstance(joint_raw, dict) or not all(
            isinstance(v, bool) for v in joint_raw.values()):
        problems.append(f"{source}: gdpr.joint_parental_consent must map jurisdictions (and "
                        "'default') to true or false")
        joint_raw = {}
    joint = frozenset(str(k) for k, v in joint_raw.items() if v and k != "default")
    unknown_joint = sorted(set(joint) - set(ages))
    if unknown_joint:
        problems.append(f"{source}: gdpr.joint_parental_consent names {', '.join(unknown_joint)}"
                        ", which has no gdpr.digital_consent_age of its own")
    marketing = gdpr.get("direct_marketing_purposes") or []
    if not isinstance(marketing, list) or not all(isinstance(m, str) for m in marketing):
        problems.append(f"{source}: gdpr.direct_marketing_purposes must be a list of purposes")
        marketing = []
    gpc_raw = (data.get("gpc") or {}).get("remembered_opt_out") or {}
    remembered: dict[str, date] = {}
    if not isinstance(gpc_raw, dict):
        problems.append(f"{source}: gpc.remembered_opt_out must map regimes to dates")
        gpc_raw = {}
    for regime, since in gpc_raw.items():
        if not isinstance(since, date):
            problems.append(f"{source}: gpc.remembered_opt_out.{regime} must be a date "
                            "(YYYY-MM-DD)")
        else:
            remembered[str(regime)] = since
    own = _regime_settings(regimes or {}, ages, remembered, problems, default_age)
    authorisation = _int(consent, "authorisation_lifetime_years", f"{source}: consent",
                         problems, 1, 10) if "authorisation_lifetime_years" in consent else 1
    if problems:
        raise PolicyError(problems)
    return PolicySettings(
        consent_lifetime=timedelta(days=lifetime),
        digital_consent_age=MappingProxyType(ages),
        digital_consent_age_default=default_age,
        ccpa_minor_opt_in_age=minor,
        ccpa_parental_authorisation_age=parental,
        joint_consent_jurisdictions=joint,
        joint_consent_default=bool(joint_raw.get("default", False)),
        direct_marketing_purposes=tuple(marketing),
        gpc_remembered_from=MappingProxyType(remembered),
        authorisation_years=authorisation,
        own_consent_jurisdictions=own,
    )
