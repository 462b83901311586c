"""Deadlines and cancellation reach the work (issue 14 item 2), end to end.

Real sidecars talk to the real Postgres and Redis through the fault proxy
(`tests/faults.py`): only the test's own sidecar sees a fault, so the shared servers
may stand behind it. Each fault test prints one `FAULT ...` line with what it measured
(errors by code, stale answers, time to recover): README "Faults" quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from gatehouse.server.admin_auth import create_operator_key
from gatehouse.server.app import Sidecar
from gatehouse.server.interceptors import Deadline
from gatehouse.settings import Settings
from gatehouse.store.api import Actor, ConfigPatch
from gatehouse.store.postgres import PostgresStore, connect
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2
from tests.client import Client, make_client, user
from tests.conftest import PG_ADMIN_URL, create_migrated_database, drop_database
from tests.faults import Direction, FaultProxy
from tests.server.status import details

MakeProxy = Callable[[int], Awaitable[FaultProxy]]


def check(tenant_id: str, who: str, permission: str = "doc.read") -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user(who), permission=permission, resource=common_pb2.Resource(type="doc", id="1")
    )


def through(url: str, proxy: FaultProxy, **query: str) -> str:
    """`url` with its host:port replaced by the proxy's (and `query` added)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{netloc[0]}@{proxy.host}" if len(netloc) == 2 else proxy.host
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(netloc=host, query="&".join(q for q in (parts.query, extra) if q)))


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@contextlib.asynccontextmanager
async def running(settings: Settings, operator_token: str) -> AsyncIterator[tuple[Sidecar, Client]]:
    sidecar = Sidecar(settings)
    await sidecar.start()
    client = make_client(sidecar.addresses[0], operator_token)
    try:
        yield sidecar, client
    finally:
        await client.channel.close()
        await sidecar.stop(grace=0.2)


def code_of(outcome: Any) -> str:
    if isinstance(outcome, grpc.aio.AioRpcError):
        return outcome.code().name
    if isinstance(outcome, BaseException):
        return f"raised {type(outcome).__name__}"
    return "OK"


async def backends(datname: str, application_name: str | None = None, *, where: str = "") -> int:
    """Backends of the runtime role on `datname` (of one application name) matching `where`."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = 'gatehouse_app'"
                " AND ($2::text IS NULL OR application_name = $2) " + where,
                datname,
                application_name,
            )
        )
    finally:
        await conn.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.02) -> float:
    """Seconds until `condition()` holds; AssertionError after `timeout` s."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        await asyncio.sleep(step)
    return time.monotonic() - started


async def confirmed(sidecar: Sidecar, timeout: float = 5.0) -> None:
    """Until `sidecar`'s cache holds its data confirmed current (a heartbeat read)."""
    cache = sidecar.cache
    assert cache is not None

    async def current() -> bool:
        return cache.confirmed()

    await until(current, timeout=timeout)


# --- the interceptor's cost ---------------------------------------------------------------


