"""Turn a subject's consent state into the facts that policy rules test (`p.when`).

The law's arithmetic lives here (which record is the latest that covers this purpose and
category, whether it is expired, how old the subject is); what follows from the facts is
the policy's business. The vocabulary is closed: a rule naming an unknown fact is
rejected at load time, so a typo can never silently disable a deny rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from ..domain import (
    PERMISSION_ACTIONS,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    SubjectState,
    event_order,
)
from ..policy import PolicySettings, Taxonomy

ALWAYS = "always"

#: fact -> what it means (docs/policy-authoring.md lists the same table).
FACTS: Mapping[str, str] = {
    "no_consent": "no consent record covers this purpose and data category",
    "consent": "the latest record is a valid grant (affirmative or parental, not expired)",
    "explicit_consent": "as 'consent', and the grant was explicit (Art. 9(2)(a), Art. 22)",
    "consent_withdrawn": "the latest record is a withdrawal",
    "consent_expired": "the latest record is a grant past its expiry (or the default lifetime)",
    "consent_invalid": "the only grants are pre-ticked or implied (never valid consent)",
    "objected": "the latest record is an objection (GDPR Art. 21)",
    "child_without_parental_consent":
        "the subject is below the digital consent age and the grant was not parental",
    "gpc": "the request carried a Global Privacy Control signal (context gpc=1)",
    "sale_opted_out": "the latest sale/share choice is an opt-out",
    "sale_opted_in": "the latest sale/share choice is a valid opt-in",
    "sale_parental_authorisation_required":
        "the subject is below the CCPA parental age and no parent opted in",
    "sale_minor_opt_in_required": "the subject is a CCPA minor who has not opted in",
    "sensitive_limited": "the subject asked to limit the use of sensitive personal information",
    "signed_authorisation":
        "as 'explicit_consent', the grant names its purpose and data and expires at most a "
        "year after it was given: a signed authorisation to sell (RCW 19.373.070(2)(a),(h))",
    "known_child": "the subject's recorded birth date makes them a child, under 13 "
                   "(COPPA, 15 U.S.C. §6501(1))",
    "minor_under_16": "the subject's recorded birth date makes them younger than 16",
    "minor_under_17": "the subject's recorded birth date makes them younger than 17",
    "minor_under_18": "the subject's recorded birth date makes them younger than 18",
    "erased": "the subject was erased (GDPR Art. 17, CCPA §1798.105): only a legal "
              "obligation still stands",
}

#: Age-band facts, by the age today (a ban or a teen rule applies while the consumer is
#: that young, whenever consent was given): (fact, the age it is below).
_AGE_BANDS = (("known_child", 13), ("minor_under_16", 16), ("minor_under_17", 17),
              ("minor_under_18", 18))

_CONSENT_CHANNEL = (ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT)
_SALE_CHANNEL = (ConsentAction.OPT_OUT_OF_SALE, ConsentAction.OPT_IN_TO_SALE)


@dataclass(frozen=True, slots=True)
class Facts:
    tokens: frozenset[str]
    #: fact -> the consent record ids it rests on
    records: Mapping[str, tuple[str, ...]]
    #: plain-language observations, for explain
    notes: tuple[str, ...]


def age_on(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _later(ev: ConsentEvent, than: ConsentEvent | None) -> bool:
    return than is None or event_order(ev) > event_order(than)


def _describe(ev: ConsentEvent) -> str:
    scope = ev.purpose or "all purposes"
    cats = ", ".join(ev.data_categories) or "all categories"
    return (f"record {ev.record_id} ({ev.action.value} {scope} / {cats}, "
            f"{ev.method.value.lower()}{', explicit' if ev.explicit else ''}, "
            f"collected {ev.collected_at.isoformat()}, notice {ev.notice_version or '-'}, "
            f"source {ev.source or '-'})")


def derive_facts(
    state: SubjectState,
    purpose: str,
    category: str,
    jurisdiction: str,
    now: datetime,
    context: Mapping[str, str],
    taxonomy: Taxonomy,
    settings: PolicySettings,
    explain: bool = True,
) -> Facts:
    """`explain=False` (the hot path) skips the plain-language notes: formatting them is a
    fifth of a decision's cost and only `explain` shows them."""
    tokens: set[str] = set()
    records: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []

    def add(token: str, *evs: ConsentEvent | None) -> None:
        tokens.add(token)
        ids = tuple(ev.record_id for ev in evs if ev is not None)
        if ids:
            records[token] = ids

    # A record applies when its purpose (if any) and one of its categories (if any) cover
    # the decided ones; their lineages are looked up once, not per record.
    purpose_lineage = taxonomy.purposes.lineage_or_empty(purpose)
    category_lineage = taxonomy.categories.lineage_or_empty(category)
    birth = state.profile.birth_date
    age = age_on(birth, now.date()) if birth is not None else None
    if age is not None:
        for fact, below in _AGE_BANDS:
            if age < below:
                add(fact)
    if state.profile.erased_at is not None:
        add("erased")
        if explain:
            notes.append(f"the subject was erased at {state.profile.erased_at.isoformat()}")

    consent: ConsentEvent | None = None  # the latest consent-channel choice
    invalid: ConsentEvent | None = None
    restriction: ConsentEvent | None = None  # the latest withdrawal or objection
    grants: list[ConsentEvent] = []  # valid grants that cover the request
    opt_out: ConsentEvent | None = None
    opt_ins: list[ConsentEvent] = []  # opt-ins collected by a valid method
    limited: ConsentEvent | None = None
    # Art. 21(2)-(3): an objection to direct marketing covers every direct-marketing
    # purpose, not only those under the purpose it names (sales outreach is not under
    # `marketing` in fideslang, yet it is direct marketing).
    direct_marketing = settings.direct_marketing_purposes
    in_direct_marketing = any(p in purpose_lineage for p in direct_marketing)
    # The latest record of each kind by event_order. The projection keeps events in that
    # order, but the comparison is made here all the same: the facts must not depend on
    # how a state was put together (a cache entry, a replay, a test).
    for ev in state.events:
        action = ev.action
        if ev.purpose and ev.purpose not in purpose_lineage and not (
                action is ConsentAction.OBJECT and in_direct_marketing
                and ev.purpose in direct_marketing):
            continue
        if ev.collected_at > now and action in PERMISSION_ACTIONS:
            # Collected a little in the future (clock skew the ledger accepted): a
            # permission counts from its collected time, not sooner; a restriction
            # counts at once.
            continue
        if ev.data_categories and not any(
                c in category_lineage for c in ev.data_categories):
            continue
        if action in _CONSENT_CHANNEL:
            if action is ConsentAction.GRANT and not ev.method.is_valid_consent:
                # Kept as evidence; never consent, never overrides a real choice.
                if _later(ev, invalid):
                    invalid = ev
                if explain:
                    notes.append(f"{_describe(ev)} is not valid consent (pre-ticked or implied)")
                continue
            if _later(ev, consent):
                consent = ev
            if action is ConsentAction.GRANT:
                grants.append(ev)
            elif _later(ev, restriction):
                restriction = ev
        elif action in _SALE_CHANNEL:
            if action is ConsentAction.OPT_IN_TO_SALE and not ev.method.is_valid_consent:
                if explain:
                    notes.append(f"{_describe(ev)} is not a valid opt-in (pre-ticked or implied)")
                continue
            if action is ConsentAction.OPT_OUT_OF_SALE:
                if _later(ev, opt_out):
                    opt_out = ev
            else:
                opt_ins.append(ev)
        elif action is ConsentAction.LIMIT_SENSITIVE and _later(ev, limited):
            limited = ev
    if consent is not None:
        invalid = None

    #: the grants the consent fact rests on (empty: no consent)
    relied: tuple[ConsentEvent, ...] = ()
    if consent is None and invalid is None:
        add("no_consent")
        if explain:
            notes.append("no consent record covers this purpose and data category")
    elif consent is None and invalid is not None:
        add("consent_invalid", invalid)
    elif consent is not None:
        if explain:
            notes.append(f"latest applicable: {_describe(consent)}")
        if consent.action is ConsentAction.WITHDRAW:
            add("consent_withdrawn", consent)
        elif consent.action is ConsentAction.OBJECT:
            add("objected", consent)
        else:
            relied = _grant_facts(consent, restriction, grants, birth, age, jurisdiction,
                                  now, settings, add, notes if explain else None)

    if context.get("gpc") == "1":
        add("gpc")
        if explain:
            notes.append("the request carried a Global Privacy Control signal")
    _sale_facts(opt_out, opt_ins, relied, birth, age, settings, add,
                notes if explain else None)
    if limited is not None and relied and all(
            _later(g, limited) and g.data_categories for g in relied):
        # §1798.121(b): the limit holds "unless the consumer subsequently provides consent";
        # likewise a consent after a state's sensitive-data opt-out (Utah, Iowa). Every
        # grant the consent rests on must come after the limit (a child's own grant does
        # not revive a parent's older one) and name the data it covers: a grant for a
        # purpose over all categories is no consent to use sensitive data again.
        if explain:
            notes.append(f"the limit {limited.record_id} was followed by the grant "
                         f"{relied[-1].record_id}, which names the data it covers")
    elif limited is not None:
        add("sensitive_limited", limited)
        if explain:
            notes.append(f"limit on sensitive personal information: {_describe(limited)}")
    return Facts(frozenset(tokens), records, tuple(notes))


