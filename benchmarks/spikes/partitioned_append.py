"""Spike for issue 19 (docs/design/partitioned-ledger.md): how fast can PostgreSQL append
with (a) today's pattern - one global advisory lock, several statements - and (b) a
partitioned one-statement append (the partition's head row locked by UPDATE ... RETURNING,
the entry hash computed in SQL, the projection replaced under a version check), at 1, 8
and 32 threads? Not product code: it measures the statements alone.

    .venv/bin/python -m benchmarks.spikes.partitioned_append   # SECS=4 by default
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from typing import Any

import psycopg

DSN = "host=127.0.0.1 user=postgres dbname=postgres"
DB = "spike_" + secrets.token_hex(4)
RUN = secrets.token_hex(3)


def setup() -> str:
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {DB}")
    dsn = f"host=127.0.0.1 user=postgres dbname={DB}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("""
        CREATE TABLE ledger_a (seq BIGINT PRIMARY KEY, subject TEXT, body TEXT,
                               prev_hash TEXT, entry_hash TEXT);
        CREATE TABLE state_a (subject TEXT PRIMARY KEY, version BIGINT, state TEXT);
        CREATE TABLE ledger_b (part INT, seq BIGINT, subject TEXT, body TEXT, prev_hash TEXT,
                               entry_hash TEXT, PRIMARY KEY (part, seq));
        CREATE TABLE head_b (part INT PRIMARY KEY, seq BIGINT NOT NULL, entry_hash TEXT NOT NULL);
        CREATE TABLE state_b (subject TEXT PRIMARY KEY, part INT, version BIGINT, state TEXT);
        INSERT INTO head_b SELECT g, 0, repeat('0', 64) FROM generate_series(0, 63) g;
        CREATE FUNCTION append_b(p INT, subj TEXT, pre TEXT, suf TEXT, body TEXT, st TEXT,
                                 ver BIGINT, nonce TEXT)
        RETURNS BIGINT LANGUAGE plpgsql AS $$
        DECLARE s BIGINT; prev TEXT; h TEXT; n INT;
        BEGIN
          UPDATE head_b SET seq = seq + 1 WHERE part = p RETURNING seq, entry_hash INTO s, prev;
          h := encode(sha256(convert_to(prev || E'\n' || pre || s::text || suf, 'UTF8')), 'hex');
          INSERT INTO ledger_b VALUES (p, s, subj, body, prev, h);
          UPDATE head_b SET entry_hash = h WHERE part = p;
          IF ver = 1 THEN
            INSERT INTO state_b VALUES (subj, p, 1, replace(st, nonce, s::text));
          ELSE
            UPDATE state_b SET version = ver, state = replace(st, nonce, s::text)
              WHERE subject = subj AND version = ver - 1;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN RAISE EXCEPTION 'version conflict' USING ERRCODE = '40001'; END IF;
          END IF;
          RETURN s;
        END $$;
        """)
    return dsn


def today(conn: Any, subj: str, body: str) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(42)")
        row = conn.execute(
            "SELECT seq, entry_hash FROM ledger_a ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, "0" * 64)
        st = conn.execute(
            "SELECT version, state FROM state_a WHERE subject = %s", (subj,)
        ).fetchone()
        h = hashlib.sha256((prev + "\n" + body + str(seq)).encode()).hexdigest()
        conn.execute("INSERT INTO ledger_a VALUES (%s, %s, %s, %s, %s)", (seq, subj, body, prev, h))
        ver = (st[0] + 1) if st else 1
        conn.execute(
            "INSERT INTO state_a VALUES (%s, %s, %s) ON CONFLICT (subject) DO UPDATE "
            "SET version = excluded.version, state = excluded.state",
            (subj, ver, body),
        )


def partitioned(conn: Any, subj: str, body: str, versions: dict[str, int], parts: int) -> None:
    p = int(hashlib.sha256(subj.encode()).hexdigest()[:8], 16) % parts
    ver = versions.get(subj, 0) + 1
    nonce = secrets.token_hex(16)
    st = '{"events":[{"sequence":' + nonce + '}],"v":1}'
    conn.execute(
        "SELECT append_b(%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            p,
            subj,
            '{"body":' + body + ',"seq":',
            ',"subject":"' + subj + '"}',
            body,
            st,
            ver,
            nonce,
        ),
    )
    versions[subj] = ver


def run(dsn: str, mode: str, threads: int, seconds: float, parts: int = 1) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        conn = psycopg.connect(dsn, autocommit=(mode == "b"))
        versions: dict[str, int] = {}
        k = 0
        while time.monotonic() < stop:
            subj = f"{RUN}-{mode}{parts}-{threads}-t{i}-s{k % 200}"
            body = json.dumps({"purpose": "analytics", "n": k})
            if mode == "a":
                today(conn, subj, body)
            else:
                partitioned(conn, subj, body, versions, parts)
            k += 1
            counts[i] += 1
        conn.close()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


if __name__ == "__main__":
    dsn = setup()
    secs = float(os.environ.get("SECS", "4"))
    try:
        for threads in (1, 8, 32):
            a = run(dsn, "a", threads, secs)
            b1 = run(dsn, "b", threads, secs, 1)
            b16 = run(dsn, "b", threads, secs, 16)
            print(
                f"threads={threads:2d} today={a:7.0f}/s  one-statement "
                f"P=1 {b1:7.0f}/s  P=16 {b16:7.0f}/s",
                flush=True,
            )
    finally:
        with psycopg.connect(DSN, autocommit=True) as c:
            c.execute(f"DROP DATABASE {DB} WITH (FORCE)")
