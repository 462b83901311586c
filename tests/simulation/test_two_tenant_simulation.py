"""The randomized two-tenant simulation: DESIGN.md's "0 cross-tenant answers", measured.

Two tenants with colliding vocabularies (the same subject ids, the same custom role names
with different permissions, the same scope trees) go through thousands of random admin
operations on a real sidecar, including many that must fail. After every operation the
same random checks are asked in both tenants, of the sidecar that took the write and of a
second one that shares only Postgres and Redis with it, and every answer is compared with
the pure reference model in `model.py`:

* a *disagreement* is an answer the model does not give (status code, error reason,
  returned revision, decision, reason, the revision an answer was computed at, or a
  granting role/scope that does not grant it in that tenant);
* a *cross-tenant answer* is a disagreement that the other tenant's data explains (its
  members, grants, roles, flags or status, or its revision), counted separately.

Now and then a request must be refused, and the model says how: a real tenant's id in
another spelling of its uuid (upper case, no hyphens, braces, `urn:uuid:`, …) in a check,
a batch, a config read or an admin call, and a scope with a `.` or `..` segment in a
check or an assignment (INVALID_ARGUMENT naming each bad field, nothing written); a
`min_revision` above the tenant's revision (FAILED_PRECONDITION,
GATEHOUSE_REVISION_NOT_REACHED, with the current revision). Tenant writes go now and then
through the second sidecar, so both sidecars are asked for a revision just written
through the other (read-your-writes across sidecars); a sidecar is asked without
`min_revision` only for tenants whose latest write it took itself.

Both must be zero. The seed is printed and can be replayed with GATEHOUSE_SIM_SEED; the
number of steps is GATEHOUSE_SIM_STEPS. An admin call that goes otherwise than the model
says stops the walk (from there on the two states differ); wrong checks are counted and
the walk goes on for a while. The first few failures are reported in full: the step, the
last admin operations before it, the request, the server's answer, the model's answer
and the model's state of both tenants.

Some grants expire a few seconds after they are made (AssignRole `expires_at`), and the
model decides with the clock: from its expiry on a grant grants nothing. Each answer is
compared with the model's at both ends of the call, widened by CLOCK_SKEW; when those
differ the answer was asked too near an expiry instant to tell, and is counted instead
(an admin call so near, that may go either way, is held to whichever of the two the
server gave). The sidecars do not sweep expired rows (tests/simulation/conftest.py):
a timed sweep's revision bump lands at an instant the model cannot know, so it would
have to learn revisions from the server it is judging. Instead the walk sweeps itself
now and then: it stops granting expiring grants, waits (walking on) until every one has
expired, and runs the relay's sweep on its database, which the model then predicts
exactly (one revision per subject with expired rows; every later answer at the new
revision). Just before and after, the swept grants' own questions are asked: the sweep
must change no decision.

AssignRole goes now and then with `on_existing` REPLACE, mostly at a grant held (the root
owner grant among them), and the model gives the held grant the request's terms (condition,
expiry) in one revision, or refuses it (GATEHOUSE_LAST_OWNER) when that would leave no
lasting owner; REFUSE (or the default) at a grant held is ALREADY_EXISTS. A grant's terms
are compared in every ListRoleAssignments, and a replaced expiry is watched like any
other: its question is asked as granted and again just after it.

Lookups (LookupService) are asked now and then too, of either sidecar, and held to the
same model: LookupSubjects (every page, random page sizes) must list exactly the members
the model allows (each with a grant that allows it, at the tenant's revision, a tenant-wide
denial named as the model's members are told it), and ListSubjectPermissions must decide
each permission as a check would. Both carry resource.attributes.owner now and then (a
conditionally granted subject's id, the asker's own, someone else's, or none): a subject
the model answers CONDITIONAL must be listed as `conditional` (missing the owner, pending
OWNER_CONDITION), never as allowed. A listed subject the other tenant's data explains (not
a member here, a member there) is a cross-tenant answer.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import os
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import grpc
from google.protobuf import text_format

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2, lookup_pb2

from tests.client import Client
from tests.server.status import details
from tests.simulation.conftest import Sweep
from tests.simulation.model import (
    OWNER_ATTRIBUTE,
    OWNER_CONDITION,
    VIEW_PARTS,
    Answer,
    Check,
    Outcome,
    Status,
    Tenant,
    World,
    any_matches,
    decide,
    is_canonical_tenant_id,
    is_valid_scope,
)
from tests.simulation.operations import (
    CHECK_SCOPES,
    CUSTOM_ROLES,
    DOT_SCOPES,
    EXPIRY_RATE,
    OPERATIONS,
    PERMISSIONS,
    STRANGERS,
    SUBJECTS,
    AddMember,
    AssignRole,
    CreateRole,
    CreateTenant,
    Operation,
    Sim,
    Slot,
    Transition,
    UpsertPlan,
    initial_plans,
    status_name,
    subject_key,
    subject_message,
)

# ~15 s on a quiet 2-core machine: ~1,250 admin calls, ~6,300 checks, ~360 calls to refuse
DEFAULT_STEPS = 1200
CHECK_TRIPLES_PER_STEP = 2  # each asked in both tenants
READER_WRITES = 0.25  # of tenant-scoped admin calls, sent to the reader instead of the writer
PROBE_RATE = 0.3  # of steps: one more call carrying a request the server must refuse
LOOKUP_RATE = 0.15  # of steps: a LookupSubjects listing per tenant and a ListSubjectPermissions
PROBE_KINDS = ("misspelled tenant id", "dot scope", "future min_revision")
FUTURE = (1, 1, 1, 2, 3, 10, 1 << 40)  # k in min_revision = the tenant's revision + k
UNHEARD_SPACING = 0.06  # s: a little over the server's spacing of such store reads (50 ms)
TRACE_LENGTH = 15
MAX_FAILING_STEPS = 20  # after this many steps with wrong answers, stop walking
MAX_REPORTS = 3  # failures reported in full
# s: how far the model's clock and the engine's may be apart (the same machine's clock,
# read a little before or after the server reads it); answers that change within it are
# not compared but counted.
CLOCK_SKEW = 0.1
SWEEP_RATE = 0.006  # of steps: stop granting expiring grants, and sweep once all have expired
TARGETED_EXPIRY = 0.2  # of the triples checked: an expiring grant's own question, when there is one
SWEEP_CHECKS = 8  # swept grants asked about around a sweep, at most
# With this many steps every decision reason short of KEY_REVOKED (no API keys yet) shows up.
COVERAGE_MIN_STEPS = 1000
EXPECTED_REASONS = {
    "ALLOWED",
    "CONDITIONAL",
    "NO_GRANT",
    "NOT_A_MEMBER",
    "TENANT_NOT_FOUND",
    "TENANT_SUSPENDED",
    "TENANT_INACTIVE",
    "FEATURE_DISABLED",
}


def reason_name(value: int) -> str:
    return access_pb2.DecisionReason.Name(value).removeprefix("DECISION_REASON_")  # type: ignore[arg-type]


def one_line(message: Any) -> str:
    return text_format.MessageToString(message, as_one_line=True)


def error_outcome(exc: grpc.aio.AioRpcError) -> Outcome:
    """The code and reason, with the fields an INVALID_ARGUMENT names (sorted) and the
    metadata of GATEHOUSE_REVISION_NOT_REACHED, as the model states them."""
    try:
        info, fields = details(exc)
    except AssertionError:  # no google.rpc.Status at all: itself a disagreement
        return Outcome(exc.code().name, f"<no status details: {exc.details()}>")
    facts: dict[str, object] = {}
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        facts = {"fields": tuple(sorted(fields))}
    elif info.reason == "GATEHOUSE_REVISION_NOT_REACHED":
        facts = dict(info.metadata)
    return Outcome(exc.code().name, info.reason, facts=facts)


def owner_of(request: access_pb2.CheckAccessRequest) -> str | None:
    """The check's resource.attributes.owner (a string here), None when not carried."""
    fields = request.resource.attributes.fields
    return fields["owner"].string_value if "owner" in fields else None


