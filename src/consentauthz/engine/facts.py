"""Turn a subject's consent state into the facts that policy rules test (`p.when`).

The law's arithmetic lives here (which record is the latest that covers this purpose and
category, whether it is expired, how old the subject is); what follows from the facts is
the policy's business. The vocabulary is closed: a rule naming an unknown fact is
rejected at load time, so a typo can never silently disable a deny rule.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "erased": "the subject was erased (GDPR Art. 17, CCPA §1798.105): only a legal "
              "obligation still stands",
}

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

    def add(token: str, ev: ConsentEvent | None = None) -> None:
        tokens.add(token)
        if ev is not None:
            records[token] = (ev.record_id,)

    # A record applies when its purpose (if any) and one of its categories (if any) cover
    # the decided ones; their lineages are looked up once, not per record.
    purpose_lineage = taxonomy.purposes.lineage_or_empty(purpose)
    category_lineage = taxonomy.categories.lineage_or_empty(category)
    birth = state.profile.birth_date
    age = age_on(birth, now.date()) if birth is not None else None
    if state.profile.erased_at is not None:
        add("erased")
        if explain:
            notes.append(f"the subject was erased at {state.profile.erased_at.isoformat()}")

    consent: ConsentEvent | None = None
    invalid: ConsentEvent | None = None
    sale: ConsentEvent | None = None
    limited: ConsentEvent | None = None
    # The latest record of each kind by event_order. The projection keeps events in that
    # order, but the comparison is made here all the same: the facts must not depend on
    # how a state was put together (a cache entry, a replay, a test).
    for ev in state.events:
        if ev.purpose and ev.purpose not in purpose_lineage:
            continue
        if ev.collected_at > now and ev.action in PERMISSION_ACTIONS:
            # Collected a little in the future (clock skew the ledger accepted): a
            # permission counts from its collected time, not sooner; a restriction
            # counts at once.
            continue
        if ev.data_categories and not any(
                c in category_lineage for c in ev.data_categories):
            continue
        action = ev.action
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
        elif action in _SALE_CHANNEL:
            if action is ConsentAction.OPT_IN_TO_SALE and not ev.method.is_valid_consent:
                if explain:
                    notes.append(f"{_describe(ev)} is not a valid opt-in (pre-ticked or implied)")
                continue
            if _later(ev, sale):
                sale = ev
        elif action is ConsentAction.LIMIT_SENSITIVE and _later(ev, limited):
            limited = ev
    if consent is not None:
        invalid = None

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
            expiry = consent.expires_at or consent.collected_at + settings.consent_lifetime
            child_age = settings.consent_age(jurisdiction)
            # Validity is judged when consent was given: a child's own consent does not
            # become valid on a birthday.
            age_then = age_on(birth, consent.collected_at.date()) if birth else None
            if now >= expiry:
                add("consent_expired", consent)
                if explain:
                    notes.append(f"record {consent.record_id} expired at {expiry.isoformat()}")
            elif (age_then is not None and age_then < child_age
                  and consent.method is not CollectionMethod.PARENTAL):
                add("child_without_parental_consent", consent)
                if explain:
                    notes.append(f"subject was {age_then} when the grant was given, below the "
                                 f"digital consent age {child_age}; it was not given or "
                                 "authorised by a parent")
            else:
                add("consent", consent)
                if consent.explicit:
                    add("explicit_consent", consent)
                else:
                    if explain:
                        notes.append(f"record {consent.record_id} is valid consent but not "
                                     "explicit (special categories and automated decisions "
                                     "need explicit consent)")

    if context.get("gpc") == "1":
        add("gpc")
        if explain:
            notes.append("the request carried a Global Privacy Control signal")
    opted_in = sale is not None and sale.action is ConsentAction.OPT_IN_TO_SALE
    child_opt_in: ConsentEvent | None = None
    if (opted_in and sale is not None and birth is not None
            and sale.method is not CollectionMethod.PARENTAL
            and age_on(birth, sale.collected_at.date())
            < settings.ccpa_parental_authorisation_age):
        # A child's own opt-in was never valid (§1798.120(c)); it stays invalid later.
        if explain:
            notes.append(f"{_describe(sale)} was given by a child under "
                         f"{settings.ccpa_parental_authorisation_age} without a parent")
        child_opt_in, sale, opted_in = sale, None, False
    if sale is not None:
        add("sale_opted_in" if opted_in else "sale_opted_out", sale)
        if explain:
            notes.append(f"latest sale/share choice: {_describe(sale)}")
    if age is not None:
        if age < settings.ccpa_parental_authorisation_age:
            if not (opted_in and sale is not None and sale.method is CollectionMethod.PARENTAL):
                add("sale_parental_authorisation_required",
                    child_opt_in or (sale if opted_in else None))
                if explain:
                    notes.append(f"subject is {age}: sale/share needs a parent's opt-in")
        elif age < settings.ccpa_minor_opt_in_age and not opted_in:
            add("sale_minor_opt_in_required")
            if explain:
                notes.append(f"subject is {age}: sale/share needs the minor's own opt-in")
    if limited is not None:
        add("sensitive_limited", limited)
        if explain:
            notes.append(f"limit on sensitive personal information: {_describe(limited)}")
    return Facts(frozenset(tokens), records, tuple(notes))
