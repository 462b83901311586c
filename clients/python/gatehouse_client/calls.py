"""What a `Client` and an `AsyncClient` share: how a call is made, retried and remembered.

Nothing here does I/O: the clients send, sleep and wait; this decides what they send
(the request message, the credential, the idempotency key), how long they wait before a
retry, and which revision of a tenant they must not read below (read-your-writes).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import Message

from gatehouse_client.errors import GatehouseError
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2, lookup_pb2

KEY_ENV = "GATEHOUSE_KEY"
SERVER_ENV = "GATEHOUSE_SERVER"
DEFAULT_SERVER = "127.0.0.1:50051"
IDEMPOTENCY_HEADER = "idempotency-key"
DEFAULT_TIMEOUT = 2.0  # seconds, per attempt
DEFAULT_RETRIES = 3  # attempts after the first, on UNAVAILABLE only
FIRST_BACKOFF = 0.1  # seconds: the first retry waits up to this, the n-th up to 2**n times it
MAX_BACKOFF = 2.0  # seconds, the most one wait may be

Metadata = tuple[tuple[str, str], ...]
SubjectLike = str | tuple[str, str] | common_pb2.Subject

_ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def as_subject(value: SubjectLike) -> common_pb2.Subject:
    """`"user:alice"`, `("user", "alice")` or a `Subject` as a `Subject`; ValueError for a
    string without a `type:` part."""
    if isinstance(value, common_pb2.Subject):
        return value
    if isinstance(value, tuple):
        kind, id_ = value
        return common_pb2.Subject(type=kind, id=id_)
    kind, colon, id_ = value.partition(":")
    if not colon or not kind or not id_:
        raise ValueError(f"subject {value!r}: expected TYPE:ID, e.g. user:alice")
    return common_pb2.Subject(type=kind, id=id_)


def target_of(target: str | None) -> str:
    """`target`, else `$GATEHOUSE_SERVER`, else 127.0.0.1:50051."""
    return target or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def is_tenant_id(value: str) -> bool:
    """The canonical spelling of a uuid: what the server takes as a tenant id (anything
    else is taken for a slug)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def tenant_on_page(page: admin_pb2.ListTenantsResponse, slug: str) -> admin_pb2.Tenant | None:
    """The tenant of `page` with this slug; None to read the next page; NOT_FOUND
    GatehouseError after the last."""
    for tenant in page.tenants:
        if tenant.slug == slug:
            return tenant
    if page.next_page_token:
        return None
    raise GatehouseError(grpc.StatusCode.NOT_FOUND, f"no tenant with slug {slug!r}",
                         reason="GATEHOUSE_TENANT_NOT_FOUND", violations=(("tenant", "no such slug"),))