def model_check(request: access_pb2.CheckAccessRequest) -> Check:
    return Check(
        request.tenant_id, subject_key(request.subject), request.permission, request.resource.scope, request.min_revision,
        owner_of(request),
    )


def as_outcome(value: Any) -> Outcome:
    """An answer (the server's, or the model's answers) as an Outcome, to be compared with a
    refusal: OK with the answer's text."""
    if isinstance(value, Outcome):
        return value
    if isinstance(value, list):
        return Outcome(facts={"answers": [str(answer) for answer in value]})
    return Outcome(facts={"answer": str(value) if isinstance(value, Answer) else one_line(value)})


def canonical(tenant_id: str) -> str:
    """The uuid's own spelling of a tenant id in any spelling (or the text itself, if none)."""
    try:
        return str(uuid.UUID(tenant_id))
    except ValueError:
        return tenant_id


def copy_of(request: access_pb2.CheckAccessRequest) -> access_pb2.CheckAccessRequest:
    copy = access_pb2.CheckAccessRequest()
    copy.CopyFrom(request)
    return copy


T = TypeVar("T")


def _without_tenant(outcome: Outcome) -> tuple[str, str, dict[str, object]]:
    facts = {k: v for k, v in outcome.facts.items() if k not in ("tenant_id", "tenant_ids")}
    return outcome.code, outcome.reason, facts


@dataclass
class Tally:
    steps: int = 0
    admin_ops: int = 0
    admin_refused: int = 0
    checks: int = 0
    single_checks: int = 0
    reader_checks: int = 0
    config_checks: int = 0
    lookups: int = 0  # LookupSubjects listings (every page) compared with the model
    lookups_listing: int = 0  # of them, listings that named at least one subject
    lookups_conditional: int = 0  # subjects listed as conditional (CheckAccess: CONDITIONAL)
    permission_lookups: int = 0  # ListSubjectPermissions decisions compared with the model
    disagreements: int = 0
    cross_tenant: int = 0
    tenants_created: int = 0
    admin_via_reader: int = 0
    # Requests the server must refuse, by PROBE_KINDS (reads: checks in a single call or a
    # batch, config reads) and admin calls carrying them.
    refusal_reads: collections.Counter[str] = field(default_factory=collections.Counter)
    refusal_admin: collections.Counter[str] = field(default_factory=collections.Counter)
    # Reads with min_revision = a revision written this step through the other sidecar,
    # by the sidecar that took the write.
    read_your_writes: collections.Counter[str] = field(default_factory=collections.Counter)
    probe_calls: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    expiring_assigned: int = 0  # AssignRole calls with expires_at, made
    after_expiry: int = 0  # answers compared that an expired grant would have changed
    near_expiry: int = 0  # answers (checks, listings) too near an expiry instant: not compared
    admin_near_expiry: int = 0  # admin answers the clock decided, held to the server's side of it
    sweeps: int = 0
    swept_subjects: int = 0
    sweep_checks: int = 0  # swept grants' questions asked before and after their sweep
    watched: int = 0  # expiring grants' own questions asked as made and again just after expiry
    replaced: int = 0  # AssignRole REPLACE calls that gave a grant held (in force) new terms


