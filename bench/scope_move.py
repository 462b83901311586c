"""python -m bench.scope_move [--assignments N ...]: how long a MoveScope of N role
assignments takes (README "Org-unit moves").

For each N: one tenant of N members, each holding `viewer` at one of --scopes teams
below `org/eu/sales` (default 50 distinct scopes; N rows), beside N/10 assignments that stay
(`org/eu/salesforce`). The subtree is moved to `org/emea/sales` and back, RUNS times each
way, and each move is timed:

* store: `PostgresStore.move_scope` alone (the transaction: select, roles, conflicts,
  update, revision + audit + outbox);
* grpc: AdminService/MoveScope on an in-process sidecar, as an operator and as a tenant
  key holding `delegate` at `org` (the escalation guard checks its grants at each
  moved scope, old and new), through authentication, the guard and the cache listener.

A throwaway database and Redis prefix (bench.dataset.BenchStorage), removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any, Awaitable, Callable, Sequence

import asyncpg
import grpc

from bench.dataset import BenchStorage
from bench.scenarios import _operator_token
from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse.store.api import Actor, MovedGrant
from gatehouse.store.postgres import connect
from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc

RUNS = 3
SOURCE, TARGET = "org/eu/sales", "org/emea/sales"


async def _seed(store: Any, dsn: str, n: int, teams: int) -> str:
    tenant = await store.create_tenant(Actor("bench"), slug=f"move-{uuid.uuid4().hex[:8]}", name="Move bench",
                                       plan="", region="eu", settings={})
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('gatehouse.tenant_id', '*', true)")
            tid = uuid.UUID(tenant.id)
            subjects = [f"u{i}" for i in range(n + n // 10)]
            await conn.execute(
                "INSERT INTO memberships (tenant_id, subject_type, subject_id) SELECT $1, 'user', s FROM unnest($2::text[]) s",
                tid, subjects,
            )
            scopes = [f"{SOURCE}/team{i % teams}" for i in range(n)] + ["org/eu/salesforce"] * (n // 10)
            await conn.execute(
                """
                INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)
                SELECT $1, 'user', s, 'viewer', sc FROM unnest($2::text[], $3::text[]) AS a (s, sc)
                """,
                tid, subjects, scopes,
            )
            await conn.execute("UPDATE tenants SET status = 'active' WHERE id = $1", tid)
    finally:
        await conn.close()
    return str(tenant.id)


async def _allow(grants: Sequence[MovedGrant]) -> None:
    return None


async def _timed(move: Callable[[str, str], Awaitable[int]]) -> list[float]:
    """Milliseconds of each move, there and back RUNS times."""
    times = []
    for _ in range(RUNS):
        for source, target in ((SOURCE, TARGET), (TARGET, SOURCE)):
            start = time.perf_counter()
            moved = await move(source, target)
            times.append((time.perf_counter() - start) * 1000)
            assert moved > 0
    return times


def _summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}, {len(times)} moves)"


async def main(sizes: list[int], teams: int) -> None:
    storage = BenchStorage()
    await storage.create()
    try:
        token = await _operator_token(storage.dsn)
        store = await connect(storage.dsn, min_size=1, max_size=4)
        settings = Settings(listen="127.0.0.1:0", database_url=storage.dsn, redis_url=storage.redis_url,
                            redis_prefix=storage.redis_prefix, operator_key="gh_op_unused-bench-key-0123456789")
        sidecar = Sidecar(settings)
        await sidecar.start()
        channel = grpc.aio.insecure_channel(sidecar.addresses[0])
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        operator = (("authorization", f"Bearer {token}"),)
        try:
            for n in sizes:
                tenant_id = await _seed(store, storage.dsn, n, teams)

                async def by_store(source: str, target: str) -> int:
                    done = await store.move_scope(Actor("bench"), tenant_id, from_scope=source, to_scope=target,
                                                  keep_existing=False, guard=_allow)
                    return done.moved

                await admin.CreateRole(admin_pb2.CreateRoleRequest(
                    tenant_id=tenant_id, name="delegate", permissions=["gatehouse.*", "*.read", "*.list", "*.get"]),
                    metadata=operator)
                key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(
                    tenant_id=tenant_id, name="mover", permissions=["*"], roles=[admin_pb2.RoleGrant(role="delegate", scope="org")]),
                    metadata=operator)

                def by_grpc(auth: tuple[tuple[str, str], ...]) -> Callable[[str, str], Awaitable[int]]:
                    async def call(source: str, target: str) -> int:
                        done = await admin.MoveScope(admin_pb2.MoveScopeRequest(
                            tenant_id=tenant_id, from_scope=source, to_scope=target), metadata=auth, timeout=120)
                        return int(done.moved)
                    return call

                print(f"{n} assignments ({min(n, teams)} scopes), {n // 10} staying beside them:")
                print(f"  store            {_summary(await _timed(by_store))}")
                print(f"  grpc, operator   {_summary(await _timed(by_grpc(operator)))}")
                tenant_key = (("authorization", f"Bearer {key.secret}"),)
                print(f"  grpc, tenant key {_summary(await _timed(by_grpc(tenant_key)))}")
        finally:
            await channel.close()
            await sidecar.stop(grace=0)
            await store.close()
    finally:
        await storage.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.scope_move", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignments", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--scopes", type=int, default=50, help="distinct scopes the moved assignments are at")
    args = parser.parse_args()
    asyncio.run(main(args.assignments, args.scopes))
