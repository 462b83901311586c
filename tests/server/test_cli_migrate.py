"""`gatehouse migrate`: runs as the owner, grants the runtime role named by the server's
own DSN, and says plainly when either role is the wrong one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

import asyncpg

from gatehouse.settings import OWNER_DATABASE_URL, RUNTIME_DATABASE_URL, MigrateSettings, dsn_user
from tests.conftest import PG_OWNER_ROLE, PG_RUNTIME_ROLE


async def gatehouse_migrate(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatehouse.server.cli", "migrate", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _as(role: str, dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"postgresql://{role}@{parts.hostname}:{parts.port}{parts.path}"


async def _can_read_tenants(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT has_table_privilege('tenants', 'SELECT')"))
    finally:
        await conn.close()


def test_defaults_name_the_owner_for_migrations_and_the_runtime_role_for_serving() -> None:
    assert dsn_user(OWNER_DATABASE_URL) == "gatehouse"
    assert dsn_user(RUNTIME_DATABASE_URL) == "gatehouse_app"
    assert MigrateSettings.from_env({}) == MigrateSettings(OWNER_DATABASE_URL, "gatehouse_app")
    env = {
        "GATEHOUSE_DATABASE_URL": "postgresql://svc@db/x",
        "GATEHOUSE_MIGRATE_DATABASE_URL": "postgresql://admin@db/x",
    }
    assert MigrateSettings.from_env(env) == MigrateSettings("postgresql://admin@db/x", "svc")
    assert MigrateSettings.from_env({**env, "GATEHOUSE_RUNTIME_ROLE": ""}).runtime_role == ""
    assert MigrateSettings.from_env({"GATEHOUSE_DATABASE_URL": "postgresql:///x?user=svc%5F1"}).runtime_role == "svc_1"
    assert MigrateSettings.from_env({"GATEHOUSE_DATABASE_URL": "postgresql:///x"}).runtime_role is None
    assert MigrateSettings.from_env(env, database_url="postgresql://o@h/y", runtime_role="r") == MigrateSettings(
        "postgresql://o@h/y", "r"
    )


async def test_migrate_up_as_the_owner_grants_the_role_of_the_servers_dsn(empty_db: str) -> None:
    runtime = _as(PG_RUNTIME_ROLE, empty_db)
    done = await gatehouse_migrate({"GATEHOUSE_MIGRATE_DATABASE_URL": empty_db, "GATEHOUSE_DATABASE_URL": runtime}, "up")
    assert done.returncode == 0, done.stderr
    assert f"runtime role '{PG_RUNTIME_ROLE}' granted" in done.stdout
    assert await _can_read_tenants(runtime)

    done = await gatehouse_migrate({"GATEHOUSE_DATABASE_URL": runtime}, "version", "--database-url", empty_db)
    assert done.returncode == 0, done.stderr
    assert "schema version" in done.stdout


async def test_migrate_up_refuses_to_make_the_owner_the_runtime_role(empty_db: str) -> None:
    done = await gatehouse_migrate({"GATEHOUSE_DATABASE_URL": empty_db}, "up", "--database-url", empty_db)
    assert done.returncode == 1
    assert f"runtime role '{PG_OWNER_ROLE}' is the role running the migrations" in done.stderr
    assert "Traceback" not in done.stderr


async def test_migrate_up_as_the_runtime_role_cannot_create_the_schema(empty_db: str) -> None:
    runtime = _as(PG_RUNTIME_ROLE, empty_db)
    done = await gatehouse_migrate({"GATEHOUSE_DATABASE_URL": runtime}, "up", "--database-url", runtime)
    assert done.returncode == 1
    assert "permission denied for schema public" in done.stderr
    assert "Traceback" not in done.stderr


async def test_migrate_down_without_to_undoes_one_step_only(empty_db: str) -> None:
    """It used to undo every migration, dropping every table, when `--to` was forgotten."""
    from gatehouse.store.migrate import LATEST_VERSION

    runtime = _as(PG_RUNTIME_ROLE, empty_db)
    env = {"GATEHOUSE_MIGRATE_DATABASE_URL": empty_db, "GATEHOUSE_DATABASE_URL": runtime}
    assert (await gatehouse_migrate(env, "up")).returncode == 0
    done = await gatehouse_migrate(env, "down")
    assert done.returncode == 0, done.stderr
    assert f"schema version {LATEST_VERSION - 1} " in done.stdout
    done = await gatehouse_migrate(env, "down", "--to", "0")
    assert done.returncode == 0 and "schema version 0 " in done.stdout


def test_relay_help_lists_only_what_the_relay_reads() -> None:
    from gatehouse.settings import RELAY_SETTINGS, Settings

    shown = subprocess.run(
        [sys.executable, "-m", "gatehouse.server.cli", "relay", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in RELAY_SETTINGS:
        assert f"--{name.replace('_', '-')}" in shown
    for serve_only in ("--listen", "--workers", "--tls-cert-file", "--answer-cache-entries", "--health-interval-seconds"):
        assert serve_only not in shown
    # every relay setting is one the relay really reads (no stale names)
    assert RELAY_SETTINGS <= {f for f in Settings.__dataclass_fields__}
