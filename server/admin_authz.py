"""May this caller make this admin call? Decided by the same engine as CheckAccess.

Every AdminService action `a` needs the permission `gatehouse.<a>` (`gatehouse.role.assign`,
`gatehouse.tenant.get`, …). An operator key holds exactly its own patterns, on every
tenant. A tenant-admin key is the subject `api_key/<id>` of its own tenant: the engine
decides the permission for it (tenant status, membership, the key's limit, its roles'
grants at the call's scope), asked through the same `DecisionService` as CheckAccess;
outside its tenant, or for a platform action, it is refused before the engine is asked.

On top of "may call", two guards on what a call hands out:
- escalation: nobody creates, updates or assigns a role (or mints a key holding one)
  whose permissions exceed their own at that scope (GATEHOUSE_ESCALATION);
- owner: only owners (and operators) grant, take back or mint `owner` (GATEHOUSE_OWNER_REQUIRED).
"""

from __future__ import annotations

import time
from typing import Iterable

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.decision import SubjectGrants
from gatehouse.engine.model import Reason, SubjectRef, key_subject
from gatehouse.engine.patterns import PermissionSet, pattern_covers, scope_covers
from gatehouse.errors import (
    Escalation,
    KeyRejected,
    OtherTenant,
    OwnerRequired,
    PermissionDenied,
    PlatformOnly,
)
from gatehouse.server.admin_auth import Principal
from gatehouse.server.decisions import DecisionService
from gatehouse.store.api import OWNER_ROLE

# Actions that act on the platform rather than inside one tenant: operators only.
PLATFORM_ACTIONS = frozenset(
    {
        "tenant.create",
        "tenant.list",
        "tenant.activate",
        "tenant.suspend",
        "tenant.resume",
        "tenant.archive",
        "tenant.restore",
        "tenant.delete",
        "plan.upsert",
        "plan.list",
    }
)


def admin_permission(action: str) -> str:
    return f"gatehouse.{action}"


class AdminAuthorizer:
    def __init__(self, cache: PolicyCache, decisions: DecisionService) -> None:
        self._cache = cache
        self._decisions = decisions

    async def require(self, caller: Principal, action: str, tenant_id: str, scope: str = "") -> None:
        """PermissionDenied (or a subclass naming why) unless `caller` may do `action`."""
        permission = admin_permission(action)
        if caller.is_operator:
            if caller.is_bootstrap and tenant_id:
                raise PlatformOnly("the bootstrap key only manages operator keys", metadata={"action": action})
            if not caller.permissions.matches(permission):
                raise PermissionDenied("the key does not permit this", metadata={"permission": permission})
            return
        if action in PLATFORM_ACTIONS or not tenant_id:
            raise PlatformOnly("operators only", metadata={"action": action})
        if tenant_id != caller.tenant_id:
            raise OtherTenant("a tenant key acts only inside its own tenant", metadata={"tenant_id": tenant_id})
        await require_key_grant(self._decisions, caller.key_id, tenant_id, permission, scope)

    async def guard_patterns(self, caller: Principal, patterns: Iterable[str], scope: str, *, what: str) -> None:
        """Escalation: every pattern must be covered by one of the caller's own grants
        whose scope covers `scope` (and, for a key, by the key's own limit)."""
        if caller.is_bootstrap:
            return  # it exists to mint the first operator key, whatever that holds
        grants = None if caller.is_operator else await self._grants(caller)
        _guard_patterns(caller, grants, patterns, scope, what)

    async def guard_grant(self, caller: Principal, role: str, permissions: Iterable[str], scope: str) -> None:
        """Both guards for handing out `role`, whose permissions are `permissions`, at
        `scope` (AssignRole, CreateApiKey's roles)."""
        await self.guard_grants(caller, [(role, tuple(permissions), scope)])

    async def guard_grants(self, caller: Principal, grants: Iterable[tuple[str, tuple[str, ...], str]]) -> None:
        """`guard_grant` for each (role, permissions, scope), the caller's own grants read
        once."""
        guard_held_grants(caller, await self.own_grants(caller), grants)

    async def own_grants(self, caller: Principal) -> SubjectGrants | None:
        """The caller's own grants, which the guards compare with (None for an operator,
        whose key's patterns are its grant). KeyRejected when the key no longer works."""
        return None if caller.is_operator else await self._grants(caller)

    async def guard_owner(self, caller: Principal, role: str) -> None:
        """Only an owner at the tenant root (or an operator) hands out or takes back `owner`."""
        if role != OWNER_ROLE or caller.is_operator:
            return
        _guard_owner(caller, await self._grants(caller), role)

    async def holds_owner(self, tenant_id: str, subject: SubjectRef) -> bool:
        grants = await self._cache.subject(tenant_id, subject)
        return grants is not None and any(g.role == OWNER_ROLE for g in grants.in_force(time.time()))

    async def _grants(self, caller: Principal) -> SubjectGrants:
        grants = await self._cache.subject(caller.tenant_id, key_subject(caller.key_id))
        if grants is None:
            raise KeyRejected("key rejected", metadata={"key_id": caller.key_id})
        if grants.key is not None and not grants.key.usable(time.time()):
            raise KeyRejected("key rejected", metadata={"key_id": caller.key_id})
        return grants


