"""`gatehouse`: serve the sidecar, migrate its database, and administer it.

    gatehouse serve [--listen HOST:PORT] [--unix-socket PATH] [...]
    gatehouse relay [...]
    gatehouse migrate up [--to N] | down [--to N] | version  [--database-url OWNER_DSN] [--runtime-role ROLE]
    gatehouse tenant|plan|role|member|key|audit|config ACTION ...,  gatehouse grant|revoke|check ...
    gatehouse apply -f state.yaml [--dry-run] [--prune]  |  gatehouse export [--tenant SLUG_OR_ID]

`migrate down` without `--to` undoes one step, never the whole schema by accident. The
admin commands and `check` talk to a running server through the light client
(server/commands.py), and so do `apply` and `export` (server/declarative_cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from typing import Any, Coroutine

from gatehouse import logs
from gatehouse.server import commands as commands_module
from gatehouse.redis_client import url_passwords
from gatehouse.settings import OWNER_DATABASE_URL, RELAY_DEFAULTS, RELAY_SETTINGS, MigrateSettings, Settings, check_dsn


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar")
    Settings.add_arguments(serve)
    relay = commands.add_parser("relay", help="run only the outbox relay (serve runs one too unless --relay 0)")
    Settings.add_arguments(relay, RELAY_SETTINGS, RELAY_DEFAULTS)
    migrate = commands.add_parser("migrate", help="apply or roll back schema migrations")
    migrate.add_argument("direction", choices=("up", "down", "version"))
    migrate.add_argument(
        "--to", type=int, default=None, help="target version (up: the latest; down: one step back, --to 0 undoes all)"
    )
    migrate.add_argument(
        "--database-url",
        default=None,
        help=f"Postgres DSN of the role that owns the schema [env GATEHOUSE_MIGRATE_DATABASE_URL, default {OWNER_DATABASE_URL!r}]",
    )
    migrate.add_argument(
        "--runtime-role",
        default=None,
        help="role the server connects as, granted its privileges after `up` ('' = grant nothing) "
        "[env GATEHOUSE_RUNTIME_ROLE, default: the user of GATEHOUSE_DATABASE_URL]",
    )
    from gatehouse.server import declarative_cli

    commands_module.add_commands(commands)
    declarative_cli.add_commands(commands)
    args = parser.parse_args(argv)

    if args.command in commands_module.GROUPS:
        return commands_module.run(args)
    if args.command in ("apply", "export"):
        return declarative_cli.run(args)
    if args.command in ("serve", "relay"):
        settings = Settings.from_args(args, RELAY_DEFAULTS if args.command == "relay" else None)
        worker = os.environ.get("GATEHOUSE_WORKER_INDEX")
        logs.configure(
            settings.log_format, settings.log_level, worker=int(worker) if worker and worker.isdigit() else None,
            secrets=[settings.operator_key, *url_passwords(settings.redis_url), *url_passwords(settings.database_url)],
        )
        if args.command == "serve" and settings.decision_log != "off":
            from gatehouse.server.decision_log import check, check_path

            check(settings.decision_log, settings.decision_log_sample_rate, settings.decision_log_queue)
            check_path(settings.decision_log_path)
        # gatehouse.server.app is imported only after the metrics directory is made (below):
        # prometheus_client picks its value store when it is first imported.
        if args.command == "relay":
            return _relay(settings)
        return _serve(settings)

    return _migrate(args)


def _serve(settings: Settings) -> int:
    """`gatehouse serve`: one process, or N workers under this one, or (started by that
    parent) one worker.

    Metrics (server/metrics.py): the top process makes the multiprocess directory
    *before* prometheus_client is imported (it picks its value store at import), starts
    the workers (one is enough) and serves /metrics from their files; a worker only
    writes its values there. A scrape (reading every value, milliseconds of CPU) thus
    never holds up an event loop that answers calls: measured in the same process, it
    put 15 ms onto the hit path's p99 once a second (bench/results/metrics-cost-inprocess-scrape-3x)."""
    from gatehouse.server.metrics_setup import make_dir_env, parse_listen

    worker = os.environ.get("GATEHOUSE_WORKER_REUSE_PORT") == "1"
    listen = None if worker else parse_listen(settings.metrics_listen)
    if not worker and (settings.worker_count > 1 or listen is not None):
        directory = make_dir_env() if listen is not None else ""
        try:
            from gatehouse.server.workers import run_workers

            return run_workers(settings, metrics=listen, metrics_dir=directory)
        finally:
            if directory:  # every process writing there has exited
                shutil.rmtree(directory, ignore_errors=True)
    from gatehouse.server import app
    from gatehouse.server.metrics import Metrics

    recording = worker and os.environ.get("GATEHOUSE_WORKER_METRICS") == "1"
    return _run(app.serve(settings, reuse_port=worker, metrics=Metrics() if recording else None))


def _relay(settings: Settings) -> int:
    """`gatehouse relay`: one process; with metrics on, it records and serves its own
    (server/metrics.py `RelayMetrics`), in memory: no workers, no multiprocess directory."""
    from gatehouse.server.metrics_setup import MULTIPROC_ENV, parse_listen

    listen = parse_listen(settings.metrics_listen)
    # A directory named in the environment it was started from (a `serve`'s) is not its own.
    os.environ.pop(MULTIPROC_ENV, None)
    from gatehouse.server import app

    return _run(app.run_relay(settings, metrics=listen))


def _migrate(args: argparse.Namespace) -> int:
    """`gatehouse migrate`: as the owner; `up` then grants the runtime role its privileges."""
    from gatehouse.errors import GatehouseError
    from gatehouse.store import migrate as migrations

    settings = MigrateSettings.from_env(database_url=args.database_url, runtime_role=args.runtime_role)
    dsn = settings.database_url
    check_dsn(dsn, "GATEHOUSE_MIGRATE_DATABASE_URL (--database-url)")
    try:
        if args.direction == "up":
            if settings.runtime_role is None:
                return _migrate_error(
                    "cannot tell the runtime role from GATEHOUSE_DATABASE_URL: "
                    "set GATEHOUSE_RUNTIME_ROLE or --runtime-role ('' grants nothing)"
                )
            version = _run(migrations.migrate_up(dsn, args.to, runtime_role=settings.runtime_role))
        elif args.direction == "down":
            version = _run(migrations.migrate_down_to(dsn, args.to))
        else:
            version = _run(migrations.current_version(dsn))
    except ValueError as error:  # RuntimeRoleError, or a --to out of range
        return _migrate_error(str(error))
    except GatehouseError as error:
        # An operator's terminal, not a gRPC caller: the database's own words help here
        # ("permission denied for schema public" = not connected as the owner).
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        return _migrate_error(f"{error}{cause}")
    granted = f"; runtime role {settings.runtime_role!r} granted" if args.direction == "up" and settings.runtime_role else ""
    print(f"schema version {version} (latest {migrations.LATEST_VERSION}){granted}")
    return 0


def _migrate_error(message: str) -> int:
    """One line on stderr and exit status 1: an operator's mistake needs no traceback."""
    print(f"gatehouse migrate: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
