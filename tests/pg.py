"""A fresh database per test on the local PostgreSQL server (trust auth, user postgres).

The server is part of the test environment, like Redis: when it is missing the suite
fails and says how to get it, rather than skipping the PostgreSQL half of the contract.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
INSTALL_HINT = (
    "PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth) for these "
    "tests. Install and start it with: sudo apt-get install -y postgresql && "
    "sudo pg_ctlcluster 15 main start (and set `host all postgres 127.0.0.1/32 trust` in "
    "pg_hba.conf)")

TOOLS_HINT = (
    "pg_dump, pg_restore and psql (PostgreSQL 15 client tools) are required by the backup and "
    "restore tests. Install them with: sudo apt-get install -y postgresql-client-15 "
    "(Debian/Ubuntu) or brew install postgresql@15 (macOS)")


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


def url_for(name: str, user: str = "postgres") -> str:
    """The URL `serve --ledger` takes for database `name`, connecting as `user`."""
    return f"postgresql://{user}@127.0.0.1:5432/{name}"


def create_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found. {TOOLS_HINT}", pytrace=False)
    return path


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def dump(name: str, to: Path) -> None:
    """`pg_dump` of database `name` into `to` (custom format, for pg_restore)."""
    _run(_tool("pg_dump"), "-h", "127.0.0.1", "-U", "postgres", "-Fc", "-f", str(to), name)


def restore(name: str, dump_file: Path) -> None:
    """Restore a `dump` over database `name` as an operator would: pg_restore --clean, in
    one transaction (every object of the dump is dropped and recreated from it)."""
    _run(_tool("pg_restore"), "-h", "127.0.0.1", "-U", "postgres", "--clean", "--if-exists",
         "--single-transaction", "-d", name, str(dump_file))


class CutOffRole:
    """A login role of its own (superuser, like the tests' `postgres`) for one process, so
    that process alone can be cut off from the server (its sessions ended, new ones refused)
    and let back in: a replica that cannot reach PostgreSQL for a while."""

    def __init__(self) -> None:
        self.name = f"ca_test_role_{secrets.token_hex(6)}"

    def __enter__(self) -> CutOffRole:
        with _admin() as admin:
            admin.execute(f'CREATE ROLE "{self.name}" LOGIN SUPERUSER')
        return self

    def cut_off(self) -> None:
        with _admin() as admin:
            admin.execute(f'ALTER ROLE "{self.name}" NOLOGIN')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (self.name,))

    def let_in(self) -> None:
        with _admin() as admin:
            admin.execute(f'ALTER ROLE "{self.name}" LOGIN')

    def __exit__(self, *exc: object) -> None:
        with _admin() as admin:
            admin.execute(f'ALTER ROLE "{self.name}" NOLOGIN')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (self.name,))
            admin.execute(f'DROP ROLE IF EXISTS "{self.name}"')