class Simulation:
    def __init__(self, writer: Client, reader: Client, seed: int, unique: str) -> None:
        self.writer = writer
        self.reader = reader
        self.seed = seed
        self.rng = random.Random(seed)
        self.sim = Sim(rng=self.rng, world=World(), unique=unique, slots=[Slot("a"), Slot("b")])
        self.tally = Tally()
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_LENGTH)
        self.failures: list[str] = []  # the first few, in full
        self.failing_steps = 0
        self.diverged = False  # an admin call went otherwise than the model said
        self._last_failing_step = -1
        self.step = 0
        # tenant id → (the sidecar that took its latest write, that revision, the step)
        self.last_write: dict[str, tuple[str, int, int]] = {}
        # (sidecar, tenant id) → when it was last asked for a revision it may not have heard of
        self.unheard: dict[tuple[str, str], float] = {}
        self.window = (0.0, 0.0)  # when (unix seconds) the call being judged was sent and answered
        self.sweeper: Sweep | None = None
        self.draining = False  # no new expiring grants: sweep once every one has expired
        # (expires_at, the grant's own question) of expiring grants made, asked again once expired
        self.watching: list[tuple[float, access_pb2.CheckAccessRequest]] = []

    @property
    def world(self) -> World:
        return self.sim.world

    # --- admin operations ------------------------------------------------------------------

    async def admin(self, op: Operation, request: Any) -> Outcome:
        before = self.world.clone() if op.mutation else self.world
        # A tenant's writes go now and then through the reader: then the writer is the
        # sidecar that has not heard of them yet, right only at min_revision.
        via, client = "writer", self.writer
        if op.mutation and op.tenant_of(request) and self.rng.random() < READER_WRITES:
            via, client = "reader", self.reader
            self.tally.admin_via_reader += 1
        self._count_refusals(op.message(request))
        started = time.time()
        try:
            response = await op.call(client.admin, request, client.auth)
            got = op.observe(request, response)
        except grpc.aio.AioRpcError as exc:
            response, got = None, error_outcome(exc)
        early, late = started - CLOCK_SKEW, time.time() + CLOCK_SKEW
        self.world.now = before.now = late
        expected = op.expect(self.world, request, response)
        message = op.message(request)
        own_expiry = []  # the request's expires_at
        if "expires_at" in message.DESCRIPTOR.fields_by_name and message.HasField("expires_at"):
            own_expiry.append(message.expires_at.ToNanoseconds() / 1e9)
        if got != expected and any(early <= at <= late for at in before.expiries() + own_expiry):
            # An expiry inside the call: the server may have decided before it (AssignRole
            # of a grant still in force then: ALREADY_EXISTS; an expiry still ahead then).
            then = before.clone()
            then.now = early
            alternative = op.expect(then, request, response)
            if got == alternative:
                expected = alternative
                self.sim.world = then
                self.tally.admin_near_expiry += 1
        if got.code == "OK" and own_expiry:
            self.tally.expiring_assigned += 1
            await self.watch_expiry(message, own_expiry[0])
        label = op.describe(request).split("(")[0]
        if isinstance(message, admin_pb2.AssignRoleRequest) and message.on_existing:
            policy = admin_pb2.ExistingGrantPolicy.Name(message.on_existing)
            label += f"[{policy.removeprefix('EXISTING_GRANT_POLICY_')}]"
            if got.code == "OK" and got == expected and message.on_existing == admin_pb2.EXISTING_GRANT_POLICY_REPLACE:
                held = before.tenants.get(message.tenant_id)
                grant = (subject_key(message.subject), message.role, message.scope)
                self.tally.replaced += held is not None and grant in held.in_force(before.now)
        self.tally.admin_ops += 1
        self.tally.outcomes[f"{label} {got.code} {got.reason}".rstrip()] += 1
        self.trace.append(
            f"#{self.step} {op.describe(request)}{' via reader' if via == 'reader' else ''}\n"
            f"      server {got}\n      model  {expected}"
        )
        if got == expected:
            if got.code == "OK":
                op.committed(self.sim, request, response)
                self.tally.tenants_created += isinstance(op, CreateTenant)
                for tenant_id, tenant in self.world.tenants.items():
                    if tenant_id not in before.tenants or before.tenants[tenant_id].revision != tenant.revision:
                        self.last_write[tenant_id] = (via, tenant.revision, self.step)
            else:
                self.tally.admin_refused += 1
            return got
        self.diverged = True
        cross = self._admin_cross_tenant(op, request, response, got, expected, before)
        self._fail(
            "cross-tenant admin answer" if cross else "admin disagreement",
            f"request: {op.describe(request)}\nserver:  {got}\nmodel:   {expected}" + (f"\n{cross}" if cross else ""),
            op.tenant_of(request),
            cross=bool(cross),
        )
        return got

    def _count_refusals(self, message: Any) -> None:
        fields = message.DESCRIPTOR.fields_by_name
        if "tenant_id" in fields and message.tenant_id and not is_canonical_tenant_id(message.tenant_id):
            self.tally.refusal_admin["misspelled tenant id"] += 1
        if "scope" in fields and not is_valid_scope(message.scope):
            self.tally.refusal_admin["dot scope"] += 1

    def _admin_cross_tenant(
        self, op: Operation, request: Any, response: Any, got: Outcome, expected: Outcome, before: World
    ) -> str:
        """The evidence that this wrong admin answer came from another tenant, or ''.

        Evidence is something that identifies a tenant: a stamp, listed rows, a revision,
        or (for reads) contents equal to another tenant's. A bare OK or error code that
        the other tenant would also give is a coincidence, not evidence.
        """
        tenant_id = op.tenant_of(request)
        if tenant_id is None:
            return ""
        stamped = got.facts.get("tenant_id")
        if stamped is not None and stamped != tenant_id:
            return f"the response is stamped with tenant {stamped}"
        listed = got.facts.get("tenant_ids")
        if listed and listed != [tenant_id]:
            return f"the response lists rows of tenants {listed}"
        foreign = got.facts.get("foreign_tenant_ids")
        if foreign:
            return f"the response lists rows of tenants {foreign}"
        for other in before.tenants:
            if other == tenant_id:
                continue
            alternative = op.expect(before.clone(), op.retarget(request, other), response)
            if _without_tenant(alternative) != _without_tenant(got):
                continue
            if got.revision is not None and got.revision == alternative.revision != expected.revision:
                return f"the revision is tenant {other}'s: the model answers {alternative} there"
            if not op.mutation and alternative.facts and _without_tenant(expected) != _without_tenant(got):
                return f"the contents are tenant {other}'s: the model answers {alternative} there"
        return ""

    # --- the clock ---------------------------------------------------------------------------

    def settled(self, model: Callable[[], T]) -> T | None:
        """What `model()` says throughout the call being judged (`self.window`, widened by
        CLOCK_SKEW each side), or None when an expiry inside changes it: then the server
        may rightly have answered either way. An expiry only takes grants away, so the
        same answer at both ends is the answer all along."""
        sent, answered = self.window
        self.world.now = sent - CLOCK_SKEW
        early = model()
        self.world.now = answered + CLOCK_SKEW
        late = model()
        return late if early == late else None

    def expiry_mattered(self, tenant_id: str, model: Answer, ask: Callable[[], Answer]) -> bool:
        """Whether `model` (the answer at the world's clock) is not what it would be with
        no grant expired: the answer compared is one an expiry decided."""
        tenant = self.world.tenants.get(tenant_id)
        if tenant is None or not tenant.expires:
            return False
        now, self.world.now = self.world.now, 0.0
        try:
            return ask() != model
        finally:
            self.world.now = now

    # --- checks ----------------------------------------------------------------------------

    def min_revision(self, tenant_id: str, via: str) -> int:
        """Read-your-writes: the revision of the tenant's latest write. Always when `via` is
        not the sidecar that took it (its event may not have reached `via` yet: right
        only at min_revision), mostly when it is; 0 for a tenant that never existed."""
        if tenant_id not in self.world.tenants:
            return 0
        written_via, _, step = self.last_write.get(tenant_id, ("writer", 0, -1))
        if written_via == via and self.rng.random() < 0.2:
            return 0
        if written_via != via:
            self.unheard[(via, tenant_id)] = time.monotonic()
            if step == self.step:
                self.tally.read_your_writes[written_via] += 1
        return self.sim.revision(tenant_id)

    def check_request(self, tenant_id: str, triple: tuple[str, str, str], *, via: str) -> access_pb2.CheckAccessRequest:
        subject, permission, scope = triple
        request = access_pb2.CheckAccessRequest(
            tenant_id=tenant_id,
            subject=subject_message(subject),
            permission=permission,
            resource=common_pb2.Resource(type="doc", id="d-1", scope=scope),
            min_revision=self.min_revision(tenant_id, via),
        )
        # For conditional grants (issue 18): the resource's owner, now the subject, now
        # someone else, now not said at all.
        roll = self.rng.random()
        if roll < 0.35:
            request.resource.attributes.update({"owner": subject.partition("/")[2]})
        elif roll < 0.55:
            request.resource.attributes.update({"owner": "someone-else"})
        return request

    def draw_triple(self) -> tuple[str, str, str]:
        """One (subject, permission, scope), asked in both tenants: mostly a member of one
        of them (the same id may or may not be a member of the other), now and then a
        subject that is a member nowhere."""
        roll = self.rng.random()
        members = sorted({key for tenant_id in self.sim.live_ids() for key in self.sim.members(tenant_id)})
        expiring = [
            (tenant, assignment)
            for tenant in (self.world.tenants[tenant_id] for tenant_id in self.sim.live_ids())
            for assignment in sorted(tenant.expires)
            if assignment in tenant.assignments
        ]
        if expiring and self.rng.random() < TARGETED_EXPIRY:
            return self.question(*self.rng.choice(expiring))
        if roll < 0.08:
            subject = self.rng.choice(STRANGERS)
        elif roll < 0.75 and members:
            subject = self.rng.choice(members)
        else:
            subject = self.rng.choice(SUBJECTS)
        return subject, self.rng.choice(PERMISSIONS), self.rng.choice(CHECK_SCOPES)

    def question(self, tenant: Tenant, assignment: tuple[str, str, str]) -> tuple[str, str, str]:
        """A check the grant `assignment` answers yes while in force: a permission of its
        role, at its scope or below."""
        subject, role, scope = assignment
        granted = [p for p in PERMISSIONS if any_matches(tenant.roles.get(role, ()), p)]
        below = [s for s in CHECK_SCOPES if s == scope or s.startswith(f"{scope}/") or not scope]
        return subject, self.rng.choice(granted or PERMISSIONS), self.rng.choice(below or [scope])

    async def checks(self) -> None:
        sim, rng = self.sim, self.rng
        to_reader = rng.random() < 0.5
        client, via = (self.reader, "reader") if to_reader else (self.writer, "writer")
        requests = [
            self.check_request(tenant_id, triple, via=via)
            for triple in (self.draw_triple() for _ in range(CHECK_TRIPLES_PER_STEP))
            for tenant_id in sim.live_ids()
        ]
        if sim.graveyard and rng.random() < 0.2:
            requests.append(self.check_request(rng.choice(sim.graveyard), self.draw_triple(), via=via))
        if rng.random() < 0.1:
            requests.append(self.check_request(sim.unknown_id(), self.draw_triple(), via=via))
        rng.shuffle(requests)
        await self.batch_check(client, via, requests)
        self.tally.checks += len(requests)
        self.tally.reader_checks += len(requests) if to_reader else 0

        tenant_id = rng.choice(sim.live_ids())
        await self.single_check(client, via, self.check_request(tenant_id, self.draw_triple(), via=via))
        self.tally.checks += 1
        self.tally.single_checks += 1
        self.tally.reader_checks += 1 if to_reader else 0

        if rng.random() < 0.3:
            targets = sim.live_ids() + ([rng.choice(sim.graveyard)] if sim.graveyard and rng.random() < 0.3 else [])
            for tenant_id in targets:
                # Now and then as a caller that holds the current revision (not_modified) or the one before.
                revision = sim.revision(tenant_id)
                held = rng.choice((0, 0, 0, revision, max(0, revision - 1)))
                request = config_pb2.GetTenantConfigRequest(
                    tenant_id=tenant_id, min_revision=self.min_revision(tenant_id, via), if_revision_newer_than=held
                )
                await self.config_check(client, via, request)
                self.tally.config_checks += 1

        if rng.random() < LOOKUP_RATE:
            for tenant_id in sim.live_ids() + ([rng.choice(sim.graveyard)] if sim.graveyard and rng.random() < 0.2 else []):
                await self.lookup_subjects(client, via, tenant_id)
            tenant_id = rng.choice(sim.live_ids())
            await self.list_subject_permissions(client, via, tenant_id, self.draw_triple())

        if rng.random() < PROBE_RATE:
            await self.probe(client, via, requests)

    # --- lookups -----------------------------------------------------------------------------

    async def lookup_subjects(self, client: Client, via: str, tenant_id: str) -> None:
        """Every page of one LookupSubjects listing against the model's members, each decided."""
        rng = self.rng
        permission, scope = rng.choice(PERMISSIONS), rng.choice(CHECK_SCOPES)
        held = self.world.tenants.get(tenant_id)
        if held is not None and held.assignments and rng.random() < 0.7:
            # Mostly a question some grant answers yes: a permission of an assigned role, at its scope.
            # Now and then one a conditional grant answers (then listed `conditional` without the owner).
            conditional = sorted(held.conditional & held.assignments)
            _, role, granted_at = rng.choice(conditional if conditional and rng.random() < 0.4 else sorted(held.assignments))
            matching = [p for p in PERMISSIONS if any_matches(held.roles.get(role, ()), p)]
            if matching:
                permission, scope = rng.choice(matching), granted_at
        request = lookup_pb2.LookupSubjectsRequest(
            tenant_id=tenant_id, permission=permission, scope=scope, page_size=rng.choice((1, 2, 5, 0)),
            min_revision=self.min_revision(tenant_id, via),
        )
        # For conditional grants: the resource's owner (one subject's id, applied to every
        # candidate), someone else, or not said (then conditional subjects are listed as such).
        owner = self.draw_owner(held)
        if owner is not None:
            request.resource_attributes.update({"owner": owner})
        what = f"LookupSubjects@{via}"
        pages = []
        sent = time.time()
        try:
            while True:
                pages.append(await client.lookup.LookupSubjects(request))
                if not pages[-1].next_page_token:
                    break
                request.page_token = pages[-1].next_page_token
        except grpc.aio.AioRpcError as exc:
            self._fail("lookup disagreement", f"via: {what}\nrequest: {one_line(request)}\nerror: {error_outcome(exc)}",
                       tenant_id, cross=False)
            return
        self.window = (sent, time.time())
        world, tenant = self.world, self.world.tenants.get(tenant_id)
        members = sorted(tenant.members) if tenant is not None else []
        settled = self.settled(lambda: {m: world.check(tenant_id, m, permission, scope, owner) for m in members})
        if settled is None:  # a member's grant expired within CLOCK_SKEW of the listing
            self.tally.near_expiry += 1
            return
        answers = settled
        self.tally.lookups += 1
        self.tally.lookups_listing += any(page.subjects for page in pages)
        self.tally.after_expiry += any(
            self.expiry_mattered(tenant_id, answer, functools.partial(world.check, tenant_id, m, permission, scope, owner))
            for m, answer in answers.items()
        )
        for page in pages:  # the allowed ones apart from the conditional ones, never mixed
            if any(s.conditional for s in page.subjects) or not all(s.conditional for s in page.conditional_subjects):
                self._fail("lookup disagreement", f"via: {what}\nrequest: {one_line(request)}\n"
                           "a conditional subject among the allowed ones, or the reverse", tenant_id, cross=False)
                return
        subjects = [s for page in pages for s in (*page.subjects, *page.conditional_subjects)]
        listed = {subject_key(s.subject): (s.granted_by_role, s.granted_at_scope) for s in subjects if not s.conditional}
        conditional = {
            subject_key(s.subject): (list(s.missing_attributes), list(s.conditions), s.granted_by_role, s.granted_at_scope)
            for s in subjects if s.conditional
        }
        self.tally.lookups_conditional += len(conditional)
        revisions = {page.revision for page in pages}
        problems = []
        if revisions != {tenant.revision if tenant is not None else 0}:
            problems.append(f"revisions {sorted(revisions)}, the tenant is at {tenant.revision if tenant else 0}")
        for subject, grant in listed.items():
            expected = answers.get(subject)
            if expected is None or not expected.allowed or grant not in expected.grants:
                problems.append(f"{subject} listed by {grant}: the model answers {expected}")
        for subject, shown in conditional.items():
            expected = answers.get(subject)
            if expected is None or expected.reason != "CONDITIONAL" or shown != ([OWNER_ATTRIBUTE], [OWNER_CONDITION], "", ""):
                problems.append(f"{subject} listed conditional {shown}: the model answers {expected}")
        missing = [m for m, a in answers.items() if a.allowed and m not in listed]
        if missing:
            problems.append(f"allowed but not listed: {missing}")
        unlisted = [m for m, a in answers.items() if a.reason == "CONDITIONAL" and m not in conditional]
        if unlisted:
            problems.append(f"CONDITIONAL but not listed as conditional: {unlisted}")
        denied = reason_name(pages[0].denied_for_all) if pages[0].denied_for_all else ""
        tenant_wide = {a.reason for a in answers.values()} & {"TENANT_SUSPENDED", "TENANT_INACTIVE", "FEATURE_DISABLED"}
        if tenant is None:
            tenant_wide = {"TENANT_NOT_FOUND"}
        if (denied and members and tenant_wide != {denied}) or (tenant_wide and not denied):
            problems.append(f"denied_for_all {denied or 'unset'}, the model's members are told {sorted(tenant_wide)}")
        if not problems:
            return
        foreign = [
            subject for subject in [*listed, *conditional]
            if subject not in answers and any(subject in t.members for i, t in world.tenants.items() if i != tenant_id)
        ]
        self._fail(
            "cross-tenant lookup" if foreign else "lookup disagreement",
            f"via:     {what}\nrequest: {one_line(request)}\n" + "\n".join(problems)
            + (f"\nlisted members of another tenant: {foreign}" if foreign else ""),
            tenant_id,
            cross=bool(foreign),
        )

    async def list_subject_permissions(
        self, client: Client, via: str, tenant_id: str, triple: tuple[str, str, str]
    ) -> None:
        """ListSubjectPermissions of a few permissions, each judged as the check it stands for."""
        subject, _, scope = triple
        permissions = self.rng.sample(PERMISSIONS, 3)
        request = lookup_pb2.ListSubjectPermissionsRequest(
            tenant_id=tenant_id, subject=subject_message(subject), scope=scope, permissions=permissions,
            min_revision=self.min_revision(tenant_id, via),
        )
        owner = self.draw_owner(self.world.tenants.get(tenant_id), subject)
        if owner is not None:
            request.resource_attributes.update({"owner": owner})
        sent = time.time()
        try:
            answer = await client.lookup.ListSubjectPermissions(request)
            self.window = (sent, time.time())
        except grpc.aio.AioRpcError as exc:
            self._fail("lookup disagreement", f"via: ListSubjectPermissions@{via}\nrequest: {one_line(request)}\n"
                       f"error: {error_outcome(exc)}", tenant_id, cross=False)
            return
        for decision in answer.decisions:
            check = access_pb2.CheckAccessRequest(
                tenant_id=tenant_id, subject=request.subject, permission=decision.permission,
                resource=common_pb2.Resource(scope=scope),
            )
            if request.HasField("resource_attributes"):
                check.resource.attributes.CopyFrom(request.resource_attributes)
            self.judge(check, decision.decision, f"ListSubjectPermissions@{via}")
            self.tally.permission_lookups += 1

    def draw_owner(self, tenant: Any, subject: str | None = None) -> str | None:
        """resource.attributes.owner for a lookup: not said (half the time), `subject`'s id
        or a conditionally granted subject's, or someone else."""
        roll = self.rng.random()
        if roll < 0.5:
            return None
        if roll < 0.85:
            if subject is not None:
                return subject.partition("/")[2]
            holders = sorted({a[0] for a in tenant.conditional & tenant.assignments}) if tenant is not None else []
            if holders:
                return self.rng.choice(holders).partition("/")[2]
        return "someone-else"

    # --- requests the server must refuse ---------------------------------------------------

    def spoil(self, requests: list[access_pb2.CheckAccessRequest], kind: str, via: str) -> access_pb2.CheckAccessRequest:
        """A copy of one of this step's checks (asked of `via`) that the server must refuse for `kind`."""
        rng = self.rng
        self.tally.refusal_reads[kind] += 1
        if kind == "misspelled tenant id":  # of a tenant that exists (or did)
            real = [r for r in requests if r.tenant_id in self.world.tenants]
            spoiled = copy_of(rng.choice(real))
            spoiled.tenant_id = self.sim.misspell(spoiled.tenant_id)
        elif kind == "dot scope":
            spoiled = copy_of(rng.choice(requests))
            spoiled.resource.scope = rng.choice(DOT_SCOPES)
        else:  # future min_revision; an unknown tenant is at 0
            # A sidecar reads the store for a revision it has not heard of at most once per
            # tenant per 50 ms (cache/fresh_read.py): a probe just after such a read waits
            # for the next one. Mostly, then, a tenant `via` has not been asked so of lately.
            now = time.monotonic()
            quiet = [r for r in requests if now - self.unheard.get((via, r.tenant_id), -1.0) > UNHEARD_SPACING]
            spoiled = copy_of(rng.choice(quiet if quiet and rng.random() < 0.8 else requests))
            spoiled.min_revision = self.sim.revision(spoiled.tenant_id) + rng.choice(FUTURE)
            self.unheard[(via, spoiled.tenant_id)] = now
        return spoiled

    async def probe(self, client: Client, via: str, requests: list[access_pb2.CheckAccessRequest]) -> None:
        """One call carrying a request the server must refuse, built from this step's checks:
        a CheckAccess; a CheckAccessBatch of a few of them (answered before, so remembered)
        with one, now and then two, bad checks among them; or a GetTenantConfig (there is
        no scope in one)."""
        rng = self.rng
        kind = rng.choice(PROBE_KINDS)
        methods = ("CheckAccess", "CheckAccessBatch") + (("GetTenantConfig",) if kind != "dot scope" else ())
        method = rng.choice(methods)
        self.tally.probe_calls[f"{method}: {kind}"] += 1
        if method == "CheckAccess":
            await self.single_check(client, via, self.spoil(requests, kind, via))
        elif method == "CheckAccessBatch":
            batch = [copy_of(r) for r in rng.sample(requests, rng.randint(1, min(3, len(requests))))]
            batch.insert(rng.randint(0, len(batch)), self.spoil(requests, kind, via))
            if rng.random() < 0.3:
                batch.insert(rng.randint(0, len(batch)), self.spoil(requests, rng.choice(PROBE_KINDS), via))
            await self.batch_check(client, via, batch)
        else:
            spoiled = self.spoil(requests, kind, via)
            request = config_pb2.GetTenantConfigRequest(tenant_id=spoiled.tenant_id, min_revision=spoiled.min_revision)
            await self.config_check(client, via, request)

    def _refusal_cross_tenant(self, got: Outcome, tenant_id: str) -> str:
        """Whether a wrong GATEHOUSE_REVISION_NOT_REACHED carries another tenant's id or
        revision (`tenant_id` as the request spelled it)."""
        if got.reason != "GATEHOUSE_REVISION_NOT_REACHED":
            return ""
        own = canonical(tenant_id)
        named = got.facts.get("tenant_id")
        if named in self.world.tenants and named != own:
            return f"it names tenant {named}"
        current = got.facts.get("current_revision")
        for other in self.world.tenants:
            if other != own and current == str(self.sim.revision(other)) != str(self.sim.revision(own)):
                return f"its current_revision is tenant {other}'s"
        return ""

    def _judge_outcome(self, what: str, request: Any, got: Outcome, expected: Outcome, tenant_id: str) -> None:
        """A call the model refuses, or the server did: the same code, reason and facts."""
        if got == expected:
            return
        cross = self._refusal_cross_tenant(got, tenant_id)
        self._fail(
            "cross-tenant refusal" if cross else "refusal disagreement",
            f"via:     {what}\nrequest: {one_line(request)}\nserver:  {got}\nmodel:   {expected}"
            + (f"\n{cross}" if cross else ""),
            tenant_id,
            cross=bool(cross),
        )

    async def single_check(self, client: Client, via: str, request: access_pb2.CheckAccessRequest) -> None:
        # A refusal, or the decision (`judge` settles it with the clock; a refusal is wrong
        # or right at any time).
        expected = self.world.check_call(model_check(request))
        what = f"CheckAccess@{via}"
        sent = time.time()
        try:
            answer = await client.access.CheckAccess(request)
        except grpc.aio.AioRpcError as exc:
            self._judge_outcome(what, request, error_outcome(exc), as_outcome(expected), request.tenant_id)
            return
        finally:
            self.window = (sent, time.time())
        if isinstance(expected, Answer):
            self.judge(request, answer, what)
        else:
            self._judge_outcome(what, request, as_outcome(answer), expected, request.tenant_id)

    async def batch_check(self, client: Client, via: str, requests: list[access_pb2.CheckAccessRequest]) -> None:
        message = access_pb2.CheckAccessBatchRequest(checks=requests)
        what = f"CheckAccessBatch@{via}"
        # A refusal does not depend on the clock (a refused call is wrong or right at any
        # time); the decisions `judge` settles one by one.
        expected = self.world.batch_call([model_check(r) for r in requests])
        # The tenant a refusal is about: the one its metadata names, else the first check's.
        tenant_id = str(as_outcome(expected).facts.get("tenant_id", requests[0].tenant_id))
        sent = time.time()
        try:
            batch = await client.access.CheckAccessBatch(message)
        except grpc.aio.AioRpcError as exc:
            self._judge_outcome(what, message, error_outcome(exc), as_outcome(expected), tenant_id)
            return
        finally:
            self.window = (sent, time.time())
        if isinstance(expected, Outcome):
            self._judge_outcome(what, message, as_outcome(batch), expected, tenant_id)
        elif len(batch.results) != len(requests):
            self._fail("batch disagreement", f"{len(requests)} checks, {len(batch.results)} answers", None, cross=False)
        else:
            for request, answer in zip(requests, batch.results, strict=True):
                self.judge(request, answer, what)

    def judge(self, request: access_pb2.CheckAccessRequest, answer: access_pb2.CheckAccessResponse, via: str) -> None:
        tenant_id = request.tenant_id
        subject = subject_key(request.subject)
        scope = request.resource.scope
        reason = reason_name(answer.reason)
        self.tally.reasons[reason] += 1

        def model() -> Answer:
            return self.world.check(tenant_id, subject, request.permission, scope, owner_of(request))

        settled = self.settled(model)
        if settled is None:  # asked within CLOCK_SKEW of an expiry that changes the answer
            self.tally.near_expiry += 1
            return
        expected = settled
        self.tally.after_expiry += self.expiry_mattered(tenant_id, expected, model)
        if self._consistent(answer, expected) and answer.revision == expected.revision:
            return
        cross, note = self._check_cross_tenant(request, answer, expected)
        self._fail(
            "cross-tenant answer" if cross else "check disagreement",
            f"via:     {via}\nrequest: {one_line(request)}\n"
            f"server:  {'allow' if answer.allowed else 'deny'} {reason} rev={answer.revision}"
            f" role={answer.granted_by_role!r} scope={answer.granted_at_scope!r} feature={answer.feature!r}"
            f" missing={list(answer.missing_attributes)}\n"
            f"model:   {expected}" + (f"\n{note}" if note else ""),
            tenant_id,
            subject=subject,
            cross=cross,
        )

    @staticmethod
    def _consistent(answer: access_pb2.CheckAccessResponse, expected: Answer) -> bool:
        """The answer is one the model allows (revision aside)."""
        if answer.allowed != expected.allowed or reason_name(answer.reason) != expected.reason:
            return False
        if answer.allowed:
            # The granting role and scope must be a grant of this subject in this tenant.
            if (answer.granted_by_role, answer.granted_at_scope) not in expected.grants:
                return False
        elif answer.granted_by_role or answer.granted_at_scope:
            return False
        if expected.reason == "FEATURE_DISABLED" and answer.feature not in expected.features:
            return False
        if list(answer.missing_attributes) != ([OWNER_ATTRIBUTE] if expected.reason == "CONDITIONAL" else []):
            return False
        return True

    def _check_cross_tenant(
        self, request: access_pb2.CheckAccessRequest, answer: access_pb2.CheckAccessResponse, expected: Answer
    ) -> tuple[bool, str]:
        """Whether another tenant's data explains this wrong answer, and how.

        Only answers that carry something of a tenant count as cross-tenant: an allow (its
        role and scope), a blocking feature, a lifecycle status, a revision. A bare
        NO_GRANT or NOT_A_MEMBER that another tenant's data would also give is noted but
        counted as a disagreement: denying is what a confused-but-guarded server does.
        """
        tenant_id = request.tenant_id
        subject = subject_key(request.subject)
        args = (subject, request.permission, request.resource.scope, owner_of(request))
        identifying = answer.allowed or reason_name(answer.reason) not in ("NO_GRANT", "NOT_A_MEMBER")
        wrong = not self._consistent(answer, expected)
        note = ""
        for other in self.world.tenants:
            if other == tenant_id:
                continue
            if not wrong and answer.revision == self.sim.revision(other) != expected.revision:
                return True, f"the revision is tenant {other}'s"
            explanations = []
            if self._consistent(answer, self.world.check(other, *args)):
                explanations.append(f"tenant {other} as a whole")
            if tenant_id in self.world.tenants:
                for size in range(1, len(VIEW_PARTS) + 1):
                    for parts in itertools.combinations(VIEW_PARTS, size):
                        if self._consistent(answer, decide(self.world.mixed_view(tenant_id, other, parts), *args)):
                            explanations.append(f"tenant {other}'s {'+'.join(parts)}")
            if wrong and explanations:
                note = "explained by " + "; ".join(explanations[:3])
                if identifying:
                    return True, note
        return False, note

    async def config_check(self, client: Client, via: str, request: config_pb2.GetTenantConfigRequest) -> None:
        tenant_id, held = request.tenant_id, request.if_revision_newer_than
        try:
            config = await client.config.GetTenantConfig(request)
            got = Outcome(revision=config.revision, facts={"id": config.id, "not_modified": True})
            if not config.not_modified:
                got = Outcome(
                    revision=config.revision,
                    facts={
                        "id": config.id,
                        "slug": config.slug,
                        "status": status_name(config.status),
                        "plan": config.plan,
                        "feature_flags": dict(config.feature_flags),
                    },
                )
        except grpc.aio.AioRpcError as exc:
            got = error_outcome(exc)
        expected = self.world.config_call(tenant_id, request.min_revision, if_revision_newer_than=held)
        if got == expected:
            return
        cross = self._refusal_cross_tenant(got, tenant_id)
        if got.code == "OK":
            other = [
                t for t in self.world.tenants if t != tenant_id and self.world.config(t, if_revision_newer_than=held) == got
            ]
            cross = f"the config is tenant {other[0]}'s" if other else ""
        self._fail(
            "cross-tenant config" if cross else "config disagreement",
            f"via:     GetTenantConfig@{via}\nrequest: {one_line(request)}\nserver:  {got}\nmodel:   {expected}"
            + (f"\n{cross}" if cross else ""),
            tenant_id,
            cross=bool(cross),
        )

    # --- expiring grants ----------------------------------------------------------------------

    async def watch_expiry(self, granted: admin_pb2.AssignRoleRequest, expires_at: float) -> None:
        """Ask the question a grant just made answers yes, of both sidecars (so each holds
        the subject's grants with it), and again once it has expired (`expired_questions`):
        then only the engine's comparison with the clock stands between a cached grant and
        an ALLOW, unless a write since made the sidecar read the subject anew."""
        tenant_id = granted.tenant_id
        subject = subject_key(granted.subject)
        triple = self.question(self.world.tenants[tenant_id], (subject, granted.role, granted.scope))
        request = self.check_request(tenant_id, triple, via="writer")
        request.resource.attributes.update({"owner": granted.subject.id})  # the condition, if any, holds
        request.min_revision = self.sim.revision(tenant_id)
        for client, via in ((self.writer, "writer"), (self.reader, "reader")):
            await self.ask_batch(client, via, [request], "as granted")
        self.watching.append((expires_at, request))

    async def expired_questions(self) -> None:
        """The watched grants' questions, asked of both sidecars once past their expiry."""
        now = time.time()
        due = [request for at, request in self.watching if at + CLOCK_SKEW < now]
        self.watching = [(at, request) for at, request in self.watching if at + CLOCK_SKEW >= now]
        for request in due:
            request.min_revision = self.sim.revision(request.tenant_id)
        for client, via in ((self.writer, "writer"), (self.reader, "reader")):
            await self.ask_batch(client, via, due, "just expired")
        self.tally.watched += len(due)

    # --- the expiry sweep -------------------------------------------------------------------

    async def maybe_sweep(self, *, now: bool = False) -> None:
        """Now and then (or `now`) stop granting expiring grants; once every one has
        expired (CLOCK_SKEW ago), sweep. With `now`, wait for that instead of walking on."""
        if self.sweeper is None:
            return
        if not self.draining:
            if not now and self.rng.random() >= SWEEP_RATE:
                return
            self.draining, self.sim.expiry_rate = True, 0.0
        wait = max(self.world.expiries(), default=0.0) + CLOCK_SKEW - time.time()
        if wait > 0:
            if not now:
                return
            await asyncio.sleep(wait)
        await self.sweep()
        self.draining, self.sim.expiry_rate = False, EXPIRY_RATE

    async def sweep(self) -> None:
        """The relay's sweep on the simulation's database (every row it finds expired an
        instant ago at least), held to the model's: the same number of subjects, then
        every answer at the revisions the model gives. A few swept grants' own questions
        are asked before and after, of both sidecars: the sweep must change no decision."""
        assert self.sweeper is not None
        world = self.world
        world.now = time.time()
        doomed = [
            (tenant_id, assignment)
            for tenant_id, tenant in sorted(world.tenants.items())
            if tenant.status is not Status.DELETED
            for assignment in sorted(tenant.assignments - tenant.in_force(world.now))
        ]
        picked = self.rng.sample(doomed, min(SWEEP_CHECKS, len(doomed)))
        questions = [self.check_request(t, self.question(world.tenants[t], a), via="writer") for t, a in picked]
        for question in questions:
            question.min_revision = self.sim.revision(question.tenant_id)
        decided = await self.ask_batch(self.writer, "writer", questions, "before a sweep")

        revisions = {tenant_id: tenant.revision for tenant_id, tenant in world.tenants.items()}
        swept = await self.sweeper()
        got = Outcome(facts={"swept": swept})
        world.now = time.time()
        expected = world.sweep()
        self.tally.sweeps += 1
        self.tally.swept_subjects += swept
        self.trace.append(f"#{self.step} (the relay's sweep)\n      server {got}\n      model  {expected}")
        if got != expected:
            self.diverged = True
            self._fail("sweep disagreement", f"server:  {got}\nmodel:   {expected}", None, cross=False)
            return
        for tenant_id, tenant in world.tenants.items():
            if tenant.revision != revisions[tenant_id]:
                self.last_write[tenant_id] = ("sweeper", tenant.revision, self.step)
        for question in questions:
            question.min_revision = self.sim.revision(question.tenant_id)
        self.tally.sweep_checks += len(questions)
        for client, via in ((self.writer, "writer"), (self.reader, "reader")):
            after = await self.ask_batch(client, via, questions, "after a sweep")
            for question, old, new in zip(questions, decided, after):
                if old != new:
                    self._fail(
                        "the sweep changed a decision",
                        f"via:     CheckAccessBatch@{via}\nrequest: {one_line(question)}\n"
                        f"before:  {old}\nafter:   {new}",
                        question.tenant_id,
                        subject=subject_key(question.subject),
                        cross=False,
                    )

    async def ask_batch(
        self, client: Client, via: str, requests: list[access_pb2.CheckAccessRequest], when: str
    ) -> list[tuple[bool, str, str, str]]:
        """`requests` asked in one batch and judged; each decision as (allowed, reason, role, scope)."""
        if not requests:
            return []
        sent = time.time()
        batch = await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=requests))
        self.window = (sent, time.time())
        for request, answer in zip(requests, batch.results, strict=True):
            self.judge(request, answer, f"CheckAccessBatch@{via} ({when})")
        return [(a.allowed, reason_name(a.reason), a.granted_by_role, a.granted_at_scope) for a in batch.results]

    # --- reporting -------------------------------------------------------------------------

    def _fail(self, kind: str, text: str, tenant_id: str | None, *, subject: str | None = None, cross: bool) -> None:
        if cross:
            self.tally.cross_tenant += 1
        else:
            self.tally.disagreements += 1
        if self.step != self._last_failing_step:
            self._last_failing_step = self.step
            self.failing_steps += 1
        if len(self.failures) >= MAX_REPORTS:
            return
        states = []
        for tid in dict.fromkeys([tenant_id, *self.sim.live_ids()]):
            if tid:
                states.append(self.world.describe(tid, subject))
        trace = "\n".join(f"    {line}" for line in self.trace)
        self.failures.append(
            f"--- {kind} at step {self.step} (seed {self.seed}) ---\n{text}\n"
            f"model state:\n" + "\n".join(states) + f"\nlast admin operations (oldest first):\n{trace}"
        )

    def summary(self, elapsed: float) -> str:
        t = self.tally
        reads, admin, ryw = t.refusal_reads, t.refusal_admin, t.read_your_writes
        misspelled, dots = "misspelled tenant id", "dot scope"
        return (
            f"simulation: seed={self.seed}, steps={t.steps}, admin_ops={t.admin_ops}"
            f" (refused as predicted: {t.admin_refused}, tenants created: {t.tenants_created},"
            f" via reader: {t.admin_via_reader}),"
            f" checks={t.checks} (single: {t.single_checks}, via reader: {t.reader_checks}),"
            f" config_checks={t.config_checks}, lookups={t.lookups} (listing someone: {t.lookups_listing},"
            f" conditional subjects: {t.lookups_conditional}),"
            f" permission_lookups={t.permission_lookups},"
            f" misspelled_tenant_ids={reads[misspelled] + admin[misspelled]}"
            f" (reads: {reads[misspelled]}, admin: {admin[misspelled]}),"
            f" dot_scopes={reads[dots] + admin[dots]} (checks: {reads[dots]}, assign/revoke: {admin[dots]}),"
            f" future_min_revision={reads['future min_revision']},"
            f" read_your_writes_across_sidecars={ryw.total()}"
            f" (written via writer: {ryw['writer']}, via reader: {ryw['reader']}, swept: {ryw['sweeper']}),"
            f" expiring_grants={t.expiring_assigned} (checks compared after expiry: {t.after_expiry},"
            f" skipped near expiry: {t.near_expiry}, admin calls near expiry: {t.admin_near_expiry},"
            f" asked as granted and just after expiry: {t.watched},"
            f" sweeps: {t.sweeps} of {t.swept_subjects} subjects, swept grants asked before and after:"
            f" {t.sweep_checks}), replaced_grants={t.replaced},"
            f" disagreements={t.disagreements}, cross_tenant={t.cross_tenant},"
            f" elapsed={elapsed:.1f}s"
        )

    def coverage(self) -> str:
        reasons = ", ".join(f"{name}={count}" for name, count in sorted(self.tally.reasons.items()))
        outcomes = ", ".join(f"{name}: {count}" for name, count in sorted(self.tally.outcomes.items()))
        probes = ", ".join(f"{name}: {count}" for name, count in sorted(self.tally.probe_calls.items()))
        return f"decisions: {reasons}\nadmin outcomes: {outcomes}\nprobe calls: {probes}"

    # --- the run ---------------------------------------------------------------------------

    async def setup(self) -> None:
        """Plans, then the two tenants with the same roles (different permissions), the same
        members and an owner each: a populated start for the random walk."""
        sim, rng = self.sim, self.rng
        upsert = UpsertPlan()
        for name, features in initial_plans(sim.unique).items():
            plan = admin_pb2.Plan(
                name=name,
                features={
                    n: admin_pb2.PlanFeature(default_enabled=f.default_enabled, gates=list(f.gates))
                    for n, f in features.items()
                },
            )
            await self.admin(upsert, admin_pb2.UpsertPlanRequest(plan=plan))
        plans = sim.plans
        granted: dict[str, tuple[str, ...]] = {}
        for index, slot in enumerate(sim.slots):
            slug = slot.slug(sim.unique)
            await self.admin(
                CreateTenant(), admin_pb2.CreateTenantRequest(slug=slug, name=slug.title(), plan=plans[index])
            )
            tenant_id = slot.tenant_id
            await self.admin(
                Transition(), ("Activate", admin_pb2.TenantTransitionRequest(tenant_id=tenant_id, reason="sim setup"))
            )
            for role in CUSTOM_ROLES:
                permissions = tuple(sim.permissions())
                while permissions == granted.get(role):  # the same name, other permissions
                    permissions = tuple(sim.permissions())
                granted[role] = permissions
                await self.admin(
                    CreateRole(), admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=permissions)
                )
            members = rng.sample(SUBJECTS, 4)
            for key in members:
                await self.admin(AddMember(), admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=subject_message(key)))
            assign = AssignRole()
            await self.admin(
                assign,
                admin_pb2.AssignRoleRequest(
                    tenant_id=tenant_id, subject=subject_message(members[0]), role="owner", scope=""
                ),
            )
            for _ in range(6):
                await self.admin(assign, assign.draw_for(sim, tenant_id))

    async def run(self, steps: int) -> None:
        await self.setup()
        if self.diverged:
            return
        await self.checks()
        operations = list(OPERATIONS)
        for self.step in range(1, steps + 1):
            op = self.rng.choices(operations, weights=[op.weight(self.sim) for op in operations])[0]
            await self.admin(op, op.draw(self.sim))
            if self.diverged:
                # The server did something the model did not (or not the other way): from
                # here on their states differ and every later step would only echo it.
                return
            await self.checks()
            await self.expired_questions()
            await self.maybe_sweep()
            if self.diverged:
                return
            self.tally.steps = self.step
            # A wrong check leaves both states as they were, so the walk goes on and
            # counts; but a broken server need not be walked to the end.
            if self.failing_steps >= MAX_FAILING_STEPS:
                return
        # At least one sweep a run, and the checks after it.
        await self.maybe_sweep(now=True)
        if not self.diverged:
            await self.checks()


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value, 0) if value else default


