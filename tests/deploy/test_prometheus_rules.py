"""deploy/prometheus/: promtool checks the rules and the example config and runs the rule
unit tests (every alert fires in one); every alert has a severity, a summary, a
description and a runbook, every runbook an alert, and every metric a rule reads is one
Gatehouse exposes. promtool is Debian's `prometheus` package (`./dev setup` installs it)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.deploy.metric_names import EXPOSED
from tests.deploy.promql import Rule, read_rules, selectors

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "gatehouse-rules.yml"
RULE_TESTS = PROMETHEUS / "gatehouse-rules.test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
SEVERITIES = {"critical", "warning"}


async def promtool(*args: str) -> str:
    """Run promtool; its output, or fail with it. Through asyncio like every other child
    process of the suite: a blocking subprocess.run() here left a later grpc TLS test
    (tests/server/test_listeners.py) hanging in the same session."""
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed: run ./dev setup (it installs Debian's prometheus package)"
    process = await asyncio.create_subprocess_exec(
        tool, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    output = out.decode()
    assert process.returncode == 0, f"promtool {' '.join(args)} exited {process.returncode}:\n{output}"
    return output


def alerts() -> list[Rule]:
    return [rule for rule in read_rules(RULES) if rule.kind == "alert"]


async def test_promtool_check_rules() -> None:
    output = await promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert f"SUCCESS: {len(read_rules(RULES))} rules found" in output, output


async def test_promtool_test_rules() -> None:
    assert "SUCCESS" in await promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))


async def test_promtool_check_config() -> None:
    # Also checks the rule files the config names.
    output = await promtool("check", "config", str(CONFIG.relative_to(ROOT)))
    assert "1 rule files found" in output, output


def test_the_reader_sees_every_rule_promtool_sees() -> None:
    text = RULES.read_text()
    assert len(read_rules(RULES)) == len(re.findall(r"^\s*- (?:alert|record): ", text, re.M))
    assert all(rule.expr for rule in read_rules(RULES))


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    names = [rule.name for rule in alerts()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    for rule in alerts():
        assert rule.name.startswith("Gatehouse"), rule.name
        assert rule.labels.get("severity") in SEVERITIES, (rule.name, rule.labels)
        assert rule.annotations.get("summary"), rule.name
        assert rule.annotations.get("description"), rule.name
        assert rule.annotations.get("runbook_url") == f"docs/runbooks/{rule.name}.md", rule.name
        runbook = ROOT / rule.annotations["runbook_url"]
        assert runbook.is_file(), f"{rule.name}: no runbook at {runbook.relative_to(ROOT)}"


def test_every_runbook_is_for_an_alert_that_exists() -> None:
    names = {rule.name for rule in alerts()}
    runbooks = {path.stem for path in RUNBOOKS.glob("*.md") if path.name != "README.md"}
    assert runbooks == names, f"runbooks without an alert: {sorted(runbooks - names)}; alerts without one: {sorted(names - runbooks)}"
    for name in names:
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), f"{name}.md must start with its alert's name"
        for section in ("## Meaning", "## Impact", "## Confirm", "## Act", "## Escalate"):
            assert section in text, f"{name}.md has no {section!r}"
    index = (RUNBOOKS / "README.md").read_text()
    for name in names:
        assert f"({name}.md)" in index, f"docs/runbooks/README.md does not list {name}"


def test_every_alert_fires_in_a_rule_unit_test() -> None:
    text = RULE_TESTS.read_text()
    # An alert_rule_test that expects alerts: `alertname: X` then `exp_alerts:` and a list item.
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\s*\n\s+- exp_labels:", text))
    missing = {rule.name for rule in alerts()} - fired
    assert not missing, f"no promtool test fires {sorted(missing)}"


def test_the_main_alerts_stay_quiet_on_a_healthy_sidecar() -> None:
    text = RULE_TESTS.read_text()
    healthy = text.split("  - name: healthy sidecar", 1)[1].split("\n  - name: ", 1)[0]
    quiet = set(re.findall(r"alertname: (\w+), exp_alerts: \[\]", healthy))
    missing = {rule.name for rule in alerts()} - quiet
    assert not missing, f"the healthy test does not hold {sorted(missing)} quiet"


def test_rules_read_only_metrics_gatehouse_exposes_and_select_its_job() -> None:
    records = {rule.name for rule in read_rules(RULES) if rule.kind == "record"}
    for rule in read_rules(RULES):
        found = selectors(rule.expr)
        assert found, rule.name
        for selector in found:
            if ":" in selector.metric:
                assert selector.metric in records, f"{rule.name}: no recording rule {selector.metric}"
            else:
                assert selector.metric in EXPOSED, f"{rule.name}: {selector.metric} is not a Gatehouse metric"
                # grpc_server_* is every go-grpc-prometheus service's name: select ours.
                assert 'job="gatehouse"' in selector.matchers, f"{rule.name}: {selector.metric} without job"


@pytest.mark.parametrize("name", ["GatehouseCheckLatencyHigh", "GatehouseErrorRatioHigh", "GatehouseEventLagHigh"])
def test_slo_alerts_are_in_the_readme_slo_table(name: str) -> None:
    section = (ROOT / "README.md").read_text().split("## Dashboards and alerts", 1)[1].split("\n## ", 1)[0]
    assert f"`{name}`" in section, f"README's SLO table does not name {name}"
