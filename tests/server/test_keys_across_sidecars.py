"""An API key decides the same in every sidecar, whichever tier its grants come from:
the second sidecar here reads them from L2 (Redis), where the first wrote them."""

from __future__ import annotations

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client

Reason = access_pb2.DecisionReason


async def test_a_limited_key_is_limited_in_every_sidecar(client: Client, second: Client, unique: str) -> None:
    tenant = await client.tenant(f"keys-l2-{unique}")
    created = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant.id, name="reader", permissions=["invoice.read"], roles=[admin_pb2.RoleGrant(role="admin")]
        ),
        metadata=client.auth,
    )
    key = common_pb2.Subject(type="api_key", id=created.key.id)

    def check(permission: str, min_revision: int = 0) -> access_pb2.CheckAccessRequest:
        return access_pb2.CheckAccessRequest(
            tenant_id=tenant.id, subject=key, permission=permission, min_revision=min_revision
        )

    first = await client.access.CheckAccess(check("invoice.delete", created.revision))  # Postgres, then L2
    assert (first.allowed, first.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
    other = await second.access.CheckAccess(check("invoice.delete", created.revision))  # L2
    assert (other.allowed, other.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
    assert (await second.access.CheckAccess(check("invoice.read", created.revision))).allowed

    revoked = await client.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=created.key.id), metadata=client.auth
    )
    for sidecar in (client, second):
        answer = await sidecar.access.CheckAccess(check("invoice.read", revoked.revision))
        assert (answer.allowed, answer.reason) == (False, Reason.DECISION_REASON_KEY_REVOKED)
