"""AdminService: the thin write surface. servicer → store transaction (row + revision
bump + audit + outbox) → the store tells its subscribers (the cache) of the new revision
before the call returns; no method here invalidates anything by hand.

Authentication, auditing of denied and failed calls, and error mapping live in one
decorator, `admin_call`, used by every method; the methods only validate and delegate.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import grpc

from gatehouse import logs
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import KEY_SUBJECT_TYPE, SubjectRef
from gatehouse.engine.moves import require_move
from gatehouse.engine.patterns import is_valid_tenant_id
from gatehouse.engine.validate import (
    Violations,
    optional_id,
    optional_tenant_id,
    require_condition,
    require_id,
    require_key_id,
    require_name,
    require_page_size,
    require_patterns,
    require_revision,
    require_scope,
    require_tenant_id,
)
from gatehouse import deadlines
from gatehouse.errors import FieldViolation, InvalidArgument, Overloaded, PermissionDenied, Unauthenticated
from gatehouse.server import convert
from gatehouse.server.admin_auth import AdminAuthenticator, Principal, mint_key, request_id
from gatehouse.server.admin_authz import AdminAuthorizer, guard_held_grants
from gatehouse.server.decisions import DecisionService
from gatehouse.server.idempotency import REPLAY_REASON, run_idempotent
from gatehouse.server.errors import abort, translate
from gatehouse.store.api import OWNER_ROLE, Actor, ConfigPatch, MovedGrant, StoreMutator
from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")
Method = Callable[[Any, Any, Principal], Awaitable[R]]


def _target(request: Any) -> str:
    """What a call acts on, for the audit row: the tenant plus the call's own key fields."""
    parts = []
    for name in ("tenant_id", "slug", "name", "key_id"):
        value = getattr(request, name, "")
        if isinstance(value, str) and value:
            parts.append(f"{name}={value}")
    for name in ("subject",):
        if request.DESCRIPTOR.fields_by_name.get(name) and request.HasField(name):
            parts.append(f"subject={request.subject.type}/{request.subject.id}")
    for name in ("role", "scope", "from_scope", "to_scope"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            parts.append(f"{name}={value}")
    text = " ".join(parts)
    # Never let a hostile 10 KB or control-character id through to the audit table as-is.
    return "".join(c if c.isprintable() else "?" for c in text[:256])


def _audit_tenant(request: Any) -> str | None:
    value = getattr(request, "tenant_id", "")
    return value if isinstance(value, str) and is_valid_tenant_id(value) else None


def admin_call(action: str, *, mutation: bool = True) -> Callable[[Method[R]], Callable[..., Awaitable[R]]]:
    """Authenticate, authorize, make a mutation idempotent, run, audit what the store did
    not (reads, replays, denials, failures), map errors. Every AdminService method."""

    def decorate(method: Method[R]) -> Callable[..., Awaitable[R]]:
        rpc = method.__name__

        @functools.wraps(method)
        async def wrapper(self: "AdminServicer", request: Any, context: grpc.aio.ServicerContext[bytes, bytes]) -> R:
            metadata = tuple(context.invocation_metadata() or ())
            # The call's log scope holds its request id (server/call_log.py): the audit row
            # and every log line of the call name the same one.
            actor = Actor("anonymous", logs.current_request_id() or request_id(metadata))
            try:
                caller = await self._auth.authenticate(metadata, actor.request_id, context.peer())
                actor = caller.actor
                logs.annotate(actor=actor.id)
                tenant_id, scope = _authz_fields(request, action)
                await self._authz.require(caller, action, tenant_id, scope)
                if not mutation:
                    response = await method(self, request, caller)
                    await self._audit(actor, request, action, "ok", "")
                    return response
                replayed, response = await run_idempotent(
                    self._store.idempotency, caller.actor.id, rpc, request, metadata,
                    lambda: method(self, request, caller),
                )
                if replayed:
                    await self._audit(actor, request, action, "ok", REPLAY_REASON)
                return response
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = translate(exc)
                outcome = "denied" if isinstance(error, (Unauthenticated, PermissionDenied)) else "error"
                # A call refused unchecked (a flood being shed) leaves no audit row, or
                # the flood would become one Postgres write per call: the refusals are
                # counted (stats `auth.refused_*`, `admission.shed{class=admin}`) instead.
                if not isinstance(error, Overloaded):
                    await self._audit(actor, request, action, outcome, error.reason)
                await abort(context, error)
                raise  # unreachable: abort raises

        return wrapper

    return decorate


# How long writing the audit row of a call may take (seconds), whatever the call's deadline.
AUDIT_SECONDS = 5.0

# Actions whose permission is decided at a scope of the request rather than the tenant
# root: the field holding it first, then any other scope field of the request (checked
# here too, so a refusal names every bad scope). MoveScope is decided at `from_scope`
# here and at `to_scope` by the method.
_SCOPED_ACTIONS = {"role.assign": ("scope",), "role.revoke": ("scope",), "scope.move": ("from_scope", "to_scope")}


def _future(field: str, value: Any, *, present: bool) -> float | None:
    """An optional Timestamp that must lie ahead (an expiry), as unix seconds; None when
    absent. InvalidArgument naming `field` when it is not in the future."""
    seconds = convert.seconds(value, present)
    if seconds is not None and seconds <= time.time():
        raise InvalidArgument(field, "must be in the future")
    return seconds


def _authz_fields(request: Any, action: str) -> tuple[str, str]:
    """The (tenant id, scope) that decide whether the caller may make the call, validated
    first: authorization is decided on nothing but well-formed values. The method then
    validates every field (these again) and names every bad one."""
    v = Violations()
    tenant_id = v.check(optional_tenant_id, "tenant_id", getattr(request, "tenant_id", ""))
    scopes = [v.check(require_scope, field, getattr(request, field)) for field in _SCOPED_ACTIONS.get(action, ())]
    v.raise_if_any()
    return tenant_id, scopes[0] if scopes else ''


def _transition_rpc(action: Action) -> Callable[..., Awaitable[admin_pb2.Tenant]]:
    @admin_call(f"tenant.{action.value}")
    async def rpc(self: "AdminServicer", request: admin_pb2.TenantTransitionRequest, caller: Principal) -> admin_pb2.Tenant:
        return await self._transition(request, caller.actor, action)

    rpc.__name__ = f"{action.value.title()}Tenant"
    return rpc


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, store: StoreMutator, cache: PolicyCache, auth: AdminAuthenticator, decisions: DecisionService
    ) -> None:
        self._store = store
        self._auth = auth
        self._authz = AdminAuthorizer(cache, decisions)

    async def _audit(self, actor: Actor, request: Any, action: str, outcome: str, reason: str) -> None:
        try:
            # Not within the call's deadline: a call that failed on its deadline is audited
            # too. Bounded by AUDIT_SECONDS of its own instead.
            with deadlines.detached(), deadlines.bounded(AUDIT_SECONDS):
                await self._store.record_audit(
                    actor, tenant_id=_audit_tenant(request), action=action, target=_target(request), outcome=outcome,
                    reason=reason,
                )
        except Exception:  # the call's own outcome matters more than its audit row
            log.exception("could not write audit row for %s (%s)", action, outcome)

    # --- tenants ---
    # Every method validates all its fields before its first await (`Violations`), so a
    # bad request is refused whole, naming every bad field, before anything is read or
    # written.

    @admin_call("tenant.create")
    async def CreateTenant(self, request: admin_pb2.CreateTenantRequest, caller: Principal) -> admin_pb2.Tenant:
        v = Violations()
        slug = v.check(convert.slug, "slug", request.slug)
        name = v.check(convert.name, "name", request.name)
        plan = v.check(optional_id, "plan", request.plan)
        region = v.check(optional_id, "region", request.region)
        settings = v.check(convert.struct_to_dict, "settings", request.settings)
        v.raise_if_any()
        record = await self._store.create_tenant(
            caller.actor, slug=slug, name=name, plan=plan, region=region, settings=settings
        )
        return convert.tenant_message(record)

    @admin_call("tenant.get", mutation=False)
    async def GetTenant(self, request: admin_pb2.GetTenantRequest, caller: Principal) -> admin_pb2.Tenant:
        return convert.tenant_message(await self._store.get_tenant(require_tenant_id("tenant_id", request.tenant_id)))

    @admin_call("tenant.list", mutation=False)
    async def ListTenants(self, request: admin_pb2.ListTenantsRequest, caller: Principal) -> admin_pb2.ListTenantsResponse:
        v = Violations()
        page_size = v.check(require_page_size, "page_size", request.page_size)
        status = v.check(convert.tenant_status, "status", request.status)
        plan = v.check(optional_id, "plan", request.plan)
        region = v.check(optional_id, "region", request.region)
        v.raise_if_any()
        page = await self._store.list_tenants(
            page_size=page_size, page_token=request.page_token, status=status, plan=plan, region=region
        )
        return admin_pb2.ListTenantsResponse(
            tenants=[convert.tenant_message(t) for t in page.items], next_page_token=page.next_page_token
        )

    @admin_call("tenant.update")
    async def UpdateTenant(self, request: admin_pb2.UpdateTenantRequest, caller: Principal) -> admin_pb2.Tenant:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        name = v.check(convert.name, "name", request.name) if request.HasField("name") else None
        plan = v.check(require_id, "plan", request.plan) if request.HasField("plan") else None
        region = v.check(optional_id, "region", request.region) if request.HasField("region") else None
        v.raise_if_any()
        record = await self._store.update_tenant(
            caller.actor, tenant_id, expected_revision=expected, name=name, plan=plan, region=region
        )
        return convert.tenant_message(record)

    @admin_call("tenant.config.patch")
    async def PatchTenantConfig(self, request: admin_pb2.PatchTenantConfigRequest, caller: Principal) -> admin_pb2.Tenant:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        patch = ConfigPatch(
            settings_patch=v.check(convert.struct_to_dict, "settings_patch", request.settings_patch)
            if request.HasField("settings_patch")
            else None,
            set_flags=v.check(convert.key_map, "set_flag_overrides", request.set_flag_overrides),
            clear_flags=v.check(convert.key_list, "clear_flag_overrides", request.clear_flag_overrides),
            set_quotas=v.check(convert.key_map, "set_quota_overrides", request.set_quota_overrides),
            clear_quotas=v.check(convert.key_list, "clear_quota_overrides", request.clear_quota_overrides),
        )
        v.raise_if_any()
        record = await self._store.patch_tenant_config(caller.actor, tenant_id, patch, expected_revision=expected)
        return convert.tenant_message(record)

    async def _transition(self, request: admin_pb2.TenantTransitionRequest, actor: Actor, action: Action) -> admin_pb2.Tenant:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        reason = v.check(convert.description, "reason", request.reason)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        record = await self._store.transition_tenant(
            actor, tenant_id, action, reason=reason, expected_revision=expected, confirm=request.confirm
        )
        return convert.tenant_message(record)

    # One RPC per lifecycle action, all through the transition table.
    ActivateTenant = _transition_rpc(Action.ACTIVATE)
    SuspendTenant = _transition_rpc(Action.SUSPEND)
    ResumeTenant = _transition_rpc(Action.RESUME)
    ArchiveTenant = _transition_rpc(Action.ARCHIVE)
    RestoreTenant = _transition_rpc(Action.RESTORE)
    DeleteTenant = _transition_rpc(Action.DELETE)

    # --- plans ---

    @admin_call("plan.upsert")
    async def UpsertPlan(self, request: admin_pb2.UpsertPlanRequest, caller: Principal) -> admin_pb2.UpsertPlanResponse:
        plan, affected = await self._store.upsert_plan(caller.actor, convert.plan("plan", request.plan))
        return admin_pb2.UpsertPlanResponse(plan=convert.plan_message(plan), tenants_affected=len(affected))

    @admin_call("plan.list", mutation=False)
    async def ListPlans(self, request: admin_pb2.ListPlansRequest, caller: Principal) -> admin_pb2.ListPlansResponse:
        return admin_pb2.ListPlansResponse(plans=[convert.plan_message(p) for p in await self._store.list_plans()])

    # --- roles ---

    def _role_fields(
        self, request: admin_pb2.CreateRoleRequest | admin_pb2.UpdateRoleRequest, v: Violations
    ) -> tuple[str, str, tuple[str, ...], str]:
        """(tenant id, name, permissions, description) of a role write."""
        return (
            v.check(require_tenant_id, "tenant_id", request.tenant_id),
            v.check(require_id, "name", request.name),
            v.check(require_patterns, "permissions", request.permissions),
            v.check(convert.description, "description", request.description),
        )

    @admin_call("role.create")
    async def CreateRole(self, request: admin_pb2.CreateRoleRequest, caller: Principal) -> admin_pb2.RoleResponse:
        v = Violations()
        tenant_id, name, permissions, description = self._role_fields(request, v)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        await self._authz.guard_patterns(caller, permissions, "", what="the role")
        role, revision = await self._store.create_role(
            caller.actor, tenant_id, name=name, permissions=permissions, description=description,
            expected_revision=expected,
        )
        return admin_pb2.RoleResponse(role=convert.role_message(role), revision=revision)

    @admin_call("role.update")
    async def UpdateRole(self, request: admin_pb2.UpdateRoleRequest, caller: Principal) -> admin_pb2.RoleResponse:
        v = Violations()
        tenant_id, name, permissions, description = self._role_fields(request, v)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        await self._authz.guard_patterns(caller, permissions, "", what="the role")
        role, revision = await self._store.update_role(
            caller.actor, tenant_id, name=name, permissions=permissions, description=description,
            expected_revision=expected,
        )
        return admin_pb2.RoleResponse(role=convert.role_message(role), revision=revision)

    @admin_call("role.delete")
    async def DeleteRole(self, request: admin_pb2.DeleteRoleRequest, caller: Principal) -> admin_pb2.MutationResponse:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        name = v.check(require_id, "name", request.name)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        revision = await self._store.delete_role(caller.actor, tenant_id, name=name, expected_revision=expected)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("role.list", mutation=False)
    async def ListRoles(self, request: admin_pb2.ListRolesRequest, caller: Principal) -> admin_pb2.ListRolesResponse:
        roles, revision = await self._store.list_roles(require_tenant_id("tenant_id", request.tenant_id))
        return admin_pb2.ListRolesResponse(roles=[convert.role_message(r) for r in roles], revision=revision)

    # --- members ---

    def _member_fields(
        self, request: admin_pb2.AddMemberRequest | admin_pb2.RemoveMemberRequest
    ) -> tuple[str, SubjectRef, int]:
        """(tenant id, subject, expected revision) of a membership write."""
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        subject = v.check(convert.subject, "subject", request.subject)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        return tenant_id, subject, expected

    @admin_call("member.add")
    async def AddMember(self, request: admin_pb2.AddMemberRequest, caller: Principal) -> admin_pb2.MemberResponse:
        tenant_id, subject, expected = self._member_fields(request)
        if subject.type == KEY_SUBJECT_TYPE:
            raise InvalidArgument("subject.type", "API keys join their tenant through CreateApiKey")
        member, revision = await self._store.add_member(caller.actor, tenant_id, subject, expected_revision=expected)
        return admin_pb2.MemberResponse(member=convert.member_message(member), revision=revision)

    @admin_call("member.remove")
    async def RemoveMember(self, request: admin_pb2.RemoveMemberRequest, caller: Principal) -> admin_pb2.MutationResponse:
        tenant_id, subject, expected = self._member_fields(request)
        if await self._authz.holds_owner(tenant_id, subject):
            await self._authz.guard_owner(caller, OWNER_ROLE)
        revision = await self._store.remove_member(caller.actor, tenant_id, subject, expected_revision=expected)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("member.list", mutation=False)
    async def ListMembers(self, request: admin_pb2.ListMembersRequest, caller: Principal) -> admin_pb2.ListMembersResponse:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        v.raise_if_any()
        page = await self._store.list_members(tenant_id, page_size=page_size, page_token=request.page_token)
        return admin_pb2.ListMembersResponse(
            members=[convert.member_message(m) for m in page.items], next_page_token=page.next_page_token
        )

    # --- role assignments ---

    def _assignment_fields(
        self, request: admin_pb2.AssignRoleRequest | admin_pb2.RevokeRoleRequest, v: Violations | None = None
    ) -> tuple[str, SubjectRef, str, str, int]:
        """(tenant id, subject, role, scope, expected revision) of an assignment write;
        `v` holds what the caller found wrong with its other fields, named with these."""
        v = v if v is not None else Violations()
        fields = (
            v.check(require_tenant_id, "tenant_id", request.tenant_id),
            v.check(convert.subject, "subject", request.subject),
            v.check(require_id, "role", request.role),
            v.check(require_scope, "scope", request.scope),
            v.check(require_revision, "expected_revision", request.expected_revision),
        )
        v.raise_if_any()
        return fields

    @admin_call("role.assign")
    async def AssignRole(self, request: admin_pb2.AssignRoleRequest, caller: Principal) -> admin_pb2.RoleAssignmentResponse:
        """Grant `role` at `scope`, with `on_existing` REPLACE also change the terms of a
        grant held already (one write; the caller needs `gatehouse.role.revoke` as well as
        `gatehouse.role.assign`, since new terms can narrow). The escalation and owner guards are decided on
        the role and scope, whatever the terms; the last-owner guard (in the store's
        transaction) on a replace that would leave no lasting owner."""
        v = Violations()
        expires_at = v.check(_future, "expires_at", request.expires_at, present=request.HasField("expires_at"))
        condition = v.check(require_condition, "condition", request.condition)
        replace_held = v.check(convert.existing_grant_policy, "on_existing", request.on_existing)
        tenant_id, subject, role, scope, expected = self._assignment_fields(request, v)
        if replace_held:
            # New terms can take access away as a revoke does (condition "false", an
            # expiry a second away): a replace needs `gatehouse.role.revoke` too.
            await self._authz.require(caller, "role.revoke", tenant_id, scope)
        await self._guard_grant(caller, tenant_id, role, scope)
        assignment, revision = await self._store.assign_role(
            caller.actor, tenant_id, subject, role=role, scope=scope, expected_revision=expected,
            expires_at=expires_at, condition=condition, replace=replace_held,
        )
        return admin_pb2.RoleAssignmentResponse(assignment=convert.assignment_message(assignment), revision=revision)

    @admin_call("role.revoke")
    async def RevokeRole(self, request: admin_pb2.RevokeRoleRequest, caller: Principal) -> admin_pb2.MutationResponse:
        tenant_id, subject, role, scope, expected = self._assignment_fields(request)
        await self._authz.guard_owner(caller, role)
        revision = await self._store.revoke_role(
            caller.actor, tenant_id, subject, role=role, scope=scope, expected_revision=expected
        )
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("role.assignments.list", mutation=False)
    async def ListRoleAssignments(
        self, request: admin_pb2.ListRoleAssignmentsRequest, caller: Principal
    ) -> admin_pb2.ListRoleAssignmentsResponse:
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        subject = v.check(convert.optional_subject, "subject", request.subject)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        v.raise_if_any()
        page = await self._store.list_role_assignments(
            tenant_id, subject=subject, page_size=page_size, page_token=request.page_token
        )
        return admin_pb2.ListRoleAssignmentsResponse(
            assignments=[convert.assignment_message(a) for a in page.items], next_page_token=page.next_page_token
        )

    @admin_call("scope.move")
    async def MoveScope(self, request: admin_pb2.MoveScopeRequest, caller: Principal) -> admin_pb2.MoveScopeResponse:
        """Move the org-unit subtree `from_scope` to `to_scope` with its grants
        (`gatehouse.engine.moves` says where each scope goes). The caller needs
        `gatehouse.scope.move` at both scopes, and the escalation and owner guards of
        AssignRole for every moved grant at its old and its new scope, decided inside the
        move's transaction on exactly the rows it moves."""
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        from_scope = v.check(require_scope, "from_scope", request.from_scope)
        to_scope = v.check(require_scope, "to_scope", request.to_scope)
        keep_existing = v.check(convert.move_conflict_policy, "on_conflict", request.on_conflict)
        expected = v.check(require_revision, "expected_revision", request.expected_revision)
        v.raise_if_any()
        require_move(from_scope, to_scope)
        await self._authz.require(caller, "scope.move", tenant_id, to_scope)

        # The caller's own grants are read now, not by the guard: the guard runs inside the
        # move's transaction, holding a pool connection, and reading them there (a cache
        # miss, as after any write to the tenant) waits for another connection, which the
        # moves queued on this tenant's lock may all hold: they deadlocked until their
        # deadlines.
        held = await self._authz.own_grants(caller)

        async def guard(grants: Sequence[MovedGrant]) -> None:
            guard_held_grants(caller, held, [
                (grant.role, grant.permissions, scope) for grant in grants for scope in (grant.old_scope, grant.new_scope)
            ])

        move = await self._store.move_scope(
            caller.actor, tenant_id, from_scope=from_scope, to_scope=to_scope, keep_existing=keep_existing,
            guard=guard, expected_revision=expected,
        )
        return admin_pb2.MoveScopeResponse(revision=move.revision, moved=move.moved, merged=move.merged)

    # --- API keys ---

    @admin_call("key.create")
    async def CreateApiKey(self, request: admin_pb2.CreateApiKeyRequest, caller: Principal) -> admin_pb2.CreateApiKeyResponse:
        v = Violations()
        tenant_id = v.check(optional_tenant_id, "tenant_id", request.tenant_id)
        permissions = v.check(require_patterns, "permissions", request.permissions)
        if not request.permissions:
            v.found.append(FieldViolation("permissions", "at least one pattern (\"*\" = no limit beyond the key's roles)"))
        roles = [
            (v.check(require_id, f"roles[{i}].role", grant.role), v.check(require_scope, f"roles[{i}].scope", grant.scope))
            for i, grant in enumerate(request.roles)
        ]
        if roles and not request.tenant_id:
            v.found.append(FieldViolation("roles", "an operator key holds no roles: its permissions are its grant"))
        name = v.check(convert.description, "name", request.name)
        expires_at = v.check(_future, "expires_at", request.expires_at, present=request.HasField("expires_at"))
        v.raise_if_any()
        if tenant_id:
            for role, scope in roles:
                await self._guard_grant(caller, tenant_id, role, scope)
        else:
            await self._authz.guard_patterns(caller, permissions, "", what="the key")
        minted = await asyncio.to_thread(mint_key)
        record, revision = await self._store.create_api_key(
            caller.actor,
            tenant_id,
            key_id=minted.key_id,
            secret_hash=minted.secret_hash,
            name=name,
            permissions=permissions,
            expires_at=expires_at,
            roles=roles,
        )
        return admin_pb2.CreateApiKeyResponse(key=convert.api_key_message(record), secret=minted.token, revision=revision)

    @admin_call("key.revoke")
    async def RevokeApiKey(self, request: admin_pb2.RevokeApiKeyRequest, caller: Principal) -> admin_pb2.MutationResponse:
        v = Violations()
        tenant_id = v.check(optional_tenant_id, "tenant_id", request.tenant_id)
        key_id = v.check(require_key_id, "key_id", request.key_id)
        v.raise_if_any()
        revision = await self._store.revoke_api_key(caller.actor, tenant_id, key_id)
        self._auth.forget(key_id)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("key.list", mutation=False)
    async def ListApiKeys(self, request: admin_pb2.ListApiKeysRequest, caller: Principal) -> admin_pb2.ListApiKeysResponse:
        v = Violations()
        tenant_id = v.check(optional_tenant_id, "tenant_id", request.tenant_id)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        v.raise_if_any()
        page = await self._store.list_api_keys(tenant_id, page_size=page_size, page_token=request.page_token)
        return admin_pb2.ListApiKeysResponse(
            keys=[convert.api_key_message(k) for k in page.items], next_page_token=page.next_page_token
        )

    async def _guard_grant(self, caller: Principal, tenant_id: str, role: str, scope: str) -> None:
        """The escalation and owner guards for handing `role` out at `scope`."""
        roles, _ = await self._store.list_roles(tenant_id)
        for record in roles:
            if record.name == role:
                await self._authz.guard_grant(caller, role, record.permissions, scope)
                return
        await self._authz.guard_owner(caller, role)
        # An unknown role: the store answers NOT_FOUND for it.

    # --- audit ---

    @admin_call("audit.list", mutation=False)
    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, caller: Principal
    ) -> admin_pb2.ListAuditEventsResponse:
        v = Violations()
        tenant_id = v.check(optional_tenant_id, "tenant_id", request.tenant_id)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        # Exact filters: cut short, a filter could match another actor (its first 200
        # characters) and never the one asked for.
        actor = v.check(require_name, "actor", request.actor, required=False)
        action = v.check(require_name, "action", request.action, required=False)
        v.raise_if_any()
        page = await self._store.list_audit_events(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            since=convert.seconds(request.since, request.HasField("since")),
            until=convert.seconds(request.until, request.HasField("until")),
            page_size=page_size,
            page_token=request.page_token,
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[convert.audit_message(e) for e in page.items], next_page_token=page.next_page_token
        )