def snake_case(method: str) -> str:
    """`CreateTenant` -> `create_tenant`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()


@dataclass(frozen=True)
class AdminMethod:
    """One AdminService method: its name, request class, and whether it writes (every
    method but Get* and List*, which get an idempotency key)."""

    name: str
    request: type[Message]
    mutation: bool


ADMIN_METHODS: dict[str, AdminMethod] = {
    snake_case(m.name): AdminMethod(
        m.name, getattr(admin_pb2, m.input_type.name), not m.name.startswith(("Get", "List"))
    )
    for m in _ADMIN.methods
}


@dataclass(frozen=True)
class Decision:
    """A CheckAccess answer. `reason` is the DecisionReason without its prefix
    (`"ALLOWED"`, `"NO_GRANT"`, `"NOT_A_MEMBER"`, ...); `revision` the tenant revision it
    was computed at; `granted_by_role` / `granted_at_scope` what allowed it; `feature`
    the feature that blocked it (reason FEATURE_DISABLED); `missing_attributes` what a
    condition needed and the check did not carry (reason CONDITIONAL). True when allowed."""

    allowed: bool
    reason: str
    revision: int
    granted_by_role: str = ""
    granted_at_scope: str = ""
    feature: str = ""
    missing_attributes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def of(cls, answer: access_pb2.CheckAccessResponse) -> Decision:
        return cls(
            allowed=answer.allowed,
            reason=access_pb2.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_"),
            revision=answer.revision,
            granted_by_role=answer.granted_by_role,
            granted_at_scope=answer.granted_at_scope,
            feature=answer.feature,
            missing_attributes=tuple(answer.missing_attributes),
        )


class CallPolicy:
    """Credential, deadline, retries and the revisions this client's writes returned.

    `key`: the API key sent as `authorization: Bearer <key>` (default `$GATEHOUSE_KEY`;
    none: calls go without one). `timeout`: seconds per attempt. `retries`: attempts
    after the first, made only when the answer is UNAVAILABLE (the server or a
    dependency of its down, or the connection lost), after a wait drawn uniformly from
    [0, min(MAX_BACKOFF, FIRST_BACKOFF * 2**n)] ("full jitter"); a mutation's retries
    carry the same idempotency key, so the server runs it at most once.
    """

    def __init__(self, key: str | None, timeout: float, retries: int) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be more than 0 seconds")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        key = os.environ.get(KEY_ENV) if key is None else key
        self.auth: Metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.timeout = timeout
        self.retries = retries
        self._random = random.Random()
        self._revisions: dict[str, int] = {}
        self._lock = threading.Lock()  # a sync Client may be shared by threads

    def metadata(self, mutation: bool, idempotency_key: str | None) -> Metadata:
        if not mutation:
            return self.auth
        return (*self.auth, (IDEMPOTENCY_HEADER, idempotency_key or uuid.uuid4().hex))

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 = the first)."""
        return self._random.uniform(0, min(MAX_BACKOFF, FIRST_BACKOFF * 2**retry))

    @staticmethod
    def retryable(code: grpc.StatusCode) -> bool:
        return code == grpc.StatusCode.UNAVAILABLE

    # --- read-your-writes ------------------------------------------------------------

    def revision(self, tenant_id: str) -> int:
        """The highest revision a write of this client returned for `tenant_id` (0: none)."""
        with self._lock:
            return self._revisions.get(tenant_id, 0)

    def remember(self, request: Message, response: Message) -> None:
        """After a write: the tenant it wrote and the revision it returned."""
        tenant_id = getattr(request, "tenant_id", "")
        if isinstance(response, admin_pb2.Tenant):
            tenant_id, revision = response.id, response.revision
        else:
            revision = getattr(response, "revision", 0)
        if tenant_id and revision:
            with self._lock:
                self._revisions[tenant_id] = max(revision, self._revisions.get(tenant_id, 0))

    def min_revision(self, tenant_id: str, given: int | None) -> int:
        return max(given or 0, self.revision(tenant_id))

    # --- requests --------------------------------------------------------------------

    def check_request(
        self,
        tenant_id: str,
        subject: SubjectLike,
        permission: str,
        *,
        scope: str = "",
        resource_type: str = "",
        resource_id: str = "",
        min_revision: int | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> access_pb2.CheckAccessRequest:
        """The attributes and context (JSON-like mappings) are what role conditions read."""
        request = access_pb2.CheckAccessRequest(
            tenant_id=tenant_id,
            subject=as_subject(subject),
            permission=permission,
            resource=common_pb2.Resource(type=resource_type, id=resource_id, scope=scope),
            min_revision=self.min_revision(tenant_id, min_revision),
        )
        if resource_attributes is not None:
            request.resource.attributes.update(dict(resource_attributes))
        if subject_attributes is not None:
            request.subject.attributes.update(dict(subject_attributes))
        if context is not None:
            request.context.update(dict(context))
        return request

    def batch_request(
        self, checks: Iterable[Mapping[str, Any] | Sequence[Any] | access_pb2.CheckAccessRequest]
    ) -> access_pb2.CheckAccessBatchRequest:
        """Each check: a CheckAccessRequest (its min_revision raised to what this client
        wrote), a mapping of `check()`'s keyword arguments, or `(tenant_id, subject,
        permission)`."""
        requests = []
        for check in checks:
            if isinstance(check, access_pb2.CheckAccessRequest):
                request = access_pb2.CheckAccessRequest()
                request.CopyFrom(check)
                request.min_revision = self.min_revision(request.tenant_id, request.min_revision)
            elif isinstance(check, Mapping):
                request = self.check_request(**check)
            else:
                request = self.check_request(*check)
            requests.append(request)
        return access_pb2.CheckAccessBatchRequest(checks=requests)

    def config_request(self, tenant_id: str, min_revision: int | None) -> config_pb2.GetTenantConfigRequest:
        return config_pb2.GetTenantConfigRequest(
            tenant_id=tenant_id, min_revision=self.min_revision(tenant_id, min_revision)
        )

    def permissions_request(
        self, tenant_id: str, subject: SubjectLike, scope: str | None, permissions: Iterable[str],
        min_revision: int | None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.ListSubjectPermissionsRequest:
        """The attributes and context are what role conditions read, as in `check_request`."""
        request = lookup_pb2.ListSubjectPermissionsRequest(
            tenant_id=tenant_id, subject=as_subject(subject), permissions=list(permissions),
            min_revision=self.min_revision(tenant_id, min_revision),
        )
        if scope is not None:
            request.scope = scope
        if resource_attributes is not None:
            request.resource_attributes.update(dict(resource_attributes))
        if subject_attributes is not None:
            request.subject.attributes.update(dict(subject_attributes))
        if context is not None:
            request.context.update(dict(context))
        return request

    def lookup_request(
        self, tenant_id: str, permission: str, scope: str, page_size: int, min_revision: int | None,
        resource_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.LookupSubjectsRequest:
        """The resource attributes and context apply to every candidate."""
        request = lookup_pb2.LookupSubjectsRequest(
            tenant_id=tenant_id, permission=permission, scope=scope, page_size=page_size,
            min_revision=self.min_revision(tenant_id, min_revision),
        )
        if resource_attributes is not None:
            request.resource_attributes.update(dict(resource_attributes))
        if context is not None:
            request.context.update(dict(context))
        return request


class WatchProgress:
    """Where one `watch_config` stands across the streams it opens: the newest revision it
    yielded and how many reconnects in a row have failed. It decides which messages are
    news and whether (and after how long) an ended stream is opened again; the client
    opens, sleeps and yields.

    A stream is resumed (`resume=True`) after an end the unary calls would retry
    (`CallPolicy.retryable`: UNAVAILABLE, which covers a sidecar restart or rollout, a lost
    connection and the server's `GATEHOUSE_STALE`) and after CANCELLED that the caller did
    not cause (a connection reset mid-stream; the caller's own `close()` ends the watch).
    DEADLINE_EXCEEDED (a watch has no deadline) and INTERNAL are not retried by the policy,
    so they end the watch, as does every other code (INVALID_ARGUMENT, NOT_FOUND,
    PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, ...). The wait before a
    reconnect is `CallPolicy.backoff(n)` for the n-th failed one in a row (0 first). A
    stream that brought news (a revision not yielded yet) or stayed open MAX_BACKOFF
    seconds or more starts the count over; one that only repeated the config already
    yielded and ended at once did not work (a server ending every stream after its first
    message would otherwise be reopened every ~50 ms for ever, and `retries` would never
    run out). `retries`: reconnects in a row that may fail before the last error is
    raised (None: no limit).
    """

    def __init__(self, policy: CallPolicy, *, resume: bool, retries: int | None) -> None:
        if retries is not None and retries < 0:
            raise ValueError("retries must be 0 or more, or None (no limit)")
        self._policy = policy
        self._resume = resume
        self._retries = retries
        self.revision = 0  # the newest revision yielded
        self.failures = 0  # streams ended in a row without news, each soon after it opened
        self._opened = time.monotonic()

    def opened(self) -> None:
        """A stream is being opened (its lifetime counts from now)."""
        self._opened = time.monotonic()

    def received(self, config: config_pb2.TenantConfig) -> bool:
        """A message arrived. True when it is news, a revision above every one yielded
        (the connection works: the backoff starts over); a new stream's first message,
        the config as it is now, is often the one already yielded, which proves nothing."""
        if config.revision <= self.revision:
            return False
        self.revision = config.revision
        self.failures = 0
        return True

    def resume_after(self, error: GatehouseError, closed: bool) -> float | None:
        """Seconds to wait before opening the stream again after `error` ended it, or None
        when the watch ends with `error` (not resumable, resuming off, the client `closed`,
        or `retries` reconnects in a row failed already)."""
        resumable = self._policy.retryable(error.code) or error.code == grpc.StatusCode.CANCELLED
        if not (self._resume and resumable) or closed:
            return None
        if time.monotonic() - self._opened >= MAX_BACKOFF:
            self.failures = 0  # it worked for a while: a new outage
        if self._retries is not None and self.failures >= self._retries:
            return None
        wait = self._policy.backoff(self.failures)
        self.failures += 1
        return wait


PAGE_TOKEN_EXPIRED = "GATEHOUSE_PAGE_TOKEN_EXPIRED"
LISTING_RESTARTS = 3  # a listing whose tenant moves on mid-way starts again at most this often


class Listing:
    """Every page of one LookupSubjects listing joined, at one revision: while `request` is
    not None, send it and `add` the page. A page token the tenant has moved past
    (`GATEHOUSE_PAGE_TOKEN_EXPIRED`) starts the listing again (`restart`), at most
    LISTING_RESTARTS times; any other error is the caller's."""

    def __init__(self, first: lookup_pb2.LookupSubjectsRequest) -> None:
        self._first = first
        self.request: lookup_pb2.LookupSubjectsRequest | None = first
        self.answer = lookup_pb2.LookupSubjectsResponse()
        self.restarts = 0

    def add(self, page: lookup_pb2.LookupSubjectsResponse) -> None:
        subjects = [*self.answer.subjects, *page.subjects]
        conditional = [*self.answer.conditional_subjects, *page.conditional_subjects]
        self.answer.CopyFrom(page)
        del self.answer.subjects[:]
        self.answer.subjects.extend(subjects)
        del self.answer.conditional_subjects[:]
        self.answer.conditional_subjects.extend(conditional)
        self.answer.next_page_token = ""
        if not page.next_page_token:
            self.request = None
            return
        self.request = lookup_pb2.LookupSubjectsRequest()
        self.request.CopyFrom(self._first)
        self.request.page_token = page.next_page_token

    def restart(self, error: GatehouseError) -> None:
        if error.reason != PAGE_TOKEN_EXPIRED or self.restarts >= LISTING_RESTARTS:
            raise error
        self.restarts += 1
        self.request = self._first
        self.answer = lookup_pb2.LookupSubjectsResponse()


def admin_request(method: AdminMethod, request: Message | None, fields: dict[str, Any]) -> Message:
    """The request for `method`: `request` as given, or built from `fields` (a `subject`
    may be `"user:alice"` or `("user", "alice")`; Struct fields take dicts, Timestamp
    fields datetimes, message fields dicts, as protobuf's constructors do)."""
    if request is not None:
        if fields:
            raise TypeError(f"{snake_case(method.name)}: give a request message or fields, not both")
        if not isinstance(request, method.request):
            raise TypeError(f"{snake_case(method.name)}: expected {method.request.__name__}, got {type(request).__name__}")
        return request
    if "subject" in fields and fields["subject"] is not None:
        fields = {**fields, "subject": as_subject(fields["subject"])}
    return method.request(**fields)
