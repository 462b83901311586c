"""The bench harness end to end, small: one scenario for ~2 s at 200 req/s.

It checks the shape of what a run writes (keys present, counts > 0, zero errors), never
a timing: benchmarks live in bench/, not in assertions. The harness makes and drops its
own database (`gh_bench_<random>`) and Redis prefix (`ghbench<random>`), as the test
fixtures do for theirs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_check_hit_smoke_writes_well_formed_results(tmp_path: Path, transport: str) -> None:
    if shutil.which("h2load") is None and os.geteuid() != 0:
        pytest.skip("h2load missing and not root to install it (apt-get install nghttp2-client)")
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "check-hit",
            "--rate", "200", "--duration", "2", "--warmup", "0.5", "--tenants", "50", "--members", "5",
            "--sample-rate", "5", "--out", str(tmp_path), "--name", "smoke",
            *(["--unix"] if transport == "unix" else []),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert {"started", "command", "machine", "options", "dataset", "points", "summary", "table_markdown"} <= doc.keys()
    assert {"cores", "cpu_model", "python", "grpcio"} <= doc["machine"].keys()
    assert doc["machine"]["cores"] >= 1
    assert doc["options"]["unix"] is (transport == "unix")
    assert (tmp_path / "smoke.md").read_text().startswith("| scenario |")

    by_target = {p["target"]: p for p in doc["points"]}
    assert set(by_target) == {"baseline", "gatehouse"}
    for point in by_target.values():
        assert point["scenario"] == "check-hit"
        assert point["offered_rps"] == 200
        assert point["requests"] > 0
        assert point["achieved_rps"] > 0
        assert set(point["latency_ms"]) >= {"p50", "p90", "p95", "p99", "p999", "max"}
        assert point["error_count"] == 0, point["errors"]
        assert point["verification"]["sampled"] > 0
        assert point["verification"]["codes"] == {"OK": point["verification"]["sampled"]}
    assert set(by_target["gatehouse"]["vs_baseline"]) == {"throughput", "p99"}
