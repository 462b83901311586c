"""A gRPC client for every Gatehouse service, with helpers the tests share."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gatehouse.v1 import access_pb2_grpc, admin_pb2, admin_pb2_grpc, common_pb2, config_pb2_grpc


@dataclass
class Client:
    """Stubs for every service of one sidecar, plus the admin credentials."""

    channel: grpc.aio.Channel
    access: access_pb2_grpc.AccessServiceStub
    config: config_pb2_grpc.ConfigServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    auth: tuple[tuple[str, str], ...]

    async def tenant(self, slug: str, *, activate: bool = True, **fields: object) -> admin_pb2.Tenant:
        tenant = await self.admin.CreateTenant(
            admin_pb2.CreateTenantRequest(slug=slug, name=slug.title(), **fields), metadata=self.auth
        )
        if activate:
            tenant = await self.admin.ActivateTenant(
                admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="test"), metadata=self.auth
            )
        return tenant

    async def grant(
        self, tenant_id: str, subject: common_pb2.Subject, role: str, scope: str, permissions: list[str] | None = None
    ) -> int:
        """Make `subject` a member holding `role` at `scope` (creating the role if permissions are given)."""
        if permissions is not None:
            await self.admin.CreateRole(
                admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=permissions),
                metadata=self.auth,
            )
        try:
            await self.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=subject), metadata=self.auth)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        response = await self.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=tenant_id, subject=subject, role=role, scope=scope),
            metadata=self.auth,
        )
        return response.revision


def make_client(target: str, operator_key: str, credentials: grpc.ChannelCredentials | None = None) -> Client:
    """A client for the sidecar at `target`: plaintext, or TLS with `credentials`."""
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    return Client(
        channel=channel,
        access=access_pb2_grpc.AccessServiceStub(channel),
        config=config_pb2_grpc.ConfigServiceStub(channel),
        admin=admin_pb2_grpc.AdminServiceStub(channel),
        auth=(("authorization", f"Bearer {operator_key}"),),
    )


def user(name: str) -> common_pb2.Subject:
    return common_pb2.Subject(type="user", id=name)
