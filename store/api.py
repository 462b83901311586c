"""The interfaces of the store, and the records it returns.

`StoreReader` is the hot path (the cache's misses, health), `StoreMutator` the admin
surface (with `IdempotencyLog`), `Subscribable` the feed of committed writes
(`TenantChange`), and `Store` all of them: what a driver implements. The server and
cache depend on these protocols only; `gatehouse.store.postgres` is the driver. Every mutation commits its domain rows, the tenant's revision bump, one audit row
and one outbox row in ONE transaction, and returns the tenant's new revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Mapping, Protocol, Sequence, TypeVar

from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import (
    Membership,
    Plan,
    RosterSnapshot,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
)

if TYPE_CHECKING:
    from gatehouse.store.idempotency import Claim


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is making an admin call, for the audit log and `status_changed_by`."""

    id: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class RoleRecord:
    tenant_id: str
    name: str
    permissions: tuple[str, ...]
    description: str = ""
    system: bool = False


@dataclass(frozen=True, slots=True)
class MemberRecord:
    tenant_id: str
    subject: SubjectRef
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    tenant_id: str
    subject: SubjectRef
    role: str
    scope: str
    created_at: float | None = None
    expires_at: float | None = None  # unix seconds; None = never
    condition: str = ""  # CEL source; "" = none


@dataclass(frozen=True, slots=True)
class MovedGrant:
    """One (role, scope) a scope move takes away and where it puts it, for the escalation
    guard: the role's permissions leave `old_scope` and arrive at `new_scope`."""

    role: str
    permissions: tuple[str, ...]
    old_scope: str
    new_scope: str


