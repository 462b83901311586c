"""LookupService: CheckAccess turned around, from the same compiled entries.

    ListSubjectPermissions  → DecisionSession.entries (the tenant + subject entries a check
                              reads) → engine.decide per permission, engine.covering_grants
    LookupSubjects          → PolicyCache.tenant (min_revision) → PolicyCache.roster (the
                              whole tenant at one revision) → TenantRoster.listing → a page
    ListTenantsForSubject   → Callers (operator, or the subject's own key) → the store, a
                              page at a time (keyset on the tenant slug, read live)

Every answer names the tenant revision it was computed at and equals what CheckAccess
answers at that revision (tests/server/test_lookup.py checks it candidate by candidate).

Paging (LookupSubjects): a listing is decided once per (roster, permission, scope,
attributes and context) and kept on the roster while every answer in it stays exact
(engine/lookup.py: not past a grant's expiry, not at all when a condition read the
time), so later pages cost a bisect and a slice, not a Postgres read. A page token pins
the revision of its first page; when the tenant has moved past it the call fails
FAILED_PRECONDITION `GATEHOUSE_PAGE_TOKEN_EXPIRED` (start again), never a page from
another revision.

Conditions: both lookups take the attributes and context CheckAccess takes, checked by
the same rules (server/access.py `facts_violations`). ListSubjectPermissions decides each
permission as CheckAccess would with them; LookupSubjects applies the resource
attributes and context to every candidate and lists the ones CheckAccess would answer
CONDITIONAL apart, in `conditional_subjects`, with what is missing, never as allowed.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from time import time

import grpc

from gatehouse.engine.conditions import ConditionInput
from gatehouse.engine.decision import decide
from gatehouse.engine.lookup import Listing, LookupFacts, TenantRoster, covering_grants, tenant_denial
from gatehouse.engine.validate import (
    Violations,
    require_page_size,
    require_permission,
    require_revision,
    require_scope,
    require_tenant_id,
)
from gatehouse.errors import InvalidArgument, PageTokenExpired, RevisionNotReached
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.server import convert
from gatehouse.server.access import facts_violations, given, plain_if_set
from gatehouse.server.callers import CHECK, LOOKUP, Callers, Credentials
from gatehouse.server.decisions import DecisionService
from gatehouse.server.errors import grpc_errors
from gatehouse.server.interceptors import Chain
from gatehouse.server.wire import register_service
from gatehouse.store.api import StoreReader
from gatehouse.store.pages import decode_token, encode_token
from gatehouse_client.v1 import access_pb2, common_pb2, lookup_pb2

SERVICE = lookup_pb2.DESCRIPTOR.services_by_name["LookupService"]
MAX_PERMISSIONS = 100  # per ListSubjectPermissions call
# Page sizes: 0 asks for DEFAULT_PAGE_SIZE; above MAX_PAGE_SIZE, MAX_PAGE_SIZE (as every
# list here and Google AIP-158: next_page_token says there is more).
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Members decided between two yields to the event loop while a listing is decided (a
# few ms of CPU): CheckAccess is served on the same loop.
DECIDE_CHUNK = 256


class LookupServicer:
    def __init__(self, decisions: DecisionService, cache: PolicyCache, store: StoreReader, callers: Callers) -> None:
        self._decisions = decisions
        self._cache = cache
        self._store = store
        self._callers = callers
        # One listing decided at a time: lookups are CPU on the loop CheckAccess runs on,
        # so several at once would each add a chunk between two steps of a check.
        self._deciding = asyncio.Lock()

    def add_to(self, server: grpc.aio.Server, chain: Chain) -> None:
        register_service(server, SERVICE, self, chain=chain)

    @grpc_errors
    async def ListSubjectPermissions(
        self, request: lookup_pb2.ListSubjectPermissionsRequest, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> lookup_pb2.ListSubjectPermissionsResponse:
        """The subject's unexpired grants (covering `scope` when set) and CheckAccess's
        answer for each of `permissions` there, with the request's attributes and context,
        all from one tenant entry and one subject entry. Needs, when callers are required,
        what CheckAccess needs (`gatehouse.access.check`)."""
        if self._callers.required:
            await self._callers.require_grpc(context, CHECK, lambda: (request.tenant_id,))
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        subject = v.check(convert.subject, "subject", request.subject, attributes=True)
        scope = v.check(require_scope, "scope", request.scope) if request.HasField("scope") else None
        if len(request.permissions) > MAX_PERMISSIONS:
            raise InvalidArgument("permissions", f"at most {MAX_PERMISSIONS} per call")
        permissions = [v.check(require_permission, f"permissions[{i}]", p) for i, p in enumerate(request.permissions)]
        min_revision = v.check(require_revision, "min_revision", request.min_revision)
        facts = (
            given(request.subject, "attributes", "subject.attributes")
            + given(request, "resource_attributes", "resource_attributes")
            + given(request, "context", "context")
        )
        v.found.extend(facts_violations(facts))
        v.raise_if_any()
        # What a condition reads: CheckAccess's facts for (subject, resource {scope, attributes}, context).
        question = ConditionInput(
            subject.type, subject.id, resource_scope=scope or "",
            subject_attributes=plain_if_set(request.subject, "attributes"),
            resource_attributes=plain_if_set(request, "resource_attributes"),
            context=plain_if_set(request, "context"),
        )
        tenant, grants = await self._decisions.session().entries(tenant_id, subject, min_revision)
        policy = tenant.policy if tenant is not None else None
        now = time()
        decisions = [(p, decide(policy, grants, p, scope or "", now=now, facts=lambda: question)) for p in permissions]
        revision = max(policy.revision if policy else 0, grants.revision if grants and policy else 0)
        response = lookup_pb2.ListSubjectPermissionsResponse(revision=revision)
        if policy is not None and grants is not None and grants.tenant_id == policy.tenant_id:
            response.member = grants.is_member
            if grants.is_member:
                response.grants.extend(
                    lookup_pb2.EffectiveGrant(
                        role=g.role, scope=g.scope, permissions=g.permissions.patterns,
                        condition=g.condition.source if g.condition is not None else "",
                        expires_at=convert.timestamp(g.expires_at),
                    )
                    for g in covering_grants(grants, scope, now)
                )
            if grants.key is not None:
                response.member = grants.is_member and grants.key.usable(now)
                response.limited_to.extend(grants.key.limit.patterns)
        for permission, d in decisions:
            response.decisions.append(lookup_pb2.PermissionDecision(
                permission=permission,
                decision=convert.check_response(d),
            ))
        return response

    @grpc_errors
    async def LookupSubjects(
        self, request: lookup_pb2.LookupSubjectsRequest, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> lookup_pb2.LookupSubjectsResponse:
        """The subjects CheckAccess allows `permission` at `scope` with the request's
        resource attributes and context, and apart (`conditional_subjects`) those it
        answers CONDITIONAL (`conditional`),
        a page at a time, every page at the revision of the first. Needs, when callers
        are required, `gatehouse.access.lookup` on the tenant."""
        if self._callers.required:
            await self._callers.require_grpc(context, LOOKUP, lambda: (request.tenant_id,))
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        permission = v.check(require_permission, "permission", request.permission)
        scope = v.check(require_scope, "scope", request.scope)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        min_revision = v.check(require_revision, "min_revision", request.min_revision)
        v.found.extend(facts_violations(
            given(request, "resource_attributes", "resource_attributes") + given(request, "context", "context")
        ))
        v.raise_if_any()
        facts = LookupFacts(plain_if_set(request, "resource_attributes"), plain_if_set(request, "context"))
        query = _query_digest(tenant_id, permission, scope, facts.key)
        token = decode_token(request.page_token, (int, str, str, str)) if request.page_token else None
        pinned = 0
        after: tuple[str, str] | None = None
        if token is not None:
            pinned, after, digest = token[0], (token[1], token[2]), token[3]
            if digest != query or pinned < 1:
                raise InvalidArgument("page_token", "is not a page token from this listing")
        need = max(min_revision, pinned)
        try:
            tenant = await self._cache.tenant(tenant_id, need)
        except RevisionNotReached as error:
            if pinned and pinned > min_revision:
                raise PageTokenExpired(tenant_id, pinned, error.current) from None
            raise
        roster = await self._cache.roster(tenant_id, need) if tenant is not None else None
        if roster is None:
            return lookup_pb2.LookupSubjectsResponse(denied_for_all=access_pb2.DECISION_REASON_TENANT_NOT_FOUND)
        if pinned and roster.revision != pinned:
            raise PageTokenExpired(tenant_id, pinned, roster.revision)
        denial = tenant_denial(roster.policy, permission)
        if denial is not None:
            return lookup_pb2.LookupSubjectsResponse(
                revision=roster.revision,
                denied_for_all=denial.reason,  # type: ignore[arg-type]  # engine Reason values are the proto enum's numbers
                feature=denial.feature,
            )
        listing = await self._listing(roster, permission, scope, facts)
        start = 0 if after is None else bisect.bisect_right(listing.keys, after)
        page = listing.listed[start:start + page_size]
        response = lookup_pb2.LookupSubjectsResponse(revision=roster.revision)
        for listed in page:
            # Apart from the allowed ones (see LookupSubjectsResponse.conditional_subjects).
            (response.conditional_subjects if listed.conditional else response.subjects).append(lookup_pb2.LookedUpSubject(
                subject=common_pb2.Subject(type=listed.subject_type, id=listed.subject_id),
                granted_by_role=listed.role,
                granted_at_scope=listed.scope,
                conditional=listed.conditional,
                missing_attributes=listed.missing,
                conditions=listed.conditions,
            ))
        if start + page_size < len(listing.listed):
            last = page[-1]
            response.next_page_token = encode_token([roster.revision, last.subject_type, last.subject_id, query])
        return response

    async def _listing(self, roster: TenantRoster, permission: str, scope: str, facts: LookupFacts) -> Listing:
        """The roster's listing of (permission, scope, facts): the one it keeps, else
        decided DECIDE_CHUNK members at a time, yielding to the loop between chunks, one
        listing at a time (a 10,000-member listing is 30-200 ms of CPU: decided in one
        go, eight callers asking new listings took CheckAccess from 0.6 to 80 ms p50).
        Decided at one instant; if an answer in it changed by itself (a grant's or key's
        expiry) before the last chunk was done, decided again, so what is served is exact
        when served, as an unchunked listing is."""
        found = roster.kept(permission, scope, time(), facts)
        if found is not None:
            return found
        async with self._deciding:
            while True:
                now = time()
                found = roster.kept(permission, scope, now, facts)  # decided while this call waited
                if found is not None:
                    return found
                deciding = roster.deciding(permission, scope, now, facts)
                while (decided := deciding.step(DECIDE_CHUNK)) is None:
                    await asyncio.sleep(0)
                # valid_until <= now: a condition read the time, decided for `now` alone
                # (never kept), as CheckAccess decides it for the instant it is asked.
                if not now < decided.valid_until <= time():
                    return roster.keep(permission, scope, facts, decided, now)

    @grpc_errors
    async def ListTenantsForSubject(
        self, request: lookup_pb2.ListTenantsForSubjectRequest, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> lookup_pb2.ListTenantsForSubjectResponse:
        """A page of the tenants the subject is a member of, by slug: `page_size` of them
        (0 = DEFAULT_PAGE_SIZE; negative or above MAX_PAGE_SIZE: INVALID_ARGUMENT), after
        the slug `page_token` holds, and `next_page_token` when more follow ("" = the last
        page). Read live from Postgres, not pinned to a revision (there is no one revision
        across tenants): a keyset cursor on the slug, so a membership changed between
        pages is listed as it falls after the cursor, and never twice. Always needs a
        caller, whatever GATEHOUSE_CALLER_CREDENTIALS says (the answer spans tenants): an
        operator key (or an mTLS identity of every tenant) holding
        `gatehouse.access.lookup`, or the subject's own credential
        (`Callers.require_subject_or_every_tenant`)."""
        caller = await self._callers.identify(Credentials.from_grpc(context), always=True)
        assert caller is not None  # `always`: identify names a caller or raises
        v = Violations()
        subject = v.check(convert.subject, "subject", request.subject)
        page_size = v.check(require_page_size, "page_size", request.page_size)
        # Checked here too (the store decodes it), so one error names every bad field.
        v.check(lambda field, token: decode_token(token, (str,)), "page_token", request.page_token)
        v.raise_if_any()
        self._callers.require_subject_or_every_tenant(caller, LOOKUP, subject)
        page = await self._store.list_subject_tenants(subject, page_size=page_size, page_token=request.page_token)
        return lookup_pb2.ListTenantsForSubjectResponse(next_page_token=page.next_page_token, memberships=[
            lookup_pb2.SubjectMembership(
                tenant_id=m.tenant_id,
                tenant_slug=m.tenant_slug,
                tenant_status=convert.STATUS_TO_PROTO[m.tenant_status],
                revision=m.revision,
            )
            for m in page.items
        ])


def _query_digest(tenant_id: str, permission: str, scope: str, facts: str) -> str:
    """What a page token is for, so a token is never used for another listing (another
    question, or the same asked with other attributes or context)."""
    return hashlib.sha256(f"{tenant_id}\0{permission}\0{scope}\0{facts}".encode()).hexdigest()[:16]
