"""In-process cost of the tracing link per call (README "Traces"), beside `python -m bench traces`.

    .venv/bin/python -m bench.tracing_cost [--calls 200000] [--rounds 3]

Awaits a bare coroutine handler `--calls` times, and the same handler wrapped by
`server.tracing.TraceInterceptor` on an SDK TracerProvider (BatchSpanProcessor into an
exporter that drops), with the sampler at 1 % (`parentbased_traceidratio` 0.01, calls
without a traceparent: roots) and at 100 %; rounds alternate. Tracing off has no link in
the chain, so it costs what the bare handler costs. Prints µs per call (median of rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from gatehouse.server.tracing import TraceInterceptor

METHOD = "/gatehouse.v1.AccessService/CheckAccess"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Context:
    """What the interceptor asks of grpc's ServicerContext."""

    _metadata = (("user-agent", "grpc-c/50.0.0 (linux; chttp2)"),)

    def invocation_metadata(self) -> Any:
        return self._metadata

    def code(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False


async def _handler(request: Any, context: Any) -> bytes:
    return b"answer"


async def _time(handler: Any, calls: int) -> float:
    context = _Context()
    start = time.perf_counter()
    for _ in range(calls):
        await handler(b"request", context)
    return (time.perf_counter() - start) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    variants: dict[str, Any] = {"bare (tracing off: no link)": _handler}
    for label, ratio in (("traced, 1 % sampled", 0.01), ("traced, 100 % sampled", 1.0)):
        provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio))
        provider.add_span_processor(BatchSpanProcessor(_Drop()))
        variants[label] = TraceInterceptor(provider.get_tracer("bench")).unary(METHOD, _handler)
    results: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, handler in variants.items():
            results[label].append(await _time(handler, calls))
    bare = statistics.median(results["bare (tracing off: no link)"])
    for label, values in results.items():
        median = statistics.median(values)
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"{label:32s} {median:6.2f} µs/call (+{median - bare:.2f})  rounds: {spread}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
