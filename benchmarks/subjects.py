"""Synthetic subjects with consent histories: a PostgreSQL ledger and a Redis state cache.

Each subject has a profile (jurisdiction, for some a birth date) and five consent events
of different scopes (so all five stay in its projected state), grants carrying evidence
sealed under the subject's own key, as the API would have stored them. Eight archetypes
(EU, UK, California, unmapped jurisdictions, minors) give a mix of ALLOW and DENY.

Going through the API would take hours for a million subjects (one fsynced ledger
transaction per write), so rows are bulk-loaded with COPY into the schema PostgresLedger
itself creates. They are rendered from templates that the real code makes: one prototype
subject per archetype goes through the real codec, projection, hash chain and sealing, with
marker values where a subject's own values go; `verify_templates` renders a subject both
ways and requires identical bytes, and `verify_loaded` reads subjects back through
PostgresLedger, SealingLedger and RedisStateCache. The hash chain is real (`audit verify`
would pass).

A loaded database is kept (named after N and a fingerprint of these templates) and reused
by later runs; `python -m benchmarks --drop-data` removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import redis
from psycopg.copy import QueuedLibpqWriter

from consentauthz.chain import GENESIS, canonical_json, link
from consentauthz.consent import (
    MasterKeys,
    PostgresKeyStore,
    PostgresLedger,
    RedisStateCache,
    Sealer,
    SealingLedger,
)
from consentauthz.consent.codec import (
    event_to_dict,
    profile_to_dict,
    state_to_bytes,
    state_to_json,
)
from consentauthz.consent.ledger import entry_payload
from consentauthz.consent.projection import apply_event, apply_profile
from consentauthz.consent.redis_cache import head_value
from consentauthz.domain import (
    PERMISSION_ACTIONS,
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    ConsentWrite,
    SubjectProfile,
    SubjectState,
)
from consentauthz.pseudonym import Pseudonymizer
from consentauthz.validation import validate_write

#: Benchmark-only keys (never use these anywhere else): the servers get them by environment.
PSEUDONYM_KEY = bytes.fromhex("5e" * 32)
MASTER_KEY = bytes.fromhex("a7" * 32)
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
DB_PREFIX = "cabench_"
EVENTS = 5
ROWS_PER_SUBJECT = EVENTS + 1  # the profile, then the events
REDIS_TTL_MS = 86_400_000  # RedisStateCache's max_ttl: none of these grants has an expiry
_GEN = "be9c0000"  # the Redis generation the preloaded entries belong to


@dataclass(frozen=True)
class Ev:
    action: ConsentAction
    purpose: str
    categories: tuple[str, ...] = ()
    method: CollectionMethod = CollectionMethod.UNSPECIFIED
    explicit: bool = False


@dataclass(frozen=True)
class Archetype:
    jurisdiction: str
    age: int | None
    events: tuple[Ev, ...]


G, W, OBJ = ConsentAction.GRANT, ConsentAction.WITHDRAW, ConsentAction.OBJECT
OUT, IN, LIM = (ConsentAction.OPT_OUT_OF_SALE, ConsentAction.OPT_IN_TO_SALE,
                ConsentAction.LIMIT_SENSITIVE)
AFF, PRE, PAR = CollectionMethod.AFFIRMATIVE, CollectionMethod.PRE_TICKED, CollectionMethod.PARENTAL

ARCHETYPES = (
    Archetype("DE", None, (Ev(G, "marketing.communications.email", ("user.contact.email",), AFF),
                           Ev(G, "analytics", (), AFF), Ev(W, "personalize"),
                           Ev(OBJ, "marketing.advertising"), Ev(OUT, ""))),
    Archetype("FR", None, (Ev(G, "marketing", (), AFF, True),
                           Ev(G, "personalize.content", ("user.behavior",), AFF),
                           Ev(G, "analytics.reporting", (), PRE),
                           Ev(W, "marketing.communications.sms"), Ev(LIM, ""))),
    Archetype("US-CA", None, (Ev(G, "marketing.communications.email", (), AFF),
                              Ev(G, "train_ai_system", (), AFF), Ev(OBJ, "analytics"),
                              Ev(OUT, ""), Ev(W, "functional"))),
    Archetype("GB", None, (Ev(G, "functional.service.automated_decision", (), AFF, True),
                           Ev(G, "marketing.communications", ("user.contact",), AFF),
                           Ev(G, "analytics", (), PRE),
                           Ev(W, "marketing.advertising.third_party"), Ev(OBJ, "personalize"))),
    Archetype("JP", None, (Ev(G, "marketing.communications.email", (), AFF),
                           Ev(G, "personalize", (), AFF), Ev(W, "analytics"),
                           Ev(IN, "", (), AFF), Ev(OBJ, "train_ai_system"))),
    Archetype("IT", 12, (Ev(G, "marketing.communications.email", (), PAR),
                         Ev(G, "analytics", (), AFF), Ev(G, "personalize", (), PAR),
                         Ev(W, "marketing.advertising"), Ev(OUT, ""))),
    Archetype("NL", None, (Ev(G, "marketing", (), AFF),
                           Ev(G, "analytics", ("user.device",), AFF),
                           Ev(OBJ, "marketing.communications.sms"),
                           Ev(G, "train_ai_system", (), AFF), Ev(W, "personalize.content"))),
    Archetype("US-CA", 14, (Ev(G, "marketing.communications.email", (), AFF),
                            Ev(IN, "", (), AFF), Ev(G, "analytics", (), AFF),
                            Ev(OBJ, "personalize"), Ev(LIM, ""))),
)

#: The requests the load generators send (purpose, category): leaf keys, as callers ask.
REQUESTS = (
    ("marketing.communications.email", "user.contact.email"),
    ("analytics.reporting.ad_performance", "user.device.cookie_id"),
    ("personalize.content.profiled", "user.behavior.browsing_history"),
    ("marketing.advertising.third_party.targeted", "user.device.cookie_id"),
    ("train_ai_system", "user.content.public"),
    ("essential.service.payment_processing", "user.financial.credit_card"),
    ("marketing.communications.sms", "user.contact.phone_number"),
    ("functional.service.automated_decision", "user.financial.bank_account"),
)


def subject_id(i: int) -> str:
    return f"bench-{i:07d}"


def archetype_of(i: int) -> Archetype:
    return ARCHETYPES[i % len(ARCHETYPES)]


def first_seq(i: int) -> int:
    """Subject i's profile is ledger entry first_seq(i); its events follow."""
    return i * ROWS_PER_SUBJECT + 1


