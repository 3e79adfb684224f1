"""The Prometheus rules of deploy/prometheus/: ``promtool check rules`` and ``promtool test rules``
pass (promtool from Debian's ``prometheus`` package, installed by tests/prometheus_server.py when
missing), every alert carries ``severity``, ``summary``, ``description`` and a ``runbook_url`` into
docs/observability.md, every alert has a promtool case where it fires and one where it stays
quiet, and the rules read only metrics the gateway exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_server import (
    METRIC_NAME,
    RULE_FILES,
    RULES_DIR,
    exported_names,
    prometheus_binaries,
    recorded_names,
    rules,
)

TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yaml"))
RUNBOOKS = "https://github.com/mcp-security-gateway/mcp-security-gateway/blob/main/docs/observability.md#"
SEVERITIES = {"critical", "warning", "info"}
DOCS = RULES_DIR.parent.parent / "docs" / "observability.md"
ALERTS = [rule for rule in rules() if "alert" in rule]


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_binaries().promtool


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES and TEST_FILES
    assert len(ALERTS) >= 15


def test_promtool_check_rules(promtool: Path) -> None:
    out = subprocess.run([str(promtool), "check", "rules", *map(str, RULE_FILES)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests(promtool: Path) -> None:
    out = subprocess.run([str(promtool), "test", "rules", *(p.name for p in TEST_FILES)],
                         cwd=RULES_DIR / "tests", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(TEST_FILES), out.stdout


def test_promtool_checks_the_example_config(promtool: Path) -> None:
    out = subprocess.run([str(promtool), "check", "config", "prometheus.example.yml"],
                         cwd=RULES_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("alert", ALERTS, ids=lambda rule: rule["alert"])
def test_every_alert_is_documented_and_routable(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"McpGateway[A-Z][A-Za-z]+", name)
    assert alert.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.get("annotations", {})
    assert "{{ $labels." in annotations.get("summary", ""), "summary must name the gateway (a label)"
    assert len(annotations.get("description", "")) > 40
    assert annotations.get("runbook_url") == RUNBOOKS + name.lower()
    # The runbook anchor exists: docs/observability.md has a heading named after the alert.
    assert re.search(rf"^### {name}$", DOCS.read_text(), re.M), f"docs/observability.md has no section {name}"


def test_alert_names_are_unique() -> None:
    names = [alert["alert"] for alert in ALERTS]
    assert len(names) == len(set(names))


def test_every_alert_fires_and_stays_quiet_in_a_promtool_test() -> None:
    """A firing case (exp_alerts given), and a test group in which it never fires (only empty
    exp_alerts for it): a quiet case is a scenario, not the pending minutes before a firing."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        spec = yaml.safe_load(path.read_text())
        assert {str((path.parent / f).resolve()) for f in spec["rule_files"]} >= {str(p) for p in RULE_FILES}
        for group in spec["tests"]:
            firing_here = {case["alertname"] for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
            fires |= firing_here
            quiet |= {case["alertname"] for case in group.get("alert_rule_test", [])
                      if not case.get("exp_alerts")} - firing_here
    names = {alert["alert"] for alert in ALERTS}
    assert not names - fires, f"alerts with no firing case: {sorted(names - fires)}"
    assert not names - quiet, f"alerts with no quiet case: {sorted(names - quiet)}"
    assert not (fires | quiet) - names, f"tests of unknown alerts: {sorted((fires | quiet) - names)}"


def test_rules_read_only_exported_metrics_and_defined_recordings() -> None:
    known = exported_names() | recorded_names()
    for rule in rules():
        unknown = set(METRIC_NAME.findall(rule["expr"])) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads unknown metrics {unknown}"
