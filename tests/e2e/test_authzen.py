"""`gatehouse serve --authzen-listen`: the AuthZEN listener of a real process, plaintext on
loopback, TLS and mutual TLS with the gRPC listener's files, shared by `--workers 2`."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.certs import Pki, issue_leaf
from tests.client import make_client, user
from tests.processes import ServerProcess, sidecar_env, start_server

KEY = "authzen-operator-key"


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return sidecar_env(database_url, redis_url, redis_prefix, KEY)


def authzen_url(server: ServerProcess) -> str:
    match = re.search(r"\(authzen: (\S+)\)", server.line)
    assert match, server.line
    return match.group(1)


async def evaluate(
    url: str, tenant_id: str, who: str, ssl_context: ssl.SSLContext | None = None, key: str = ""
) -> Any:
    body = {"subject": {"type": "user", "id": who}, "action": {"name": "doc.read"},
            "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": tenant_id, "scope": "eu"}}}
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else False, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with session.post(url + "/access/v1/evaluation", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def test_serve_answers_authzen_on_loopback_through_two_workers(
    env: dict[str, str], operator_token: str, unique: str
) -> None:
    server = await start_server(env, "--workers", "2", "--authzen-listen", "127.0.0.1:0")
    try:
        url = authzen_url(server)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        client = make_client(server.address, operator_token)
        tenant = await client.tenant(f"authzen-e2e-{unique}")
        revision = await client.grant(tenant.id, user("ann"), "reader", "eu", ["doc.read"])
        await client.channel.close()
        # Fresh connections: the kernel spreads them over both workers; each answers the
        # same (the other worker reads the write through Postgres or its tenant events).
        answers = []
        for _ in range(8):
            body = {"subject": {"type": "user", "id": "ann"}, "action": {"name": "doc.read"},
                    "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": tenant.id, "scope": "eu/fr"}},
                    "context": {"min_revision": revision}}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                async with session.post(
                    url + "/access/v1/evaluation", json=body, headers={"Authorization": f"Bearer {operator_token}"}
                ) as response:
                    answers.append((response.status, (await response.json())["decision"]))
        assert answers == [(200, True)] * 8
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/.well-known/authzen-configuration") as response:
                document = await response.json()
        assert document["access_evaluation_endpoint"] == url + "/access/v1/evaluation"
    finally:
        assert await server.stop() == 0


async def test_authzen_serves_tls_and_mutual_tls_with_the_grpc_files(
    env: dict[str, str], pki: Pki, operator_token: str, tmp_path: Path
) -> None:
    tls = ("--tls-cert-file", str(pki.server_cert_file), "--tls-key-file", str(pki.server_key_file))
    trusting = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
    server = await start_server(env, *tls, "--authzen-listen", "127.0.0.1:0")
    try:
        url = authzen_url(server)
        assert url.startswith("https://")
        answer = await evaluate(url, "00000000-0000-0000-0000-000000000000", "ann", trusting, operator_token)
        assert answer["context"]["reason"] == "DECISION_REASON_TENANT_NOT_FOUND"
        with pytest.raises(aiohttp.ClientError):  # plaintext to a TLS port
            await evaluate(url.replace("https://", "http://"), "00000000-0000-0000-0000-000000000000", "ann")
    finally:
        assert await server.stop() == 0

    # Mutual TLS: the client certificate's identity is the credential (read from uvloop's
    # TLS transport in a real `serve`).
    identities = tmp_path / "callers.yaml"
    identities.write_text("callers:\n  - identity: billing@clients.example\n    permissions: [gatehouse.access.check]\n")
    server = await start_server(
        env, *tls, "--tls-client-ca-file", str(pki.ca_file), "--authzen-listen", "127.0.0.1:0",
        "--caller-identities-file", str(identities),
    )
    try:
        url = authzen_url(server)
        with pytest.raises(aiohttp.ClientError):  # no client certificate: no handshake
            await evaluate(url, "00000000-0000-0000-0000-000000000000", "ann", trusting)
        stranger = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
        pki.stranger_client.configure_cert(stranger)
        with pytest.raises(aiohttp.ClientError):  # a certificate of another CA
            await evaluate(url, "00000000-0000-0000-0000-000000000000", "ann", stranger)
        mutual = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
        pki.client.configure_cert(mutual)
        answer = await evaluate(url, "00000000-0000-0000-0000-000000000000", "ann", mutual)
        assert answer["decision"] is False
        unlisted = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
        issue_leaf(pki.ca, uri="spiffe://x/unlisted").configure_cert(unlisted)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=unlisted)) as session:
            async with session.post(url + "/access/v1/evaluation", json={}) as response:
                assert response.status == 401
                assert (await response.json())["error"]["reason"] == "GATEHOUSE_UNAUTHENTICATED"
    finally:
        assert await server.stop() == 0


async def run_until_exit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatehouse.server.cli", "serve", "--listen", "127.0.0.1:0", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("--authzen-listen", "0.0.0.0:0"), "gatehouse: refusing plaintext AuthZEN HTTP on 0.0.0.0:0: it is not a loopback address"),
        (("--authzen-listen", "8181"), "gatehouse: --authzen-listen (GATEHOUSE_AUTHZEN_LISTEN) must be host:port"),
        (("--authzen-listen", "127.0.0.1:http"), "gatehouse: --authzen-listen (GATEHOUSE_AUTHZEN_LISTEN) must be host:port"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_listener_that_may_not_start_stops_serve(
    env: dict[str, str], args: tuple[str, ...], message: str, workers: str
) -> None:
    refused = await run_until_exit(env, "--workers", workers, *args)
    assert refused.returncode == 1, refused.stdout
    assert "serving on" not in refused.stdout
    assert refused.stderr.strip().splitlines()[-1].startswith(message), refused.stderr


async def test_authzen_port_taken_stops_serve(env: dict[str, str]) -> None:
    taken = await start_server(env, "--authzen-listen", "127.0.0.1:0")
    try:
        port = authzen_url(taken).rsplit(":", 1)[1]
        refused = await run_until_exit(env, "--authzen-listen", f"127.0.0.1:{port}")
        assert refused.returncode != 0
        assert "cannot listen on 127.0.0.1:" in refused.stderr + refused.stdout
    finally:
        assert await taken.stop() == 0

