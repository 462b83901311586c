"""python -m bench.log_cost: what the logs add per hot call, in-process (README "Logs").

Times, 3 runs each, best and worst of the per-call means:

* the call scope (server/call_log.py) around a bare coroutine handler, against the bare
  handler awaited the same way: what every hot call pays once the decision log or the hot
  access log is on (off: the handler is registered unwrapped and pays nothing);
* `DecisionLog.offer` of one answer inside a call scope, per mode: what a remembered or
  decided answer pays on top (sampled at 1 %: a `random()` and a comparison, and 1 in 100
  the queue entry with the call's request id; all: every answer queued). The writer
  thread is not running, so this is the hot path's own share; the queue is emptied
  between runs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Awaitable, Callable

from gatehouse import logs
from gatehouse.engine.decision import Decision
from gatehouse.engine.model import Reason
from gatehouse.server.call_log import CallLog
from gatehouse.server.decision_log import DecisionLog, DecisionRecord

CALLS = 200_000
RUNS = 3
METADATA = (("x-request-id", "bench-request"), ("user-agent", "grpc-python"))


class _Context:
    def invocation_metadata(self) -> Any:
        return METADATA


async def _bare(request: Any, context: Any) -> bytes:
    return b""


async def _per_call(handler: Callable[[Any, Any], Awaitable[bytes]]) -> float:
    context = _Context()
    started = time.perf_counter()
    for _ in range(CALLS):
        await handler(b"", context)
    return (time.perf_counter() - started) / CALLS * 1e6


def _offer_cost(mode: str) -> float:
    log = DecisionLog(mode, sample_rate=0.01, max_queue=CALLS + 1)
    record = DecisionRecord.of(
        "0b0e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4", "user/alice", "invoice.read", "emea/de",
        Decision(True, Reason.ALLOWED, 7, "reader", "emea"),
    )
    total = 0.0
    for _ in range(CALLS):
        # A fresh scope per call, as each call has: the request id is read once per call.
        token = logs.enter_call(logs.CallScope("/gatehouse.v1.AccessService/CheckAccess", _Context().invocation_metadata))
        started = time.perf_counter()
        log.offer(record, remembered=True)
        total += time.perf_counter() - started
        logs.leave_call(token)
    return total / CALLS * 1e6


def _span(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} µs [{min(values):.3f}–{max(values):.3f}]"


async def main() -> None:
    scoped = CallLog(scope_hot=True).unary("/gatehouse.v1.AccessService/CheckAccess", _bare)
    bare_runs, scoped_runs = [], []
    for _ in range(RUNS):
        bare_runs.append(await _per_call(_bare))
        scoped_runs.append(await _per_call(scoped))
    added = [s - b for s, b in zip(scoped_runs, bare_runs)]
    print(f"bare handler            {_span(bare_runs)} per call")
    print(f"with the call scope     {_span(scoped_runs)} per call (adds {_span(added)})")
    for mode in ("denials", "sampled", "all"):
        print(f"offer, {mode:8s} (1 %)  {_span([_offer_cost(mode) for _ in range(RUNS)])} per answer"
              if mode == "sampled" else f"offer, {mode:8s}        {_span([_offer_cost(mode) for _ in range(RUNS)])} per answer")


if __name__ == "__main__":
    asyncio.run(main())
