"""What a run leaves behind in bench/results/: `<name>.json` (every number, plus the
machine), `<name>.md` (the table README shows) and `<name>.png` (latency percentiles
against offered rate, baseline dashed, Gatehouse solid)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _writers(writers: int | str) -> str:
    """`writers` is a count of Python writer processes, or pgbench's command line."""
    return f"{writers} Python writer processes" if isinstance(writers, int) else writers


def machine(h2load_version: str | None) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain")
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "uvloop": version("uvloop"),
        "h2load": h2load_version,
        "git_commit": commit,
        "git_dirty": bool(dirty),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent
        ).stdout.strip()
    except OSError:
        return ""


def _median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one (scenario, target, rate) folded into medians (p99 range kept)."""
    if len(points) == 1:
        return points[0]
    keys = ("p50", "p90", "p95", "p99", "p999", "max")
    out = dict(points[0])
    out["latency_ms"] = {k: round(statistics.median(p["latency_ms"][k] for p in points), 3) for k in keys}
    out["achieved_rps"] = round(statistics.median(p["achieved_rps"] for p in points), 1)
    out["error_count"] = sum(p["error_count"] for p in points)
    out["p99_range"] = (min(p["latency_ms"]["p99"] for p in points), max(p["latency_ms"]["p99"] for p in points))
    out["server_cpu_pct"] = round(statistics.median(p["server_cpu_pct"] for p in points), 1)
    out["generator_cpu_pct"] = round(statistics.median(p["generator_cpu_pct"] for p in points), 1)
    out["pacing_ok"] = all(p["pacing_ok"] for p in points)
    vs = [p["vs_baseline"] for p in points if p.get("vs_baseline")]
    if vs:
        out["vs_baseline"] = {
            k: round(statistics.median(v[k] for v in vs if v[k] is not None), 3) for k in ("throughput", "p99")
        }
    out["repeats"] = len(points)
    return out


def folded(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["scenario"], p["offered_rps"], p["target"]), []).append(p)
    return [_median_point(g) for g in groups.values()]


def markdown(points: list[dict[str, Any]], ceilings: dict[str, Any] | None) -> str:
    rows = [
        "| scenario | target | offered/s | achieved/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors | ÷ baseline thr | ÷ baseline p99 | server CPU | gen CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in folded([p for p in points if p["scenario"] != "propagation"]):
        lat = p["latency_ms"]
        vs = p.get("vs_baseline") or {}
        achieved = f"{p['achieved_rps']:,.0f}"
        if "decisions_per_s" in p:
            achieved += f" ({p['achieved_rps'] * p['checks_per_call']:,.0f} decisions)"
        p99 = f"{lat['p99']:.2f}"
        if "p99_range" in p:
            p99 += f" [{p['p99_range'][0]:.2f}–{p['p99_range'][1]:.2f}]"
        note = "" if p["pacing_ok"] else " ⚠pacing"
        rows.append(
            f"| {p['scenario']}{note} | {p['target']} | {p['offered_rps']:,.0f} | {achieved} | {lat['p50']:.2f} | "
            f"{lat['p95']:.2f} | {p99} | {lat['p999']:.2f} | {lat['max']:.2f} | {p['error_count']} | "
            f"{vs.get('throughput', '')} | {vs.get('p99', '')} | {p['server_cpu_pct']:.0f}% | {p['generator_cpu_pct']:.0f}% |"
        )
    text = "\n".join(rows) if len(rows) > 2 else ""
    prop = [p for p in points if p["scenario"] == "propagation"]
    if prop:
        text = (text + "\n\n" if text else "") + propagation_markdown(prop)
    for p in points:
        rss = p.get("rss")
        if rss:
            text += (
                f"\n\nRSS of {p['target']} (server process tree, every {rss['interval_s']:g} s, after the warm-up): "
                f"first {rss['first_mb']} MB, last {rss['last_mb']} MB, min {rss['min_mb']} / max {rss['max_mb']} MB, "
                f"growth {rss['growth_pct']:+.2f} %"
            )
    if ceilings:
        text += (
            f"\n\nThroughput ceiling (check-hit, p99 ≤ limit, zero errors, ≥ 95 % of offered): baseline "
            f"{ceilings['baseline']:,.0f}/s, Gatehouse {ceilings['gatehouse']:,.0f}/s"
            + (f", ratio {ceilings['gatehouse_vs_baseline']}" if "gatehouse_vs_baseline" in ceilings else "")
            + (
                " (median of " + str(len(ceilings["repeats"])) + " repeats; ratios "
                + ", ".join(str(row.get("gatehouse_vs_baseline", "–")) for row in ceilings["repeats"]) + ")"
                if len(ceilings.get("repeats", [])) > 1 else ""
            )
        )
    return text


def propagation_markdown(points: list[dict[str, Any]]) -> str:
    """Write committed → visible on the sidecar(s): one row per target, then the load."""
    rows = [
        "| propagation | probes | p50 ms | p95 ms | p99 ms | max ms | timeouts (5 s) | polls | server CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lat = p["latency_ms"]
        polls = p.get("tally", {}).get("polls", "")
        rows.append(
            f"| {p['target']} | {p['requests']} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | "
            f"{lat['max']:.1f} | {p['timeouts']} | {polls} | {p['server_cpu_pct']:.0f}% |"
        )
    first = points[0]
    w, s = first["write_load"], first["stream"]
    cl = w["commit_latency_ms"]
    rows.append("")
    rows.append(
        f"Background writes: offered {w['offered_rps']:,.0f}/s from {_writers(w['writers'])}, achieved "
        f"{w['achieved_rps']:,.1f}/s (commits completed in the window), {w['committed']:,} committed, errors "
        f"{w['errors'] or 0}; commit latency from due time p50 {cl['p50']:.1f} / p99 {cl['p99']:.1f} / max "
        f"{cl['max']:.1f} ms; send lag p99 {w['send_lag_ms']['p99']:.1f} ms; writers' CPU {first['generator_cpu_pct']:.0f}%."
    )
    rows.append(
        f"Probe commits (assign/revoke on the probe tenant): p50 {first['probe_commit_ms']['p50']:.1f} / p99 "
        f"{first['probe_commit_ms']['p99']:.1f} ms; {first['probes_sent']} probes sent."
        + (f" Commit → probe event in the stream (the relay's share): p50 {first['probe_published_ms']['p50']:.1f} / "
           f"p95 {first['probe_published_ms']['p95']:.1f} / p99 {first['probe_published_ms']['p99']:.1f} ms."
           if first.get("probe_published_ms", {}).get("p50") is not None else "")
    )
    rows.append(
        f"Stream `{s['key']}`: length {s['length']:,}, entries added {s['entries_added']:,}; outbox rows "
        f"{s['outbox_rows']:,}, unpublished after the run {s['outbox_unpublished']}; subscriber gap warnings "
        f"{s['subscriber_gap_warnings']}."
    )
    return "\n".join(rows)


def plot(points: list[dict[str, Any]], path: Path) -> bool:
    """Latency percentiles against offered rate; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = [p for p in points if p["scenario"] != "propagation"]
    scenarios = sorted({p["scenario"] for p in points})
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.5), squeeze=False)
    colors = {"p50": "tab:green", "p95": "tab:orange", "p99": "tab:red", "p999": "tab:purple"}
    for ax, scenario in zip(axes[0], scenarios):
        for target, style in (("baseline", "--"), ("gatehouse", "-")):
            series = sorted(
                (p for p in folded(points) if p["scenario"] == scenario and p["target"] == target),
                key=lambda p: p["offered_rps"],
            )
            if not series:
                continue
            xs = [p["offered_rps"] for p in series]
            for pct, color in colors.items():
                ax.plot(xs, [p["latency_ms"][pct] for p in series], style, marker="o", color=color,
                        label=f"{target} {pct}")
        ax.set_title(scenario)
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("latency (ms, from send time)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(out_dir: Path, name: str, document: dict[str, Any]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")
    paths["md"].write_text(document["table_markdown"] + "\n")
    if not plot(document["points"], paths["png"]):
        del paths["png"]
    return paths


def rerender(path: Path) -> dict[str, Path]:
    """Rewrite a run's .md and .png (and the table in its .json) from its points, with the
    current pacing rule: `python -m bench.report bench/results/<name>.json`."""
    from bench import h2load

    document = json.loads(path.read_text())
    for p in document["points"]:
        if p["scenario"] == "propagation":
            continue
        lag = p["send_lag_ms"]
        p["pacing_ok"] = h2load.pacing_ok(lag, p["offered_rps"]) if p["generator"].startswith("h2load") else lag["p99"] <= 5.0
    document["summary"] = folded(document["points"])
    document["table_markdown"] = markdown(document["points"], document.get("sweep_ceilings"))
    return write(path.parent, path.stem, document)


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(", ".join(str(p) for p in rerender(Path(arg)).values()))