_S = [f"s{k}" for k in range(ROWS_PER_SUBJECT)]
_R = [f"r{k}" for k in range(ROWS_PER_SUBJECT)]
_E = [f"e{k}" for k in range(ROWS_PER_SUBJECT)]
_RID_HEAD = [f"{k:08x}" for k in range(ROWS_PER_SUBJECT)]


# -- templates made by the real code ------------------------------------------------------

_SUBJ = "QQSUBJQQ"
_BIRTH = "QQBIRTHQQ"
_SEQ0 = 987_650_000_000


def _rid_marker(k: int) -> str:
    return f"QQRID{k}QQ"


def _seal_marker(k: int) -> str:
    return f"QQSEAL{k}QQ"


def _template(text: str) -> str:
    out = text.replace("{", "{{").replace("}", "}}").replace(_SUBJ, "{subj}")
    out = out.replace(_BIRTH, "{birth}")
    for k in range(ROWS_PER_SUBJECT):
        out = out.replace(str(_SEQ0 + k), f"{{s{k}}}").replace(_rid_marker(k), f"{{r{k}}}")
        out = out.replace(_seal_marker(k), f"{{e{k}}}")
    return out


def _source(action: ConsentAction) -> str:
    return "web-form" if action in PERMISSION_ACTIONS else "preference-centre"


def _birth_date(arch: Archetype, today: date) -> date | None:
    return None if arch.age is None else date(today.year - arch.age, 3, 1)


def _build(arch: Archetype, base: datetime, subj: str, rids: list[str], seqs: list[int],
           seals: list[str], sealed_birth: str) -> tuple[list[tuple[str, str, str]], str,
                                                         SubjectState]:
    """The real path for one subject: [(kind, body text, payload text)], projection JSON,
    and the state as a reader sees it (what Redis caches)."""
    profile = SubjectProfile(jurisdiction=arch.jurisdiction, sealed_birth_date=sealed_birth)
    stamp = base.isoformat()
    rows = []
    body = profile_to_dict(profile)
    rows.append(("profile", json.dumps(body, sort_keys=True),
                 canonical_json(entry_payload(seqs[0], subj, "profile", rids[0], stamp, body))))
    state = apply_profile(SubjectState(), profile, seqs[0])
    for k, ev in enumerate(arch.events, start=1):
        event = ConsentEvent(
            record_id=rids[k], sequence=seqs[k], action=ev.action, purpose=ev.purpose,
            data_categories=ev.categories, explicit=ev.explicit, method=ev.method,
            jurisdiction=arch.jurisdiction, collected_at=base, expires_at=None,
            source=_source(ev.action),
            notice_version="2026-01", recorded_at=base, sealed_evidence=seals[k])
        body = event_to_dict(event)
        rows.append(("consent", json.dumps(body, sort_keys=True),
                     canonical_json(entry_payload(seqs[k], subj, "consent", rids[k], stamp,
                                                  body))))
        state = apply_event(state, event)
    return rows, state_to_json(state), state


