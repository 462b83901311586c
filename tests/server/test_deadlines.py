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
import secrets
import time
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.server.interceptors import Deadline
from gatehouse.settings import Settings
from gatehouse.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, make_client, user
from tests.conftest import PG_ADMIN_URL
from tests.faults import FaultProxy
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

    server = grpc.aio.server()
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
        finally:
            await locker.close()
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert details(failed.value)[0].reason == "GATEHOUSE_DEADLINE_EXCEEDED"
        assert took < 5.0
        assert sidecar.stats.snapshot()["store.transactions_cancelled"] >= 1


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
        begun_after = store.transactions_begun - begun_at_abandon

        async def answers() -> bool:
            try:
                await own.access.CheckAccess(check(tenant.id, f"after{secrets.token_hex(4)}"), timeout=0.3)
                return True
            except grpc.aio.AioRpcError:
                return False

        await until(answers, timeout=5.0)
        recovered = time.monotonic() - cleared
    print(
        f"FAULT postgres+1s: 100 calls at 300 ms: {dict(codes)}; transactions begun after they were abandoned:"
        f" {begun_after}; none left running {drained * 1000:.0f} ms after the fault cleared;"
        f" uncached checks answer again {recovered * 1000:.0f} ms after; stale answers 0 (no answer was given)"
    )
    assert codes == {"DEADLINE_EXCEEDED": 100}
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

        async def answers() -> bool:
            try:
                await own.access.CheckAccess(check(tenant.id, f"up{secrets.token_hex(4)}"), timeout=1)
                return True
            except grpc.aio.AioRpcError:
                return False

        await until(answers, timeout=5.0)
        recovered = time.monotonic() - back
    print(f"FAULT postgres reset+refused 0.5 s, uncached checks: {dict(codes)}; answer again {recovered * 1000:.0f} ms after")
    assert codes["UNAVAILABLE"] > 0 and "UNKNOWN" not in codes and "INTERNAL" not in codes
    assert recovered < 5.0


async def test_redis_blackholed_answers_come_from_postgres_and_none_is_stale(
    sidecar_settings: Settings, operator_token: str, client: Client, redis_url: str, fault_proxy: MakeProxy,
    unique: str,
) -> None:
    """Redis (L2 and the event stream) blackholed: every check answers from L1 and
    Postgres, a revoke made meanwhile is honoured within max staleness (1 s here), and
    once Redis is back the sidecar is confirmed current again."""
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
        proxy.blackhole()
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
        cache = sidecar.cache

        async def confirmed() -> bool:
            return cache.confirmed()

        await until(confirmed, timeout=5.0)
        recovered = time.monotonic() - back
    print(
        f"FAULT redis blackholed 2 s: checks {dict(codes)}; stale answers beyond max staleness (1 s): {stale};"
        f" confirmed current again {recovered * 1000:.0f} ms after Redis came back"
    )
    assert set(codes) == {"OK"} and stale == 0
    assert recovered < 5.0
