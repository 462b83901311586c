"""`gatehouse serve` as a process: the plaintext rule at start, and TLS through `--workers N`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse_client.v1 import access_pb2, common_pb2
from tests.certs import Pki
from tests.client import make_client
from tests.processes import sidecar_env, start_server

KEY = "tls-operator-key"
CHECK = access_pb2.CheckAccessRequest(
    tenant_id="00000000-0000-0000-0000-00000000000f",
    subject=common_pb2.Subject(type="user", id="alice"),
    permission="doc.read",
)


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_LOG_LEVEL": "INFO"}


async def serve_until_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `gatehouse serve ARGS` expecting it to stop by itself (a refused start)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatehouse.server.cli", "serve", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def loopback(address: str) -> str:
    """Where to dial a server that listens on every interface."""
    return "127.0.0.1:" + address.rsplit(":", 1)[1]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_plaintext_on_a_public_address_is_refused_at_start(env: dict[str, str], workers: str) -> None:
    refused = await serve_until_exit(env, "--listen", "0.0.0.0:0", "--workers", workers)
    assert refused.returncode == 1
    assert "serving on" not in refused.stdout
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("gatehouse: refusing plaintext gRPC on 0.0.0.0:0: it is not a loopback address")
    assert "--allow-plaintext (GATEHOUSE_ALLOW_PLAINTEXT=1)" in message


async def test_plaintext_on_a_public_address_starts_with_the_opt_in_and_says_so(
    env: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = await start_server(env, "--listen", "0.0.0.0:0", "--allow-plaintext", stderr=log)
    try:
        async with grpc.aio.insecure_channel(loopback(server.address)) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        log_text = log_path.read_text()
        assert (
            f"WARNING gatehouse: listening on {server.address}: plaintext; not a loopback address but "
            "GATEHOUSE_ALLOW_PLAINTEXT=1 (--allow-plaintext) allows it" in log_text
        )
    finally:
        assert await server.stop() == 0


async def test_a_certificate_without_its_key_stops_the_server_at_start(env: dict[str, str], pki: Pki) -> None:
    refused = await serve_until_exit(env, "--tls-cert-file", str(pki.server_cert_file))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "gatehouse: --tls-cert-file (GATEHOUSE_TLS_CERT_FILE) is set but --tls-key-file (GATEHOUSE_TLS_KEY_FILE) "
        "is not: TLS needs the server's certificate and its private key"
    )


async def test_every_worker_serves_mutual_tls_on_a_public_address(
    env: dict[str, str], pki: Pki, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    tls = {
        "GATEHOUSE_TLS_CERT_FILE": str(pki.server_cert_file),
        "GATEHOUSE_TLS_KEY_FILE": str(pki.server_key_file),
        "GATEHOUSE_TLS_CLIENT_CA_FILE": str(pki.ca_file),
    }
    with log_path.open("w") as log:
        # TLS needs no opt-in to listen on every interface.
        server = await start_server({**env, **tls}, "--listen", "0.0.0.0:0", "--workers", "2", stderr=log)
    try:
        target = loopback(server.address)
        # Many connections: the kernel spreads them over both workers; all must do mutual
        # TLS. (An unknown tenant: a real decision that needs no admin key or data.)
        for _ in range(8):
            client = make_client(target, KEY, pki.credentials(present=pki.client))
            try:
                response = await client.access.CheckAccess(CHECK, timeout=10)
            finally:
                await client.channel.close()
            assert response.reason == access_pb2.DECISION_REASON_TENANT_NOT_FOUND

        for credentials in (pki.credentials(), pki.credentials(present=pki.stranger_client)):
            stranger = make_client(target, KEY, credentials)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await stranger.access.CheckAccess(CHECK, timeout=10)
            finally:
                await stranger.channel.close()
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE

        said = [line for line in log_path.read_text().splitlines() if "listening on 0.0.0.0:" in line]
        assert len(said) == 2, said  # one per worker
        assert all(": mutual TLS; certificate " in line for line in said)
    finally:
        assert await server.stop() == 0
