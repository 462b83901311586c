"""python -m bench.metrics_overhead: what the RPC metrics link costs per call, in-process.

A bare coroutine handler awaited N times (200,000) directly, through `CallCounter`, and
through `CallCounter` + `RpcMetrics` (plain numbers per call, flushed to the library
once a second), + the library's values written per call (the first design), and + a
minimal plain link, with prometheus_client's values in memory and in multiprocess mode
(mmap'd files, what `serve` uses); 3 runs each, the median. Each mode runs in a fresh
interpreter (prometheus_client picks its value store at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

N = 200_000
RUNS = 3


def _measure(mode: str) -> dict[str, float]:
    import asyncio
    import bisect
    import statistics
    import time
    from collections import Counter
    from typing import Any

    from gatehouse.server.interceptors import CallCounter

    class Context:
        def code(self) -> None:
            return None

        def cancelled(self) -> bool:
            return False

    async def bare(request: Any, context: Any) -> Any:
        return request

    method = "/gatehouse.v1.AccessService/CheckAccess"

    def plain_link(handler: Any) -> Any:
        counts: Counter[str] = Counter()
        bounds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        buckets = [0] * (len(bounds) + 1)
        total = [0.0]
        clock = time.perf_counter

        async def measured(request: Any, context: Any) -> Any:
            start = clock()
            response = await handler(request, context)
            elapsed = clock() - start
            buckets[bisect.bisect_left(bounds, elapsed)] += 1
            total[0] += elapsed
            counts["OK"] += 1
            return response

        return measured

    def library_link(handler: Any) -> Any:
        """The first design: the library's values written per call."""
        from gatehouse.server.metrics import Metrics

        m = Metrics()
        ok = m.handled.labels("unary", "gatehouse.v1.AccessService", "CheckAccess", "OK").inc
        observe = m.handling.labels("unary", "gatehouse.v1.AccessService", "CheckAccess").observe
        clock = time.perf_counter

        async def measured(request: Any, context: Any) -> Any:
            start = clock()
            response = await handler(request, context)
            observe(clock() - start)
            ok()
            return response

        return measured

    from gatehouse.server.metrics import Metrics, RpcMetrics

    handlers: dict[str, Any] = {"bare": bare, "CallCounter": CallCounter().unary(method, bare)}
    if mode != "plain":
        handlers["CallCounter+library per call"] = CallCounter().unary(method, library_link(bare))
    handlers["CallCounter+RpcMetrics"] = CallCounter().unary(method, RpcMetrics(Metrics()).unary(method, bare))
    handlers["CallCounter+plain link"] = CallCounter().unary(method, plain_link(bare))

    async def run(handler: Any) -> float:
        context = Context()
        start = time.perf_counter()
        for i in range(N):
            await handler(i, context)
        return (time.perf_counter() - start) / N * 1e6

    async def main() -> dict[str, float]:
        out = {}
        for name, handler in handlers.items():
            out[name] = statistics.median([await run(handler) for _ in range(RUNS)])
        return out

    return asyncio.run(main())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_measure(sys.argv[2])))
        return
    results = {}
    for mode in ("memory", "multiprocess", "plain"):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(
                [sys.executable, "-m", "bench.metrics_overhead", "--child", mode],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    for mode, values in results.items():
        bare = values["bare"]
        print(f"{mode}:")
        for name, us in values.items():
            print(f"  {name:28s} {us:6.2f} µs/call  (+{us - bare:.2f} over bare)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