Add = Callable[..., None]


def _expiry(grant: ConsentEvent, settings: PolicySettings) -> datetime:
    return grant.expires_at or grant.collected_at + settings.consent_lifetime


def _grant_facts(consent: ConsentEvent, restriction: ConsentEvent | None,
                 grants: list[ConsentEvent], birth: date | None, age: int | None,
                 jurisdiction: str, now: datetime, settings: PolicySettings, add: Add,
                 notes: list[str] | None) -> tuple[ConsentEvent, ...]:
    """The latest consent-channel choice is a valid grant: is it consent now? Returns the
    grants the `consent` fact rests on (empty when it does not hold)."""
    if now >= _expiry(consent, settings):
        add("consent_expired", consent)
        if notes is not None:
            notes.append(f"record {consent.record_id} expired at "
                         f"{_expiry(consent, settings).isoformat()}")
        return ()
    child_age = settings.consent_age(jurisdiction)
    # Validity is judged when consent was given: a child's own consent does not become
    # valid on a birthday.
    age_then = age_on(birth, consent.collected_at.date()) if birth else None
    relied: tuple[ConsentEvent, ...] = (consent,)
    # Only grants since the latest withdrawal or objection, and unexpired, count.
    live = [g for g in grants if _later(g, restriction) and now < _expiry(g, settings)]
    if (birth is not None and age is not None and age >= child_age
            and settings.own_consent_required(jurisdiction)):
        # The US state laws ask for "the consumer's consent": from the parental age on,
        # a parent's grant (even one given while the consumer was a child) is not it, nor
        # a grant the consumer gave as a child (CCPA 11 CCR §7071(a) reads the same).
        own = max((g for g in live if g.method is not CollectionMethod.PARENTAL
                   and age_on(birth, g.collected_at.date()) >= child_age),
                  key=event_order, default=None)
        if own is None:
            if notes is not None:
                notes.append(f"subject is {age}: only their own grant, given at "
                             f"{child_age} or older, is their consent; record "
                             f"{consent.record_id} is not")
            return ()
        relied = (own,)
    elif age_then is not None and age_then < child_age:
        # Art. 8(1): given or authorised by the holder of parental responsibility. A later,
        # redundant grant by the child does not discard the parent's; in the member states
        # that require joint consent (France, Loi 78-17 art. 45) the child's own grant is
        # needed as well.
        parental = max((g for g in live if g.method is CollectionMethod.PARENTAL),
                       key=event_order, default=None)
        own = max((g for g in live if g.method is not CollectionMethod.PARENTAL),
                  key=event_order, default=None)
        joint = settings.joint_consent(jurisdiction)
        if parental is None or (joint and own is None):
            add("child_without_parental_consent", consent)
            if notes is not None:
                needed = ("given jointly by the child and a holder of parental "
                          "responsibility" if joint else
                          "given or authorised by a holder of parental responsibility")
                notes.append(f"subject was {age_then} when the grant was given, below the "
                             f"digital consent age {child_age}: consent must be {needed}")
            return ()
        relied = (parental, own) if joint and own is not None else (parental,)
    add("consent", *relied)
    if all(g.explicit for g in relied):
        add("explicit_consent", *relied)
        if all(_is_authorisation(g, settings) for g in relied):
            add("signed_authorisation", *relied)
    elif notes is not None:
        notes.append(f"record {consent.record_id} is valid consent but not explicit "
                     "(special categories and automated decisions need explicit consent)")
    return relied


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _is_authorisation(grant: ConsentEvent, settings: PolicySettings) -> bool:
    """RCW 19.373.070: an authorisation is separate and distinct (it names the purpose and
    the data it covers, not all of them) and expires at most a year after it is signed."""
    return (bool(grant.purpose) and bool(grant.data_categories)
            and grant.expires_at is not None
            and grant.expires_at.date() <= _add_years(
                grant.collected_at.date(), settings.authorisation_years))


