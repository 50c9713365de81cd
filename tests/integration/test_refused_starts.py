"""Issue 12, item 4: a server that would split the consent state refuses to start.

Real `consentauthz serve` processes: two on one PostgreSQL ledger with different keys
(the second would file subjects under pseudonyms of its own, or fail to open what the
first sealed), one on an embedded ledger whose key file was lost and regenerated, and two
on one data dir. Each refusal is one line on stderr that names the problem and what to
do, and never a key.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from consentauthz.app import App
from consentauthz.config import ServeConfig
from consentauthz.errors import ConfigError
from tests.conftest import POLICIES, start_server
from tests.pg import fresh_database
from tests.scenario import record
from tests.serve_process import (
    decide,
    error_lines,
    pg_url,
    refused,
    serve_command,
    serve_env,
    start_serve,
)

EMAIL = "marketing.communications.email"
CATEGORY = "user.contact.email"
KEY, OTHER_KEY = "ab" * 32, "ef" * 32
MASTER, OTHER_MASTER = "cd" * 32, "12" * 32



def keys(pseudonym: str, master: str) -> dict[str, str]:
    """The environment of a replica with these pseudonymisation and master keys."""
    return serve_env(CONSENTAUTHZ_PSEUDONYM_KEY=pseudonym, CONSENTAUTHZ_MASTER_KEY=master)


def one_error(stderr: str) -> str:
    (line,) = error_lines(stderr)
    for secret in (KEY, OTHER_KEY, MASTER, OTHER_MASTER):
        assert secret not in stderr
    return line


def test_a_replica_with_another_pseudonymisation_key_is_refused(tmp_path: Path) -> None:
    with fresh_database() as dsn:
        ledger = ["--ledger", pg_url(dsn)]
        a = start_serve(serve_command(tmp_path / "a", *ledger),
                        keys(KEY, MASTER))
        try:
            token = record(a, "split-subject", "grant", EMAIL).consistency_token
            code, err = refused(serve_command(tmp_path / "b", *ledger),
                                keys(OTHER_KEY, MASTER))
            assert code != 0
            line = one_error(err)
            assert "pseudonymisation key k1" in line
            assert "CONSENTAUTHZ_PSEUDONYM_KEY" in line and "other replicas" in line
            # The refused replica changed nothing: the first still answers as before.
            assert decide(a, "split-subject", token) == "ALLOW"
            # The right key starts, and finds what the first replica recorded.
            b = start_serve(serve_command(tmp_path / "b", *ledger),
                            keys(KEY, MASTER))
            try:
                assert decide(b, "split-subject", token) == "ALLOW"
            finally:
                b.stop()
        finally:
            a.stop()


def test_a_replica_with_another_master_key_is_refused(tmp_path: Path) -> None:
    with fresh_database() as dsn:
        ledger = ["--ledger", pg_url(dsn)]
        a = start_serve(serve_command(tmp_path / "a", *ledger),
                        keys(KEY, MASTER))
        try:
            code, err = refused(serve_command(tmp_path / "b", *ledger),
                                keys(KEY, OTHER_MASTER))
        finally:
            a.stop()
        assert code != 0
        line = one_error(err)
        assert "master key m1" in line and "CONSENTAUTHZ_MASTER_KEY" in line


def test_a_shared_ledger_needs_the_pseudonymisation_key_like_the_master_key(
        tmp_path: Path) -> None:
    with fresh_database() as dsn:
        code, err = refused(serve_command(tmp_path / "a", "--ledger", pg_url(dsn)),
                            serve_env(CONSENTAUTHZ_MASTER_KEY=MASTER))
    assert code != 0
    line = one_error(err)
    assert "pseudonymisation key" in line and "CONSENTAUTHZ_PSEUDONYM_KEY" in line
    assert not (tmp_path / "a" / "keys" / "pseudonym.key").exists()  # none generated


def test_an_embedded_ledger_refuses_a_regenerated_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    command = serve_command(data)
    s = start_serve(command, serve_env())
    try:
        token = record(s, "embedded-subject", "grant", EMAIL).consistency_token
    finally:
        s.stop()
    key_file = data / "keys" / "pseudonym.key"
    backup = key_file.read_text()
    key_file.unlink()  # lost: serve would generate a new one
    code, err = refused(command, serve_env())
    assert code != 0
    line = one_error(err)
    assert "pseudonymisation key k1" in line and f"restore {key_file}" in line
    assert backup.strip() not in err
    key_file.write_text(backup)  # restored from the backup
    s = start_serve(command, serve_env())
    try:
        assert decide(s, "embedded-subject", token) == "ALLOW"
    finally:
        s.stop()


def test_a_second_server_on_one_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_serve(serve_command(data), serve_env())
    try:
        code, err = refused(serve_command(data), serve_env())
        assert code != 0
        line = one_error(err)
        assert f"pid {first.proc.pid}" in line and str(data) in line
        # The first one was not disturbed.
        record(first, "lock-subject", "grant", EMAIL)
        assert decide(first, "lock-subject") == "ALLOW"
    finally:
        first.channel.close()
        os.kill(first.proc.pid, signal.SIGKILL)  # no clean stop: the lock dies with it
        first.proc.wait(timeout=20)
    again = start_serve(serve_command(data), serve_env())
    try:
        assert decide(again, "lock-subject") == "ALLOW"
    finally:
        again.stop()


def test_a_start_that_fails_half_way_frees_the_data_dir(tmp_path: Path) -> None:
    """In one process: a start refused after the ledger and the decision log were opened
    (here: a callers file that does not exist) leaves the data dir to the next start."""
    data = tmp_path / "data"
    with pytest.raises(ConfigError, match="callers file"):
        App(ServeConfig(listen="127.0.0.1:0", data_dir=data, policies=POLICIES,
                        pseudonym_key=b"k" * 32, watch_policies=False,
                        callers_file=tmp_path / "missing.yaml"))
    s = start_server(data)
    try:
        record(s, "after-failed-start", "grant", EMAIL)
    finally:
        s.channel.close()
        s.app.stop(grace=None)
