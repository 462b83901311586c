"""`Client` (blocking) and `AsyncClient` (asyncio): one Gatehouse sidecar's services.

    from gatehouse_client import Client
    with Client("127.0.0.1:50051") as gh:                        # key: $GATEHOUSE_KEY
        tenant = gh.admin.create_tenant(slug="acme", name="Acme")
        gh.admin.activate_tenant(tenant_id=tenant.id, reason="launch")
        gh.admin.create_role(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"])
        gh.admin.add_member(tenant_id=tenant.id, subject="user:alice")
        gh.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="accountant", scope="emea")
        gh.check(tenant.id, "user:alice", "invoice.read", scope="emea/de")  # Decision(allowed=True, ...)

Targets: `host:port` or `unix:/path/to.sock`. TLS when `ca_file` (the server's CA) or
`tls=True` (the system's roots) is given; mutual TLS with `cert_file` and `key_file`.
Every call has a deadline (`timeout` seconds, per attempt) and is retried on UNAVAILABLE
only (`retries` times, exponential backoff with full jitter). A failed call raises
`GatehouseError`. `watch_config` has no deadline and resumes by default: a stream ended
UNAVAILABLE (or CANCELLED not by the client) is opened again after the same backoff, and
no revision is yielded twice. Read-your-writes: every check and config read of a tenant carries, as
`min_revision`, the highest revision this client's writes to that tenant returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, Iterable, Iterator, Mapping, TypeVar, overload

import grpc
from google.protobuf.message import Message

from gatehouse_client.calls import (
    ADMIN_METHODS,
    as_subject,
    is_tenant_id,
    target_of,
    tenant_on_page,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    CallPolicy,
    Decision,
    Listing,
    SubjectLike,
    WatchProgress,
    admin_request,
)
from gatehouse_client.errors import GatehouseError
from gatehouse_client.v1 import (
    access_pb2,
    access_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    config_pb2,
    config_pb2_grpc,
    lookup_pb2,
    lookup_pb2_grpc,
)

log = logging.getLogger("gatehouse_client")
R = TypeVar("R", bound=Message)
Call = Callable[..., Any]


def credentials(
    *, tls: bool = False, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files, or None (plaintext) when none is asked for.
    `cert_file` and `key_file` (the client's certificate for mutual TLS) go together."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("cert_file and key_file go together (mutual TLS)")
    if not (tls or ca_file or cert_file):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file), private_key=_read(key_file), certificate_chain=_read(cert_file)
    )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class _Rpc(Generic[R]):
    """One AdminService helper (declared below, once for both clients): `admin.<name>(
    request=None, *, idempotency_key=None, timeout=None, **fields) -> response`."""

    def __init__(self, response: type[R]) -> None:
        self.response = response
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, admin: None, owner: type) -> _Rpc[R]: ...
    @overload
    def __get__(self, admin: Admin, owner: type) -> Callable[..., R]: ...
    @overload
    def __get__(self, admin: AsyncAdmin, owner: type) -> Callable[..., Awaitable[R]]: ...
    def __get__(self, admin: Any, owner: type) -> Any:
        if admin is None:
            return self
        name = self.name

        def call(request: Message | None = None, /, **fields: Any) -> Any:
            return admin._call(name, request, fields)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"AdminService/{ADMIN_METHODS[name].name}: returns {self.response.__name__}."
        return call


class _AdminMethods:
    """Every AdminService method, snake_cased (tests/client check that none is missing).

    Each takes the request message, or its fields as keywords (`subject` may be
    `"user:alice"`), and `idempotency_key=` (mutations: a fresh one per call when not
    given, the same for its retries) and `timeout=` (seconds per attempt)."""

    create_tenant = _Rpc(admin_pb2.Tenant)
    get_tenant = _Rpc(admin_pb2.Tenant)
    list_tenants = _Rpc(admin_pb2.ListTenantsResponse)
    update_tenant = _Rpc(admin_pb2.Tenant)
    patch_tenant_config = _Rpc(admin_pb2.Tenant)
    activate_tenant = _Rpc(admin_pb2.Tenant)
    suspend_tenant = _Rpc(admin_pb2.Tenant)
    resume_tenant = _Rpc(admin_pb2.Tenant)
    archive_tenant = _Rpc(admin_pb2.Tenant)
    restore_tenant = _Rpc(admin_pb2.Tenant)
    delete_tenant = _Rpc(admin_pb2.Tenant)
    upsert_plan = _Rpc(admin_pb2.UpsertPlanResponse)
    list_plans = _Rpc(admin_pb2.ListPlansResponse)
    create_role = _Rpc(admin_pb2.RoleResponse)
    update_role = _Rpc(admin_pb2.RoleResponse)
    delete_role = _Rpc(admin_pb2.MutationResponse)
    list_roles = _Rpc(admin_pb2.ListRolesResponse)
    add_member = _Rpc(admin_pb2.MemberResponse)
    remove_member = _Rpc(admin_pb2.MutationResponse)
    list_members = _Rpc(admin_pb2.ListMembersResponse)
    assign_role = _Rpc(admin_pb2.RoleAssignmentResponse)
    revoke_role = _Rpc(admin_pb2.MutationResponse)
    list_role_assignments = _Rpc(admin_pb2.ListRoleAssignmentsResponse)
    move_scope = _Rpc(admin_pb2.MoveScopeResponse)
    create_api_key = _Rpc(admin_pb2.CreateApiKeyResponse)
    revoke_api_key = _Rpc(admin_pb2.MutationResponse)
    list_api_keys = _Rpc(admin_pb2.ListApiKeysResponse)
    list_audit_events = _Rpc(admin_pb2.ListAuditEventsResponse)


def _log_reconnect(target: str, tenant_id: str, error: GatehouseError, attempt: int, wait: float) -> None:
    log.info("gatehouse: %s: watch of tenant %s ended (%s); reconnect %d in %.2f s", target, tenant_id, error,
             attempt, wait)


# --- blocking ---------------------------------------------------------------------------


class Admin(_AdminMethods):
    """`client.admin`: the AdminService helpers of a blocking `Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = admin_pb2_grpc.AdminServiceStub(client.channel)  # type: ignore[no-untyped-call]  # generated, untyped

    def _call(self, name: str, request: Message | None, fields: dict[str, Any]) -> Any:
        method = ADMIN_METHODS[name]
        idempotency_key = fields.pop("idempotency_key", None)
        timeout = fields.pop("timeout", None)
        message = admin_request(method, request, fields)
        policy = self._client.policy
        response = self._client._unary(
            getattr(self._stub, method.name), message, policy.metadata(method.mutation, idempotency_key), timeout
        )
        if method.mutation:
            policy.remember(message, response)
        return response

    def resolve_tenant(self, slug_or_id: str) -> admin_pb2.Tenant:
        """The tenant with this id (canonical uuid) or slug; NOT_FOUND GatehouseError when none."""
        if is_tenant_id(slug_or_id):
            return self.get_tenant(tenant_id=slug_or_id)
        page = admin_pb2.ListTenantsResponse()
        while True:
            page = self.list_tenants(page_size=500, page_token=page.next_page_token)
            found = tenant_on_page(page, slug_or_id)
            if found is not None:
                return found


class Client:
    """A blocking client of one Gatehouse sidecar (see the module docstring).

    `target`: `host:port` or `unix:/path` (default `$GATEHOUSE_SERVER`, else
    127.0.0.1:50051); `key`: API key (default `$GATEHOUSE_KEY`);
    `tls`/`ca_file`/`cert_file`/`key_file`: TLS and mutual TLS; `timeout`: seconds per
    attempt; `retries`: attempts after the first, on UNAVAILABLE only (a watch has its
    own, see `watch_config`). Safe to share between threads; close it (or use `with`)
    when done.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        key: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.target = target = target_of(target)
        self.policy = CallPolicy(key, timeout, retries)
        creds = credentials(tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        options = list(options)
        self.channel = (
            grpc.insecure_channel(target, options) if creds is None else grpc.secure_channel(target, creds, options)
        )
        self._access = access_pb2_grpc.AccessServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._config = config_pb2_grpc.ConfigServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._lookup = lookup_pb2_grpc.LookupServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.admin = Admin(self)
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True  # a watch cancelled by this ends; it is not resumed
        self.channel.close()

    def check(
        self,
        tenant_id: str,
        subject: SubjectLike,
        permission: str,
        *,
        scope: str = "",
        resource_type: str = "",
        resource_id: str = "",
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """May `subject` (`"user:alice"`, `("user", "alice")` or a Subject) do `permission`
        at `scope` (an org-unit path, `""` = the tenant root) in the tenant? The attributes
        and context (JSON-like mappings) are what role conditions read."""
        request = self.policy.check_request(
            tenant_id, subject, permission, scope=scope, resource_type=resource_type,
            resource_id=resource_id, min_revision=min_revision, resource_attributes=resource_attributes,
            subject_attributes=subject_attributes, context=context,
        )
        return Decision.of(self._unary(self._access.CheckAccess, request, self.policy.auth, timeout))

    def check_many(self, checks: Iterable[Any], *, timeout: float | None = None) -> list[Decision]:
        """Many checks in one call, answered in order (see `CallPolicy.batch_request` for
        what each check may be)."""
        answer = self._unary(self._access.CheckAccessBatch, self.policy.batch_request(checks), self.policy.auth, timeout)
        return [Decision.of(result) for result in answer.results]

    def config(
        self, tenant_id: str, *, min_revision: int | None = None, timeout: float | None = None
    ) -> config_pb2.TenantConfig:
        """The tenant's effective configuration (plan defaults merged with its overrides)."""
        request = self.policy.config_request(tenant_id, min_revision)
        return self._unary(self._config.GetTenantConfig, request, self.policy.auth, timeout)  # type: ignore[no-any-return]

    def permissions(
        self,
        tenant_id: str,
        subject: SubjectLike,
        *,
        scope: str | None = None,
        permissions: Iterable[str] = (),
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.ListSubjectPermissionsResponse:
        """What `subject` holds in the tenant (the unexpired grants covering `scope`, or all
        of them, each with its condition and expiry) and, for each of `permissions`, what
        CheckAccess answers at `scope` (or the root) with these attributes and context."""
        request = self.policy.permissions_request(
            tenant_id, subject, scope, permissions, min_revision, resource_attributes, subject_attributes, context
        )
        return self._unary(self._lookup.ListSubjectPermissions, request, self.policy.auth, timeout)  # type: ignore[no-any-return]

    def lookup_subjects(
        self,
        tenant_id: str,
        permission: str,
        *,
        scope: str = "",
        page_size: int = 0,
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.LookupSubjectsResponse:
        """Every subject CheckAccess allows `permission` at `scope` with these resource
        attributes and context (`subjects`), and apart (`conditional_subjects`) every one
        it answers CONDITIONAL (with `missing_attributes` and `conditions`: not allowed as
        asked), every page
        fetched and joined, all at one revision (the listing starts again if the tenant
        moves on between pages)."""
        listing = Listing(self.policy.lookup_request(
            tenant_id, permission, scope, page_size, min_revision, resource_attributes, context
        ))
        while listing.request is not None:
            try:
                listing.add(self._unary(self._lookup.LookupSubjects, listing.request, self.policy.auth, timeout))
            except GatehouseError as error:
                listing.restart(error)
        return listing.answer

    def tenants_for_subject(
        self, subject: SubjectLike, *, page_size: int = 0, timeout: float | None = None
    ) -> list[lookup_pb2.SubjectMembership]:
        """Every tenant `subject` is a member of, by slug (an operator key, or the
        subject's own key): every page fetched, `page_size` per call (0 = the server's
        100, at most 1,000), and joined; `timeout` is per call. Pages are read live, not
        at one revision: a membership changed while listing shows as its slug falls
        after or before the pages already read, and no tenant twice."""
        found: list[lookup_pb2.SubjectMembership] = []
        request = lookup_pb2.ListTenantsForSubjectRequest(subject=as_subject(subject), page_size=page_size)
        while True:
            page = self._unary(self._lookup.ListTenantsForSubject, request, self.policy.auth, timeout)
            found.extend(page.memberships)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    def watch_config(
        self, tenant_id: str, *, resume: bool = True, retries: int | None = None
    ) -> Iterator[config_pb2.TenantConfig]:
        """The tenant's configuration now, then after every change, until the caller stops
        iterating: TenantConfig messages of strictly increasing `revision`, none twice.

        No deadline. A stream that ends UNAVAILABLE (sidecar restart, rollout, connection
        lost, the server's `GATEHOUSE_STALE`) or CANCELLED not by this client is opened
        again after the client's backoff (full jitter, up to 2 s; a stream that brings a
        new revision or stays open 2 s starts it over), and what the new stream sends
        first, the config as it is now, is yielded only when newer than the last one
        yielded (see `WatchProgress`). Any other
        code raises its GatehouseError at once (NOT_FOUND for an unknown tenant,
        PERMISSION_DENIED, ...). `resume=False`: the first error of any code raises.
        `retries`: reconnects in a row that may fail before the last error is raised
        (default None: never give up). Each reconnect is logged at INFO by the
        `gatehouse_client` logger."""
        progress = WatchProgress(self.policy, resume=resume, retries=retries)
        request = config_pb2.WatchTenantConfigRequest(tenant_id=tenant_id)
        while True:
            progress.opened()
            stream = self._config.WatchTenantConfig(request, metadata=self.policy.auth)
            try:
                for config in stream:
                    if progress.received(config):
                        yield config
                return  # the server ended the stream OK (it does not, short of a bug)
            except grpc.RpcError as rpc_error:
                error = GatehouseError.from_rpc_error(rpc_error)
            finally:
                stream.cancel()
            wait = progress.resume_after(error, self._closed)
            if wait is None:
                raise error
            _log_reconnect(self.target, tenant_id, error, progress.failures, wait)
            time.sleep(wait)

    def _unary(self, rpc: Call, request: Message, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> Any:
        policy = self.policy
        retry = 0
        while True:
            try:
                return rpc(request, timeout=timeout or policy.timeout, metadata=metadata)
            except grpc.RpcError as error:
                if not policy.retryable(error.code()) or retry >= policy.retries:
                    raise GatehouseError.from_rpc_error(error) from None
                wait = policy.backoff(retry)
                log.info("gatehouse: %s: %s; retry %d of %d in %.2f s", self.target, error.code(), retry + 1,
                         policy.retries, wait)
            time.sleep(wait)
            retry += 1


# --- asyncio ----------------------------------------------------------------------------


class AsyncAdmin(_AdminMethods):
    """`client.admin`: the AdminService helpers of an `AsyncClient` (each a coroutine)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = admin_pb2_grpc.AdminServiceStub(client.channel)  # type: ignore[no-untyped-call]  # generated, untyped

    async def _call(self, name: str, request: Message | None, fields: dict[str, Any]) -> Any:
        method = ADMIN_METHODS[name]
        idempotency_key = fields.pop("idempotency_key", None)
        timeout = fields.pop("timeout", None)
        message = admin_request(method, request, fields)
        policy = self._client.policy
        response = await self._client._unary(
            getattr(self._stub, method.name), message, policy.metadata(method.mutation, idempotency_key), timeout
        )
        if method.mutation:
            policy.remember(message, response)
        return response

    async def resolve_tenant(self, slug_or_id: str) -> admin_pb2.Tenant:
        """The tenant with this id (canonical uuid) or slug; NOT_FOUND GatehouseError when none."""
        if is_tenant_id(slug_or_id):
            return await self.get_tenant(tenant_id=slug_or_id)
        page = admin_pb2.ListTenantsResponse()
        while True:
            page = await self.list_tenants(page_size=500, page_token=page.next_page_token)
            found = tenant_on_page(page, slug_or_id)
            if found is not None:
                return found


class AsyncClient:
    """`Client`'s asyncio twin: the same arguments, every call a coroutine. Make it inside
    the event loop that uses it; `await client.close()` (or `async with`) when done."""

    def __init__(
        self,
        target: str | None = None,
        *,
        key: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.target = target = target_of(target)
        self.policy = CallPolicy(key, timeout, retries)
        creds = credentials(tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        options = list(options)
        self.channel = (
            grpc.aio.insecure_channel(target, options)
            if creds is None
            else grpc.aio.secure_channel(target, creds, options)
        )
        self._access = access_pb2_grpc.AccessServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._config = config_pb2_grpc.ConfigServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self._lookup = lookup_pb2_grpc.LookupServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.admin = AsyncAdmin(self)
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True  # a watch cancelled by this ends; it is not resumed
        await self.channel.close()

    async def check(
        self,
        tenant_id: str,
        subject: SubjectLike,
        permission: str,
        *,
        scope: str = "",
        resource_type: str = "",
        resource_id: str = "",
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """See `Client.check`."""
        request = self.policy.check_request(
            tenant_id, subject, permission, scope=scope, resource_type=resource_type,
            resource_id=resource_id, min_revision=min_revision, resource_attributes=resource_attributes,
            subject_attributes=subject_attributes, context=context,
        )
        return Decision.of(await self._unary(self._access.CheckAccess, request, self.policy.auth, timeout))

    async def check_many(self, checks: Iterable[Any], *, timeout: float | None = None) -> list[Decision]:
        """See `Client.check_many`."""
        request = self.policy.batch_request(checks)
        answer = await self._unary(self._access.CheckAccessBatch, request, self.policy.auth, timeout)
        return [Decision.of(result) for result in answer.results]

    async def config(
        self, tenant_id: str, *, min_revision: int | None = None, timeout: float | None = None
    ) -> config_pb2.TenantConfig:
        """See `Client.config`."""
        request = self.policy.config_request(tenant_id, min_revision)
        return await self._unary(self._config.GetTenantConfig, request, self.policy.auth, timeout)  # type: ignore[no-any-return]

    async def permissions(
        self,
        tenant_id: str,
        subject: SubjectLike,
        *,
        scope: str | None = None,
        permissions: Iterable[str] = (),
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        subject_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.ListSubjectPermissionsResponse:
        """See `Client.permissions`."""
        request = self.policy.permissions_request(
            tenant_id, subject, scope, permissions, min_revision, resource_attributes, subject_attributes, context
        )
        return await self._unary(self._lookup.ListSubjectPermissions, request, self.policy.auth, timeout)  # type: ignore[no-any-return]

    async def lookup_subjects(
        self,
        tenant_id: str,
        permission: str,
        *,
        scope: str = "",
        page_size: int = 0,
        min_revision: int | None = None,
        timeout: float | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> lookup_pb2.LookupSubjectsResponse:
        """See `Client.lookup_subjects`."""
        listing = Listing(self.policy.lookup_request(
            tenant_id, permission, scope, page_size, min_revision, resource_attributes, context
        ))
        while listing.request is not None:
            try:
                listing.add(await self._unary(self._lookup.LookupSubjects, listing.request, self.policy.auth, timeout))
            except GatehouseError as error:
                listing.restart(error)
        return listing.answer

    async def tenants_for_subject(
        self, subject: SubjectLike, *, page_size: int = 0, timeout: float | None = None
    ) -> list[lookup_pb2.SubjectMembership]:
        """See `Client.tenants_for_subject`."""
        found: list[lookup_pb2.SubjectMembership] = []
        request = lookup_pb2.ListTenantsForSubjectRequest(subject=as_subject(subject), page_size=page_size)
        while True:
            page = await self._unary(self._lookup.ListTenantsForSubject, request, self.policy.auth, timeout)
            found.extend(page.memberships)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    async def watch_config(
        self, tenant_id: str, *, resume: bool = True, retries: int | None = None
    ) -> AsyncIterator[config_pb2.TenantConfig]:
        """See `Client.watch_config` (the same, `async for`)."""
        progress = WatchProgress(self.policy, resume=resume, retries=retries)
        request = config_pb2.WatchTenantConfigRequest(tenant_id=tenant_id)
        while True:
            progress.opened()
            stream = self._config.WatchTenantConfig(request, metadata=self.policy.auth)
            try:
                async for config in stream:
                    if progress.received(config):
                        yield config
                return  # the server ended the stream OK (it does not, short of a bug)
            except grpc.aio.AioRpcError as rpc_error:
                error = GatehouseError.from_rpc_error(rpc_error)
            finally:
                stream.cancel()
            wait = progress.resume_after(error, self._closed)
            if wait is None:
                raise error
            _log_reconnect(self.target, tenant_id, error, progress.failures, wait)
            await asyncio.sleep(wait)

    async def _unary(
        self, rpc: Call, request: Message, metadata: tuple[tuple[str, str], ...], timeout: float | None
    ) -> Any:
        policy = self.policy
        retry = 0
        while True:
            try:
                return await rpc(request, timeout=timeout or policy.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if not policy.retryable(error.code()) or retry >= policy.retries:
                    raise GatehouseError.from_rpc_error(error) from None
                wait = policy.backoff(retry)
                log.info("gatehouse: %s: %s; retry %d of %d in %.2f s", self.target, error.code(), retry + 1,
                         policy.retries, wait)
            await asyncio.sleep(wait)
            retry += 1
