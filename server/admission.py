"""Admission control: a bound on in-flight calls per method class, beyond which a call is
refused at once with RESOURCE_EXHAUSTED (`GATEHOUSE_OVERLOADED`, `grpc-retry-pushback-ms`).

Two layers:

* grpc's own `maximum_concurrent_rpcs` (`--max-concurrent-rpcs`, set in server/app.py)
  counts every call from the moment grpc.aio creates its task until it ends, waiting or
  running, watch streams included, and refuses the rest with RESOURCE_EXHAUSTED
  ("Concurrent RPC limit exceeded!", no ErrorInfo) before any of our code runs: the
  process-wide bound on calls parked in Python (awaiting Postgres, Redis, Argon2).
* `Admission` (this module, one link of the interceptor chain) counts calls inside a
  handler, per class: hot (AccessService, Envoy's ext_authz Check), config (GetTenantConfig), watch
  (WatchTenantConfig streams: the cap on concurrent watches), admin (AdminService),
  lookup (LookupService: a LookupSubjects can read and decide a whole tenant, so it gets
  slots of its own and never takes the hot path's).
  Those are the calls that wait on something, so one slow class cannot take every slot
  of the process and starve the others. Health and reflection are exempt: a probe must
  get through an overloaded process.

What neither can do (measured, bench/results/overload-*.md): bound a flood of *cache
hits*. A remembered answer never awaits, so such calls are never in flight next to each
other in Python; the backlog builds inside grpc's C core, before grpc.aio hands the call
to Python, and refusing costs as much as answering: an empty grpc.aio handler serves
11.6k calls/s on this machine, refuses 9.0k/s with `context.abort` and 16.0k/s through
`maximum_concurrent_rpcs`, so past ~1.4x its ceiling a process cannot even refuse what
arrives. That bound is core's: `GATEHOUSE_MAX_PENDING_CALLS` (server/app.py,
`grpc.server.max_pending_requests`) refuses calls past it in C, as CANCELLED, counted
by server/core_calls.py.

Cost on the hot path: one more coroutine frame, a comparison, an increment and a
decrement around the handler: 0.12-0.14 µs per call in-process (200,000 awaits of a bare
coroutine wrapped by CallCounter and Admission, against CallCounter alone: 0.23 -> 0.35 µs,
3 runs), next to ~16 µs for a remembered CheckAccess. A refusal sends a status built once per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import grpc

from gatehouse.errors import Overloaded
from gatehouse.server.errors import Trailers, grpc_code, trailers_of
from gatehouse.server.interceptors import StreamHandler, UnaryHandler

# Method classes, by full method name (prefix or exact). Anything else is exempt.
HOT, CONFIG, WATCH, ADMIN, LOOKUP = "hot", "config", "watch", "admin", "lookup"
CLASSES = (HOT, CONFIG, WATCH, ADMIN, LOOKUP)

# How long a refused caller should wait before retrying, per class: about the time the
# class's queue needs to drain (a hot call is ~0.1 ms of CPU; an admin call waits on
# Postgres and maybe Argon2; a watch slot frees when a watcher leaves, which is slow).
RETRY_AFTER_MS = {HOT: 50, CONFIG: 50, WATCH: 5_000, ADMIN: 250, LOOKUP: 250}


# Envoy's ext_authz Check (server/ext_authz.py): a CheckAccess in Envoy's words.
EXT_AUTHZ_CHECK = "/envoy.service.auth.v3.Authorization/Check"


def method_class(method: str) -> str | None:
    """The class of the full method name `/package.Service/Method`; None = exempt."""
    if method.startswith("/gatehouse.v1.AccessService/") or method == EXT_AUTHZ_CHECK:
        return HOT
    if method == "/gatehouse.v1.ConfigService/WatchTenantConfig":
        return WATCH
    if method.startswith("/gatehouse.v1.ConfigService/"):
        return CONFIG
    if method.startswith("/gatehouse.v1.AdminService/"):
        return ADMIN
    if method.startswith("/gatehouse.v1.LookupService/"):
        return LOOKUP
    return None


@dataclass(slots=True)
class Gate:
    """One class's bound: calls inside its handlers now, and refused so far."""

    name: str
    limit: int
    in_flight: int = 0
    shed: int = 0
    error: Overloaded | None = None
    trailers: Trailers = ()

    def __post_init__(self) -> None:
        self.error = Overloaded(self.name, self.limit, RETRY_AFTER_MS[self.name])
        self.trailers = trailers_of(self.error)

    def enter(self) -> None:
        """Count one call in, or (at the bound) count it shed and raise `Overloaded`: the
        same bound for a caller outside the gRPC chain (the AuthZEN HTTP listener shares
        the hot class with AccessService). Every `enter` that returns needs its `leave`."""
        if self.in_flight >= self.limit:
            self.shed += 1
            assert self.error is not None
            raise self.error
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.shed += 1
        assert self.error is not None
        await context.abort(grpc_code(self.error), self.error.message, trailing_metadata=self.trailers)


class Admission:
    """The per-class bound, as an interceptor (server/interceptors.py). `limits`: the
    bound of each class; 0 or a missing class means unbounded."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self.gates = {name: Gate(name, limit) for name, limit in limits.items() if limit > 0}

    def unary(self, method: str, handler: UnaryHandler) -> UnaryHandler:
        gate = self.gates.get(method_class(method) or "")
        if gate is None:
            return handler

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if gate.in_flight >= gate.limit:
                await gate.refuse(context)
            gate.in_flight += 1
            try:
                return await handler(request, context)
            finally:
                gate.in_flight -= 1

        return admitted

    def stream(self, method: str, handler: StreamHandler) -> StreamHandler:
        gate = self.gates.get(method_class(method) or "")
        if gate is None:
            return handler

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if gate.in_flight >= gate.limit:
                await gate.refuse(context)
            gate.in_flight += 1
            try:
                async for response in handler(request, context):
                    yield response
            finally:
                gate.in_flight -= 1

        return admitted

    def values(self) -> dict[str, float]:
        """For the stats registry: `in_flight{class=...}`, `shed{class=...}`, `limit{class=...}`."""
        out: dict[str, float] = {}
        for name, gate in self.gates.items():
            out[f"in_flight{{class={name}}}"] = gate.in_flight
            out[f"shed{{class={name}}}"] = gate.shed
            out[f"limit{{class={name}}}"] = gate.limit
        return out