async def test_two_tenants_never_see_each_other(
    sim_sidecars: tuple[Client, Client], sim_sweep: Sweep, unique: str, record_property: Any
) -> None:
    seed = _env_int("GATEHOUSE_SIM_SEED", None)
    if seed is None:
        seed = secrets.randbits(32)
    steps = _env_int("GATEHOUSE_SIM_STEPS", DEFAULT_STEPS) or DEFAULT_STEPS
    writer, reader = sim_sidecars
    simulation = Simulation(writer, reader, seed, unique)
    simulation.sweeper = sim_sweep
    print(f"\nsimulation: seed={seed} (replay with GATEHOUSE_SIM_SEED={seed}), steps={steps}")

    started = time.perf_counter()
    await simulation.run(steps)
    summary = simulation.summary(time.perf_counter() - started)

    print(summary)
    print(simulation.coverage())
    record_property("simulation", summary)
    tally = simulation.tally
    report = "\n\n".join([summary, *simulation.failures])
    assert tally.disagreements == 0 and tally.cross_tenant == 0, report
    assert tally.steps == steps, report
    if steps >= COVERAGE_MIN_STEPS:
        missing = EXPECTED_REASONS - set(tally.reasons)
        assert not missing, f"the walk never produced {sorted(missing)}\n{summary}\n{simulation.coverage()}"
        assert tally.expiring_assigned and tally.after_expiry and tally.sweeps and tally.sweep_checks, summary
        assert tally.lookups_conditional > 0, f"no lookup listed a conditional subject\n{summary}"
        assert tally.replaced > 0, f"no AssignRole REPLACE met a grant held\n{summary}"