async def require_key_grant(
    decisions: DecisionService, key_id: str, tenant_id: str, permission: str, scope: str = ""
) -> None:
    """Returns when the engine allows the tenant key `api_key/<key_id>` `permission` at
    `scope` of its own `tenant_id` (tenant status, the key's limit and expiry, its roles'
    grants). Raises KeyRejected (revoked, expired, gone) or PermissionDenied naming the
    decision's reason. Admin calls and hot-path callers (server/callers.py) both ask it."""
    evaluation = await decisions.evaluate(tenant_id, key_subject(key_id), permission, scope, 0, time.time())
    decision = evaluation.decision
    if decision.reason is Reason.KEY_REVOKED or (evaluation.subject_key is not None and evaluation.grants is None):
        # Revoked, expired, or no longer in the store at all: one answer for all, as
        # authentication gives (a caller cannot probe which).
        raise KeyRejected("key rejected", metadata={"key_id": key_id})
    if not decision.allowed:
        raise PermissionDenied(
            f"not allowed: {decision.reason.name}",
            metadata={"permission": permission, "decision": decision.reason.name},
        )


def guard_held_grants(
    caller: Principal, held: SubjectGrants | None, grants: Iterable[tuple[str, tuple[str, ...], str]]
) -> None:
    """`AdminAuthorizer.guard_grants` given the caller's own grants (`own_grants`), reading
    nothing: MoveScope's guard runs inside the move's transaction, on every moved grant
    at its old and its new scope."""
    for role, permissions, scope in grants:
        _guard_owner(caller, held, role)
        if not caller.is_bootstrap:
            _guard_patterns(caller, held, permissions, scope, f"the role {role}")


def _guard_patterns(
    caller: Principal, grants: SubjectGrants | None, patterns: Iterable[str], scope: str, what: str
) -> None:
    """Escalation (see `AdminAuthorizer.guard_patterns`), given the caller's own grants
    (None for an operator, whose key's patterns are its grant)."""
    for pattern in patterns:
        if not _covered(caller.permissions, pattern):
            raise Escalation(f"{what} exceeds the caller's own key", metadata={"pattern": pattern})
        if grants is not None and not any(
            scope_covers(g.scope, scope) and _covered(g.permissions, pattern) for g in grants.in_force(time.time())
        ):
            raise Escalation(
                f"{what} exceeds the caller's own permissions at this scope",
                metadata={"pattern": pattern, "scope": scope},
            )


def _guard_owner(caller: Principal, grants: SubjectGrants | None, role: str) -> None:
    """Only an owner at the tenant root (or an operator: `grants` None) hands out `owner`."""
    if role != OWNER_ROLE or caller.is_operator or grants is None:
        return
    if not any(g.role == OWNER_ROLE and g.scope == "" for g in grants.in_force(time.time())):
        raise OwnerRequired("only an owner may grant or take back the owner role", metadata={"role": role})


def _covered(held: PermissionSet, pattern: str) -> bool:
    return any(pattern_covers(mine, pattern) for mine in held.patterns)