async def test_deadline_interceptor_cost() -> None:
    """+µs per call of the Deadline link, measured inside a real grpc.aio handler (so
    `context.time_remaining()` is grpc's own), with and without a client deadline."""
    figures: dict[str, float] = {}

    async def bare(request: Any, context: Any) -> None:
        return None

    wrapped = Deadline(10.0).unary("/m", bare)

    async def measure(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        n = 100_000
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                await bare(request, context)
            t1 = time.perf_counter()
            for _ in range(n):
                await wrapped(request, context)
            t2 = time.perf_counter()
            best = min(best, ((t2 - t1) - (t1 - t0)) / n * 1e6)
        figures[request.decode()] = best
        return b""

    # SO_REUSEPORT off (grpc turns it on): a later test's server could otherwise be given
    # this port while this stopped server still holds it, and lose its connections to it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"M": grpc.unary_unary_rpc_method_handler(measure)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/M")
            await call(b"with a client deadline", timeout=60)
            await call(b"without one (the default applies)")
    finally:
        await server.stop(0)
    print("COST Deadline interceptor per call: " + ", ".join(f"{k}: +{v:.2f} µs" for k, v in figures.items()))
    assert all(v < 20 for v in figures.values())  # a sanity bound, not a benchmark


# --- a cancelled call cancels its statement -----------------------------------------------


async def test_a_statement_past_its_deadline_is_cancelled_on_the_server(
    client: Client, owner_database_url: str, unique: str
) -> None:
    """A check blocked in Postgres (behind a lock the test holds) fails at its 300 ms
    deadline, and its statement is gone from pg_stat_activity within 1 s of it."""
    tenant = await client.tenant(f"dl-lock-{unique}")
    datname = urlsplit(owner_database_url).path.lstrip("/")
    locker = await asyncpg.connect(owner_database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.access.CheckAccess(check(tenant.id, f"locked-{unique}"), timeout=0.3)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            waiting = "AND wait_event_type = 'Lock'"
            gone_after = await until(lambda: _zero(backends(datname, where=waiting)), timeout=1.0)
    finally:
        await locker.close()
    print(f"FAULT statement blocked past a 300 ms deadline: cancelled on the server {gone_after * 1000:.0f} ms after")


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_a_call_without_a_deadline_gets_the_default_and_the_stable_reason(
    sidecar_settings: Settings, operator_token: str, client: Client, owner_database_url: str, unique: str
) -> None:
    settings = dataclasses.replace(sidecar_settings, default_deadline_seconds=0.3, relay=0)
    tenant = await client.tenant(f"dl-default-{unique}")
    async with running(settings, operator_token) as (sidecar, own):
        locker = await asyncpg.connect(owner_database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await own.access.CheckAccess(check(tenant.id, f"nodeadline-{unique}"), timeout=None)
                took = time.monotonic() - started
                with pytest.raises(grpc.aio.AioRpcError) as admin_failed:
                    await own.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=own.auth)
        finally:
            await locker.close()
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert details(failed.value)[0].reason == "GATEHOUSE_DEADLINE_EXCEEDED"
        assert took < 5.0
        assert sidecar.stats.snapshot()["store.transactions_cancelled"] >= 1
        # An admin call that failed on its deadline is audited all the same.
        assert admin_failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        owner = await asyncpg.connect(owner_database_url)
        try:
            await owner.execute("SELECT set_config('gatehouse.tenant_id', '*', false)")  # row-level security
            audited = await owner.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = 'tenant.get' AND reason = 'GATEHOUSE_DEADLINE_EXCEEDED'"
                " AND outcome = 'error' AND tenant_id = $1",
                uuid.UUID(tenant.id),
            )
        finally:
            await owner.close()
        assert audited == 1


# --- Postgres slow, reset; Redis blackholed ------------------------------------------------


async def test_postgres_one_second_slower_abandoned_calls_leave_no_backlog(
    sidecar_settings: Settings, operator_token: str, client: Client, database_url: str, fault_proxy: MakeProxy,
    unique: str,
) -> None:
    """Postgres +1 s per round trip: 100 uncached checks with a 300 ms deadline all fail
    DEADLINE_EXCEEDED, begin no transaction after they were abandoned, leave none
    running once the fault clears, and checks answer again at once."""
    proxy = await fault_proxy(port_of(database_url))
    app = f"ghdl{unique}"
    settings = dataclasses.replace(
        sidecar_settings, database_url=through(database_url, proxy, application_name=app), relay=0
    )
    datname = urlsplit(database_url).path.lstrip("/")
    tenant = await client.tenant(f"dl-slow-{unique}")
    async with running(settings, operator_token) as (sidecar, own):
        assert sidecar.store is not None
        store = sidecar.store
        # Fill the pool (10 connections) while the network is fine.
        await asyncio.gather(*(own.access.CheckAccess(check(tenant.id, f"warm{i}"), timeout=5) for i in range(10)))
        proxy.delay(0.5)  # each way: +1 s per round trip
        outcomes = await asyncio.gather(
            *(own.access.CheckAccess(check(tenant.id, f"slow{i}"), timeout=0.3) for i in range(100)),
            return_exceptions=True,
        )
        begun_at_abandon = store.transactions_begun
        codes = Counter(code_of(o) for o in outcomes)
        proxy.pass_through()  # the fault clears
        cleared = time.monotonic()
        busy = "AND state IN ('active', 'idle in transaction')"
        drained = await until(lambda: _zero(backends(datname, app, where=busy)), timeout=5.0)
        recovered, begun_after = await _recovery(own, tenant.id, store, begun_at_abandon, cleared)
    print(
        f"FAULT postgres+1s: 100 calls at 300 ms: {dict(codes)}; transactions begun after they were abandoned:"
        f" {begun_after}; none left running {drained * 1000:.0f} ms after the fault cleared;"
        f" uncached checks answer again {recovered * 1000:.0f} ms after; stale answers 0 (no answer was given)"
    )
    assert codes == {"DEADLINE_EXCEEDED": 100}
    assert begun_after <= 5
    assert recovered < 5.0


async def test_postgres_200ms_slower_a_saturated_pool_sheds_at_deadlines(
    sidecar_settings: Settings, operator_token: str, client: Client, database_url: str, fault_proxy: MakeProxy,
    unique: str,
) -> None:
    """Postgres +200 ms per round trip (an uncached check: 3 round trips, so the pool of
    10 serves ~16 a second): 60 at once with a 1 s deadline. Those the pool can serve in
    time answer, the rest fail at their deadline instead of queueing, and nothing they
    started runs on after the fault clears."""
    proxy = await fault_proxy(port_of(database_url))
    settings = dataclasses.replace(sidecar_settings, database_url=through(database_url, proxy), relay=0)
    tenant = await client.tenant(f"dl-pool-{unique}")
    async with running(settings, operator_token) as (sidecar, own):
        assert sidecar.store is not None
        store = sidecar.store
        await asyncio.gather(*(own.access.CheckAccess(check(tenant.id, f"warm{i}"), timeout=5) for i in range(10)))
        proxy.delay(0.1)
        outcomes = await asyncio.gather(
            *(own.access.CheckAccess(check(tenant.id, f"busy{i}"), timeout=1.0) for i in range(60)),
            return_exceptions=True,
        )
        begun_at_abandon = store.transactions_begun
        codes = Counter(code_of(o) for o in outcomes)
        proxy.pass_through()
        cleared = time.monotonic()
        recovered, begun_after = await _recovery(own, tenant.id, store, begun_at_abandon, cleared)
    print(
        f"FAULT postgres+200ms: 60 uncached checks at once, 1 s deadline: {dict(codes)}; transactions begun after"
        f" the rest were abandoned (beyond the checks asked since): {begun_after}; uncached checks answer again"
        f" {recovered * 1000:.0f} ms after"
    )
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"} and codes["DEADLINE_EXCEEDED"] > 0
    assert begun_after <= 5
    assert recovered < 5.0


async def test_postgres_connections_reset_and_refused_give_unavailable_then_recover(
    sidecar_settings: Settings, operator_token: str, client: Client, database_url: str, fault_proxy: MakeProxy,
    unique: str,
) -> None:
    proxy = await fault_proxy(port_of(database_url))
    settings = dataclasses.replace(sidecar_settings, database_url=through(database_url, proxy), relay=0)
    tenant = await client.tenant(f"dl-reset-{unique}")
    codes: Counter[str] = Counter()
    async with running(settings, operator_token) as (_, own):
        await asyncio.gather(*(own.access.CheckAccess(check(tenant.id, f"warm{i}"), timeout=5) for i in range(5)))
        proxy.reset()
        await proxy.refuse()
        down_until = time.monotonic() + 0.5
        i = 0
        while time.monotonic() < down_until:
            try:
                await own.access.CheckAccess(check(tenant.id, f"down{i}"), timeout=1)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
            i += 1
            await asyncio.sleep(0.02)
        await proxy.accept_again()
        back = time.monotonic()
        recovered, _ = await _answers_again(own, tenant.id, back, call_timeout=1.0, timeout=5.0)
    print(f"FAULT postgres reset+refused 0.5 s, uncached checks: {dict(codes)}; answer again {recovered * 1000:.0f} ms after")
    assert codes["UNAVAILABLE"] > 0 and "UNKNOWN" not in codes and "INTERNAL" not in codes
    assert recovered < 5.0


@pytest.mark.parametrize("mode", ["blackhole", "half_open"])
async def test_redis_blackholed_answers_come_from_postgres_and_none_is_stale(
    sidecar_settings: Settings, operator_token: str, client: Client, redis_url: str, fault_proxy: MakeProxy,
    unique: str, mode: str,
) -> None:
    """Redis (L2 and the event stream) blackholed, or half-open (commands reach Redis,
    its replies vanish): every check answers from L1 and Postgres, a revoke made
    meanwhile is honoured within max staleness (1 s here), and once Redis is back the
    sidecar is confirmed current again."""
    proxy = await fault_proxy(port_of(redis_url))
    settings = dataclasses.replace(
        sidecar_settings, redis_url=through(redis_url, proxy), relay=0, max_staleness_seconds=1.0,
        blind_refresh_seconds=0.5,
    )
    tenant = await client.tenant(f"dl-redis-{unique}")
    await client.grant(tenant.id, user("alice"), "reader", "", ["doc.read"])
    codes: Counter[str] = Counter()
    stale = 0
    async with running(settings, operator_token) as (sidecar, own):
        assert sidecar.cache is not None
        assert (await own.access.CheckAccess(check(tenant.id, "alice"), timeout=2)).allowed
        proxy.blackhole() if mode == "blackhole" else proxy.half_open(Direction.TO_CLIENT)
        await client.admin.RevokeRole(
            admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="reader", scope=""),
            metadata=client.auth,
        )
        revoked = time.monotonic()
        i = 0
        while time.monotonic() - revoked < 2.0:
            for who in ("alice", f"new{i}"):
                try:
                    answer = await own.access.CheckAccess(check(tenant.id, who), timeout=1)
                    codes["OK"] += 1
                    if who == "alice" and answer.allowed and time.monotonic() - revoked > 1.0:
                        stale += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
            i += 1
            await asyncio.sleep(0.05)
        proxy.pass_through()
        back = time.monotonic()
        await confirmed(sidecar)
        recovered = time.monotonic() - back
    print(
        f"FAULT redis {mode} 2 s: checks {dict(codes)}; stale answers beyond max staleness (1 s): {stale};"
        f" confirmed current again {recovered * 1000:.0f} ms after Redis came back"
    )
    assert set(codes) == {"OK"} and stale == 0
    assert recovered < 5.0


