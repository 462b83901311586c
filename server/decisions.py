"""The one decision service: "may this subject do this here?" asked in plain values.

    evaluate(tenant_id, subject, permission, scope, min_revision, now)
      → PolicyCache.tenant (L1 | L2 | store) → engine.needs_subject?
      → PolicyCache.subject → engine.decide → Evaluation(decision, what it read)

CheckAccess and CheckAccessBatch (server/access.py), AdminService authorization
(server/admin_authz.py) and any later adapter (ext_authz, AuthZEN) ask through it, so
steps 2-6 of DESIGN.md "Decision semantics" are written once, in the engine, and read
once, here. It knows nothing of gRPC: callers validate (step 1) and shape the answer.

With the decision log on (server/decision_log.py), each decision also gets its
`DecisionRecord`, offered to the log here and kept on the Evaluation, so an answer
remembered from it is logged with the same fields when it is given again.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatehouse.cache.policy_cache import CachedTenant, PolicyCache
from gatehouse.engine.conditions import ConditionFacts
from gatehouse.engine.decision import Decision, SubjectGrants, decide, decided_until, needs_subject
from gatehouse.engine.model import SubjectRef
from gatehouse.server.decision_log import DecisionLog, DecisionRecord


@dataclass(slots=True)
class Evaluation:
    """One decision and exactly what it was decided from (the entries, and when), so an
    answer may be remembered while those entries stay current (`cache.answers`)."""

    decision: Decision
    tenant: CachedTenant | None
    subject_key: str | None  # None: the decision did not read the subject
    grants: SubjectGrants | None
    now: float  # unix seconds the question was asked at
    record: DecisionRecord | None = None  # set while the decision log is on

    @property
    def valid_until(self) -> float:
        """Unix seconds until which the same entries give the same decision (a key's
        expiry, the allowing grant's expiry; `now` when a condition read the time)."""
        return decided_until(self.grants, self.now, self.decision)


class DecisionService:
    def __init__(self, cache: PolicyCache, log: DecisionLog | None = None) -> None:
        self._cache = cache
        # None when the decision log is off: then deciding costs nothing more.
        self.log = log if log is not None and log.mode != "off" else None

    def session(self) -> "DecisionSession":
        """A memo for one call with many questions (a batch): each distinct tenant and
        (tenant, subject) is looked up once, so every answer reads one snapshot of it."""
        return DecisionSession(self._cache, self.log)

    async def evaluate(
        self,
        tenant_id: str,
        subject: SubjectRef,
        permission: str,
        scope: str,
        min_revision: int,
        now: float,
        facts: ConditionFacts | None = None,
    ) -> Evaluation:
        """Steps 2-6 for one validated question; `facts` gives what conditions may read of
        it (None: no attributes, no context). Raises RevisionNotReached (min_revision
        above the tenant's revision) and StoreUnavailable (nothing cached, Postgres down)."""
        return await self.session().evaluate(tenant_id, subject, permission, scope, min_revision, now, facts)


class DecisionSession:
    __slots__ = ("_cache", "_log", "_tenants", "_subjects")

    def __init__(self, cache: PolicyCache, log: DecisionLog | None = None) -> None:
        self._cache = cache
        self._log = log
        self._tenants: dict[tuple[str, int], CachedTenant | None] = {}
        self._subjects: dict[tuple[str, str, int], SubjectGrants | None] = {}

    async def evaluate(
        self,
        tenant_id: str,
        subject: SubjectRef,
        permission: str,
        scope: str,
        min_revision: int,
        now: float,
        facts: ConditionFacts | None = None,
    ) -> Evaluation:
        """`DecisionService.evaluate`, reusing what this session already looked up."""
        tenant = await self._tenant(tenant_id, min_revision)
        policy = tenant.policy if tenant is not None else None
        grants = subject_key = None
        if needs_subject(policy, permission):
            subject_key = subject.key
            grants = await self._subject(tenant_id, subject, min_revision)
            if tenant is not None and grants is not None and grants.revision > tenant.revision:
                # The subject was read at a later revision than the tenant (a write landed
                # in between, or the tenant entry predates it): read the tenant again, at
                # least there, so the answer is computed at the revision it names.
                tenant = await self._tenant(tenant_id, grants.revision)
                policy = tenant.policy if tenant is not None else None
                if not needs_subject(policy, permission):
                    grants = subject_key = None
        decision = decide(policy, grants, permission, scope, now=now, facts=facts)
        evaluation = Evaluation(decision, tenant, subject_key, grants, now)
        if self._log is not None:
            evaluation.record = DecisionRecord.of(tenant_id, subject.key, permission, scope, evaluation.decision)
            self._log.offer(evaluation.record, remembered=False)
        return evaluation

    async def entries(
        self, tenant_id: str, subject: SubjectRef, min_revision: int
    ) -> tuple[CachedTenant | None, SubjectGrants | None]:
        """The tenant and the subject's grants `evaluate` decides from, at one revision
        (the tenant read again when the grants are newer), whatever the tenant's status:
        what ListSubjectPermissions lists and decides every permission with."""
        tenant = await self._tenant(tenant_id, min_revision)
        if tenant is None:
            return None, None
        grants = await self._subject(tenant_id, subject, min_revision)
        if grants is not None and grants.revision > tenant.revision:
            tenant = await self._tenant(tenant_id, grants.revision)
        return tenant, grants

    async def _tenant(self, tenant_id: str, min_revision: int) -> CachedTenant | None:
        key = (tenant_id, min_revision)
        if key not in self._tenants:
            self._tenants[key] = await self._cache.tenant(tenant_id, min_revision)
        return self._tenants[key]

    async def _subject(self, tenant_id: str, subject: SubjectRef, min_revision: int) -> SubjectGrants | None:
        key = (tenant_id, subject.key, min_revision)
        if key not in self._subjects:
            self._subjects[key] = await self._cache.subject(tenant_id, subject, min_revision)
        return self._subjects[key]
