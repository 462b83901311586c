"""python -m bench.conditions_cost: what a condition costs a check (README "Conditions").

Decisions per second of the real CheckAccess servicer (`AccessServicer`: parse, validate,
decide, serialize) over an in-memory store (no Postgres, no Redis: every tenant and
subject is an L1 hit after its first load), three ways:

* `remembered`: the same request again and again, answered from `cache.answers` (the
  hit path a condition must not slow down: its code does not change);
* `decided, no condition`: every request distinct (resource id), so each is decided: a
  member holding a plain grant;
* `decided, condition`: every request distinct, the grant carries
  `resource.attributes.owner == subject.id` and the request carries the attribute.

Each in-process (a loop awaiting the handler, best and worst of RUNS) and over gRPC (a
grpc.aio server in a child process, a closed-loop grpc.aio client with CONCURRENCY calls in
flight in this one; the client is Python too, so these are floors of the server's rate).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from typing import Any

import grpc
from google.protobuf import struct_pb2

from gatehouse.cache.answers import Answers
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.model import (
    AssignmentRow,
    Plan,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
)
from gatehouse.server.access import AccessServicer
from gatehouse.server.decisions import DecisionService
from gatehouse.server.wire import EncodedAnswer
from gatehouse_client.v1 import access_pb2, common_pb2

TENANT = "00000000-0000-4000-8000-000000000001"
CONDITION = "resource.attributes.owner == subject.id"
CALLS = 20_000
RUNS = 3
CONCURRENCY = 32
GRPC_SECONDS = 4.0


class MemoryStore:
    """A StoreReader holding one active tenant: `plain` holds `editor` (doc.*) for good,
    `owner` holds it under CONDITION."""

    async def ping(self) -> None:
        return None

    async def schema_version(self) -> int:
        return 0

    async def schema_fit(self, expected: int) -> str | None:
        return None

    async def load_tenant(self, tenant_id: str) -> TenantSnapshot | None:
        record = TenantRecord(TENANT, "bench", "Bench", TenantStatus.ACTIVE, "p", "", {}, {}, {}, 1)
        return TenantSnapshot(record, Plan("p")) if tenant_id == TENANT else None

    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> SubjectSnapshot | None:
        condition = CONDITION if subject.id == "owner" else ""
        row = AssignmentRow("editor", "", ("doc.*",), None, condition)
        return SubjectSnapshot(TENANT, subject, 1, True, (row,))


def request(kind: str, n: int) -> bytes:
    attributes = None
    if kind == "condition":
        attributes = struct_pb2.Struct()
        attributes.update({"owner": "owner"})
    message = access_pb2.CheckAccessRequest(
        tenant_id=TENANT,
        subject=common_pb2.Subject(type="user", id="owner" if kind == "condition" else "plain"),
        permission="doc.edit",
        resource=common_pb2.Resource(type="doc", id=f"d{n}", attributes=attributes),
    )
    return message.SerializeToString()


def servicer(remember: int) -> AccessServicer:
    cache = PolicyCache(MemoryStore(), None, max_entries=10_000, ttl_seconds=3600)  # type: ignore[arg-type]  # the reads it needs
    answers: Answers[EncodedAnswer] = Answers(cache, remember)
    return AccessServicer(DecisionService(cache), answers)


CASES = {
    "remembered": ("plain", True),
    "decided, no condition": ("plain", False),
    "decided, condition": ("condition", False),
}


class _Context:
    def invocation_metadata(self) -> Any:
        return ()


async def in_process(kind: str, same: bool) -> list[float]:
    service = servicer(100_000)
    bodies = [request(kind, 0 if same else n) for n in range(CALLS)]
    context: Any = _Context()
    rates = []
    for _ in range(RUNS):
        if not same:
            service._answers.clear()
        for body in bodies[:100]:  # warm L1
            await service.CheckAccess(body, context)
        if not same:
            service._answers.clear()
        start = time.perf_counter()
        for body in bodies:
            answer = await service.CheckAccess(body, context)
        rates.append(CALLS / (time.perf_counter() - start))
        assert access_pb2.CheckAccessResponse.FromString(answer).allowed
    return rates


def _serve(port: int, ready: Any) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        service = servicer(100_000)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "gatehouse.v1.AccessService", {"CheckAccess": grpc.unary_unary_rpc_method_handler(service.CheckAccess)}
        )])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


async def over_grpc(port: int, kind: str, same: bool) -> float:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/gatehouse.v1.AccessService/CheckAccess")
    counter = iter(range(10**9))
    done = 0
    stop = time.perf_counter() + GRPC_SECONDS

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call(request(kind, 0 if same else next(counter)))
            done += 1

    for _ in range(200):
        await call(request(kind, 0 if same else next(counter)))
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    rate = done / (time.perf_counter() - start)
    await channel.close()
    return rate


def main() -> None:
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print("in-process, decisions/s (best .. worst of 3 runs of 20,000):")
    for name, (kind, same) in CASES.items():
        rates = asyncio.run(in_process(kind, same))
        print(f"  {name:24} {max(rates):>10,.0f} .. {min(rates):,.0f}")
    port = 50_000 + os.getpid() % 10_000
    ready = multiprocessing.get_context("spawn").Event()
    child = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, ready), daemon=True)
    child.start()
    ready.wait(30)
    try:
        print(f"over gRPC, calls/s (closed loop, {CONCURRENCY} in flight, {GRPC_SECONDS:.0f} s, median of 3):")
        for name, (kind, same) in CASES.items():
            rates = [asyncio.run(over_grpc(port, kind, same)) for _ in range(3)]
            print(f"  {name:24} {statistics.median(rates):>10,.0f}  (runs {', '.join(f'{r:,.0f}' for r in rates)})")
    finally:
        child.kill()


if __name__ == "__main__":
    main()
