"""`watch_config` resumes across a sidecar restart on the same address, in both flavours
and in `gatehouse config watch`: the new revision once, no revision twice, no error;
an error the unary calls would not retry (NOT_FOUND) still ends it at once, and
`resume=False` ends it at the first error as before."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest

from gatehouse_client import AsyncClient, Client, GatehouseError
from gatehouse_client.calls import CallPolicy, WatchProgress
from gatehouse_client.v1 import admin_pb2, config_pb2
from tests.dependencies import free_port
from tests.light_client.conftest import ClientRecords, client_records
from tests.processes import ServerProcess, start_server
from tests.served import Served

UNKNOWN_TENANT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def reconnects() -> Iterator[ClientRecords]:
    """The client's "watch ... reconnect" records."""
    with client_records("reconnect") as handler:
        yield handler


class Restartable:
    """A sidecar on one fixed address that can be stopped and started again there."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "GATEHOUSE_GRACE_SECONDS": "0.5"}
        self.target = f"127.0.0.1:{free_port()}"
        self.process: ServerProcess | None = None

    async def start(self) -> None:
        self.process = await start_server(self.env, "--workers", "1", "--listen", self.target)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            await self.process.stop(sig)
            self.process = None


@pytest.fixture
async def sidecar(env: dict[str, str]) -> AsyncIterator[Restartable]:  # noqa: F811  (env: the imported fixture)
    restartable = Restartable(env)
    await restartable.start()
    try:
        yield restartable
    finally:
        await restartable.stop(signal.SIGKILL)


def active_tenant(served: Served, slug: str) -> admin_pb2.Tenant:
    with Client(served.address, key=served.key) as admin:
        tenant = admin.admin.create_tenant(slug=slug, name=slug)
        return admin.admin.activate_tenant(tenant_id=tenant.id, reason="watched")


def patch(served: Served, tenant_id: str, theme: str) -> int:
    """A config change made through the session's other sidecar; its revision."""
    with Client(served.address, key=served.key) as admin:
        return admin.admin.patch_tenant_config(tenant_id=tenant_id, settings_patch={"theme": theme}).revision


async def test_a_blocking_watch_resumes_across_a_sidecar_restart(
    served: Served, sidecar: Restartable, reconnects: ClientRecords, unique: str
) -> None:
    tenant = await asyncio.to_thread(active_tenant, served, f"watch-sync-{unique}")
    with Client(sidecar.target, key=served.key) as gh:
        watch = gh.watch_config(tenant.id)

        async def following() -> config_pb2.TenantConfig:
            return await asyncio.wait_for(asyncio.to_thread(next, watch), 60)

        await across_restarts(following, served, sidecar, tenant, reconnects)
        watch.close()


async def test_an_async_watch_resumes_across_a_sidecar_restart(
    served: Served, sidecar: Restartable, reconnects: ClientRecords, unique: str
) -> None:
    tenant = await asyncio.to_thread(active_tenant, served, f"watch-async-{unique}")
    async with AsyncClient(sidecar.target, key=served.key) as gh:
        watch = gh.watch_config(tenant.id)

        async def following() -> config_pb2.TenantConfig:
            return await asyncio.wait_for(watch.__anext__(), 60)

        await across_restarts(following, served, sidecar, tenant, reconnects)
        await watch.aclose()


async def test_an_error_the_calls_do_not_retry_ends_a_watch_at_once(served: Served, reconnects: ClientRecords) -> None:
    with Client(served.address, key=served.key) as gh, pytest.raises(GatehouseError) as blocking:
        next(gh.watch_config(UNKNOWN_TENANT))
    async with AsyncClient(served.address, key=served.key) as agh:
        with pytest.raises(GatehouseError) as asynchronous:
            await agh.watch_config(UNKNOWN_TENANT).__anext__()
        with pytest.raises(GatehouseError) as invalid:
            await agh.watch_config("not a tenant id").__anext__()
    assert blocking.value.code == asynchronous.value.code == grpc.StatusCode.NOT_FOUND
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reconnects.count == 0


async def test_resume_false_ends_a_watch_at_the_first_error(
    served: Served, sidecar: Restartable, reconnects: ClientRecords, unique: str
) -> None:
    tenant = await asyncio.to_thread(active_tenant, served, f"watch-once-{unique}")
    with Client(sidecar.target, key=served.key) as gh:
        once = gh.watch_config(tenant.id, resume=False)
        assert (await asyncio.to_thread(next, once)).revision == tenant.revision
        async with AsyncClient(sidecar.target, key=served.key) as agh:
            once_async = agh.watch_config(tenant.id, resume=False)
            assert (await once_async.__anext__()).revision == tenant.revision
            await sidecar.stop(signal.SIGKILL)
            with pytest.raises(GatehouseError) as blocking:
                await asyncio.wait_for(asyncio.to_thread(next, once), 30)
            with pytest.raises(GatehouseError) as asynchronous:
                await asyncio.wait_for(once_async.__anext__(), 30)
    assert blocking.value.code == asynchronous.value.code == grpc.StatusCode.UNAVAILABLE
    assert reconnects.count == 0


