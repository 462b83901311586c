"""Remembered answers (gatehouse.cache.answers) on a real sidecar: a request asked again is
answered from its bytes, and never once the entries it was decided from have changed."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2

from tests.client import Client, user
from tests.server.test_access import check


def answers(sidecar: Sidecar, kind: str = "check") -> int:
    remembered = sidecar.check_answers if kind == "check" else sidecar.config_answers
    assert remembered is not None
    return remembered.hits


async def test_a_remembered_answer_lasts_until_a_write_changes_what_it_was_decided_from(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    tenant = await client.tenant(f"mem-{unique}")
    await client.grant(tenant.id, user("alice"), "billing", "emea", ["invoice.*"])
    question = check(tenant.id, "alice", "invoice.read", "emea/de")
    first = await client.access.CheckAccess(question)
    hits = answers(sidecar)
    assert await client.access.CheckAccess(question) == first and first.allowed
    assert answers(sidecar) == hits + 1

    # Her own revocation ends it: decided again, then remembered again.
    await client.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="billing", scope="emea"),
        metadata=client.auth,
    )
    denied = await client.access.CheckAccess(question)
    assert not denied.allowed and denied.reason == access_pb2.DECISION_REASON_NO_GRANT
    assert answers(sidecar) == hits + 1
    assert await client.access.CheckAccess(question) == denied
    assert answers(sidecar) == hits + 2

    # A tenant-wide change (suspension) ends every answer of the tenant.
    await client.grant(tenant.id, user("alice"), "billing", "emea")
    allowed = await client.access.CheckAccess(question)
    assert allowed.allowed
    await client.admin.SuspendTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="unpaid"), metadata=client.auth
    )
    write = check(tenant.id, "alice", "invoice.create", "emea/de")
    assert (await client.access.CheckAccess(write)).reason == access_pb2.DECISION_REASON_TENANT_SUSPENDED
    read_while_suspended = await client.access.CheckAccess(question)
    assert read_while_suspended.allowed and read_while_suspended.revision > allowed.revision


async def test_a_batch_answers_from_remembered_answers_exactly_as_it_decides(client: Client, sidecar: Sidecar, unique: str) -> None:
    tenant = await client.tenant(f"memb-{unique}")
    await client.grant(tenant.id, user("hal"), "editor", "eu", ["doc.*"])
    checks = [check(tenant.id, who, p, s) for who in ("hal", "nobody") for p in ("doc.read", "report.list") for s in ("eu", "us")]
    batch = access_pb2.CheckAccessBatchRequest(checks=checks + checks[:3])
    decided = await client.access.CheckAccessBatch(batch)
    hits = answers(sidecar)
    remembered = await client.access.CheckAccessBatch(batch)
    assert remembered == decided
    assert answers(sidecar) == hits + len(batch.checks)
    assert list(decided.results) == [await client.access.CheckAccess(c) for c in batch.checks]

    await client.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("hal"), role="editor", scope="eu"),
        metadata=client.auth,
    )
    after = await client.access.CheckAccessBatch(batch)
    assert not any(r.allowed for r in after.results)

    # A batch carrying anything but `checks` is parsed the ordinary way, same answers.
    unknown_field = batch.SerializeToString() + b"\x12\x00"
    raw = client.channel.unary_unary(
        "/gatehouse.v1.AccessService/CheckAccessBatch"
    )
    assert access_pb2.CheckAccessBatchResponse.FromString(await raw(unknown_field)) == after


async def test_config_is_remembered_until_the_tenant_changes(client: Client, sidecar: Sidecar, unique: str) -> None:
    tenant = await client.tenant(f"memc-{unique}")
    request = config_pb2.GetTenantConfigRequest(tenant_id=tenant.id)
    first = await client.config.GetTenantConfig(request)
    hits = answers(sidecar, "config")
    assert await client.config.GetTenantConfig(request) == first
    assert answers(sidecar, "config") == hits + 1
    update = admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id)
    update.settings_patch.update({"theme": "dark"})
    await client.admin.PatchTenantConfig(update, metadata=client.auth)
    changed = await client.config.GetTenantConfig(request)
    assert changed.settings["theme"] == "dark" and changed.revision > first.revision


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/gatehouse.v1.AccessService/CheckAccess", b"\x0a\xff"),
        ("/gatehouse.v1.AccessService/CheckAccessBatch", b"\x0a\x05\x0a\x09"),
        ("/gatehouse.v1.ConfigService/GetTenantConfig", b"\x0a"),
    ],
)
async def test_bytes_that_are_no_request_are_invalid_argument(client: Client, method: str, body: bytes) -> None:
    call = client.channel.unary_unary(method)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(body)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in (failure.value.details() or "")
