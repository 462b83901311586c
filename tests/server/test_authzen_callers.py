"""Who may ask the AuthZEN endpoints (server/callers.py): always, whatever
GATEHOUSE_CALLER_CREDENTIALS says, `Authorization: Bearer <key>` or an mTLS client
certificate's identity holding gatehouse.access.check for every tenant asked about; 401
without one, 403 without the permission or the tenant; the metadata document is public."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.server.callers import CHECK, CONFIG
from gatehouse.settings import Settings
from gatehouse_client.v1 import admin_pb2
from tests.certs import Pki, issue_leaf
from tests.client import Client, user
from tests.server.authzen_client import EVALUATION, EVALUATIONS, METADATA, AuthZenClient


@pytest.fixture(params=["off", "required"])
async def guarded(sidecar_settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[AuthZenClient]:
    """A second sidecar (same database and Redis prefix) with AuthZEN on, under either
    GATEHOUSE_CALLER_CREDENTIALS: its AuthZEN callers need a credential both ways."""
    other = Sidecar(dataclasses.replace(sidecar_settings, caller_credentials=request.param, authzen_listen="127.0.0.1:0"))
    await other.start()
    assert other.authzen is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield AuthZenClient(other.authzen.url, session)
    finally:
        await other.stop(grace=0)


def question(tenant_id: str, permission: str = "doc.read") -> dict[str, Any]:
    return {"subject": {"type": "user", "id": "alice"}, "action": {"name": permission},
            "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": tenant_id}}}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_no_credential_is_401_and_the_metadata_document_is_public(
    client: Client, guarded: AuthZenClient, unique: str
) -> None:
    tenant = await client.tenant(f"az-callers-none-{unique}")
    await client.grant(tenant.id, user("alice"), "viewer", "")
    for headers in ({}, bearer("nonsense"), {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, bearer("gh_" + "x" * 40)):
        for endpoint, body in ((EVALUATION, question(tenant.id)), (EVALUATIONS, {"evaluations": [question(tenant.id)]})):
            reply = await guarded.post(endpoint, body, {**headers, "X-Request-ID": "who"})
            assert reply.status == 401, (headers, reply.body)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert reply.headers["X-Request-ID"] == "who"
            assert reply.body["error"]["reason"] in ("GATEHOUSE_UNAUTHENTICATED", "GATEHOUSE_KEY_REJECTED")
    # Unauthenticated, a malformed body is still a 401: the caller is checked first.
    reply = await guarded.send("POST", EVALUATION, b"{not json", {"Content-Type": "application/json"})
    assert reply.status == 401
    metadata = await guarded.send("GET", METADATA)
    assert metadata.status == 200 and metadata.body["access_evaluation_endpoint"].endswith(EVALUATION)


async def test_an_operator_key_asks_what_its_permissions_name(
    client: Client, guarded: AuthZenClient, unique: str
) -> None:
    tenant = await client.tenant(f"az-callers-op-{unique}")
    await client.grant(tenant.id, user("alice"), "viewer", "")
    checker = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="gateway", permissions=[CHECK]), metadata=client.auth
    )
    reader = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="config", permissions=[CONFIG]), metadata=client.auth
    )
    allowed = await guarded.post(EVALUATION, question(tenant.id), bearer(checker.secret))
    assert allowed.status == 200 and allowed.body["decision"] is True
    batch = await guarded.post(EVALUATIONS, {"evaluations": [question(tenant.id), question(tenant.id, "doc.write")]},
                               bearer(checker.secret))
    assert [a["decision"] for a in batch.body["evaluations"]] == [True, False]
    refused = await guarded.post(EVALUATION, question(tenant.id), bearer(reader.secret))
    assert refused.status == 403 and refused.body["error"]["reason"] == "GATEHOUSE_PERMISSION_DENIED"
    # Authenticated, a bad body is the 400 it is.
    bad = await guarded.post(EVALUATION, {"subject": 1}, bearer(checker.secret))
    assert bad.status == 400


async def test_a_tenant_key_asks_only_about_its_tenant(client: Client, guarded: AuthZenClient, unique: str) -> None:
    mine = await client.tenant(f"az-callers-mine-{unique}")
    other = await client.tenant(f"az-callers-other-{unique}")
    for tenant in (mine, other):
        await client.grant(tenant.id, user("alice"), "viewer", "")
    created = await client.tenant_key(mine.id, CHECK)
    key = bearer(created.secret)
    assert (await guarded.post(EVALUATION, question(mine.id), key)).body["decision"] is True
    other_tenant = await guarded.post(EVALUATION, question(other.id), key)
    assert other_tenant.status == 403 and other_tenant.body["error"]["reason"] == "GATEHOUSE_OTHER_TENANT"
    # The tenant from the header counts the same.
    header = await guarded.post(
        EVALUATION, {**question(mine.id), "resource": {"type": "doc", "id": "1"}}, {**key, "X-Gatehouse-Tenant": other.id}
    )
    assert header.status == 403
    # A batch asking about any tenant not its own is refused whole, before any decision.
    mixed = await guarded.post(EVALUATIONS, {"evaluations": [question(mine.id), question(other.id)]}, key)
    assert mixed.status == 403
    own = await guarded.post(EVALUATIONS, {"evaluations": [question(mine.id), question(mine.id, "doc.write")]}, key)
    assert own.status == 200 and len(own.body["evaluations"]) == 2
    # Its tenant must grant it the permission too.
    bare = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=mine.id, name="bare", permissions=[CHECK]), metadata=client.auth
    )
    assert (await guarded.post(EVALUATION, question(mine.id), bearer(bare.secret))).status == 403


async def test_mtls_identities_on_the_authzen_listener(
    client: Client, sidecar_settings: Settings, pki: Pki, tmp_path: Path, unique: str
) -> None:
    mine = await client.tenant(f"az-callers-mtls-{unique}")
    other = await client.tenant(f"az-callers-mtls2-{unique}")
    for tenant in (mine, other):
        await client.grant(tenant.id, user("alice"), "viewer", "")
    identities = tmp_path / "callers.yaml"
    identities.write_text(
        "callers:\n"
        "  - identity: spiffe://cluster.local/ns/mesh/sa/gateway\n"
        f"    permissions: [{CHECK}]\n"
        "  - identity: billing@clients.example\n"
        f"    permissions: [{CHECK}]\n"
        f"    tenants: [{mine.id}]\n"
    )
    settings = dataclasses.replace(
        sidecar_settings,
        authzen_listen="127.0.0.1:0",
        tls_cert_file=str(pki.server_cert_file),
        tls_key_file=str(pki.server_key_file),
        tls_client_ca_file=str(pki.ca_file),
        caller_identities_file=str(identities),  # GATEHOUSE_CALLER_CREDENTIALS left off
    )
    guarded = Sidecar(settings)
    await guarded.start()
    assert guarded.authzen is not None
    url = guarded.authzen.url

    def presenting(leaf: Any) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=pki.ca.cert_pem.bytes().decode())
        leaf.configure_cert(context)
        return context

    async def ask(context: ssl.SSLContext, tenant_id: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.post(url + EVALUATION, json=question(tenant_id), headers=headers or {}) as response:
                return response.status, await response.json()

    gateway = presenting(issue_leaf(pki.ca, uri="spiffe://cluster.local/ns/mesh/sa/gateway"))
    billing = presenting(pki.client)  # an e-mail SAN: billing@clients.example
    unlisted = presenting(issue_leaf(pki.ca, uri="spiffe://x/y"))
    try:
        for tenant in (mine, other):
            status, body = await ask(gateway, tenant.id)
            assert status == 200 and body["decision"] is True
        assert (await ask(billing, mine.id))[0] == 200
        status, body = await ask(billing, other.id)
        assert status == 403 and body["error"]["reason"] == "GATEHOUSE_OTHER_TENANT"
        status, body = await ask(unlisted, mine.id)
        assert status == 401 and "IDENTITIES" in body["error"]["message"]
        # A key takes precedence over the certificate.
        config_only = await client.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(name="cfg", permissions=[CONFIG]), metadata=client.auth
        )
        assert (await ask(gateway, mine.id, bearer(config_only.secret)))[0] == 403
    finally:
        await guarded.stop(grace=0)