async def test_retries_caps_the_reconnects_in_a_row(served: Served, sidecar: Restartable, unique: str) -> None:
    tenant = await asyncio.to_thread(active_tenant, served, f"watch-capped-{unique}")
    async with AsyncClient(sidecar.target, key=served.key) as gh:
        capped = gh.watch_config(tenant.id, retries=2)
        assert (await capped.__anext__()).revision == tenant.revision
        await sidecar.stop(signal.SIGKILL)  # and it stays down
        with pytest.raises(GatehouseError) as gave_up:
            await asyncio.wait_for(capped.__anext__(), 30)
    assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE


def test_which_ends_are_resumed() -> None:
    def error(code: grpc.StatusCode, reason: str = "") -> GatehouseError:
        return GatehouseError(code, "ended", reason=reason)

    policy = CallPolicy(None, 1.0, 3)
    progress = WatchProgress(policy, resume=True, retries=None)
    for resumed in (error(grpc.StatusCode.UNAVAILABLE, "GATEHOUSE_STALE"), error(grpc.StatusCode.UNAVAILABLE),
                    error(grpc.StatusCode.CANCELLED)):
        wait = progress.resume_after(resumed, closed=False)
        assert wait is not None and 0 <= wait <= 2.0, resumed
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.DEADLINE_EXCEEDED):
        assert progress.resume_after(error(code), closed=False) is None, code
    # The client's own close() is not a connection lost.
    assert progress.resume_after(error(grpc.StatusCode.CANCELLED), closed=True) is None
    assert WatchProgress(policy, resume=False, retries=None).resume_after(error(grpc.StatusCode.UNAVAILABLE), False) is None

    # Revisions: strictly increasing, none twice; a message starts the backoff over.
    assert progress.failures == 3
    revisions = [4, 4, 3, 5, 5, 7]
    yielded = [r for r in revisions if progress.received(config_pb2.TenantConfig(revision=r))]
    assert yielded == [4, 5, 7] and progress.failures == 0

    capped = WatchProgress(policy, resume=True, retries=1)
    assert capped.resume_after(error(grpc.StatusCode.UNAVAILABLE), False) is not None
    assert capped.resume_after(error(grpc.StatusCode.UNAVAILABLE), False) is None
    with pytest.raises(ValueError):
        WatchProgress(policy, resume=True, retries=-1)


async def test_the_cli_watch_resumes_across_a_sidecar_restart(
    served: Served, sidecar: Restartable, unique: str
) -> None:
    slug = f"watch-cli-{unique}"
    tenant = await asyncio.to_thread(active_tenant, served, slug)
    environment = {**os.environ, "GATEHOUSE_SERVER": sidecar.target, "GATEHOUSE_KEY": served.key}
    watch = subprocess.Popen([sys.executable, "-m", "gatehouse.server.cli", "config", "watch", slug, "--count", "3"],
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None and watch.stderr is not None
        first = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), 30)
        await sidecar.stop()
        changed = await asyncio.to_thread(patch, served, tenant.id, "dark")
        await sidecar.start()
        second = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), 60)
        again = await asyncio.to_thread(patch, served, tenant.id, "light")
        rest = await asyncio.wait_for(asyncio.to_thread(watch.stdout.read), 60)
        assert await asyncio.to_thread(watch.wait, 30) == 0
        err = watch.stderr.read()
    finally:
        watch.kill()
    lines = [first, second, *rest.splitlines()]
    assert [line.split(":")[0] for line in lines] == [
        f"revision {tenant.revision}", f"revision {changed}", f"revision {again}"
    ]
    assert "reconnect" in err and "UNAVAILABLE" in err


async def across_restarts(
    following: Callable[[], Awaitable[config_pb2.TenantConfig]],
    served: Served,
    sidecar: Restartable,
    tenant: admin_pb2.Tenant,
    reconnects: ClientRecords,
) -> None:
    """The watch `following` reads from yields the tenant's config, then each change once,
    across a drained restart (SIGTERM, the change made while it is down) and a crash
    (SIGKILL, the change made after it is back)."""
    assert (await following()).revision == tenant.revision
    await sidecar.stop()  # SIGTERM: drains, then ends the stream
    changed = await asyncio.to_thread(patch, served, tenant.id, "dark")  # while it is down
    await sidecar.start()
    resumed = await following()
    assert (resumed.revision, resumed.settings["theme"]) == (changed, "dark")
    assert reconnects.count >= 1
    # A crash (the connection simply drops), the change after it is back. The next
    # message is that change: the config the new stream starts with (the one yielded
    # already) is not yielded again.
    await sidecar.stop(signal.SIGKILL)
    await sidecar.start()
    again = await asyncio.to_thread(patch, served, tenant.id, "light")
    following_change = await following()
    assert (following_change.revision, following_change.settings["theme"]) == (again, "light")
