"""Every error Gatehouse reports, in one hierarchy.

Each class carries its status `Code` and a stable `GATEHOUSE_*` reason as class
attributes (the way h2 errors carry codes from h2's own enum). `Code` is ours, numbered
as gRPC numbers its status codes, so nothing below the server imports grpc; the server
maps codes to `grpc.StatusCode` and errors to a `google.rpc.Status` with an ErrorInfo
(and BadRequest field violations) in one place: `gatehouse.server.errors`. Lower-level
errors (asyncpg, redis) are translated there too, so nothing reaches a caller as UNKNOWN.

    GatehouseError
    ├── InvalidArgument            INVALID_ARGUMENT     GATEHOUSE_INVALID_ARGUMENT
    │   └── MoveIntoItself                              GATEHOUSE_MOVE_INTO_ITSELF
    ├── NotFound                   NOT_FOUND            GATEHOUSE_NOT_FOUND
    │   ├── TenantNotFound                              GATEHOUSE_TENANT_NOT_FOUND
    │   └── NothingToMove                               GATEHOUSE_NOTHING_TO_MOVE
    ├── AlreadyExists              ALREADY_EXISTS       GATEHOUSE_ALREADY_EXISTS
    ├── FailedPrecondition         FAILED_PRECONDITION  GATEHOUSE_FAILED_PRECONDITION
    │   ├── IllegalTransition                           GATEHOUSE_ILLEGAL_TRANSITION
    │   ├── ConfirmationRequired                        GATEHOUSE_CONFIRMATION_REQUIRED
    │   ├── SystemRoleImmutable                         GATEHOUSE_SYSTEM_ROLE
    │   ├── RoleInUse                                   GATEHOUSE_ROLE_IN_USE
    │   ├── NotAMember                                  GATEHOUSE_NOT_A_MEMBER
    │   ├── LastOwner                                   GATEHOUSE_LAST_OWNER
    │   ├── TenantNotWritable                           GATEHOUSE_TENANT_DELETED
    │   ├── MoveConflict                                GATEHOUSE_MOVE_CONFLICT
    │   ├── MovedScopeTooLong                           GATEHOUSE_MOVED_SCOPE_TOO_LONG
    │   └── RevisionNotReached                          GATEHOUSE_REVISION_NOT_REACHED
    ├── RevisionConflict           ABORTED              GATEHOUSE_REVISION_CONFLICT
    ├── Unauthenticated            UNAUTHENTICATED      GATEHOUSE_UNAUTHENTICATED
    ├── PermissionDenied           PERMISSION_DENIED    GATEHOUSE_PERMISSION_DENIED
    ├── DeadlineExceeded           DEADLINE_EXCEEDED    GATEHOUSE_DEADLINE_EXCEEDED
    ├── ResourceExhausted          RESOURCE_EXHAUSTED   GATEHOUSE_RESOURCE_EXHAUSTED
    │   ├── SettingsTooLarge                            GATEHOUSE_SETTINGS_TOO_LARGE
    │   ├── RequestTooLarge                             GATEHOUSE_REQUEST_TOO_LARGE
    │   └── Overloaded                                  GATEHOUSE_OVERLOADED
    ├── Unavailable                UNAVAILABLE          GATEHOUSE_UNAVAILABLE
    │   ├── StoreUnavailable                            GATEHOUSE_STORE_UNAVAILABLE
    │   ├── Stale                                       GATEHOUSE_STALE
    │   └── SchemaMismatch                              GATEHOUSE_SCHEMA_MISMATCH
    └── Internal                   INTERNAL             GATEHOUSE_INTERNAL
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Code(enum.IntEnum):
    """Status codes, numbered as gRPC numbers them (grpc/status.proto; the codes an HTTP
    adapter maps come from the same table), so the server's mapping is one lookup."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `subject.id`) and what is wrong."""

    field: str
    description: str


class GatehouseError(Exception):
    """Base of every error Gatehouse reports to a caller."""

    code: Code = Code.INTERNAL
    reason: str = "GATEHOUSE_INTERNAL"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(GatehouseError):
    """The request is malformed; `violations` names every bad field."""

    code = Code.INVALID_ARGUMENT
    reason = "GATEHOUSE_INVALID_ARGUMENT"

    # Status message and details travel in trailers, which clients cap (grpc's default
    # is 8 KiB): a request with hundreds of bad fields names the first MAX_VIOLATIONS and
    # says how many more there were.
    MAX_VIOLATIONS = 10

    # A field path built from the request (map keys at depth 32) is cut to this length,
    # keeping its head and tail, for the same reason.
    MAX_FIELD_PATH = 160

    def __init__(self, field: str, description: str, *more: FieldViolation) -> None:
        violations = tuple(
            FieldViolation(_shorten(v.field, self.MAX_FIELD_PATH), v.description)
            for v in (FieldViolation(field, description), *more)
        )
        field = violations[0].field
        self.violations: tuple[FieldViolation, ...] = violations[: self.MAX_VIOLATIONS]
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        if len(violations) > self.MAX_VIOLATIONS:
            text += f"; and {len(violations) - self.MAX_VIOLATIONS} more"
        super().__init__(f"invalid argument: {text}", metadata={"field": field})


