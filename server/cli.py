"""`gatehouse`: serve the sidecar, or migrate its database.

    gatehouse serve [--listen HOST:PORT] [--unix-socket PATH] [...]
    gatehouse relay [...]
    gatehouse migrate up [--to N] | down [--to N] | version
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from gatehouse.settings import Settings


def _run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar")
    Settings.add_arguments(serve)
    relay = commands.add_parser("relay", help="run only the outbox relay (serve runs one too unless --relay 0)")
    Settings.add_arguments(relay)
    migrate = commands.add_parser("migrate", help="apply or roll back schema migrations")
    migrate.add_argument("direction", choices=("up", "down", "version"))
    migrate.add_argument("--to", type=int, default=None, help="target version (down defaults to 0)")
    migrate.add_argument("--database-url", default=None, help="Postgres DSN [env GATEHOUSE_DATABASE_URL]")
    args = parser.parse_args(argv)

    if args.command in ("serve", "relay"):
        settings = Settings.from_args(args)
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        from gatehouse.server import app

        if args.command == "relay":
            return _run(app.run_relay(settings))
        if settings.workers != 1:
            from gatehouse.server.workers import run_workers

            return run_workers(settings)
        reuse_port = os.environ.get("GATEHOUSE_WORKER_REUSE_PORT") == "1"
        return _run(app.serve(settings, reuse_port=reuse_port))

    from gatehouse.store import migrate as migrations

    dsn = Settings.from_env(database_url=args.database_url).database_url
    if args.direction == "up":
        version = _run(migrations.migrate_up(dsn, args.to))
    elif args.direction == "down":
        version = _run(migrations.migrate_down(dsn, args.to or 0))
    else:
        version = _run(migrations.current_version(dsn))
    print(f"schema version {version} (latest {migrations.LATEST_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
