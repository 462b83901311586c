"""Configuration: command-line flags over `GATEHOUSE_*` environment variables over defaults.

The defaults work on the embedded set-up `./dev serve` makes: Postgres and Redis on
127.0.0.1, a database `gatehouse` owned by the role `gatehouse` (which migrates it), the
server connecting as the role `gatehouse_app` (which owns nothing and is bound by
row-level security), gRPC on 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

# The runtime role: what `serve` and `relay` connect as. Not the tables' owner, so it
# cannot turn row-level security off (see gatehouse.store.grants).
RUNTIME_DATABASE_URL = "postgresql://gatehouse_app@127.0.0.1:5432/gatehouse"
# The owner role: what `migrate` connects as; it creates and owns the schema.
OWNER_DATABASE_URL = "postgresql://gatehouse@127.0.0.1:5432/gatehouse"


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = field(default="127.0.0.1:50051", metadata={"help": "host:port for gRPC over TCP ('' = none)"})
    unix_socket: str = field(
        default="", metadata={"help": "also listen on this unix socket path (plaintext: file permissions guard it)"}
    )
    tls_cert_file: str = field(
        default="", metadata={"help": "PEM certificate chain (server certificate first); turns on TLS for --listen"}
    )
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of --tls-cert-file (unencrypted)"})
    tls_client_ca_file: str = field(
        default="", metadata={"help": "PEM CA bundle; when set, clients must present a certificate it issued (mTLS)"}
    )
    allow_plaintext: int = field(
        default=0,
        metadata={
            "help": "1 = allow plaintext on a non-loopback --listen (without TLS); loopback never needs it",
            "switch": True,
        },
    )
    authzen_listen: str = field(
        default="",
        metadata={
            "help": "host:port of the AuthZEN 1.0 HTTP listener ('' = none; port 0 = any free port); TLS with"
            " --tls-cert-file like gRPC, plaintext only on loopback unless --allow-plaintext"
        },
    )
    authzen_base_url: str = field(
        default="",
        metadata={
            "help": "the AuthZEN policy_decision_point URL the metadata document names, e.g."
            " https://pdp.example.com ('' = the scheme and Host of each metadata request)"
        },
    )
    database_url: str = field(
        default=RUNTIME_DATABASE_URL,
        metadata={"help": "Postgres DSN (asyncpg) of the runtime role: not the tables' owner, never a superuser"},
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={"help": "Redis URL (with --redis-cluster: any one node of the cluster, database 0)"},
    )
    redis_cluster: int = field(
        default=0,
        metadata={
            "help": "1 = the Redis at --redis-url is a Redis Cluster node: use a cluster-aware client",
            "switch": True,
        },
    )
    redis_prefix: str = field(default="gh", metadata={"help": "prefix of every Redis key this sidecar writes"})
    l1_max_entries: int = field(default=100_000, metadata={"help": "bound of the in-process cache (entries)"})
    l1_ttl_seconds: float = field(
        default=60.0, metadata={"help": "life of an in-process entry (a safety net: tenant events evict)"}
    )
    answer_cache_entries: int = field(
        default=50_000,
        metadata={"help": "answers remembered by request bytes, per hot method (0 = off); ~400 bytes each"},
    )
    l2_ttl_seconds: float = field(default=300.0, metadata={"help": "life of a Redis cache entry"})
    redis_timeout_seconds: float = field(default=0.25, metadata={"help": "Redis socket timeout; slower = treated as down"})
    workers: int = field(
        default=0, metadata={"help": "serving processes sharing the port with SO_REUSEPORT (0 = one per core)"}
    )
    worker_timeout_seconds: float = field(
        default=30.0,
        metadata={
            "help": "a worker whose event loop has not said it is alive for this long (stopped, deadlocked) is"
            " killed and restarted by `serve --workers` (0 = never)"
        },
    )
    worker_restarts: int = field(
        default=5,
        metadata={
            "help": "restarts of dead workers `serve --workers` makes per minute; one more and it stops, exit 1,"
            " for its supervisor to restart (0 = never restart a worker)"
        },
    )
    relay: int = field(default=1, metadata={"help": "1 = run the outbox relay in this process, 0 = not"})
    event_stream_max_length: int = field(default=100_000, metadata={"help": "tenant-event stream cap (XADD MAXLEN ~)"})
    outbox_retention_seconds: float = field(default=86_400.0, metadata={"help": "keep published outbox rows this long"})
    expiry_sweep_seconds: float = field(
        default=10.0,
        metadata={
            "help": "the relay deletes expired role assignments (with an event and an audit row) this often"
            " (0 = never; they grant nothing from their expiry on either way)"
        },
    )
    blind_refresh_seconds: float = field(
        default=2.0, metadata={"help": "while the event stream is unreachable, clear L1 this often"}
    )
    max_staleness_seconds: float = field(
        default=5.0,
        metadata={
            "help": "answer only from data confirmed current (event stream live, relay heartbeats arriving)"
            " at most this long ago; else re-read Postgres, else UNAVAILABLE GATEHOUSE_STALE (more than 0)"
        },
    )
    relay_heartbeat_seconds: float = field(
        default=1.0,
        metadata={"help": "the relay appends a heartbeat to the event stream this often (more than 0)"},
    )
    default_deadline_seconds: float = field(
        default=10.0,
        metadata={
            "help": "deadline of a unary call whose client sent none (0 = none): its Postgres and Redis work"
            " and its wait for a pool connection end then, with DEADLINE_EXCEEDED"
        },
    )
    db_pool_max: int = field(default=10, metadata={"help": "Postgres pool: most connections"})
    max_concurrent_rpcs: int = field(
        default=1024,
        metadata={
            "help": "calls per process, queued or running, watch streams included; beyond: RESOURCE_EXHAUSTED "
            "at once (grpc's maximum_concurrent_rpcs; 0 = unbounded)"
        },
    )
    max_pending_calls: int = field(
        default=256,
        metadata={
            "help": "calls grpc's core holds before Python takes them, per process; past it new calls are"
            " refused in C, randomly between it and twice it, always beyond (0 = unbounded)"
        },
    )
    max_in_flight_hot: int = field(
        default=256, metadata={"help": "AccessService calls inside their handlers at once, per process (0 = unbounded)"}
    )
    max_in_flight_config: int = field(
        default=128, metadata={"help": "GetTenantConfig calls inside their handler at once, per process (0 = unbounded)"}
    )
    max_in_flight_admin: int = field(
        default=32, metadata={"help": "AdminService calls inside their handlers at once, per process (0 = unbounded)"}
    )
    max_in_flight_lookup: int = field(
        default=16,
        metadata={"help": "LookupService calls inside their handlers at once, per process (0 = unbounded)"},
    )
    lookup_rosters: int = field(
        default=8,
        metadata={"help": "whole-tenant rosters LookupSubjects keeps in memory, per process (a tenant each)"},
    )
    max_watch_streams: int = field(
        default=256, metadata={"help": "open WatchTenantConfig streams per process (0 = unbounded)"}
    )
    auth_max_pending: int = field(
        default=8,
        metadata={"help": "admin-key verifications (Argon2) waiting or running at once; beyond: refused unhashed"},
    )
    auth_failures_burst: int = field(
        default=10, metadata={"help": "failed admin authentications one client address may make in a burst"}
    )
    auth_failures_per_second: float = field(
        default=1.0, metadata={"help": "... and per second after it; beyond: refused at once, unhashed"}
    )
    caller_credentials: str = field(
        default="off",
        metadata={
            "help": "off, or required: CheckAccess, GetTenantConfig and ext_authz callers (AuthZEN's always) need an API key "
            "or an mTLS identity holding gatehouse.access.check / gatehouse.config.read (README \"Who may ask\")"
        },
    )
    caller_identities_file: str = field(
        default="",
        metadata={"help": "YAML file: mTLS client identities and the hot-path permissions (and tenants) each holds"},
    )
    operator_key: str = field(default="", metadata={"help": "bootstrap operator API key (Bearer token)", "secret": True})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    # Logs (README "Logs"; gatehouse/logs.py, server/call_log.py, server/decision_log.py).
    log_format: str = field(default="text", metadata={"help": "text, or json: one JSON object per line"})
    access_log_hot: int = field(
        default=0,
        metadata={"help": "1 = access-log AccessService and ConfigService calls too (AdminService: always)", "switch": True},
    )
    decision_log: str = field(
        default="off", metadata={"help": "off, denials, sampled or all: one JSON line per decision"}
    )
    decision_log_sample_rate: float = field(
        default=0.01, metadata={"help": "with --decision-log sampled: the share of decisions logged, 0..1"}
    )
    decision_log_path: str = field(default="-", metadata={"help": "where decision lines go: - (stdout) or a file"})
    decision_log_queue: int = field(
        default=10_000, metadata={"help": "decision lines waiting for the writer, at most; beyond: dropped, counted"}
    )
    grace_seconds: float = field(default=10.0, metadata={"help": "how long SIGTERM waits for in-flight calls"})
    health_interval_seconds: float = field(
        default=1.0, metadata={"help": "seconds between health probes of Postgres and Redis (more than 0)"}
    )
    health_timeout_seconds: float = field(
        default=1.0,
        metadata={"help": "a dependency not answering a health probe within this many seconds is down (more than 0)"},
    )
    ext_authz_config: str = field(
        default="",
        metadata={
            "help": "YAML file mapping the HTTP requests Envoy asks about to checks: serves Envoy's"
            " envoy.service.auth.v3.Authorization/Check on the gRPC listeners ('' = not served; README 'Envoy ext_authz')"
        },
    )
    metrics_listen: str = field(
        default="127.0.0.1:9464",
        metadata={
            "help": "host:port of the Prometheus /metrics listener, one for all workers of a serve ('' or 'off' = no "
            "metrics; port 0 = any free port); `gatehouse relay` serves its own only when this is given"
        },
    )

    @property
    def worker_count(self) -> int:
        """`workers`, where 0 (the default) means one per core."""
        return self.workers or os.cpu_count() or 1

    def check_durations(self) -> None:
        """SystemExit naming the setting when one of `DURATIONS` (the health probe's
        interval and timeout, the max staleness, the relay heartbeat) is not more than 0
        seconds."""
        for name in DURATIONS:
            value = getattr(self, name)
            if not value > 0:  # NaN too
                flag = "--" + name.replace("_", "-")
                raise SystemExit(f"gatehouse: GATEHOUSE_{name.upper()} ({flag}) must be more than 0, got {value}")

    def check_redis_prefix(self) -> None:
        """SystemExit when the Redis key prefix holds a brace: the tenant's `{<id>}` must be
        the first hash tag in every key, or Redis Cluster spreads one tenant over slots."""
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise SystemExit(
                f"gatehouse: GATEHOUSE_REDIS_PREFIX (--redis-prefix) must not contain '{{' or '}}', got {self.redis_prefix!r}"
            )

    def check_database_url(self) -> None:
        """SystemExit naming GATEHOUSE_DATABASE_URL when it cannot be a Postgres DSN
        (`check_dsn`): found at start, not as INTERNAL on every call."""
        check_dsn(self.database_url, "GATEHOUSE_DATABASE_URL (--database-url)")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, defaults: Mapping[str, Any] | None = None, **overrides: Any
    ) -> "Settings":
        """Settings from `overrides` (None: not given), else `GATEHOUSE_<NAME>` in `env`,
        else `defaults` (a command's own, e.g. `RELAY_DEFAULTS`), else the field's default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = dict(defaults or {})
        for f in fields(cls):
            raw = env.get(f"GATEHOUSE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        names: frozenset[str] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """One `--flag` per setting (of `names` only, when given: `gatehouse relay` takes
        just `RELAY_SETTINGS`); unset flags fall back to the environment, then `defaults`
        (the command's own, shown in its help), then the field's default.

        A setting marked as a switch also takes its flag alone: `--allow-plaintext` means
        `--allow-plaintext 1`.
        """
        defaults = defaults or {}
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            default = defaults.get(f.name, f.default)
            switch: dict[str, Any] = {"nargs": "?", "const": 1} if f.metadata.get("switch") else {}
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                type=_PARSERS[str(f.type)],
                default=None,
                **switch,
                help=f"{f.metadata.get('help', '')} [env GATEHOUSE_{f.name.upper()}, default {default!r}]"
                if not f.metadata.get("secret")
                else f"{f.metadata.get('help', '')} [env GATEHOUSE_{f.name.upper()}]",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> "Settings":
        """From parsed `add_arguments` flags, then the environment, then `defaults`."""
        return cls.from_env(defaults=defaults, **{f.name: getattr(args, f.name, None) for f in fields(cls)})


# Settings that must be more than 0 seconds (`Settings.check_durations`).
DURATIONS = ("health_interval_seconds", "health_timeout_seconds", "max_staleness_seconds", "relay_heartbeat_seconds")

# What `gatehouse relay` (the outbox relay alone) reads; its --help lists only these.
RELAY_SETTINGS = frozenset(
    {
        "database_url",
        "redis_url",
        "redis_cluster",
        "redis_prefix",
        "event_stream_max_length",
        "outbox_retention_seconds",
        "expiry_sweep_seconds",
        "l2_ttl_seconds",
        "relay_heartbeat_seconds",
        "log_level",
        "log_format",
        "metrics_listen",
    }
)
# `gatehouse relay`'s own defaults. Metrics only when asked for: a relay beside a `serve`
# on one host would otherwise take (or be refused) the sidecar's default 127.0.0.1:9464.
RELAY_DEFAULTS: Mapping[str, Any] = {"metrics_listen": "off"}


# libpq's sslmode values, which asyncpg accepts (and refuses any other with a
# ClientConfigurationError at the first connection, not before).
SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def check_dsn(dsn: str, setting: str) -> None:
    """SystemExit naming `setting` when `dsn` cannot be a Postgres DSN asyncpg would use:
    a scheme other than postgresql:// or postgres://, a port that is not 1-65535 in ASCII
    digits (each host of a multi-host DSN), or an sslmode libpq does not know. asyncpg
    checks these only when it first connects, and a sidecar's pool connects on demand, so
    a typo started a process whose every call failed INTERNAL. The password never appears
    in the message."""
    parts = urlsplit(dsn)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # no user or password
    if parts.scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"gatehouse: {setting} must be a postgresql:// URL, got {shown!r}")
    for host in parts.netloc.rpartition("@")[2].split(","):
        _, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if colon and port and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            raise SystemExit(f"gatehouse: {setting}: port {port!r} is not a port (1-65535), in {shown!r}")
    for mode in parse_qs(parts.query).get("sslmode", []):
        if mode not in SSLMODES:
            raise SystemExit(f"gatehouse: {setting}: sslmode {mode!r} is not one of {', '.join(sorted(SSLMODES))}")


@dataclass(frozen=True, slots=True)
class MigrateSettings:
    """What `gatehouse migrate` needs: the owner's DSN, and the runtime role to grant to.

    `runtime_role` defaults to the user of the server's own DSN (`GATEHOUSE_DATABASE_URL`),
    so one environment configures both; '' means grant nothing, None that it cannot be
    told from that DSN.
    """

    database_url: str = OWNER_DATABASE_URL
    runtime_role: str | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, database_url: str | None = None, runtime_role: str | None = None
    ) -> "MigrateSettings":
        env = os.environ if env is None else env
        if runtime_role is None:
            runtime_role = env.get("GATEHOUSE_RUNTIME_ROLE")
        if runtime_role is None:
            runtime_role = dsn_user(env.get("GATEHOUSE_DATABASE_URL") or RUNTIME_DATABASE_URL)
        return cls(
            database_url=database_url or env.get("GATEHOUSE_MIGRATE_DATABASE_URL") or OWNER_DATABASE_URL,
            runtime_role=runtime_role,
        )


def dsn_user(dsn: str) -> str | None:
    """The user a libpq-style URL names (`postgresql://user@host/db` or `?user=`), if any."""
    parts = urlsplit(dsn)
    if parts.username:
        return unquote(parts.username)
    users = parse_qs(parts.query).get("user")
    return users[0] if users else None


_PARSERS: dict[str, Any] = {"str": str, "int": int, "float": float}


def _coerce(type_name: Any, raw: str) -> Any:
    return _PARSERS[str(type_name)](raw)
