"""`traces`: what tracing costs on the check-hit path (README "Traces").

Three servers side by side, taking turns at one offered rate (`--rate`, default 5,000/s)
in each of `--repeat` rounds, so a drift in the machine's speed hits all alike:

* `baseline` — the empty handler (bench/baseline_server.py);
* `gatehouse` — tracing off (no `OTEL_TRACES_EXPORTER`: the default);
* `gatehouse+otel` — `OTEL_TRACES_EXPORTER=otlp`, `OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
  `OTEL_TRACES_SAMPLER_ARG` = `--traces-sampler-arg` (0.01), exporting over OTLP/gRPC to a
  span sink in this harness (counted, then dropped), as to a local collector.

h2load's calls carry no `traceparent`, so each is a root: the ratio sampler keeps 1 %.
The sink's count per point is in `spans_exported`. Every Gatehouse point gets
`vs_baseline` (throughput and p99 ÷ the baseline's in the same round).
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.scenarios import CHECK, DEFAULT_RATES, Harness, Verifier, warm

TRACED = "gatehouse+otel"


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that counts spans and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def traces(h: Harness) -> list[dict[str, Any]]:
    assert h.data is not None
    o = h.o
    rate = o.rate or DEFAULT_RATES["check-hit"]
    sink = SpanSink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    traced_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(o.traces_sampler_arg),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    top = h.data.top_check()
    targets: list[tuple[str, Any]] = []
    points: list[dict[str, Any]] = []
    try:
        if "baseline" in o.targets:
            targets.append(("baseline", await h.start("baseline")))
        targets.append(("gatehouse", await h.start("gatehouse")))
        targets.append((TRACED, await h.start("gatehouse", env=traced_env)))
        for _, target in targets:
            await warm(target.address, CHECK, [top.body])
        for r in range(o.repeat):
            for label, target in targets:
                gh = label != "baseline"
                before = sink.spans
                point = await h.h2_point(
                    target, CHECK, top.body, Verifier("check", top.allowed if gh else None), rate, f"traces-{label}-{r}"
                )
                point.update(scenario="traces", repeat=r, target=label)
                if label == TRACED:
                    point["spans_exported"] = sink.spans - before  # those flushed by the point's end
                    point["otel_env"] = traced_env
                points.append(point)
    finally:
        for _, target in targets:
            await target.stop()
        await server.stop(0)
    base = {p["repeat"]: p for p in points if p["target"] == "baseline"}
    for p in points:
        b = base.get(p["repeat"])
        if p["target"] != "baseline" and b is not None:
            p["vs_baseline"] = {
                "throughput": round(p["achieved_rps"] / b["achieved_rps"], 3) if b["achieved_rps"] else None,
                "p99": round(p["latency_ms"]["p99"] / b["latency_ms"]["p99"], 2) if b["latency_ms"]["p99"] else None,
            }
    h.log(f"bench: traces: {sink.spans} spans exported to the sink in all")
    return points
