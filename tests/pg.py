"""A fresh database per test on the local PostgreSQL server (trust auth, user postgres).

The server is part of the test environment, like Redis: when it is missing the suite
fails and says how to get it, rather than skipping the PostgreSQL half of the contract.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
INSTALL_HINT = (
    "PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth) for these "
    "tests. Install and start it with: sudo apt-get install -y postgresql && "
    "sudo pg_ctlcluster 15 main start (and set `host all postgres 127.0.0.1/32 trust` in "
    "pg_hba.conf)")


def dsn_for(name: str) -> str:
    return f"host=127.0.0.1 port=5432 user=postgres dbname={name}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"{INSTALL_HINT}\n({exc})", pytrace=False)


@contextmanager
def fresh_database() -> Iterator[str]:
    """Yield the DSN of a new, empty database; drop it (and its sessions) afterwards."""
    name = f"ca_test_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(name)
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