@dataclass(frozen=True)
class Templates:
    rows: tuple[tuple[str, str, str], ...]  # (kind, body template, payload template)
    state_json: str
    #: the state a reader sees (birth date opened), subject values as markers: what Redis
    #: caches once the markers are replaced (Renderer.compact)
    revealed: SubjectState
    birth: date | None


def make_templates(base: datetime) -> list[Templates]:
    out = []
    for arch in ARCHETYPES:
        seals = [_seal_marker(k) if k and arch.events[k - 1].action in PERMISSION_ACTIONS
                 else "" for k in range(ROWS_PER_SUBJECT)]
        rows, state_json, state = _build(
            arch, base, _SUBJ, [_rid_marker(k) for k in range(ROWS_PER_SUBJECT)],
            [_SEQ0 + k for k in range(ROWS_PER_SUBJECT)], seals,
            _BIRTH if arch.age is not None else "")
        birth = _birth_date(arch, base.date())
        revealed = replace(state, profile=replace(state.profile, birth_date=birth))
        out.append(Templates(
            tuple((kind, _template(b), _template(p)) for kind, b, p in rows),
            _template(state_json), revealed, birth))
    return out


def fingerprint(templates: list[Templates]) -> str:
    digest = hashlib.sha256()
    for t in templates:  # the ledger's content only: Redis' layout is not in the database
        digest.update(repr((t.rows, t.state_json, t.birth)).encode())
    return digest.hexdigest()[:10]


# -- rendering one subject -----------------------------------------------------------------

class Renderer:
    def __init__(self, base: datetime) -> None:
        self.base = base
        self.stamp = base.isoformat()
        self.templates = make_templates(base)
        self.pseudonymize = Pseudonymizer(PSEUDONYM_KEY)
        self.master = MasterKeys([("m1", MASTER_KEY)])
        #: Evidence as the API seals it (sorted JSON); a few variants, like real forms.
        self._evidence = [json.dumps({"ip": f"203.0.113.{n}", "form": "signup-v3",
                                      "user_agent": "Mozilla/5.0 (X11; Linux x86_64) "
                                                    "Firefox/140.0"},
                                     sort_keys=True).encode() for n in range(250)]
        self._sealed_events = [
            [k for k in range(1, ROWS_PER_SUBJECT)
             if arch.events[k - 1].action in PERMISSION_ACTIONS] for arch in ARCHETYPES]

    def values(self, i: int, sealed: bool = True) -> tuple[dict[str, Any], str]:
        """Template values for subject i, and its wrapped data key."""
        subj = self.pseudonymize(subject_id(i))
        s0 = first_seq(i)
        tail = f"-b0b0-7000-8000-{i:012x}"
        v: dict[str, Any] = {"subj": subj}
        for k in range(ROWS_PER_SUBJECT):
            v[_S[k]] = s0 + k
            v[_R[k]] = _RID_HEAD[k] + tail
        wrapped = ""
        if sealed:
            data_key = os.urandom(32)
            wrapped = self.master.wrap(data_key, subj)
            evidence = self._evidence[i % len(self._evidence)]
            for k in self._sealed_events[i % len(ARCHETYPES)]:
                v[_E[k]] = Sealer.seal(data_key, subj, "evidence", evidence)
            birth = self.templates[i % len(ARCHETYPES)].birth
            if birth is not None:
                v["birth"] = Sealer.seal(data_key, subj, "birth_date", birth.isoformat().encode())
        return v, wrapped

    def ledger_lines(self, i: int, v: dict[str, Any], prev: str) -> tuple[str, str]:
        """COPY text lines of subject i's ledger rows, and the last entry hash."""
        t = self.templates[i % len(ARCHETYPES)]
        out = []
        subj, stamp = v["subj"], self.stamp
        for k, (kind, body_t, payload_t) in enumerate(t.rows):
            digest = hashlib.sha256(prev.encode("ascii") + b"\n"
                                    + payload_t.format_map(v).encode("utf-8")).hexdigest()
            out.append(f"{v[_S[k]]}\t{v[_R[k]]}\t{subj}\t{kind}\t{body_t.format_map(v)}\t"
                       f"{stamp}\t\\N\t\\N\t{prev}\t{digest}\n")
            prev = digest
        return "".join(out), prev

    def state_line(self, i: int, v: dict[str, Any]) -> str:
        t = self.templates[i % len(ARCHETYPES)]
        return f"{v['subj']}\t{v[_S[EVENTS]]}\t{t.state_json.format_map(v)}\n"

    def state(self, i: int) -> tuple[str, SubjectState]:
        """(pseudonym, state as a reader sees it, but for its `sequence`) of subject i,
        without sealing anything."""
        v, _ = self.values(i, sealed=False)
        proto = self.templates[i % len(ARCHETYPES)].revealed
        s0 = first_seq(i)
        # The projection keeps events in event order (domain.event_order), not in the order
        # of the rows: each event's row is the one its template sequence names.
        events = tuple(replace(e, record_id=v[_R[k]], sequence=s0 + k, sealed_evidence="")
                       for e in proto.events for k in (e.sequence - _SEQ0,))
        return v["subj"], replace(proto, events=events, version=s0 + EVENTS)

    def compact(self, i: int) -> tuple[str, bytes]:
        """(pseudonym, Redis state bytes) of subject i, as state_to_bytes makes them."""
        subj, state = self.state(i)
        return subj, state_to_bytes(state)


