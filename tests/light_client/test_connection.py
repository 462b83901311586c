"""The light client's connection against real servers: retries on UNAVAILABLE only (a
server stopped, then started again on its port), read-your-writes across two sidecars,
TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import grpc
import pytest

from gatehouse_client import AsyncClient, Client, GatehouseError
from tests.certs import Pki
from tests.dependencies import free_port
from tests.light_client.conftest import ClientRecords, client_records
from tests.faults import FaultProxy
from tests.processes import ServerProcess, sidecar_env, start_server
from tests.served import Served


@pytest.fixture
def retries() -> Iterator[ClientRecords]:
    """The client's "retry n of m" records."""
    with client_records("retry") as handler:
        yield handler




async def test_unavailable_is_retried_until_the_server_is_back(
    env: dict[str, str], served: Served, retries: ClientRecords, unique: str
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = await start_server(env, "--workers", "1", "--listen", target)
    servers: list[ServerProcess] = [server]
    try:
        with Client(target, key=served.key, retries=0) as once:
            once.admin.list_plans()
            await server.stop()
            with pytest.raises(GatehouseError) as down:
                once.admin.list_plans()
            assert down.value.code == grpc.StatusCode.UNAVAILABLE and retries.count == 0

        # Blocking: a mutation, retried with its one idempotency key until the server is back.
        with Client(target, key=served.key, retries=60) as patient:
            call = asyncio.ensure_future(
                asyncio.to_thread(patient.admin.create_tenant, slug=f"retried-{unique}", name="Retried")
            )
            assert await asyncio.to_thread(retries.first.wait, 30)
            servers.append(await start_server(env, "--workers", "1", "--listen", target))
            tenant = await call
            assert tenant.slug == f"retried-{unique}" and retries.count >= 1

        # asyncio: the same.
        await servers[-1].stop()
        retries.first.clear()
        async with AsyncClient(target, key=served.key, retries=60) as patient_async:
            pending = asyncio.ensure_future(patient_async.admin.get_tenant(tenant_id=tenant.id))
            assert await asyncio.to_thread(retries.first.wait, 30)
            servers.append(await start_server(env, "--workers", "1", "--listen", target))
            assert (await pending).id == tenant.id
    finally:
        for process in servers:
            await process.stop()


async def test_other_errors_are_not_retried(served: Served, retries: ClientRecords, unique: str) -> None:
    with Client(served.address, key=served.key, retries=5) as gh, pytest.raises(GatehouseError) as bad:
        gh.admin.create_tenant(slug="NOT A SLUG", name="x")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    async with AsyncClient(served.address, key="gh_0123456789abcdef_nope", retries=5) as anonymous:
        with pytest.raises(GatehouseError) as refused:
            await anonymous.admin.list_plans()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert retries.count == 0


async def test_a_check_reads_the_revision_the_clients_write_returned(
    database_url: str, redis_url: str, served: Served, fault_proxy: Callable[[int], Awaitable[FaultProxy]], unique: str
) -> None:
    # B: a second sidecar on the same database that hears of no change (no relay, a Redis
    # prefix of its own) and trusts its cache for an hour: stale unless a call says
    # min_revision. The client reaches A, then B, through one address (a proxy).
    lonely = {
        **sidecar_env(database_url, redis_url, f"ghlonely{unique}", "gh_op_" + secrets.token_urlsafe(24)),
        "GATEHOUSE_MAX_STALENESS_SECONDS": "3600",
        "GATEHOUSE_L1_TTL_SECONDS": "3600",
    }
    b = await start_server(lonely, "--workers", "1", "--relay", "0")
    try:
        proxy = await fault_proxy(int(served.address.rsplit(":", 1)[1]))
        # The proxy runs on this event loop: the client that goes through it is the async one.
        async with AsyncClient(f"127.0.0.1:{proxy.port}", key=served.key) as gh:
            with Client(b.address, key=served.key) as plain_b:
                tenant = await gh.admin.create_tenant(slug=f"ryw-{unique}", name="RYW")
                await gh.admin.activate_tenant(tenant_id=tenant.id, reason="test")
                await gh.admin.add_member(tenant_id=tenant.id, subject="user:alice")
                await gh.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="viewer", scope="")
                assert plain_b.check(tenant.id, "user:alice", "tenant.read")  # B caches it
                revoked = await gh.admin.revoke_role(tenant_id=tenant.id, subject="user:alice", role="viewer", scope="")
                assert gh.policy.revision(tenant.id) == revoked.revision

                proxy.target = ("127.0.0.1", int(b.address.rsplit(":", 1)[1]))
                proxy.reset()
                # Without the revision, B still answers from before the revoke...
                stale = plain_b.check(tenant.id, "user:alice", "tenant.read")
                assert stale.allowed and stale.revision < revoked.revision
                # ... the client that revoked sends it, and B reads past it.
                fresh = await gh.check(tenant.id, "user:alice", "tenant.read")
                assert not fresh.allowed and fresh.revision == revoked.revision
    finally:
        await b.stop()


@pytest.fixture
def client_files(pki: Pki, tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in pki.client.cert_chain_pems))
    pki.client.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_and_mutual_tls(
    env: dict[str, str], served: Served, pki: Pki, client_files: tuple[str, str], mutual: bool
) -> None:
    tls = {"GATEHOUSE_TLS_CERT_FILE": str(pki.server_cert_file), "GATEHOUSE_TLS_KEY_FILE": str(pki.server_key_file)}
    if mutual:
        tls["GATEHOUSE_TLS_CLIENT_CA_FILE"] = str(pki.ca_file)
    server = await start_server({**env, **tls}, "--workers", "1")
    try:
        cert_file, key_file = client_files
        with Client(server.address, key=served.key, ca_file=str(pki.ca_file), cert_file=cert_file,
                    key_file=key_file) as gh:
            assert gh.check("00000000-0000-0000-0000-00000000000f", "user:a", "x.read").reason == "TENANT_NOT_FOUND"
        async with AsyncClient(server.address, key=served.key, ca_file=str(pki.ca_file), cert_file=cert_file,
                               key_file=key_file) as agh:
            await agh.admin.list_plans()
        # Without the client certificate: refused by a mutual-TLS server only.
        with Client(server.address, key=served.key, ca_file=str(pki.ca_file), retries=0) as one_way:
            if mutual:
                with pytest.raises(GatehouseError) as refused:
                    one_way.admin.list_plans()
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            else:
                one_way.admin.list_plans()
        with Client(server.address, key=served.key, retries=0) as plaintext, pytest.raises(GatehouseError):
            plaintext.admin.list_plans()
    finally:
        await server.stop()
    with pytest.raises(ValueError, match="go together"):
        Client(server.address, cert_file=cert_file)