class MoveIntoItself(InvalidArgument):
    """MoveScope's target is its source or below it (the tenant root is above every
    scope): a subtree cannot move into itself. Names the field `to_scope`."""

    reason = "GATEHOUSE_MOVE_INTO_ITSELF"


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


class NotFound(GatehouseError):
    code = Code.NOT_FOUND
    reason = "GATEHOUSE_NOT_FOUND"


class TenantNotFound(NotFound):
    reason = "GATEHOUSE_TENANT_NOT_FOUND"


class NothingToMove(NotFound):
    """MoveScope's source scope holds no role assignment, at it or below it: as far as
    Gatehouse knows (it keeps no table of org units) there is no such org unit.
    Metadata: `from_scope`."""

    reason = "GATEHOUSE_NOTHING_TO_MOVE"


class AlreadyExists(GatehouseError):
    code = Code.ALREADY_EXISTS
    reason = "GATEHOUSE_ALREADY_EXISTS"


class FailedPrecondition(GatehouseError):
    code = Code.FAILED_PRECONDITION
    reason = "GATEHOUSE_FAILED_PRECONDITION"


class IllegalTransition(FailedPrecondition):
    """A lifecycle action that the transition table does not allow from this state."""

    reason = "GATEHOUSE_ILLEGAL_TRANSITION"


class ConfirmationRequired(FailedPrecondition):
    """A terminal action (deleting a tenant) was asked for without `confirm`."""

    reason = "GATEHOUSE_CONFIRMATION_REQUIRED"


class SystemRoleImmutable(FailedPrecondition):
    """The seeded roles owner, admin, member and viewer cannot be changed or deleted."""

    reason = "GATEHOUSE_SYSTEM_ROLE"


class RoleInUse(FailedPrecondition):
    """A role that is still assigned cannot be deleted."""

    reason = "GATEHOUSE_ROLE_IN_USE"


class NotAMember(FailedPrecondition):
    """Roles are assigned to members only."""

    reason = "GATEHOUSE_NOT_A_MEMBER"


class LastOwner(FailedPrecondition):
    """The last owner of a tenant cannot be removed, demoted or have `owner` revoked."""

    reason = "GATEHOUSE_LAST_OWNER"


class TenantNotWritable(FailedPrecondition):
    """A deleted tenant is terminal: nothing about it changes any more."""

    reason = "GATEHOUSE_TENANT_DELETED"


class MoveConflict(FailedPrecondition):
    """MoveScope would give a subject a role at a scope where it holds that role already,
    and the request did not say to keep the existing one (`on_conflict`). Metadata: the
    first such assignment in (subject, role, scope) order: `subject`, `role`,
    `scope` (where it is now, below the source), `to_scope` (where it would go and the
    existing one is), and `conflicts` (how many there are)."""

    reason = "GATEHOUSE_MOVE_CONFLICT"


class MovedScopeTooLong(FailedPrecondition):
    """MoveScope would move an assignment to a scope longer than any scope may be.
    Metadata: `subject`, `role`, `scope` (the first such, where it is now), `limit`."""

    reason = "GATEHOUSE_MOVED_SCOPE_TOO_LONG"


class RevisionNotReached(FailedPrecondition):
    """A read asked for `min_revision` N, and the tenant is (by a store read made after the
    request arrived) at an older revision: answering would break read-your-writes, so
    nothing is answered. Metadata: `tenant_id`, `min_revision`, `current_revision` (0 when
    no such tenant exists). Retrying helps only after a write brings the tenant to N."""

    reason = "GATEHOUSE_REVISION_NOT_REACHED"

    def __init__(self, tenant_id: str, min_revision: int, current: int) -> None:
        super().__init__(
            f"tenant {tenant_id} has not reached revision {min_revision}: it is at {current}",
            metadata={"tenant_id": tenant_id, "min_revision": str(min_revision), "current_revision": str(current)},
        )
        self.current = current


class PageTokenExpired(FailedPrecondition):
    """A LookupSubjects page token names a revision the tenant has moved past: every page
    of one listing is at one revision, and that one is no longer served. Start again
    without the token. Metadata: `tenant_id`, `token_revision`, `current_revision`."""

    reason = "GATEHOUSE_PAGE_TOKEN_EXPIRED"

    def __init__(self, tenant_id: str, token_revision: int, current: int) -> None:
        super().__init__(
            f"the page token is for revision {token_revision} of tenant {tenant_id}, which is now at {current}: "
            "list again from the first page",
            metadata={"tenant_id": tenant_id, "token_revision": str(token_revision), "current_revision": str(current)},
        )


class Escalation(FailedPrecondition):
    """The caller would hand out permissions it does not hold itself at that scope."""

    reason = "GATEHOUSE_ESCALATION"


class OwnerRequired(FailedPrecondition):
    """Only an owner (or an operator) grants, takes back or mints the `owner` role."""

    reason = "GATEHOUSE_OWNER_REQUIRED"


