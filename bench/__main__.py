"""python -m bench <scenario> [<scenario> …] [options]   (see bench/README.md)

Starts the empty-handler baseline and Gatehouse on 127.0.0.1, seeds a throwaway database,
drives each scenario open-loop, and writes bench/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# The harness starts subprocesses (h2load, generator workers) while its own gRPC channels
# are open; gRPC's fork handlers only log about that, and nothing here forks gRPC state.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from bench import h2load, report, scenarios  # noqa: E402
from bench.scenarios import DEFAULT_RATES, DEFAULT_SWEEP, SCENARIOS, Harness, Options  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_DURATION = 900.0  # bounded: the 10-minute memory soak is the longest run


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Open-loop load harness: Gatehouse against an empty-handler gRPC baseline.",
        epilog="scenarios: " + ", ".join(SCENARIOS) + ". Default rates: "
        + ", ".join(f"{k} {v}/s" for k, v in DEFAULT_RATES.items()),
    )
    p.add_argument("scenarios", nargs="+", choices=SCENARIOS, metavar="scenario")
    p.add_argument("--rate", type=float, help="offered rate, requests (calls) per second; default per scenario")
    p.add_argument("--rates", help=f"sweep rates, comma-separated (default {','.join(map(str, DEFAULT_SWEEP))})")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per point (default 10; 30 when the only scenario is propagation)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent first and not measured (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="repeats per point, baseline and Gatehouse each (default 1)")
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--members", type=int, default=20, help="hot members per tenant (asked about under load)")
    p.add_argument("--cold-members", type=int, help="never-asked members per tenant (default: what check-miss needs)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of tenant and subject choice")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--distinct-keys", type=int, default=5000, help="distinct requests for Python-generated hit/L2 loads")
    p.add_argument("--gh-workers", type=int, help="pass --workers N to gatehouse serve (and run N baseline processes)")
    p.add_argument("--gh-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for gatehouse serve, repeatable (e.g. --gh-arg=--l1-ttl-seconds=30)")
    p.add_argument("--gh-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment variable for gatehouse serve, repeatable (e.g. --gh-env OTEL_TRACES_EXPORTER=console)")
    p.add_argument("--traces-sampler-arg", type=float, default=0.01,
                   help="traces: the traced variant's OTEL_TRACES_SAMPLER_ARG (parentbased_traceidratio; default 0.01)")
    p.add_argument("--generator", choices=("auto", "h2load", "python"), default="auto",
                   help="auto: h2load where one repeated body suffices, Python where bodies must differ")
    p.add_argument("--py-workers", type=int, default=2, help="Python generator processes")
    p.add_argument("--writer", choices=("pgbench", "python"), default="pgbench",
                   help="propagation: background writes from pgbench (default) or Python store writer processes")
    p.add_argument("--probe-rate", type=float, default=10.0, help="propagation: probe writes per second (default 10)")
    p.add_argument("--sample-rate", type=float, default=20.0, help="verification calls/s beside each h2load run")
    p.add_argument("--p99-limit-ms", type=float, default=10.0, help="sweep: p99 above this breaks the point")
    p.add_argument("--unix", action="store_true",
                   help="call both targets over a unix socket (Gatehouse's --unix-socket) instead of TCP")
    p.add_argument("--targets", default="baseline,gatehouse", help="comma-separated subset of baseline,gatehouse")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS",
                   help="also run target gatehouse-LABEL: Gatehouse with these extra serve arguments (space-separated), "
                   "e.g. --variant 'dlog1=--decision-log sampled --decision-log-sample-rate 0.01'; NAME=VALUE words "
                   "(upper-case NAME) are environment, e.g. --variant 'otel1=OTEL_TRACES_EXPORTER=otlp ...'; fixed-rate scenarios")
    p.add_argument("--caller-key", action="store_true",
                   help="check-hit, batch, config: send an operator key with every call (for a variant with --caller-credentials required)")
    p.add_argument("--interleave", action="store_true",
                   help="fixed-rate scenarios: start every target first and let them take turns at each repeat")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the first point of each target (needs py-spy); stacks go to <name>.<target>.pyspy.txt")
    p.add_argument("--native", action="store_true", help="with --profile: include C/Cython frames (pauses the process)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    p.add_argument("--name", help="results file stem (default <scenarios>-<timestamp>)")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 30.0 if len(set(a.scenarios)) == 1 and a.scenarios[0] in ("propagation", "overload") else 10.0
    if not 0 < a.duration <= MAX_DURATION or not 0 <= a.warmup <= 30:
        p.error(f"--duration must be in (0, {MAX_DURATION:g}] and --warmup in [0, 30]")
    if a.rate is not None and a.rate <= 0:
        p.error("--rate must be positive")
    if any("=" not in item for item in a.gh_env):
        p.error("--gh-env: NAME=VALUE")
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    if not targets or set(targets) - {"baseline", "gatehouse"}:
        p.error("--targets: baseline and/or gatehouse")
    variants: dict[str, list[str]] = {}
    for spec in a.variant:
        label, _, args = spec.partition("=")
        if not label or not args or not label.replace("-", "").isalnum():
            p.error(f"--variant {spec!r}: want LABEL=ARGS")
        variants[label] = args.split()
    targets += tuple(f"gatehouse-{label}" for label in variants)
    options = Options(
        scenarios=list(dict.fromkeys(a.scenarios)),
        rate=a.rate,
        rates=[float(r) for r in a.rates.split(",")] if a.rates else list(DEFAULT_SWEEP),
        duration=a.duration,
        warmup=a.warmup,
        repeat=max(1, a.repeat),
        tenants=a.tenants,
        members=a.members,
        cold_members=a.cold_members,
        zipf_s=a.zipf,
        batch_size=a.batch_size,
        distinct_keys=a.distinct_keys,
        gh_workers=a.gh_workers,
        gh_args=a.gh_arg,
        gh_env=dict(item.split("=", 1) for item in a.gh_env),
        traces_sampler_arg=a.traces_sampler_arg,
        generator=a.generator,
        py_workers=a.py_workers,
        writer=a.writer,
        sample_rate=a.sample_rate,
        p99_limit_ms=a.p99_limit_ms,
        profile=a.profile,
        profile_native=a.native,
        unix=a.unix,
        targets=targets,
        variants=variants,
        interleave=a.interleave,
        caller_key=a.caller_key,
        probe_rate=a.probe_rate,
    )
    return options, a


async def main_async(options: Options, args: argparse.Namespace) -> int:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    points: list[dict] = []
    async with Harness(options) as h:
        for scenario in options.scenarios:
            points += await scenarios.run(h, scenario)
        ceilings = scenarios.sweep_ceilings(points) if "sweep" in options.scenarios else None
        table = report.markdown(points, ceilings)
        cost = None
        if "metrics-cost" in options.scenarios:
            from bench import metrics_cost

            cost = metrics_cost.summary(points)
            table += "\n\nmetrics on vs off (same run, alternating):\n\n" + metrics_cost.markdown(cost)
        document = {
            "started": started,
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "machine": report.machine(h2load.h2load_version(h.h2load_path) if h.h2load_path else None),
            "options": {k: v for k, v in vars(options).items()},
            "dataset": {
                "tenants": options.tenants,
                "members_total": h.data.member_count if h.data else 0,
                "zipf_s": options.zipf_s,
                "seed_seconds": h.seed_seconds,
            },
            "points": points,
            "summary": report.folded(points),
            "sweep_ceilings": ceilings,
            "metrics_cost": cost,
            "profiles": h.profiles,
            "table_markdown": table,
        }
    name = args.name or f"{'+'.join(options.scenarios)}-{time.strftime('%Y%m%d-%H%M%S')}"
    stacks = {prof["target"]: prof.pop("collapsed", "") for prof in document["profiles"]}
    paths = report.write(args.out, name, document)
    for target, collapsed in stacks.items():
        paths[f"pyspy-{target}"] = args.out / f"{name}.{target}.pyspy.txt"
        paths[f"pyspy-{target}"].write_text(collapsed)
    print()
    print(table)
    for prof in document["profiles"]:
        print(f"\npy-spy {prof['target']} ({prof['tag']}, {prof['samples']} samples), self time:")
        for frame, share in prof["self_top"][:15]:
            print(f"  {share:5.1f}%  {frame}")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    bad = [p for p in points if p["error_count"]]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    options, args = parse(argv)
    try:
        import uvloop

        return uvloop.run(main_async(options, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
