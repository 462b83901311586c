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

Both must be zero. The seed is printed and can be replayed with GATEHOUSE_SIM_SEED; the
number of steps is GATEHOUSE_SIM_STEPS. An admin call that goes otherwise than the model
says stops the walk (from there on the two states differ); wrong checks are counted and
the walk goes on for a while. The first few failures are reported in full: the step, the
last admin operations before it, the request, the server's answer, the model's answer
and the model's state of both tenants.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import text_format

from gatehouse.v1 import access_pb2, admin_pb2, common_pb2, config_pb2

from tests.client import Client
from tests.server.status import details
from tests.simulation.model import VIEW_PARTS, Answer, Outcome, Status, World, decide
from tests.simulation.operations import (
    CHECK_SCOPES,
    CUSTOM_ROLES,
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

DEFAULT_STEPS = 1200  # ~15 s on a quiet 2-core machine: ~1,250 admin calls and ~6,300 checks
CHECK_TRIPLES_PER_STEP = 2  # each asked in both tenants
TRACE_LENGTH = 15
MAX_FAILING_STEPS = 20  # after this many steps with wrong answers, stop walking
MAX_REPORTS = 3  # failures reported in full
# With this many steps every decision reason short of KEY_REVOKED (no API keys yet) shows up.
COVERAGE_MIN_STEPS = 1000
EXPECTED_REASONS = {
    "ALLOWED",
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
    try:
        reason = details(exc)[0].reason
    except AssertionError:  # no google.rpc.Status at all: itself a disagreement
        reason = f"<no status details: {exc.details()}>"
    return Outcome(exc.code().name, reason)


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
    disagreements: int = 0
    cross_tenant: int = 0
    tenants_created: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


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

    @property
    def world(self) -> World:
        return self.sim.world

    # --- admin operations ------------------------------------------------------------------

    async def admin(self, op: Operation, request: Any) -> Outcome:
        before = self.world.clone() if op.mutation else self.world
        try:
            response = await op.call(self.writer.admin, request, self.writer.auth)
            got = op.observe(request, response)
        except grpc.aio.AioRpcError as exc:
            response, got = None, error_outcome(exc)
        expected = op.expect(self.world, request, response)
        self.tally.admin_ops += 1
        self.tally.outcomes[f"{op.describe(request).split('(')[0]} {got.code} {got.reason}".rstrip()] += 1
        self.trace.append(f"#{self.step} {op.describe(request)}\n      server {got}\n      model  {expected}")
        if got == expected:
            if got.code == "OK":
                op.committed(self.sim, request, response)
                self.tally.tenants_created += isinstance(op, CreateTenant)
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

    # --- checks ----------------------------------------------------------------------------

    def check_request(self, tenant_id: str, triple: tuple[str, str, str], *, fresh: bool) -> access_pb2.CheckAccessRequest:
        subject, permission, scope = triple
        known = tenant_id in self.world.tenants
        return access_pb2.CheckAccessRequest(
            tenant_id=tenant_id,
            subject=subject_message(subject),
            permission=permission,
            resource=common_pb2.Resource(type="doc", id="d-1", scope=scope),
            # Read-your-writes: the revision of the last admin write to this tenant.
            min_revision=self.sim.revision(tenant_id) if known and (fresh or self.rng.random() < 0.8) else 0,
        )

    def draw_triple(self) -> tuple[str, str, str]:
        """One (subject, permission, scope), asked in both tenants: mostly a member of one
        of them (the same id may or may not be a member of the other), now and then a
        subject that is a member nowhere."""
        roll = self.rng.random()
        members = sorted({key for tenant_id in self.sim.live_ids() for key in self.sim.members(tenant_id)})
        if roll < 0.08:
            subject = self.rng.choice(STRANGERS)
        elif roll < 0.75 and members:
            subject = self.rng.choice(members)
        else:
            subject = self.rng.choice(SUBJECTS)
        return subject, self.rng.choice(PERMISSIONS), self.rng.choice(CHECK_SCOPES)

    async def checks(self) -> None:
        sim, rng = self.sim, self.rng
        # The reader did not take the writes: it is right only at min_revision.
        to_reader = rng.random() < 0.5
        client, via = (self.reader, "reader") if to_reader else (self.writer, "writer")
        requests = [
            self.check_request(tenant_id, triple, fresh=to_reader)
            for triple in (self.draw_triple() for _ in range(CHECK_TRIPLES_PER_STEP))
            for tenant_id in sim.live_ids()
        ]
        if sim.graveyard and rng.random() < 0.2:
            requests.append(self.check_request(rng.choice(sim.graveyard), self.draw_triple(), fresh=to_reader))
        if rng.random() < 0.1:
            requests.append(self.check_request(sim.unknown_id(), self.draw_triple(), fresh=to_reader))
        rng.shuffle(requests)
        batch = await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=requests))
        if len(batch.results) != len(requests):
            self._fail("batch disagreement", f"{len(requests)} checks, {len(batch.results)} answers", None, cross=False)
            return
        for request, answer in zip(requests, batch.results, strict=True):
            self.judge(request, answer, f"CheckAccessBatch@{via}")
        self.tally.checks += len(requests)
        self.tally.reader_checks += len(requests) if to_reader else 0

        tenant_id = rng.choice(sim.live_ids())
        single = self.check_request(tenant_id, self.draw_triple(), fresh=to_reader)
        self.judge(single, await client.access.CheckAccess(single), f"CheckAccess@{via}")
        self.tally.checks += 1
        self.tally.single_checks += 1
        self.tally.reader_checks += 1 if to_reader else 0

        if rng.random() < 0.3:
            targets = sim.live_ids() + ([rng.choice(sim.graveyard)] if sim.graveyard and rng.random() < 0.3 else [])
            for tenant_id in targets:
                await self.config_check(client, tenant_id, via)

    def judge(self, request: access_pb2.CheckAccessRequest, answer: access_pb2.CheckAccessResponse, via: str) -> None:
        tenant_id = request.tenant_id
        subject = subject_key(request.subject)
        scope = request.resource.scope
        reason = reason_name(answer.reason)
        self.tally.reasons[reason] += 1
        expected = self.world.check(tenant_id, subject, request.permission, scope)
        if self._consistent(answer, expected) and answer.revision == expected.revision:
            return
        cross, note = self._check_cross_tenant(request, answer, expected)
        self._fail(
            "cross-tenant answer" if cross else "check disagreement",
            f"via:     {via}\nrequest: {one_line(request)}\n"
            f"server:  {'allow' if answer.allowed else 'deny'} {reason} rev={answer.revision}"
            f" role={answer.granted_by_role!r} scope={answer.granted_at_scope!r} feature={answer.feature!r}\n"
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
        args = (subject, request.permission, request.resource.scope)
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

    async def config_check(self, client: Client, tenant_id: str, via: str) -> None:
        revision = self.sim.revision(tenant_id)
        # Now and then as a caller that holds the current revision (not_modified) or the one before.
        held = self.rng.choice((0, 0, 0, revision, max(0, revision - 1)))
        request = config_pb2.GetTenantConfigRequest(
            tenant_id=tenant_id, min_revision=revision, if_revision_newer_than=held
        )
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
        self.tally.config_checks += 1
        expected = self.world.config(tenant_id, if_revision_newer_than=held)
        if got != expected:
            other = [
                t for t in self.world.tenants if t != tenant_id and self.world.config(t, if_revision_newer_than=held) == got
            ]
            self._fail(
                "cross-tenant config" if other else "config disagreement",
                f"via:     GetTenantConfig@{via}\nrequest: {one_line(request)}\nserver:  {got}\nmodel:   {expected}",
                tenant_id,
                cross=bool(other),
            )

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
        return (
            f"simulation: seed={self.seed}, steps={t.steps}, admin_ops={t.admin_ops}"
            f" (refused as predicted: {t.admin_refused}, tenants created: {t.tenants_created}),"
            f" checks={t.checks} (single: {t.single_checks}, via reader: {t.reader_checks}),"
            f" config_checks={t.config_checks}, disagreements={t.disagreements}, cross_tenant={t.cross_tenant},"
            f" elapsed={elapsed:.1f}s"
        )

    def coverage(self) -> str:
        reasons = ", ".join(f"{name}={count}" for name, count in sorted(self.tally.reasons.items()))
        outcomes = ", ".join(f"{name}: {count}" for name, count in sorted(self.tally.outcomes.items()))
        return f"decisions: {reasons}\nadmin outcomes: {outcomes}"

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
            self.tally.steps = self.step
            # A wrong check leaves both states as they were, so the walk goes on and
            # counts; but a broken server need not be walked to the end.
            if self.failing_steps >= MAX_FAILING_STEPS:
                return


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value, 0) if value else default


async def test_two_tenants_never_see_each_other(
    sim_sidecars: tuple[Client, Client], unique: str, record_property: Any
) -> None:
    seed = _env_int("GATEHOUSE_SIM_SEED", None)
    if seed is None:
        seed = secrets.randbits(32)
    steps = _env_int("GATEHOUSE_SIM_STEPS", DEFAULT_STEPS) or DEFAULT_STEPS
    writer, reader = sim_sidecars
    simulation = Simulation(writer, reader, seed, unique)
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
