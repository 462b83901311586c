"""Who may ask the hot path (server/callers.py): with GATEHOUSE_CALLER_CREDENTIALS=required,
CheckAccess, CheckAccessBatch, GetTenantConfig and WatchTenantConfig need a key or an mTLS
identity holding the permission for the tenant; remembered answers included."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.server.callers import CHECK, CONFIG, load_identities
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2
from tests.certs import Pki, issue_leaf
from tests.client import Client, make_client, user

Auth = tuple[tuple[str, str], ...]


@pytest.fixture
async def guarded(sidecar_settings: Settings, operator_token: str) -> AsyncIterator[Client]:
    """A second sidecar on the same database and Redis prefix that requires callers."""
    other = Sidecar(dataclasses.replace(sidecar_settings, caller_credentials="required"))
    await other.start()
    client = make_client(other.addresses[0], operator_token)
    yield client
    await client.channel.close()
    await other.stop(grace=0)


async def operator_key(client: Client, *permissions: str) -> Auth:
    created = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="service", permissions=list(permissions)), metadata=client.auth
    )
    return (("authorization", f"Bearer {created.secret}"),)


def check(tenant_id: str, permission: str = "doc.read") -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(tenant_id=tenant_id, subject=user("alice"), permission=permission)


async def refused_soon(guarded: Client, request: access_pb2.CheckAccessRequest, key: Auth) -> grpc.StatusCode:
    """The first code other than OK within 5 s (a revocation's event reaching `guarded`)."""
    for _ in range(100):
        code, _ = await code_of(guarded.access.CheckAccess(request, metadata=key))
        if code != grpc.StatusCode.OK:
            return code
        await asyncio.sleep(0.05)
    return code


async def code_of(call: "asyncio.Future[object] | object") -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_no_credential_no_answer_even_one_remembered(client: Client, guarded: Client, unique: str) -> None:
    tenant = await client.tenant(f"callers-none-{unique}")
    await client.grant(tenant.id, user("alice"), "viewer", "")
    service = await operator_key(client, CHECK)
    assert (await guarded.access.CheckAccess(check(tenant.id), metadata=service)).allowed  # now remembered
    for metadata in [(), (("authorization", "Bearer nonsense"),), (("authorization", "Basic abc"),)]:
        code, _ = await code_of(guarded.access.CheckAccess(check(tenant.id), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
    made_up = (("authorization", "Bearer gh_0123456789abcdef_" + "A" * 43),)
    assert (await code_of(guarded.access.CheckAccess(check(tenant.id), metadata=made_up)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    batch = access_pb2.CheckAccessBatchRequest(checks=[check(tenant.id)])
    assert (await code_of(guarded.access.CheckAccessBatch(batch)))[0] == grpc.StatusCode.UNAUTHENTICATED
    config = config_pb2.GetTenantConfigRequest(tenant_id=tenant.id)
    assert (await code_of(guarded.config.GetTenantConfig(config)))[0] == grpc.StatusCode.UNAUTHENTICATED
    stream = guarded.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Health stays open: kubelet's probes carry no key.
    from tests.client import health

    assert (await health(guarded.channel))[""] == "SERVING"


async def test_a_key_asks_what_its_permissions_name(client: Client, guarded: Client, unique: str) -> None:
    tenant = await client.tenant(f"callers-perm-{unique}")
    await client.grant(tenant.id, user("alice"), "viewer", "")
    checker = await operator_key(client, CHECK)
    reader = await operator_key(client, CONFIG)
    config = config_pb2.GetTenantConfigRequest(tenant_id=tenant.id)
    assert (await guarded.access.CheckAccess(check(tenant.id), metadata=checker)).allowed
    batch = access_pb2.CheckAccessBatchRequest(checks=[check(tenant.id), check(tenant.id, "doc.write")])
    assert [a.allowed for a in (await guarded.access.CheckAccessBatch(batch, metadata=checker)).results] == [True, False]
    assert (await code_of(guarded.config.GetTenantConfig(config, metadata=checker)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert (await guarded.config.GetTenantConfig(config, metadata=reader)).id == tenant.id
    assert (await code_of(guarded.access.CheckAccess(check(tenant.id), metadata=reader)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # The operator key of the test run holds "*": both.
    assert (await guarded.access.CheckAccess(check(tenant.id), metadata=client.auth)).allowed
    assert (await guarded.config.GetTenantConfig(config, metadata=client.auth)).id == tenant.id


async def test_the_fast_path_decides_as_the_full_one(client: Client, guarded: Client, unique: str) -> None:
    """Once a key is remembered, `Callers.admitted` lets it through without awaiting: two
    headers, another scheme or a key limited to one permission still get the full answer."""
    tenant = await client.tenant(f"callers-fast-{unique}")
    checker = await operator_key(client, CHECK)
    assert (await guarded.access.CheckAccess(check(tenant.id), metadata=checker)).reason  # now remembered
    token = checker[0][1].removeprefix("Bearer ")
    for metadata, code in [
        (checker + (("authorization", "Bearer other"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Token {token}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"bearer   {token}"),), grpc.StatusCode.OK),
    ]:
        assert (await code_of(guarded.access.CheckAccess(check(tenant.id), metadata=metadata)))[0] == code, metadata
    config = config_pb2.GetTenantConfigRequest(tenant_id=tenant.id)
    for _ in range(2):
        assert (await code_of(guarded.config.GetTenantConfig(config, metadata=checker)))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )


async def test_the_bootstrap_key_asks_nothing(client: Client, guarded: Client, operator_key: str, unique: str) -> None:
    tenant = await client.tenant(f"callers-boot-{unique}")
    bootstrap = (("authorization", f"Bearer {operator_key}"),)
    assert (await code_of(guarded.access.CheckAccess(check(tenant.id), metadata=bootstrap)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_a_tenant_key_asks_only_about_its_tenant(client: Client, guarded: Client, unique: str) -> None:
    mine = await client.tenant(f"callers-mine-{unique}")
    other = await client.tenant(f"callers-other-{unique}")
    for tenant in (mine, other):
        await client.grant(tenant.id, user("alice"), "viewer", "")
    created = await client.tenant_key(mine.id, CHECK)
    key = (("authorization", f"Bearer {created.secret}"),)
    for _ in range(2):  # the second answer is a remembered one
        assert (await guarded.access.CheckAccess(check(mine.id), metadata=key)).allowed
    # Remembered for another caller's question first: still refused to this key.
    assert (await guarded.access.CheckAccess(check(other.id), metadata=client.auth)).allowed
    code, details = await code_of(guarded.access.CheckAccess(check(other.id), metadata=key))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "own tenant" in details
    batch = access_pb2.CheckAccessBatchRequest(checks=[check(mine.id), check(other.id)])
    assert (await code_of(guarded.access.CheckAccessBatch(batch, metadata=key)))[0] == grpc.StatusCode.PERMISSION_DENIED
    only_mine = access_pb2.CheckAccessBatchRequest(checks=[check(mine.id), check(mine.id, "doc.write")])
    assert len((await guarded.access.CheckAccessBatch(only_mine, metadata=key)).results) == 2
    # Its tenant must grant it the permission too: a key whose roles do not is refused.
    bare = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=mine.id, name="bare", permissions=[CHECK]), metadata=client.auth
    )
    bare_key = (("authorization", f"Bearer {bare.secret}"),)
    assert (await code_of(guarded.access.CheckAccess(check(mine.id), metadata=bare_key)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Revoked (through the other sidecar; the event reaches this one): refused.
    await client.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(tenant_id=mine.id, key_id=created.key.id), metadata=client.auth
    )
    assert await refused_soon(guarded, check(mine.id), key) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_operator_key_stops_asking(client: Client, guarded: Client, unique: str) -> None:
    tenant = await client.tenant(f"callers-rev-{unique}")
    created = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="svc", permissions=[CHECK]), metadata=client.auth
    )
    key = (("authorization", f"Bearer {created.secret}"),)
    await guarded.access.CheckAccess(check(tenant.id), metadata=key)
    await client.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=created.key.id), metadata=client.auth)
    assert await refused_soon(guarded, check(tenant.id), key) == grpc.StatusCode.UNAUTHENTICATED


async def test_mtls_identities(
    client: Client, sidecar_settings: Settings, operator_token: str, pki: Pki, tmp_path: Path, unique: str
) -> None:
    mine = await client.tenant(f"callers-mtls-{unique}")
    other = await client.tenant(f"callers-mtls2-{unique}")
    for tenant in (mine, other):
        await client.grant(tenant.id, user("alice"), "viewer", "")
    envoy = issue_leaf(pki.ca, uri="spiffe://cluster.local/ns/mesh/sa/envoy")
    billing = pki.client  # an e-mail SAN: billing@clients.example
    identities = tmp_path / "callers.yaml"
    identities.write_text(
        "callers:\n"
        "  - identity: spiffe://cluster.local/ns/mesh/sa/envoy\n"
        f"    permissions: [{CHECK}]\n"
        "  - identity: billing@clients.example\n"
        f"    permissions: [{CONFIG}, {CHECK}]\n"
        f"    tenants: [{mine.id}]\n"
    )
    settings = dataclasses.replace(
        sidecar_settings,
        listen="localhost:0",
        tls_cert_file=str(pki.server_cert_file),
        tls_key_file=str(pki.server_key_file),
        tls_client_ca_file=str(pki.ca_file),
        caller_credentials="required",
        caller_identities_file=str(identities),
    )
    other_sidecar = Sidecar(settings)
    await other_sidecar.start()
    target = "localhost:" + other_sidecar.addresses[0].rsplit(":", 1)[1]
    as_envoy = make_client(target, operator_token, pki.credentials(present=envoy))
    as_billing = make_client(target, operator_token, pki.credentials(present=billing))
    as_unlisted = make_client(target, operator_token, pki.credentials(present=issue_leaf(pki.ca, uri="spiffe://x/y")))
    try:
        for tenant in (mine, other):
            assert (await as_envoy.access.CheckAccess(check(tenant.id))).allowed
        config = config_pb2.GetTenantConfigRequest(tenant_id=mine.id)
        assert (await code_of(as_envoy.config.GetTenantConfig(config)))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert (await as_billing.config.GetTenantConfig(config)).id == mine.id
        assert (await as_billing.access.CheckAccess(check(mine.id))).allowed
        assert (await code_of(as_billing.access.CheckAccess(check(other.id))))[0] == grpc.StatusCode.PERMISSION_DENIED
        code, details = await code_of(as_unlisted.access.CheckAccess(check(mine.id)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "IDENTITIES" in details
        # A key still works on an mTLS listener, and takes precedence over the certificate.
        service = await operator_key(client, CONFIG)
        assert (await as_envoy.config.GetTenantConfig(config, metadata=service)).id == mine.id
    finally:
        for c in (as_envoy, as_billing, as_unlisted):
            await c.channel.close()
        await other_sidecar.stop(grace=0)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("callers:\n  - identity: a\n", 2, "permissions is required"),
        ("callers:\n  - identity: a\n    permissions: [doc..read]\n", 3, "no permission pattern"),
        ("callers:\n  - identity: a\n    permissions: ['*']\n    tenants: [ABC]\n", 4, "no tenant id"),
        ("callers:\n  - identity: a\n    permissions: ['*']\n  - identity: a\n    permissions: ['*']\n", 4, "twice"),
        ("callers:\n  - identity: a\n    permission: ['*']\n", 2, "unknown key 'permission'"),
        ("callers: {}\n", 1, "must be a list"),
        ("other: []\n", 1, "exactly one key"),
        ("callers:\n  - identity: ''\n    permissions: ['*']\n", 2, "identity must be"),
    ],
)
def test_the_identities_file_is_checked_with_its_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as refused:
        load_identities(str(path))
    message = str(refused.value)
    assert f"{path}:{line}:" in message and words in message


async def test_bad_caller_settings_refuse_the_start(sidecar_settings: Settings, tmp_path: Path) -> None:
    for settings, words in [
        (dataclasses.replace(sidecar_settings, caller_credentials="yes"), "must be one of off, required"),
        (dataclasses.replace(sidecar_settings, caller_identities_file=str(tmp_path / "x.yaml")), "CLIENT_CA"),
    ]:
        with pytest.raises(SystemExit) as refused:
            await Sidecar(settings).start()
        assert words in str(refused.value)