def _sale_facts(opt_out: ConsentEvent | None, opt_ins: list[ConsentEvent],
                relied: tuple[ConsentEvent, ...], birth: date | None, age: int | None,
                settings: PolicySettings, add: Add, notes: list[str] | None) -> None:
    """The sale/share channel (CCPA §1798.120): an opt-out stands until a valid opt-in (or
    a valid grant covering the request) collected after it; minors' opt-ins must come
    from the right person."""
    parental_age = settings.ccpa_parental_authorisation_age
    minor_age = settings.ccpa_minor_opt_in_age

    def by_whom(years: int) -> bool | None:
        """Whether the opt-in must be a parent's (True) or the consumer's own (False) at
        this age; None: either (16 and over)."""
        if years < parental_age:
            return True  # §1798.120(c), 11 CCR §7070: a parent or guardian authorises
        if years < minor_age:
            return False  # 13 to 15: the consumer's own (11 CCR §7071(a))
        return None

    def qualifies(opt_in: ConsentEvent) -> bool:
        if birth is None:
            return True
        parental = opt_in.method is CollectionMethod.PARENTAL
        # Valid when given, and by the person whose authorisation counts today: a parent's
        # opt-in from before 13 does not stand for a consumer who is now 13 to 15.
        return all(need is None or need == parental for need in (
            by_whom(age_on(birth, opt_in.collected_at.date())),
            by_whom(age) if age is not None else None))

    live = [oi for oi in opt_ins if _later(oi, opt_out)]
    valid = [oi for oi in live if qualifies(oi)]
    opted_in = max(valid, key=event_order, default=None)
    if notes is not None:
        for oi in live:
            if oi not in valid:
                notes.append(f"{_describe(oi)} does not count: under {parental_age} a parent "
                             f"opts in, from {parental_age} to {minor_age - 1} the consumer")
    if opted_in is not None:
        add("sale_opted_in", opted_in)
        if notes is not None:
            notes.append(f"latest valid opt-in to sale/share: {_describe(opted_in)}")
    elif opt_out is not None:
        if relied and all(_later(g, opt_out) for g in relied):
            # A fresh consent given after the opt-out is a consent for what it covers; every
            # grant it rests on must be fresh (a child's own grant does not revive a
            # parent's older one).
            if notes is not None:
                notes.append(f"the opt-out {opt_out.record_id} was followed by the grant "
                             f"{relied[-1].record_id}, which covers this request")
        else:
            add("sale_opted_out", opt_out)
            if notes is not None:
                notes.append(f"latest sale/share choice: {_describe(opt_out)}")
    if age is not None:
        if age < parental_age:
            if opted_in is None:
                add("sale_parental_authorisation_required",
                    max(live, key=event_order, default=None))
                if notes is not None:
                    notes.append(f"subject is {age}: sale/share needs a parent's opt-in")
        elif age < minor_age and opted_in is None:
            add("sale_minor_opt_in_required")
            if notes is not None:
                notes.append(f"subject is {age}: sale/share needs the minor's own opt-in")