def verify_templates(r: Renderer, taxonomy: Any) -> None:
    """Render subjects both ways (templates, real code) and require identical bytes; and
    every archetype event is a write the API accepts."""
    for i in range(len(ARCHETYPES)):
        arch = archetype_of(i)
        for ev in arch.events:
            validate_write(ConsentWrite(subject_id=subject_id(i), action=ev.action,
                                        purpose=ev.purpose, data_categories=ev.categories,
                                        explicit=ev.explicit, method=ev.method,
                                        jurisdiction=arch.jurisdiction,
                                        collected_at=r.base, source=_source(ev.action),
                                        notice_version="2026-01"), taxonomy, r.base)
        v, _ = r.values(i)
        seqs = [v[f"s{k}"] for k in range(ROWS_PER_SUBJECT)]
        rids = [v[f"r{k}"] for k in range(ROWS_PER_SUBJECT)]
        seals = [v.get(f"e{k}", "") for k in range(ROWS_PER_SUBJECT)]
        rows, state_json, state = _build(arch, r.base, v["subj"], rids, seqs, seals,
                                         v.get("birth", ""))
        t = r.templates[i]
        for (kind, body, payload), (tkind, tbody, tpayload) in zip(rows, t.rows, strict=True):
            assert (kind, body, payload) == (tkind, tbody.format(**v), tpayload.format(**v)), \
                "ledger template differs from the codec"
        assert state_json == t.state_json.format(**v), "projection template differs"
        _, last = r.ledger_lines(i, v, GENESIS)
        prev = GENESIS
        for _, _, payload in rows:
            prev = link(prev, json.loads(payload))
        assert last == prev, "hash chain differs from chain.link"
        revealed = replace(state, profile=replace(state.profile, birth_date=t.birth))
        assert r.compact(i) == (v["subj"], state_to_bytes(revealed)), \
            "Redis state differs from what the real code projects"
        assert len(state.events) == EVENTS, "an archetype's events must all stay in effect"


# -- PostgreSQL ---------------------------------------------------------------------------

def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(ADMIN_DSN, autocommit=True)


def url_for(db: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{db}"


def create_database(name: str) -> str:
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return url_for(name)


def drop_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_databases() -> list[str]:
    with _admin() as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                             (DB_PREFIX + "%",)).fetchall()
    return [str(r[0]) for r in rows]


def _is_complete(name: str) -> bool:
    with _admin() as admin:
        row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                            "WHERE datname = %s", (name,)).fetchone()
    return row is not None and row[0] == "complete"


@dataclass(frozen=True)
class Dataset:
    subjects: int
    db: str
    url: str
    base: datetime
    #: ledger head right after the load
    head: int
    generated_seconds: float | None  # None: reused from an earlier run


