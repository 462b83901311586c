"""A sidecar with its AuthZEN listener on, and a small HTTP client for it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import aiohttp
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from tests.client import Client, make_client

EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
METADATA = "/.well-known/authzen-configuration"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # the parsed JSON; the test fails when a reply's body is no JSON


@dataclass
class AuthZenClient:
    """`key`: the API key sent as `Authorization: Bearer` with every request ("" = none)."""

    url: str
    session: aiohttp.ClientSession
    key: str = ""

    async def send(
        self, method: str, path: str, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        sent = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        sent.update(headers or {})
        async with self.session.request(method, self.url + path, data=data, headers=sent) as response:
            raw = await response.read()
            assert response.headers.get("Content-Type", "").startswith("application/json"), (response.status, raw[:200])
            return Reply(response.status, response.headers, json.loads(raw))

    async def post(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return await self.send(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        )


@pytest.fixture(scope="module")
async def authzen_sidecar(sidecar_settings: Settings) -> AsyncIterator[Sidecar]:
    running = Sidecar(dataclasses.replace(sidecar_settings, authzen_listen="127.0.0.1:0"))
    await running.start()
    yield running
    await running.stop(grace=0.5)


@pytest.fixture(scope="module")
async def admin(authzen_sidecar: Sidecar, operator_token: str) -> AsyncIterator[Client]:
    """gRPC stubs to the same process: its writes reach its cache before they answer."""
    c = make_client(authzen_sidecar.addresses[0], operator_token)
    yield c
    await c.channel.close()


@pytest.fixture(scope="module")
async def http(authzen_sidecar: Sidecar, operator_token: str) -> AsyncIterator[AuthZenClient]:
    """Asking as an operator key holding `*` (the AuthZEN endpoints always need a caller)."""
    assert authzen_sidecar.authzen is not None
    async with aiohttp.ClientSession() as session:
        yield AuthZenClient(authzen_sidecar.authzen.url, session, operator_token)