class KeyAlreadyRevoked(FailedPrecondition):
    reason = "GATEHOUSE_KEY_ALREADY_REVOKED"


class IdempotencyKeyReused(FailedPrecondition):
    """The idempotency key was used, within 24 hours, for a different request."""

    reason = "GATEHOUSE_IDEMPOTENCY_KEY_REUSED"


class RevisionConflict(GatehouseError):
    """`expected_revision` is not the tenant's current revision (optimistic concurrency)."""

    code = Code.ABORTED
    reason = "GATEHOUSE_REVISION_CONFLICT"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expected revision {expected}, tenant is at {current}",
            metadata={"expected_revision": str(expected), "current_revision": str(current)},
        )
        self.current = current


class Unauthenticated(GatehouseError):
    code = Code.UNAUTHENTICATED
    reason = "GATEHOUSE_UNAUTHENTICATED"


class KeyRejected(Unauthenticated):
    """A well-formed API key that does not authenticate: unknown, wrong secret, revoked
    or expired. One reason for all, so a caller cannot probe which."""

    reason = "GATEHOUSE_KEY_REJECTED"


class PermissionDenied(GatehouseError):
    code = Code.PERMISSION_DENIED
    reason = "GATEHOUSE_PERMISSION_DENIED"


class OtherTenant(PermissionDenied):
    """A tenant-admin key acts only inside its own tenant."""

    reason = "GATEHOUSE_OTHER_TENANT"


class PlatformOnly(PermissionDenied):
    """Creating, listing and moving tenants through their lifecycle, plans, and operator
    keys are for operator keys only."""

    reason = "GATEHOUSE_PLATFORM_ONLY"


class DeadlineExceeded(GatehouseError):
    """The call's deadline (the client's, or GATEHOUSE_DEFAULT_DEADLINE_SECONDS for a call
    without one) passed while it waited for Postgres, Redis or a shared load: the work
    it started was cancelled (a running statement is cancelled on the server). Nothing
    was answered; a write may or may not have committed (retry it with the same
    idempotency key)."""

    code = Code.DEADLINE_EXCEEDED
    reason = "GATEHOUSE_DEADLINE_EXCEEDED"

    def __init__(self, message: str = "deadline exceeded before the call's work completed") -> None:
        super().__init__(message)


class ResourceExhausted(GatehouseError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "GATEHOUSE_RESOURCE_EXHAUSTED"


class SettingsTooLarge(ResourceExhausted):
    """A tenant's settings would grow past their total cap (`metadata.limit`, bytes of JSON)."""

    reason = "GATEHOUSE_SETTINGS_TOO_LARGE"


class RequestTooLarge(ResourceExhausted):
    """A request body longer than the listener takes (`metadata.limit`, bytes): refused
    before it is read whole, so nothing of it was parsed or decided."""

    reason = "GATEHOUSE_REQUEST_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes", metadata={"limit": str(limit)})
        self.limit = limit


class Overloaded(ResourceExhausted):
    """The process is at its bound of in-flight calls of this kind (`metadata.class`:
    hot, config, watch, admin, auth) and refused the call at once, without doing its work.
    Retry after `metadata.retry_after_ms` (also sent as `grpc-retry-pushback-ms`), with
    backoff; nothing happened."""

    reason = "GATEHOUSE_OVERLOADED"

    def __init__(self, kind: str, limit: int, retry_after_ms: int, message: str = "") -> None:
        super().__init__(
            message or f"overloaded: {kind} calls are at their limit of {limit} in flight; retry later",
            metadata={"class": kind, "limit": str(limit), "retry_after_ms": str(retry_after_ms)},
        )
        self.retry_after_ms = retry_after_ms


class Unavailable(GatehouseError):
    code = Code.UNAVAILABLE
    reason = "GATEHOUSE_UNAVAILABLE"


class StoreUnavailable(Unavailable):
    """Postgres cannot be reached and the caches cannot answer."""

    reason = "GATEHOUSE_STORE_UNAVAILABLE"


class Stale(Unavailable):
    """The cached data has not been confirmed current (tenant events flowing, relay
    heartbeats arriving) within the max-staleness bound, and Postgres could not answer
    the re-read: failing closed instead of answering from data possibly older than the
    bound. Metadata: `confirmed_seconds_ago` ("inf": never since start),
    `max_staleness_seconds`. Retrying helps once Postgres or the event stream is back."""

    reason = "GATEHOUSE_STALE"

    def __init__(self, age: float, bound: float) -> None:
        super().__init__(
            f"cached data not confirmed current for {age:.1f} s (max staleness {bound:g} s)"
            " and the database cannot answer",
            metadata={"confirmed_seconds_ago": f"{age:.1f}", "max_staleness_seconds": f"{bound:g}"},
        )


class SchemaMismatch(Unavailable):
    """The database schema is not at the version this build expects."""

    reason = "GATEHOUSE_SCHEMA_MISMATCH"


class Internal(GatehouseError):
    code = Code.INTERNAL
    reason = "GATEHOUSE_INTERNAL"
