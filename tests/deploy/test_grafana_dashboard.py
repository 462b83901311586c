"""deploy/grafana/gatehouse-dashboard.json: a dashboard Grafana (schema 39) imports as is,
with a Prometheus data-source variable and job/instance variables, panels that do not
overlap and have unique ids, and targets whose every expression promtool parses and reads
only metrics Gatehouse exposes, on the chosen job and instances."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

from tests.deploy.metric_names import EXPOSED
from tests.deploy.promql import selectors

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gatehouse-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana puts in for its variables before a query reaches Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$job": "gatehouse", "$instance": ".*"}


def load() -> dict[str, Any]:
    value = json.loads(DASHBOARD.read_text())
    assert isinstance(value, dict)
    return value


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


def substituted(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not know in {expr!r}"
    return expr


def test_structure() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"] == "Gatehouse"
    assert dashboard.get("id") is None  # import creates it
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    every = panels(load())
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "two panels share an id"
    boxes = []
    for panel in every:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        boxes.append((panel["title"], pos["x"], pos["y"], pos["x"] + pos["w"], pos["y"] + pos["h"]))
    for i, (title, x0, y0, x1, y1) in enumerate(boxes):
        for other, a0, b0, a1, b1 in boxes[i + 1 :]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0, f"{title!r} overlaps {other!r}"


def test_every_panel_queries_the_chosen_prometheus() -> None:
    for panel in panels(load()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


async def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each target expression (written as recording rules) and each variable query."""
    dashboard = load()
    exprs = [substituted(expr) for _, expr in targets(dashboard)]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            assert match, query
            exprs.append(substituted(match.group(1)))
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: dashboard:target_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed: run ./dev setup (it installs Debian's prometheus package)"
    # Through asyncio, as in test_prometheus_rules.promtool (why: there).
    process = await asyncio.create_subprocess_exec(
        tool, "check", "rules", str(rules), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, out.decode()
    assert f"SUCCESS: {len(exprs)} rules found" in out.decode()


def test_every_metric_is_one_gatehouse_exposes_on_the_chosen_job_and_instances() -> None:
    used = set()
    for title, expr in targets(load()):
        found = selectors(expr)
        assert found, title
        for selector in found:
            assert selector.metric in EXPOSED, f"{title!r}: {selector.metric} is not a Gatehouse metric"
            assert 'job=~"$job"' in selector.matchers, f"{title!r}: {selector.metric} ignores $job"
            assert 'instance=~"$instance"' in selector.matchers, f"{title!r}: {selector.metric} ignores $instance"
            used.add(selector.metric)
    # Every series Gatehouse exposes is on the dashboard somewhere (histograms by their buckets).
    unused = {name for name in EXPOSED if not name.endswith(("_sum", "_count"))} - used
    assert not unused, f"not on the dashboard: {sorted(unused)}"
