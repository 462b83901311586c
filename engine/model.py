"""Domain values the decision engine works on. Plain, immutable, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping


class TenantStatus(enum.Enum):
    """A tenant's lifecycle state; the value is what Postgres stores."""

    DRAFT = "draft"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"
    DELETED = "deleted"


class Reason(enum.IntEnum):
    """Why a check was decided the way it was (numbers = proto DecisionReason)."""

    ALLOWED = 1
    NO_GRANT = 2
    NOT_A_MEMBER = 3
    TENANT_NOT_FOUND = 4
    TENANT_SUSPENDED = 5
    TENANT_INACTIVE = 6
    FEATURE_DISABLED = 7
    KEY_REVOKED = 8
    # Some grant would apply but its condition needs attributes the request did not
    # carry (Decision.missing names them); denied, never silently.
    CONDITIONAL = 9


@dataclass(frozen=True, slots=True)
class SubjectRef:
    """`user/alice`, `service/billing`, `api_key/<key id>`: meaningful only inside one tenant."""

    type: str
    id: str

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}"


@dataclass(frozen=True, slots=True)
class PlanFeature:
    """A feature of a plan: on or off by default, and the permission patterns it gates."""

    default_enabled: bool
    gates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    features: Mapping[str, PlanFeature] = field(default_factory=dict)
    quotas: Mapping[str, int] = field(default_factory=dict)
    rate_limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant row as the store reads it."""

    id: str
    slug: str
    name: str
    status: TenantStatus
    plan: str
    region: str
    settings: Mapping[str, Any]
    flag_overrides: Mapping[str, bool]
    quota_overrides: Mapping[str, int]
    revision: int
    status_reason: str = ""
    status_changed_by: str = ""
    status_changed_at: float | None = None  # unix seconds
    created_at: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class TenantSnapshot:
    """A tenant and its plan, read in one transaction at `tenant.revision`."""

    tenant: TenantRecord
    plan: Plan

    @property
    def revision(self) -> int:
        return self.tenant.revision


@dataclass(frozen=True, slots=True)
class AssignmentRow:
    """One role assignment of a subject, with the role's permission patterns."""

    role: str
    scope: str
    permissions: tuple[str, ...]
    expires_at: float | None = None  # unix seconds; None = never. From then on it grants nothing
    condition: str = ""  # CEL source (engine.conditions); "" = none: the grant always applies


KEY_SUBJECT_TYPE = "api_key"  # an API key as a subject: `api_key/<key id>`


def key_subject(key_id: str) -> SubjectRef:
    return SubjectRef(KEY_SUBJECT_TYPE, key_id)


@dataclass(frozen=True, slots=True)
class KeyState:
    """An API key as a subject (`api_key/<id>`): its own permission patterns, which limit
    whatever its roles grant, and whether it still works."""

    permissions: tuple[str, ...]
    expires_at: float | None = None  # unix seconds; None = never
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class SubjectSnapshot:
    """What the store knows about one subject of one tenant, read at `revision`."""

    tenant_id: str
    subject: SubjectRef
    revision: int
    is_member: bool
    assignments: tuple[AssignmentRow, ...] = ()
    key: KeyState | None = None  # set for an `api_key` subject whose key is in this tenant


@dataclass(frozen=True, slots=True)
class RosterSnapshot:
    """A whole tenant read in one snapshot: the tenant and its plan, and every member
    (API keys of the tenant included) with its grants, all at `tenant.revision`."""

    tenant: TenantSnapshot
    members: tuple[SubjectSnapshot, ...]

    @property
    def revision(self) -> int:
        return self.tenant.revision


@dataclass(frozen=True, slots=True)
class Membership:
    """One tenant a subject is a member of, as ListTenantsForSubject shows it."""

    tenant_id: str
    tenant_slug: str
    tenant_status: TenantStatus
    revision: int