def _base_of(url: str) -> datetime:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT recorded_at FROM ledger WHERE seq = 1").fetchone()
    assert row is not None
    return datetime.fromisoformat(row[0])


_COPIES = (
    "COPY ledger (seq, record_id, subject, kind, body, recorded_at, idempotency_key, "
    "request_hash, prev_hash, entry_hash) FROM STDIN",
    "COPY subject_state (subject, version, state) FROM STDIN",
    "COPY subject_keys (subject, wrapped, destroyed_at) FROM STDIN",
)


def _bulk_load_mode(url: str, on: bool, tip: str = GENESIS) -> None:
    """COPY names no partition: while loading, rows go to partition 0 by default; after
    it, the default is gone (as the schema has it) and partition 0's head is the loaded
    chain's tip (a head only ever moves on by one append: the loader, as owner, steps
    around that rule once)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        if on:
            conn.execute("ALTER TABLE ledger ALTER COLUMN part SET DEFAULT 0")
            conn.execute("ALTER TABLE subject_state ALTER COLUMN part SET DEFAULT 0")
            return
        conn.execute("ALTER TABLE ledger ALTER COLUMN part DROP DEFAULT")
        conn.execute("ALTER TABLE subject_state ALTER COLUMN part DROP DEFAULT")
        conn.execute("ALTER TABLE ledger_head DISABLE TRIGGER ledger_head_moves_on")
        conn.execute("UPDATE ledger_head SET seq = (SELECT count(*) FROM ledger), "
                     "entry_hash = %s WHERE part = 0", (tip,))
        conn.execute("ALTER TABLE ledger_head ENABLE TRIGGER ledger_head_moves_on")


def ensure_dataset(subjects: int, taxonomy: Any, log: Callable[[str], None],
                   chunk: int = 20_000) -> Dataset:
    """A ledger database with `subjects` subjects; loaded now or reused from a run before."""
    probe = Renderer(datetime(2026, 1, 1, tzinfo=UTC))
    name = f"{DB_PREFIX}{fingerprint(probe.templates)}_{subjects}"
    if name in bench_databases():
        if _is_complete(name):
            url = url_for(name)
            log(f"reusing {subjects:,} subjects in database {name}")
            return Dataset(subjects, name, url, _base_of(url), subjects * ROWS_PER_SUBJECT,
                           None)
        drop_database(name)  # an interrupted load
    # Recent enough that no grant has expired (the default lifetime is two years).
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    r = Renderer(base)
    verify_templates(r, taxonomy)
    started = time.perf_counter()
    url = create_database(name)
    # The real schema, triggers included: one partition, the one chain rendered below.
    PostgresLedger(url, partitions=1).close()
    PostgresKeyStore(url).close()
    _bulk_load_mode(url, True)
    prev = GENESIS
    # One COPY per table on its own connection, each fed by a writer thread: rendering
    # (this process) and PostgreSQL's work (its backends) overlap on the two cores.
    conns = [psycopg.connect(url) for _ in _COPIES]
    try:
        with contextlib.ExitStack() as stack:
            copies = [stack.enter_context(conn.cursor().copy(sql, writer=QueuedLibpqWriter(
                conn.cursor()))) for conn, sql in zip(conns, _COPIES, strict=True)]
            for lo in range(0, subjects, chunk):
                hi = min(lo + chunk, subjects)
                ledger, states, keys = [], [], []
                for i in range(lo, hi):
                    v, wrapped = r.values(i)
                    lines, prev = r.ledger_lines(i, v, prev)
                    ledger.append(lines)
                    states.append(r.state_line(i, v))
                    keys.append(f"{v['subj']}\t{wrapped}\t\\N\n")
                for cp, data in zip(copies, (ledger, states, keys), strict=True):
                    cp.write("".join(data))
                if hi % (chunk * 10) == 0 or hi == subjects:
                    log(f"  {hi:,} / {subjects:,} subjects rendered "
                        f"({time.perf_counter() - started:.0f} s)")
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    _bulk_load_mode(url, False, prev)
    # Vacuum now, so autovacuum does not start in the middle of a measurement.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) ledger")
        conn.execute("VACUUM (ANALYZE) subject_state")
        conn.execute("VACUUM (ANALYZE) subject_keys")
    verify_loaded(url, r, subjects)
    with _admin() as admin:
        admin.execute(f"COMMENT ON DATABASE \"{name}\" IS 'complete'")
    took = time.perf_counter() - started
    return Dataset(subjects, name, url, base, subjects * ROWS_PER_SUBJECT, took)


def verify_loaded(url: str, r: Renderer, subjects: int) -> None:
    """Read subjects back through the real ledger stack: states, sealed values, the chain's
    head."""
    ledger = SealingLedger(PostgresLedger(url), Sealer(r.master, PostgresKeyStore(url)))
    try:
        assert ledger.head() == subjects * ROWS_PER_SUBJECT
        for i in (0, 1, 5, 7, subjects - 1):
            state = ledger.load(r.pseudonymize(subject_id(i)), evidence=True)
            assert len(state.events) == EVENTS and state.version == first_seq(i) + EVENTS
            assert state.profile.birth_date == r.templates[i % len(ARCHETYPES)].birth
            assert any(e.evidence for e in state.events), "evidence must open"
    finally:
        ledger.close()


# -- Redis ----------------------------------------------------------------------------------

def ledger_now(url: str, base_head: int) -> tuple[int, set[str]]:
    """The ledger head now, and the subjects written to since the bulk load (earlier runs
    append consent writes; those subjects' cached form would be stale)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger").fetchone()
        changed = conn.execute("SELECT DISTINCT subject FROM ledger WHERE seq > %s",
                               (base_head,)).fetchall()
    assert row is not None
    return int(row[0]), {str(c[0]) for c in changed}


def populate_redis(cache: RedisStateCache, url: str, r: Renderer, lo: int, hi: int,
                   head: int, skip: set[str] | frozenset[str] = frozenset(),
                   batch: int = 5_000) -> int:
    """Cache subjects [lo, hi) as a replica would after reading them from the ledger at
    position `head`, in the layout of consent/redis_cache.py (the head `head_value`
    makes, entries `RedisStateCache.entry_value` makes, with the same TTL). `cache` must be
    the RedisStateCache an App built (so: configured exactly as the servers'); a few
    entries are read back through it and the load fails loudly if the server would not
    accept them. Returns how many were
    cached (subjects written to since the bulk load are skipped)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    # One round trip per subject through cache.populate would take minutes for a million
    # subjects; this pipelines the same writes, made by the cache's own code and cipher.
    client = redis.Redis.from_url(url)
    pending: Future[Any] | None = None
    cached = 0
    try:
        client.set(cache.head_key, head_value(_GEN, head))
        # Rendering here while the previous pipeline is sent (the socket wait frees the GIL).
        with ThreadPoolExecutor(1) as sender:
            for start in range(lo, hi, batch):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(start + batch, hi)):
                    subj, blob = r.compact(i)
                    if subj in skip:
                        continue
                    version = first_seq(i) + EVENTS
                    cached += 1
                    pipe.set(cache.entry_key(subj),
                             cache.entry_value(subj, _GEN, version, blob),
                             px=REDIS_TTL_MS)
                if pending is not None:
                    pending.result()
                pending = sender.submit(pipe.execute)
            if pending is not None:
                pending.result()
        for i in sorted({lo, (lo + hi) // 2, hi - 1}):
            for _ in range(3):  # a read that timed out opens the cache's breaker for 1 s
                seen = cache.read(r.pseudonymize(subject_id(i)))
                if seen is not None:
                    break
                time.sleep(1.1)
            if not (seen is not None and seen.state is not None and seen.position == head
                    and len(seen.state.events) == EVENTS):
                raise RuntimeError(
                    "the preloaded Redis entries are not what the server reads: "
                    "consent/redis_cache.py's entry format changed; update "
                    "benchmarks/subjects.py populate_redis")
    finally:
        client.close()
    return cached


def redis_entry_stats(cache: RedisStateCache, url: str, r: Renderer,
                      indices: list[int]) -> dict[str, float]:
    """Average key and value sizes, and Redis' own MEMORY USAGE, of cached subjects."""
    client = redis.Redis.from_url(url)
    try:
        found = [(i, k) for i in indices
                 if client.exists(k := cache.entry_key(r.pseudonymize(subject_id(i))))]
        keys = [k for _, k in found]
        values = [client.strlen(k) for k in keys]
        usage = [client.memory_usage(k, samples=0) or 0 for k in keys]
        state = [len(r.compact(i)[1]) for i, _ in found]
    finally:
        client.close()
    n = len(keys)
    return {"key_bytes": sum(map(len, keys)) / n, "value_bytes": sum(values) / n,
            "state_bytes": sum(state) / n, "memory_usage": sum(usage) / n}
