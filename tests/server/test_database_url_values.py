"""A database URL that cannot be a Postgres DSN stops the process at start, naming the
setting and never the password. asyncpg checks a DSN only when it first connects, and a
sidecar's pool connects on demand: before, `serve` started and answered every call
INTERNAL ("database error: ClientConfigurationError"), and the relay retried for ever."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings, check_dsn

BAD = [
    "postgresql://gatehouse_app:s3cret@127.0.0.1:notaport/gatehouse",
    "mysql://gatehouse_app:s3cret@127.0.0.1:3306/gatehouse",
    "postgresql://gatehouse_app:s3cret@127.0.0.1:5432/gatehouse?sslmode=bogus",
    "postgresql://gatehouse_app:s3cret@127.0.0.1:70000/gatehouse",
    "postgresql://gatehouse_app:s3cret@h1:5432,h2:x/gatehouse",
]
GOOD = [
    "postgresql://gatehouse_app@127.0.0.1:5432/gatehouse",
    "postgres://u@h/db",
    "postgresql://u@h1:5432,h2:5433/db?sslmode=verify-full",
    "postgresql://u@[::1]:5432/db",
    "postgresql:///db?host=/var/run/postgresql",
]


@pytest.mark.parametrize("dsn", BAD)
def test_a_dsn_asyncpg_would_refuse_is_refused_without_its_password(dsn: str) -> None:
    with pytest.raises(SystemExit) as refused:
        check_dsn(dsn, "GATEHOUSE_DATABASE_URL")
    assert "GATEHOUSE_DATABASE_URL" in str(refused.value) and "s3cret" not in str(refused.value)


@pytest.mark.parametrize("dsn", GOOD)
def test_the_forms_asyncpg_takes_pass(dsn: str) -> None:
    check_dsn(dsn, "GATEHOUSE_DATABASE_URL")


async def test_serve_stops_at_start(sidecar_settings: Settings) -> None:
    sidecar = Sidecar(dataclasses.replace(sidecar_settings, database_url=BAD[0]))
    with pytest.raises(SystemExit, match="GATEHOUSE_DATABASE_URL"):
        await sidecar.start()
    await sidecar.stop(grace=0)


@pytest.mark.parametrize("command", [["relay"], ["migrate", "version"]])
def test_the_relay_and_migrate_stop_at_start(command: list[str]) -> None:
    env = {**os.environ, "GATEHOUSE_DATABASE_URL": BAD[2], "GATEHOUSE_MIGRATE_DATABASE_URL": BAD[2]}
    done = subprocess.run(
        [sys.executable, "-m", "gatehouse.server.cli", *command], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "sslmode 'bogus'" in done.stderr and "s3cret" not in done.stderr, done.stderr
