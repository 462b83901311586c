"""Conditions on role assignments (issue 18), against a real sidecar, Postgres and Redis:
written through AssignRole (type-checked there), decided by CheckAccess and batches from
the request's attributes and context, CONDITIONAL when attributes are missing, and
remembered answers that stay exact."""

from __future__ import annotations

import datetime
from typing import Any, AsyncIterator

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, make_client, struct, user
from tests.server.status import details

Reason = access_pb2.DecisionReason
OWNER_ONLY = "resource.attributes.owner == subject.id"


def check(
    tenant_id: str,
    who: str,
    permission: str = "doc.edit",
    *,
    resource: dict[str, Any] | None = None,
    subject: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    min_revision: int = 0,
    scope: str = "",
) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id,
        subject=common_pb2.Subject(type="user", id=who, attributes=struct(subject)),
        permission=permission,
        resource=common_pb2.Resource(type="doc", id="d1", scope=scope, attributes=struct(resource)),
        context=struct(context),
        min_revision=min_revision,
    )


async def conditional_grant(client: Client, tenant_id: str, who: str, condition: str, *, role: str = "editor",
                            permissions: tuple[str, ...] = ("doc.*",), scope: str = "") -> int:
    try:
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=list(permissions)),
            metadata=client.auth,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    try:
        await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=user(who)), metadata=client.auth)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    response = await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant_id, subject=user(who), role=role, scope=scope, condition=condition),
        metadata=client.auth,
    )
    assert response.assignment.condition == condition
    return response.revision


@pytest.fixture
async def second(sidecar_settings: Settings, operator_token: str) -> AsyncIterator[Client]:
    other = Sidecar(sidecar_settings)  # same database and Redis prefix: reads the grants from L2
    await other.start()
    client = make_client(other.addresses[0], operator_token)
    yield client
    await client.channel.close()
    await other.stop(grace=0)


async def test_a_condition_decides_from_the_requests_attributes_in_every_sidecar(
    client: Client, second: Client, unique: str
) -> None:
    tenant = await client.tenant(f"cond-{unique}")
    revision = await conditional_grant(client, tenant.id, "alice", OWNER_ONLY)
    for sidecar in (client, second, client, second):  # decided, then remembered
        mine = await sidecar.access.CheckAccess(check(tenant.id, "alice", resource={"owner": "alice"}, min_revision=revision))
        assert (mine.allowed, mine.reason, mine.granted_by_role) == (True, Reason.DECISION_REASON_ALLOWED, "editor")
        theirs = await sidecar.access.CheckAccess(check(tenant.id, "alice", resource={"owner": "bob"}, min_revision=revision))
        assert (theirs.allowed, theirs.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
        unknown = await sidecar.access.CheckAccess(check(tenant.id, "alice", min_revision=revision))
        assert (unknown.allowed, unknown.reason) == (False, Reason.DECISION_REASON_CONDITIONAL)
        assert list(unknown.missing_attributes) == ["resource.attributes.owner"]
    batch = await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[
        check(tenant.id, "alice", resource={"owner": "alice"}),
        check(tenant.id, "alice", resource={"owner": "bob"}),
        check(tenant.id, "alice", resource={"owner": "alice"}),
        check(tenant.id, "alice"),
    ]))
    assert [(r.allowed, r.reason) for r in batch.results] == [
        (True, Reason.DECISION_REASON_ALLOWED),
        (False, Reason.DECISION_REASON_NO_GRANT),
        (True, Reason.DECISION_REASON_ALLOWED),
        (False, Reason.DECISION_REASON_CONDITIONAL),
    ]


async def test_subject_attributes_context_and_a_lasting_grant(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"cond-ctx-{unique}")
    await conditional_grant(
        client, tenant.id, "bob", 'subject.attributes.dept == "finance" && context.ip.startsWith("10.")',
        role="finance", permissions=("invoice.*",),
    )
    ok = await client.access.CheckAccess(
        check(tenant.id, "bob", "invoice.pay", subject={"dept": "finance"}, context={"ip": "10.1.2.3"})
    )
    assert ok.allowed
    outside = await client.access.CheckAccess(
        check(tenant.id, "bob", "invoice.pay", subject={"dept": "finance"}, context={"ip": "192.168.0.1"})
    )
    assert (outside.allowed, outside.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
    # `&&` needs both: each missing one is named (the left one false decides alone).
    missing = await client.access.CheckAccess(check(tenant.id, "bob", "invoice.pay"))
    assert list(missing.missing_attributes) == ["context.ip", "subject.attributes.dept"]
    decided = await client.access.CheckAccess(check(tenant.id, "bob", "invoice.pay", subject={"dept": "sales"}))
    assert (decided.allowed, decided.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
    # An unconditional grant of the same permission decides without attributes.
    revision = (await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("bob"), role="finance", scope="emea"),
        metadata=client.auth,
    )).revision
    lasting = await client.access.CheckAccess(check(tenant.id, "bob", "invoice.pay", scope="emea/de", min_revision=revision))
    assert (lasting.allowed, lasting.granted_at_scope) == (True, "emea")


async def test_a_condition_on_the_time_is_decided_at_each_request(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"cond-time-{unique}")
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1.5)).isoformat().replace("+00:00", "Z")
    await conditional_grant(client, tenant.id, "carol", f'request.time < timestamp("{soon}")')
    request = check(tenant.id, "carol")
    assert (await client.access.CheckAccess(request)).allowed
    assert (await client.access.CheckAccess(request)).allowed  # not remembered, but still true
    import asyncio

    await asyncio.sleep(1.6)
    late = await client.access.CheckAccess(request)
    assert (late.allowed, late.reason) == (False, Reason.DECISION_REASON_NO_GRANT)


@pytest.mark.parametrize(
    "condition, where",
    [
        ("resource.attributes.owner ==", "line 1, column 29"),
        ('1 + "a" == 2', "line 1, column 3"),
        ("subject.nickname == 'x'", "line 1, column 8"),
        ("1 + 1", "line 1, column 1"),
        ("context.a.all(x, context.b.exists(y, x == y))", ""),
        ("true || " * 200 + "true", ""),
    ],
    ids=["syntax", "type", "unknown-variable", "not-bool", "nested-comprehension", "too-long"],
)
async def test_a_bad_condition_is_invalid_argument_naming_it_and_where(
    client: Client, unique: str, condition: str, where: str
) -> None:
    tenant = await client.tenant(f"cond-bad-{unique}")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await conditional_grant(client, tenant.id, "dave", condition)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == ["condition"]
    assert where in (raised.value.details() or "")


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda t: check(t, "x", context={"a": "\x00"}), "context.fields['a'].string_value"),
        (lambda t: check(t, "x", resource={str(i): i for i in range(300)}), "resource.attributes"),
        (lambda t: check(t, "x", resource={"a": "x" * 9000}, context={"b": "y" * 9000}), "context"),
    ],
    ids=["nul", "too-many-values", "too-many-bytes"],
)
async def test_bad_attributes_are_invalid_argument(client: Client, unique: str, build: Any, field: str) -> None:
    tenant = await client.tenant(f"cond-attr-{unique}")
    for call in (
        lambda: client.access.CheckAccess(build(tenant.id)),
        lambda: client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[build(tenant.id)])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(raised.value)[1][0].endswith(field)


async def test_subject_attributes_are_refused_where_nothing_reads_them(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"cond-admin-{unique}")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.admin.AddMember(
            admin_pb2.AddMemberRequest(
                tenant_id=tenant.id, subject=common_pb2.Subject(type="user", id="x", attributes=struct({"a": 1}))
            ),
            metadata=client.auth,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == ["subject.attributes"]
