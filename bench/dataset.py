"""The bench's own database and Redis prefix, the skewed data seeded into them, and the
pre-encoded requests the generators send.

Like tests/conftest.py: a database `gh_bench_<random>` owned by the owner role, migrated
to the latest schema by it (granting the runtime role its DML), dropped at the end;
sidecars under test connect as the runtime role (`dsn`), exactly as deployed. Redis keys
under `ghbench<random>…`, deleted at the end. Nothing a running sidecar uses is touched.

Seeding writes straight to the tables in one transaction as the runtime role under
platform scope (`gatehouse.tenant_id = '*'`), with one multi-row INSERT per table (unnest
of arrays): 1,000 tenants with ~35 members each take about a second. COPY is not an
option: Postgres refuses COPY FROM into a table under row-level security. The owner then
runs ANALYZE (only a table's owner may).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import re
import secrets
import uuid
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis

from gatehouse_client.v1 import access_pb2, common_pb2, config_pb2

PG_ADMIN_URL = os.environ.get("GATEHOUSE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_OWNER_ROLE = os.environ.get("GATEHOUSE_BENCH_PG_OWNER_ROLE", "gatehouse")
PG_RUNTIME_ROLE = os.environ.get("GATEHOUSE_BENCH_PG_RUNTIME_ROLE", "gatehouse_app")
PG_HOST = os.environ.get("GATEHOUSE_BENCH_PG_HOST", "127.0.0.1:5432")
REDIS_URL = os.environ.get("GATEHOUSE_REDIS_URL", "redis://127.0.0.1:6379/0")

PLAN = "bench"
PLAN_FEATURES = {
    "reports": {"default_enabled": True, "gates": ["report.*"]},
    "exports": {"default_enabled": False, "gates": ["export.*"]},
}
PLAN_QUOTAS = {"seats": 50, "projects": 20, "api_calls_per_day": 1_000_000}
PLAN_RATE_LIMITS = {"check_per_second": 1000, "admin_per_second": 10}

SYSTEM_ROLES: dict[str, list[str]] = {
    "owner": ["*"],
    "admin": ["*"],
    "member": [],
    "viewer": ["*.read", "*.list", "*.get"],
}
CUSTOM_ROLES: dict[str, list[str]] = {
    "accountant": ["invoice.*", "payment.read", "payment.list"],
    "auditor": ["*.read", "report.*"],
    "support": ["ticket.*", "customer.read"],
    "developer": ["deploy.*", "log.read", "service.get"],
}
# What a concrete permission looks like for each resource family.
ACTIONS = ("read", "list", "get", "create", "update", "delete")
FAMILIES = ("invoice", "payment", "report", "ticket", "customer", "deploy", "log", "service")

# The org-unit tree every tenant uses: leaves, and every prefix of them, are scopes.
_LEAVES = (
    "emea/de/berlin", "emea/de/munich", "emea/fr/paris", "emea/uk/london", "emea/uk/leeds",
    "amer/us/nyc", "amer/us/sfo", "amer/us/austin", "amer/ca/toronto", "apac/jp/tokyo", "apac/au/sydney",
)
SCOPES: tuple[str, ...] = tuple(
    sorted({"/".join(leaf.split("/")[:n]) for leaf in _LEAVES for n in (1, 2, 3)})
)
LEAVES = _LEAVES


def _pattern_matches(pattern: str, permission: str) -> bool:
    """DESIGN.md's pattern rule: `*` stands for one or more whole segments."""
    regex = r"\.".join(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*" if seg == "*" else re.escape(seg) for seg in pattern.split("."))
    return re.fullmatch(regex, permission) is not None


def _covers(assigned: str, scope: str) -> bool:
    return assigned == "" or scope == assigned or scope.startswith(assigned + "/")


ROLE_PERMISSIONS = {**SYSTEM_ROLES, **CUSTOM_ROLES}


@dataclass(frozen=True, slots=True)
class Member:
    subject_id: str
    assignments: tuple[tuple[str, str], ...]  # (role, scope)

    def allows(self, permission: str, scope: str) -> bool:
        """The answer Gatehouse must give (tenant active, feature `reports` on, `exports` off)."""
        if permission.startswith("export."):
            return False
        return any(
            _covers(assigned_scope, scope) and any(_pattern_matches(p, permission) for p in ROLE_PERMISSIONS[role])
            for role, assigned_scope in self.assignments
        )


@dataclass(slots=True)
class Tenant:
    id: str
    slug: str
    hot: list[Member] = field(default_factory=list)  # asked about under load (hit, L2)
    cold: list[Member] = field(default_factory=list)  # asked about once each (miss)


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1/(k+1)^s."""

    def __init__(self, n: int, s: float) -> None:
        self._cum = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))

    def sample(self, rng: random.Random) -> int:
        return bisect.bisect_left(self._cum, rng.random() * self._cum[-1])


@dataclass(frozen=True, slots=True)
class EncodedCheck:
    body: bytes  # a serialized CheckAccessRequest (no gRPC framing)
    allowed: bool  # the expected answer


class Dataset:
    """What was seeded, in popularity order (tenant rank 0 is the most asked-about)."""

    def __init__(self, tenants: list[Tenant], *, zipf_s: float, seed: int) -> None:
        self.tenants = tenants
        self.zipf_s = zipf_s
        self._tenant_rank = Zipf(len(tenants), zipf_s)
        self._member_rank = Zipf(max(len(t.hot) for t in tenants), zipf_s)
        self._rng = random.Random(seed ^ 0x5EED)
        self._cold_used = 0

    @property
    def member_count(self) -> int:
        return sum(len(t.hot) + len(t.cold) for t in self.tenants)

    # --- requests -------------------------------------------------------------------------

    def _check(self, tenant: Tenant, member: Member, rng: random.Random, deny_share: float = 0.2) -> EncodedCheck:
        role, scope = rng.choice(member.assignments)
        if rng.random() < deny_share:
            # Something probably not granted: an export (feature off) or a write outside.
            permission = rng.choice(("export.create", "secret.delete", "billing.update"))
            resource_scope = rng.choice(LEAVES)
        else:
            pattern = rng.choice(ROLE_PERMISSIONS[role] or ["member.read"])
            family = rng.choice(FAMILIES)
            if pattern == "*":
                permission = f"{family}.{rng.choice(ACTIONS)}"
            else:
                permission = pattern.replace("*", family if pattern.startswith("*") else rng.choice(ACTIONS))
            below = [leaf for leaf in LEAVES if _covers(scope, leaf)]
            resource_scope = rng.choice(below) if below else scope
        request = access_pb2.CheckAccessRequest(
            tenant_id=tenant.id,
            subject=common_pb2.Subject(type="user", id=member.subject_id),
            permission=permission,
            resource=common_pb2.Resource(type=permission.split(".")[0], id=str(rng.randrange(1, 10**6)), scope=resource_scope),
        )
        return EncodedCheck(request.SerializeToString(), member.allows(permission, resource_scope))

    def hot_pick(self, rng: random.Random) -> tuple[Tenant, Member]:
        tenant = self.tenants[self._tenant_rank.sample(rng)]
        member = tenant.hot[min(self._member_rank.sample(rng), len(tenant.hot) - 1)]
        return tenant, member

    def hot_checks(self, n: int, seed: int = 1) -> list[EncodedCheck]:
        """`n` checks with Zipf-skewed tenant and subject (repeats are the point)."""
        rng = random.Random(seed)
        return [self._check(*self.hot_pick(rng), rng) for _ in range(n)]

    def top_check(self) -> EncodedCheck:
        """The single most popular key, asked an allowed question (what h2load repeats)."""
        rng = random.Random(7)
        tenant = self.tenants[0]
        return self._check(tenant, tenant.hot[0], rng, deny_share=0.0)

    def cold_checks(self, n: int, seed: int = 2) -> list[EncodedCheck]:
        """`n` checks, each about a (tenant, subject) never asked about before in this run."""
        pool = [(t, m) for t in self.tenants for m in t.cold]
        start = self._cold_used
        if start + n > len(pool):
            raise RuntimeError(
                f"need {n} never-seen subjects but only {len(pool) - start} are left: raise --cold-members"
            )
        self._cold_used += n
        rng = random.Random(seed)
        chosen = pool[start : start + n]
        rng.shuffle(chosen)
        return [self._check(t, m, rng) for t, m in chosen]

    def batch_body(self, size: int, seed: int = 3) -> tuple[bytes, list[bool]]:
        checks = self.hot_checks(size, seed)
        request = access_pb2.CheckAccessBatchRequest(
            checks=[access_pb2.CheckAccessRequest.FromString(c.body) for c in checks]
        )
        return request.SerializeToString(), [c.allowed for c in checks]

    def config_bodies(self, n: int, seed: int = 4) -> list[bytes]:
        rng = random.Random(seed)
        return [
            config_pb2.GetTenantConfigRequest(tenant_id=self.tenants[self._tenant_rank.sample(rng)].id).SerializeToString()
            for _ in range(n)
        ]

    def top_config(self) -> bytes:
        return config_pb2.GetTenantConfigRequest(tenant_id=self.tenants[0].id).SerializeToString()


def generate(tenants: int, members: int, cold_members: int, *, zipf_s: float = 1.1, seed: int = 42) -> Dataset:
    """The data, in memory: `members` hot and `cold_members` cold subjects per tenant."""
    rng = random.Random(seed)
    custom = list(CUSTOM_ROLES)
    out: list[Tenant] = []
    for i in range(tenants):
        tenant = Tenant(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), slug=f"bench-{i:05d}")
        for kind, count, into in (("u", members, tenant.hot), ("c", cold_members, tenant.cold)):
            for j in range(count):
                if kind == "u" and j == 0:
                    assignments: tuple[tuple[str, str], ...] = (("owner", ""),)
                else:
                    picks = {
                        (rng.choice(custom) if rng.random() < 0.85 else "viewer", rng.choice(SCOPES))
                        for _ in range(rng.choice((1, 1, 2, 2, 3)))
                    }
                    assignments = tuple(sorted(picks))
                into.append(Member(f"{kind}{j:05d}", assignments))
        out.append(tenant)
    return Dataset(out, zipf_s=zipf_s, seed=seed)


# --- database and Redis -------------------------------------------------------------------


class BenchStorage:
    """This run's database and Redis key prefix; `close()` removes both."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or secrets.token_hex(4)
        self.database = f"gh_bench_{self.run_id}"
        self.dsn = f"postgresql://{PG_RUNTIME_ROLE}@{PG_HOST}/{self.database}"  # what sidecars use
        self.owner_dsn = f"postgresql://{PG_OWNER_ROLE}@{PG_HOST}/{self.database}"  # migrations, ANALYZE
        self.redis_url = REDIS_URL
        self.redis_prefix = f"ghbench{self.run_id}"
        self._created = False

    async def create(self) -> None:
        from gatehouse.store.migrate import migrate_up

        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}" OWNER "{PG_OWNER_ROLE}"')
        finally:
            await conn.close()
        self._created = True
        await migrate_up(self.owner_dsn, runtime_role=PG_RUNTIME_ROLE)

    async def seed(self, data: Dataset) -> None:
        tenants = data.tenants
        rng = random.Random(1)
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT set_config('gatehouse.tenant_id', '*', true)")
                await conn.execute(
                    "INSERT INTO plans (name, features, quotas, rate_limits) VALUES ($1, $2::jsonb, $3::jsonb, $4::jsonb)",
                    PLAN, json.dumps(PLAN_FEATURES), json.dumps(PLAN_QUOTAS), json.dumps(PLAN_RATE_LIMITS),
                )
                await conn.execute(
                    """
                    INSERT INTO tenants (id, slug, name, status, plan, region, settings, flag_overrides, status_changed_at)
                    SELECT id, slug, name, 'active', $4, region, settings::jsonb, flags::jsonb, now()
                    FROM unnest($1::uuid[], $2::text[], $3::text[], $5::text[], $6::text[], $7::text[])
                         AS t (id, slug, name, region, settings, flags)
                    """,
                    [uuid.UUID(t.id) for t in tenants],
                    [t.slug for t in tenants],
                    [f"Bench tenant {t.slug}" for t in tenants],
                    PLAN,
                    [rng.choice(("eu-west", "us-east", "ap-south")) for _ in tenants],
                    [json.dumps({"theme": rng.choice(("dark", "light")), "locale": "en", "retention_days": 30}) for _ in tenants],
                    [json.dumps({"exports": False} if rng.random() < 0.1 else {}) for _ in tenants],
                )
                roles = [(uuid.UUID(t.id), name, ",".join(perms), name in SYSTEM_ROLES)
                         for t in tenants for name, perms in ROLE_PERMISSIONS.items()]
                await conn.execute(
                    """
                    INSERT INTO roles (tenant_id, name, permissions, system)
                    SELECT t, n, string_to_array(p, ','), s FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[]) AS r (t, n, p, s)
                    """,
                    *map(list, zip(*roles)),
                )
                members = [(uuid.UUID(t.id), m) for t in tenants for m in itertools.chain(t.hot, t.cold)]
                await conn.execute(
                    """
                    INSERT INTO memberships (tenant_id, subject_type, subject_id)
                    SELECT t, 'user', s FROM unnest($1::uuid[], $2::text[]) AS m (t, s)
                    """,
                    [tid for tid, _ in members],
                    [m.subject_id for _, m in members],
                )
                grants = [(tid, m.subject_id, role, scope) for tid, m in members for role, scope in m.assignments]
                await conn.execute(
                    """
                    INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)
                    SELECT t, 'user', s, r, sc FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS a (t, s, r, sc)
                    """,
                    *map(list, zip(*grants)),
                )
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.owner_dsn)
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    async def close(self) -> None:
        """Drop the database and delete every key under the prefix (best effort, both)."""
        errors: list[str] = []
        if self._created:
            try:
                conn = await asyncpg.connect(PG_ADMIN_URL)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
                finally:
                    await conn.close()
            except Exception as exc:  # noqa: BLE001 - report, then still clean Redis
                errors.append(f"drop database {self.database}: {exc}")
        try:
            client = aioredis.from_url(self.redis_url)
            try:
                batch: list[bytes] = []
                async for key in client.scan_iter(match=f"{self.redis_prefix}*", count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        await client.delete(*batch)
                        batch.clear()
                if batch:
                    await client.delete(*batch)
            finally:
                await client.aclose()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"delete redis keys {self.redis_prefix}*: {exc}")
        if errors:
            raise RuntimeError("; ".join(errors))