# --- private servers paused (SIGSTOP), sidecar restarted -----------------------------------


@contextlib.asynccontextmanager
async def isolated(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A migrated database of its own on the cluster of `database_url` (no other relay
    publishes its outbox) and an operator token in it: (runtime DSN, token). Only for
    the shared cluster; a private one is removed whole."""
    name = f"gh_test_dl_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name)
    try:
        yield dsn, await operator_in(dsn)
    finally:
        await drop_database(name)


async def operator_in(dsn: str) -> str:
    """A new operator key (`*`) in the database at `dsn`: its token."""
    store = await connect(dsn, min_size=1, max_size=1)
    try:
        return await create_operator_key(store, Actor("tests"), name="tests")
    finally:
        await store.close()


BOUND = 1.0  # max staleness in the tests below
FAST = dict(max_staleness_seconds=BOUND, relay_heartbeat_seconds=0.2, blind_refresh_seconds=0.5)


async def test_redis_paused_answers_come_from_postgres_and_none_is_stale(
    sidecar_settings: Settings, private_redis: Any, database_roles: None, unique: str
) -> None:
    """A private Redis frozen (SIGSTOP) for 2 s under two sidecars (one relaying, one
    writing): checks all answer from L1 and Postgres, a revoke made meanwhile ends old
    allows within max staleness, and the checked sidecar is confirmed again once Redis
    thaws."""
    async with isolated(sidecar_settings.database_url) as (dsn, token):
        base = dataclasses.replace(
            sidecar_settings, database_url=dsn, redis_url=private_redis.url, redis_prefix=f"ghdl{unique}", **FAST
        )
        async with running(base, token) as (checked, own), running(
            dataclasses.replace(base, relay=0), token
        ) as (_, writer):
            tenant = await writer.tenant(f"dl-pause-{unique}")
            await writer.grant(tenant.id, user("alice"), "reader", "", ["doc.read"])
            await confirmed(checked)
            assert (await own.access.CheckAccess(check(tenant.id, "alice"), timeout=2)).allowed
            private_redis.freeze()
            try:
                await writer.admin.RevokeRole(
                    admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="reader", scope=""),
                    metadata=writer.auth,
                )
                revoked = time.monotonic()
                codes, stale = await _probe(own, tenant.id, since=revoked, seconds=2.0)
            finally:
                private_redis.thaw()
            thawed = time.monotonic()
            await confirmed(checked)
            recovered = time.monotonic() - thawed
    print(
        f"FAULT redis paused (SIGSTOP) 2 s: checks {dict(codes)}; stale answers beyond max staleness ({BOUND:g} s):"
        f" {stale}; confirmed current again {recovered * 1000:.0f} ms after SIGCONT"
    )
    assert set(codes) == {"OK"} and stale == 0
    assert recovered < 5.0


async def _probe(own: Client, tenant_id: str, *, since: float, seconds: float) -> tuple[Counter[str], int]:
    """Check alice (whose role was revoked at `since`) and a new subject every 50 ms for
    `seconds`: the status codes, and alice's allows later than max staleness after `since`."""
    codes: Counter[str] = Counter()
    stale = 0
    i = 0
    while time.monotonic() - since < seconds:
        for who in ("alice", f"new{i}"):
            try:
                answer = await own.access.CheckAccess(check(tenant_id, who), timeout=1)
                codes["OK"] += 1
                if who == "alice" and answer.allowed and time.monotonic() - since > BOUND + 0.05:
                    stale += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
        i += 1
        await asyncio.sleep(0.05)
    return codes, stale


async def test_postgres_paused_cached_answers_end_at_max_staleness_uncached_at_their_deadline(
    sidecar_settings: Settings, private_postgres: Any, unique: str
) -> None:
    """A private Postgres frozen (SIGSTOP on every process) for 2.5 s: a cached answer is
    served up to max staleness, then UNAVAILABLE (never older); an uncached check fails
    at its 300 ms deadline instead of waiting for the driver's 30 s timeout; checks
    answer again soon after SIGCONT."""
    token = await operator_in(private_postgres.database_url)
    settings = dataclasses.replace(
        sidecar_settings, database_url=private_postgres.database_url, redis_prefix=f"ghdl{unique}", **FAST
    )
    async with running(settings, token) as (sidecar, own):
        tenant = await own.tenant(f"dl-pgpause-{unique}")
        await own.grant(tenant.id, user("alice"), "reader", "", ["doc.read"])
        await confirmed(sidecar)
        assert (await own.access.CheckAccess(check(tenant.id, "alice"), timeout=2)).allowed
        private_postgres.freeze()
        frozen = time.monotonic()
        cached: Counter[str] = Counter()
        uncached: Counter[str] = Counter()
        stale = 0
        slowest = 0.0
        try:
            i = 0
            while time.monotonic() - frozen < 2.5:
                try:
                    answer = await own.access.CheckAccess(check(tenant.id, "alice"), timeout=0.3)
                    cached["OK"] += 1
                    stale += answer.allowed and time.monotonic() - frozen > BOUND + 0.05
                except grpc.aio.AioRpcError as exc:
                    cached[f"{exc.code().name}"] += 1
                started = time.monotonic()
                try:
                    await own.access.CheckAccess(check(tenant.id, f"new{i}"), timeout=0.3)
                    uncached["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    uncached[exc.code().name] += 1
                slowest = max(slowest, time.monotonic() - started)
                i += 1
                await asyncio.sleep(0.05)
        finally:
            private_postgres.thaw()
        thawed = time.monotonic()
        recovered, _ = await _answers_again(own, tenant.id, thawed, call_timeout=0.5, timeout=10.0)
    print(
        f"FAULT postgres paused (SIGSTOP) 2.5 s: cached checks {dict(cached)}, uncached checks {dict(uncached)}"
        f" (slowest {slowest * 1000:.0f} ms); stale answers beyond max staleness ({BOUND:g} s): {stale};"
        f" uncached checks answer again {recovered * 1000:.0f} ms after SIGCONT"
    )
    assert stale == 0
    assert set(cached) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"} and cached["OK"] > 0
    assert set(uncached) == {"DEADLINE_EXCEEDED"}
    assert recovered < 10.0


async def test_a_restarted_sidecar_answers_warm_from_redis(
    sidecar_settings: Settings, operator_token: str, client: Client, unique: str
) -> None:
    """Sidecar restarted: the new process answers a key the old one loaded from L2, once
    a relay heartbeat has confirmed it (the session sidecar's relay beats every 1 s)."""
    settings = dataclasses.replace(sidecar_settings, relay=0)
    tenant = await client.tenant(f"dl-restart-{unique}")
    await client.grant(tenant.id, user("alice"), "reader", "", ["doc.read"])
    async with running(settings, operator_token) as (_, first):
        assert (await first.access.CheckAccess(check(tenant.id, "alice"), timeout=2)).allowed
    restarted = time.monotonic()
    codes: Counter[str] = Counter()
    async with running(settings, operator_token) as (second, own):
        await confirmed(second)
        answer = await own.access.CheckAccess(check(tenant.id, "alice"), timeout=2)
        codes["OK"] += 1
        answered = time.monotonic() - restarted
        stats = second.stats.snapshot()
    print(
        f"FAULT sidecar restarted: first check {dict(codes)} {answered * 1000:.0f} ms after the restart began;"
        f" L2 hits {stats['cache.l2_hits']:.0f}, Postgres loads {stats['cache.store_loads']:.0f}"
    )
    assert answer.allowed
    assert stats["cache.l2_hits"] >= 2 and stats["cache.store_loads"] == 0


# --- the fault matrix: one harness, one row each ---------------------------------------------


@dataclasses.dataclass
class Row:
    """What one fault did to checks on the checked sidecar."""

    codes: Counter[str]
    stale: int
    recovered: float

    def line(self, fault: str) -> str:
        return (
            f"FAULT {fault}: checks {dict(self.codes)}; stale answers beyond max staleness ({BOUND:g} s): {self.stale};"
            f" recovered (confirmed current, alice answered as of now, a new subject answered) {self.recovered * 1000:.0f} ms"
            " after the fault ended"
        )


async def fault_row(
    checked: Sidecar,
    own: Client,
    writer: Client,
    begin: Callable[[], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    *,
    seconds: float = 2.0,
    revoke: bool = True,
) -> Row:
    """alice may read; the fault begins; (if `revoke`) her role is revoked through
    `writer`; `checked` is probed for `seconds`; the fault ends; then how long until the
    checked sidecar is confirmed current again, denies alice, and answers a new subject.

    A stale answer is an allow for alice later than max staleness after the revoke
    (`revoke`), or any OK answer later than that after the fault began (without it:
    nothing could confirm the data current meanwhile)."""
    unique = secrets.token_hex(4)
    tenant = await writer.tenant(f"row-{unique}")
    await writer.grant(tenant.id, user("alice"), "reader", "", ["doc.read"])
    await confirmed(checked)
    assert (await own.access.CheckAccess(check(tenant.id, "alice"), timeout=2)).allowed
    await begin()
    ended = False
    try:
        since = time.monotonic()
        if revoke:
            await writer.admin.RevokeRole(
                admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="reader", scope=""),
                metadata=writer.auth,
                timeout=5,
            )
            since = time.monotonic()
        codes: Counter[str] = Counter()
        stale = 0
        i = 0
        while time.monotonic() - since < seconds:
            for who in ("alice", f"new{i}"):
                try:
                    answer = await own.access.CheckAccess(check(tenant.id, who), timeout=0.5)
                    codes["OK"] += 1
                    late = time.monotonic() - since > BOUND + 0.05
                    stale += late and (answer.allowed if revoke else who == "alice")
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
            i += 1
            await asyncio.sleep(0.05)
        await end()
        ended = True
    finally:
        if not ended:
            await end()
    back = time.monotonic()

    async def recovered() -> bool:
        assert checked.cache is not None
        if not checked.cache.confirmed():
            return False
        try:
            alice = await own.access.CheckAccess(check(tenant.id, "alice"), timeout=0.5)
            await own.access.CheckAccess(check(tenant.id, f"up{secrets.token_hex(4)}"), timeout=0.5)
        except grpc.aio.AioRpcError:
            return False
        return not alice.allowed if revoke else alice.allowed

    await until(recovered, timeout=10.0, step=0.05)
    return Row(codes, stale, time.monotonic() - back)


@contextlib.asynccontextmanager
async def pair(
    settings: Settings, token: str, **writer: Any
) -> AsyncIterator[tuple[Sidecar, Client, Client]]:
    """The checked sidecar (with `settings`) and a writer sidecar (no relay; `writer`
    overrides settings) beside it."""
    async with running(settings, token) as (checked, own), running(
        dataclasses.replace(settings, **{"relay": 0, **writer}), token
    ) as (_, writer_client):
        yield checked, own, writer_client


async def test_redis_killed_and_restarted_empty(
    sidecar_settings: Settings, private_redis: Any, database_roles: None, unique: str
) -> None:
    async with isolated(sidecar_settings.database_url) as (dsn, token):
        settings = dataclasses.replace(
            sidecar_settings, database_url=dsn, redis_url=private_redis.url, redis_prefix=f"ghdl{unique}", **FAST
        )
        async with pair(settings, token) as (checked, own, writer):

            async def kill() -> None:
                private_redis.stop()

            row = await fault_row(checked, own, writer, kill, private_redis.start)
    print(row.line("redis killed (SIGKILL) 2 s, restarted empty"))
    assert set(row.codes) == {"OK"} and row.stale == 0 and row.recovered < 10.0


@pytest.mark.parametrize("how", ["killed", "paused"])
async def test_relay_process_killed_or_paused(
    sidecar_settings: Settings, redis_url: str, database_roles: None, unique: str, how: str
) -> None:
    """`gatehouse relay` as a process of its own, SIGKILLed (then a new one started) or
    SIGSTOPped (then SIGCONT): the checked sidecar answers from Postgres once its data
    is older than max staleness, so a revoke made meanwhile is honoured within it, and
    no event is lost (the outbox is empty once a relay runs again)."""
    async with isolated(sidecar_settings.database_url) as (dsn, token):
        prefix = f"ghdl{unique}"
        settings = dataclasses.replace(sidecar_settings, database_url=dsn, redis_prefix=prefix, relay=0, **FAST)
        env = {
            **os.environ,
            "GATEHOUSE_DATABASE_URL": dsn,
            "GATEHOUSE_REDIS_URL": redis_url,
            "GATEHOUSE_REDIS_PREFIX": prefix,
            "GATEHOUSE_RELAY_HEARTBEAT_SECONDS": "0.2",
            "GATEHOUSE_LOG_LEVEL": "WARNING",
        }
        relays: list[subprocess.Popen[str]] = []

        async def start_relay() -> None:
            process = subprocess.Popen(
                [sys.executable, "-m", "gatehouse.server.cli", "relay"], env=env, stdout=subprocess.PIPE, text=True
            )
            relays.append(process)
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=30)
            assert "relaying" in line, line

        async def begin() -> None:
            relays[-1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)

        async def end() -> None:
            if how == "killed":
                await start_relay()
            else:
                relays[-1].send_signal(signal.SIGCONT)

        try:
            await start_relay()
            async with pair(settings, token) as (checked, own, writer):
                row = await fault_row(checked, own, writer, begin, end)
            unpublished = await _unpublished(dsn)
        finally:
            for process in relays:
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                process.wait()
    print(row.line(f"relay {how} 2 s") + f"; outbox rows left unpublished: {unpublished}")
    assert set(row.codes) == {"OK"} and row.stale == 0 and row.recovered < 10.0
    assert unpublished == 0


async def _unpublished(dsn: str) -> int:
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    finally:
        await conn.close()


async def test_postgres_stopped_then_started(sidecar_settings: Settings, private_postgres: Any, unique: str) -> None:
    """A private Postgres stopped (`pg_ctl stop -m fast`: connections refused) for 2 s
    and started again: cached answers up to max staleness, then UNAVAILABLE; uncached
    UNAVAILABLE at once; answers again once it is back."""
    token = await operator_in(private_postgres.database_url)
    settings = dataclasses.replace(
        sidecar_settings, database_url=private_postgres.database_url, redis_prefix=f"ghdl{unique}", **FAST
    )
    async with pair(settings, token) as (checked, own, writer):

        async def stop() -> None:
            await asyncio.to_thread(private_postgres.halt)

        async def start() -> None:
            await asyncio.to_thread(private_postgres.resume)

        row = await fault_row(checked, own, writer, stop, start, revoke=False)
    print(row.line("postgres stopped 2 s, started"))
    assert row.stale == 0 and set(row.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert row.codes["UNAVAILABLE"] > 0 and row.recovered < 10.0


@pytest.mark.parametrize("mode", ["blackhole", "half_open"])
async def test_postgres_blackholed(
    sidecar_settings: Settings, database_roles: None, fault_proxy: MakeProxy, unique: str, mode: str
) -> None:
    """Postgres blackholed (the proxy holds every byte; connections open, nothing comes
    back) for the checked sidecar and its relay, while writes and another relay go on
    beside it: the revoke's event reaches the checked sidecar, which refuses alice's
    cached grants and cannot re-read them (nor load new subjects): DEADLINE_EXCEEDED at
    each call's deadline, never an older answer; recovery once the hole closes."""
    async with isolated(sidecar_settings.database_url) as (dsn, token):
        proxy = await fault_proxy(port_of(dsn))
        settings = dataclasses.replace(
            sidecar_settings, database_url=through(dsn, proxy), redis_prefix=f"ghdl{unique}", **FAST
        )
        async with pair(settings, token, database_url=dsn, relay=1) as (checked, own, writer):

            async def begin() -> None:
                proxy.blackhole() if mode == "blackhole" else proxy.half_open(Direction.TO_CLIENT)

            async def end() -> None:
                proxy.pass_through()

            row = await fault_row(checked, own, writer, begin, end)
    print(row.line(f"postgres {mode} 2 s"))
    assert row.stale == 0 and set(row.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert row.recovered < 10.0


async def _recovery(
    own: Client, tenant_id: str, store: PostgresStore, begun_at_abandon: int, cleared: float
) -> tuple[float, int]:
    """After a fault cleared at `cleared` (monotonic): seconds until an uncached check
    answers again, and transactions begun since `begun_at_abandon` beyond those the
    checks asked meanwhile began (each at most one, its subject's load): a backlog."""
    recovered, asked = await _answers_again(own, tenant_id, cleared, call_timeout=0.3, timeout=5.0)
    await asyncio.sleep(0.5)  # anything left queued would begin now
    return recovered, store.transactions_begun - begun_at_abandon - asked


async def _answers_again(
    own: Client, tenant_id: str, since: float, *, call_timeout: float, timeout: float
) -> tuple[float, int]:
    """Seconds from `since` (monotonic) until an uncached check of a new subject answers
    (each try with `call_timeout`; AssertionError after `timeout`), and the tries made."""
    asked = 0

    async def answers() -> bool:
        nonlocal asked
        asked += 1
        try:
            await own.access.CheckAccess(check(tenant_id, f"up{secrets.token_hex(4)}"), timeout=call_timeout)
            return True
        except grpc.aio.AioRpcError:
            return False

    await until(answers, timeout=timeout)
    return time.monotonic() - since, asked


# --- watch streams under bounded staleness -------------------------------------------------


async def next_config(stream: Any, timeout: float) -> Any:
    """The watch stream's next message within `timeout` seconds (TimeoutError otherwise)."""
    return await asyncio.wait_for(stream.read(), timeout)


async def test_a_watch_hears_a_change_whose_event_never_came_within_the_bound(
    sidecar_settings: Settings, unique: str
) -> None:
    """The watched sidecar stops reading the event stream (a stalled relay or a cut stream
    look the same to it), then the tenant's config changes: the watch sends the new
    revision within 1.5x max staleness, re-read from Postgres, instead of never."""
    async with isolated(sidecar_settings.database_url) as (dsn, token):
        settings = dataclasses.replace(sidecar_settings, database_url=dsn, redis_prefix=f"ghwatch{unique}", **FAST)
        async with running(settings, token) as (watched, own):
            tenant = await own.tenant(f"watch-stall-{unique}")
            await confirmed(watched)
            stream = own.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
            first = await next_config(stream, 5.0)
            # While confirmed and quiet, a recheck is an L1 hit: no Postgres read at all.
            assert watched.cache is not None
            loads = watched.cache.stats.store_loads
            await asyncio.sleep(2 * BOUND)
            assert watched.cache.stats.store_loads == loads
            subscriber = next(t for t in watched._tasks if t.get_name() == "event-subscriber")
            subscriber.cancel()
            await asyncio.gather(subscriber, return_exceptions=True)
            # A write this sidecar does not make itself (its own reach its cache directly).
            store = await connect(dsn, min_size=1, max_size=1)
            try:
                record = await store.patch_tenant_config(
                    Actor("tests"), tenant.id, ConfigPatch(settings_patch={"theme": "dark"}), expected_revision=0
                )
                revision = record.revision
            finally:
                await store.close()
            written = time.monotonic()
            changed = await next_config(stream, 1.5 * BOUND + 2.0)
            took = time.monotonic() - written
            stream.cancel()
    assert changed.revision == revision > first.revision and changed.settings["theme"] == "dark"
    assert took <= 1.5 * BOUND + 1.0, took


async def test_a_watch_ends_unavailable_when_nothing_can_confirm_its_config(
    sidecar_settings: Settings, private_postgres: Any, unique: str
) -> None:
    """Postgres stops (and with it the relay's heartbeats): the watch stream ends with
    UNAVAILABLE GATEHOUSE_STALE within 1.5x max staleness, rather than leaving the caller
    on a config nothing vouches for."""
    token = await operator_in(private_postgres.database_url)
    settings = dataclasses.replace(
        sidecar_settings, database_url=private_postgres.database_url, redis_prefix=f"ghwatch{unique}", **FAST
    )
    async with running(settings, token) as (sidecar, own):
        tenant = await own.tenant(f"watch-pgdown-{unique}")
        await confirmed(sidecar)
        stream = own.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
        await next_config(stream, 5.0)
        private_postgres.halt()
        halted = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await next_config(stream, 1.5 * BOUND + 3.0)
        took = time.monotonic() - halted
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(ended.value)[0].reason == "GATEHOUSE_STALE"
    assert took <= 1.5 * BOUND + 2.0, took