# Called by `move_scope` inside its transaction, with the tenant locked, with every
# distinct (role, old scope) the move takes: raises to refuse the move (nothing written).
# It must not read the store (the transaction holds a pool connection, and the moves
# waiting for the tenant's lock may hold all the others).
MoveGuard = Callable[[Sequence[MovedGrant]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ScopeMove:
    """What a MoveScope did: assignments moved, moved ones dropped as duplicates of an
    assignment already at the target (`merged`), and the tenant's new revision."""

    moved: int
    merged: int
    revision: int


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    tenant_id: str
    actor: str
    action: str
    target: str
    request_id: str
    outcome: str  # "ok" | "denied" | "error"
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as ListApiKeys shows it: never its secret, never its hash."""

    id: str
    tenant_id: str  # "" for an operator (platform) key
    name: str
    permissions: tuple[str, ...]
    expires_at: float | None
    created_by: str
    created_at: float | None
    revoked_at: float | None = None
    roles: tuple[tuple[str, str], ...] = ()  # (role, scope) granted at creation


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    """What authenticating a key needs; it never leaves the server."""

    id: str
    tenant_id: str  # "" for an operator key
    secret_hash: str
    permissions: tuple[str, ...]
    expires_at: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A PatchTenantConfig request, already validated."""

    settings_patch: Mapping[str, Any] | None = None  # RFC 7396 merge-patch
    set_flags: Mapping[str, bool] = field(default_factory=dict)
    clear_flags: Sequence[str] = ()
    set_quotas: Mapping[str, int] = field(default_factory=dict)
    clear_quotas: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class TenantChange:
    """A committed write, as the store tells its subscribers: the tenant it changed, the
    revision it committed, and its outbox event's kind and subject. One per tenant the
    write changed (a plan change: one per tenant on the plan)."""

    tenant_id: str
    revision: int
    kind: str  # tenant | config | plan | role | membership | assignment | key
    subject: str = ""  # "user/alice" when only that subject is concerned
    config: bool = True  # False when the write cannot change what GetTenantConfig answers


class ChangeListener(Protocol):
    """Called with each committed write, after its commit, before the write returns."""

    async def __call__(self, change: TenantChange, /) -> None: ...


class Subscribable(Protocol):
    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Hear of every write this store commits from now on; returns an unsubscribe function.
        Listeners are awaited in order, after the commit; one that raises is logged and
        does not fail the write."""
        ...


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str = ""


# Seeded for every tenant, neither changeable nor deletable. The same sets decide
# CheckAccess and AdminService calls (admin permissions are `gatehouse.<action>`, e.g.
# `gatehouse.role.assign`; reads end in .get/.list, so `viewer` may read the tenant's
# admin data too). `owner` and `admin` differ in one rule: only owners (and operators)
# grant or take back `owner` (GATEHOUSE_OWNER_REQUIRED).
SYSTEM_ROLES: dict[str, tuple[str, ...]] = {
    "owner": ("*",),
    "admin": ("*",),
    "member": (),
    "viewer": ("*.read", "*.list", "*.get"),
}
OWNER_ROLE = "owner"
DEFAULT_PLAN = "default"


class StoreReader(Protocol):
    """The hot path: what the cache loads on a miss, and what health asks."""

    async def ping(self) -> None: ...
    async def schema_version(self) -> int: ...
    async def schema_fit(self, expected: int) -> str | None:
        """None when a build expecting schema version `expected` answers right against the
        database (at it, or ahead of it by additive steps only); else why not."""
        ...

    # --- the read path (what the cache loads on a miss) ---
    async def load_tenant(self, tenant_id: str) -> TenantSnapshot | None: ...
    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> SubjectSnapshot | None:
        """None when the tenant does not exist; otherwise membership and assignments,
        stamped with the tenant revision read in the same transaction."""
        ...

    # --- lookups (server/lookup.py) ---
    async def load_roster(self, tenant_id: str) -> RosterSnapshot | None:
        """None when the tenant does not exist; otherwise the tenant and every member with
        its grants, in one snapshot at the tenant's revision, ordered by (type, id)."""
        ...
    async def load_subjects(self, tenant_id: str, subjects: Sequence[SubjectRef]) -> list[SubjectSnapshot] | None:
        """`load_subject` of each, all in one snapshot (one tenant revision); None when
        there is no such tenant."""
        ...
    async def list_subject_tenants(self, subject: SubjectRef, *, page_size: int, page_token: str) -> Page[Membership]:
        """A page of the tenants `subject` is a member of, by slug (every tenant's rows: the
        platform scope): at most `page_size` (0 = 100, at most 1,000), after the slug
        `page_token` holds ("" = from the first), with a next page token when more follow.
        InvalidArgument `page_token` when it is not one such a page gave."""
        ...


class IdempotencyLog(Protocol):
    """What makes an admin mutation idempotent: claim a key, then complete or release it
    (`gatehouse.store.idempotency.IdempotencyKeys`)."""

    async def claim(self, principal: str, key: str, method: str, request_hash: bytes) -> Claim: ...
    async def complete(self, principal: str, key: str, response: bytes) -> None: ...
    async def release(self, principal: str, key: str) -> None: ...


class StoreMutator(Protocol):
    """Every AdminService write and read, and the idempotency keys of its mutations."""

    @property
    def idempotency(self) -> IdempotencyLog: ...

    # --- tenants ---
    async def create_tenant(
        self, actor: Actor, *, slug: str, name: str, plan: str, region: str, settings: Mapping[str, Any]
    ) -> TenantRecord: ...
    async def get_tenant(self, tenant_id: str) -> TenantRecord: ...
    async def list_tenants(
        self, *, page_size: int, page_token: str, status: TenantStatus | None, plan: str, region: str
    ) -> Page[TenantRecord]: ...
    async def update_tenant(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        expected_revision: int,
        name: str | None,
        plan: str | None,
        region: str | None,
    ) -> TenantRecord: ...
    async def transition_tenant(
        self, actor: Actor, tenant_id: str, action: Action, *, reason: str, expected_revision: int, confirm: bool
    ) -> TenantRecord: ...
    async def patch_tenant_config(
        self, actor: Actor, tenant_id: str, patch: ConfigPatch, *, expected_revision: int
    ) -> TenantRecord: ...

    # --- plans ---
    async def upsert_plan(self, actor: Actor, plan: Plan) -> tuple[Plan, list[tuple[str, int]]]:
        """The plan as stored, and (tenant id, new revision) of every tenant on it."""
        ...
    async def list_plans(self) -> list[Plan]: ...

    # --- roles ---
    # Every tenant write takes `expected_revision` (0 = don't check): RevisionConflict when
    # the tenant is at another revision (optimistic concurrency, e.g. `gatehouse apply`).
    async def create_role(
        self, actor: Actor, tenant_id: str, *, name: str, permissions: tuple[str, ...], description: str,
        expected_revision: int = 0,
    ) -> tuple[RoleRecord, int]: ...
    async def update_role(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        name: str,
        permissions: tuple[str, ...],
        description: str,
        expected_revision: int,
    ) -> tuple[RoleRecord, int]: ...
    async def delete_role(self, actor: Actor, tenant_id: str, *, name: str, expected_revision: int = 0) -> int: ...
    async def list_roles(self, tenant_id: str) -> tuple[list[RoleRecord], int]: ...

    # --- members ---
    async def add_member(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, expected_revision: int = 0
    ) -> tuple[MemberRecord, int]: ...
    async def remove_member(self, actor: Actor, tenant_id: str, subject: SubjectRef, *, expected_revision: int = 0) -> int: ...
    async def list_members(self, tenant_id: str, *, page_size: int, page_token: str) -> Page[MemberRecord]: ...

    # --- role assignments ---
    async def assign_role(
        self,
        actor: Actor,
        tenant_id: str,
        subject: SubjectRef,
        *,
        role: str,
        scope: str,
        expected_revision: int = 0,
        expires_at: float | None = None,
        condition: str = "",
        replace: bool = False,
    ) -> tuple[AssignmentRecord, int]: ...
    async def revoke_role(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str, expected_revision: int = 0
    ) -> int: ...
    async def list_role_assignments(
        self, tenant_id: str, *, subject: SubjectRef | None, page_size: int, page_token: str
    ) -> Page[AssignmentRecord]: ...
    async def move_scope(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        from_scope: str,
        to_scope: str,
        keep_existing: bool,
        guard: MoveGuard,
        expected_revision: int = 0,
    ) -> ScopeMove:
        """Move every assignment at or below `from_scope` to the same place below
        `to_scope` (`gatehouse.engine.moves`), one revision. NothingToMove, MoveConflict
        (unless `keep_existing`), MovedScopeTooLong, or whatever `guard` raises."""
        ...

    # --- audit ---
    async def create_api_key(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        key_id: str,
        secret_hash: str,
        name: str,
        permissions: Sequence[str],
        expires_at: float | None,
        roles: Sequence[tuple[str, str]],
    ) -> tuple[ApiKeyRecord, int]:
        """A tenant key (a member of `tenant_id` holding `roles`) or, with tenant_id "",
        an operator key; the tenant's new revision (0 for an operator key)."""
        ...

    async def revoke_api_key(self, actor: Actor, tenant_id: str, key_id: str) -> int: ...
    async def list_api_keys(self, tenant_id: str, *, page_size: int, page_token: str) -> Page[ApiKeyRecord]: ...
    async def find_api_key(self, key_id: str) -> ApiKeyCredential | None:
        """The key with this id in any tenant (authentication comes before knowing one)."""
        ...

    async def record_audit(
        self, actor: Actor, *, tenant_id: str | None, action: str, target: str, outcome: str, reason: str
    ) -> None:
        """An audit row on its own, for calls that were denied or failed (successful
        mutations write theirs inside their own transaction)."""
        ...

    async def list_audit_events(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        since: float | None,
        until: float | None,
        page_size: int,
        page_token: str,
    ) -> Page[AuditRecord]: ...


class Store(StoreReader, StoreMutator, Subscribable, Protocol):
    """Everything a driver implements: reads, mutations, and the feed of committed writes."""

    async def close(self) -> None: ...
