"""The Grafana dashboards of deploy/grafana/dashboards/: the committed JSON is what
scripts/gen_dashboards.py writes; each has the ``datasource`` and ``instance`` variables; every
query of every panel reads the selected data source and filters every metric selector by
``instance=~"$instance"``; panels are laid out without overlap; every metric a query reads is
exported by the gateway or recorded by deploy/prometheus. (tests/integration/test_prometheus.py
runs every query against a real Prometheus scraping a real gateway.)"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import pytest
import yaml

from tests.prometheus_server import (
    METRIC_NAME,
    REPO,
    dashboard_targets,
    dashboards,
    exported_names,
    recorded_names,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_dashboards", REPO / "scripts" / "gen_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_are_the_generators_output() -> None:
    rendered = _generator().render()
    assert {p.name for p in rendered} == {"overview.json", "performance.json", "security.json"}
    assert set(dashboards()) == {p.name for p in rendered}, "a dashboard file the generator does not write"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run .venv/bin/python scripts/gen_dashboards.py"


@pytest.mark.parametrize("name", ["overview.json", "performance.json", "security.json"])
def test_dashboard_shape(name: str) -> None:
    board = dashboards()[name]
    assert board["schemaVersion"] >= 39 and board["uid"].startswith("mcp-gateway-")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["datasource"] == DATASOURCE
    assert instance["query"]["query"] == "label_values(mcp_gateway_build_info, instance)"
    assert instance["includeAll"] and instance["multi"] and instance["allValue"] == ".*"

    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["type"] in {"row", "timeseries", "stat", "text"}
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["datasource"] == DATASOURCE and panel["targets"] and panel.get("description"), panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


@pytest.mark.parametrize("name", ["overview.json", "performance.json", "security.json"])
def test_every_query_is_filtered_by_instance(name: str) -> None:
    for panel, target in dashboard_targets(dashboards()[name]):
        expr = target["expr"]
        assert target["datasource"] == DATASOURCE and target["legendFormat"], panel["title"]
        for match in METRIC_NAME.finditer(expr):
            rest = expr[match.end():]
            assert rest.startswith("{") and INSTANCE in rest[:rest.index("}")], (
                f"{panel['title']}: {match.group(1)} is not filtered by {INSTANCE} in {expr}")
        assert METRIC_NAME.search(expr), f"{panel['title']}: no metric in {expr}"


def test_queries_read_only_exported_metrics_and_defined_recordings() -> None:
    known = exported_names() | recorded_names()
    for name, board in dashboards().items():
        for panel, target in dashboard_targets(board):
            unknown = set(METRIC_NAME.findall(target["expr"])) - known
            assert not unknown, f"{name} / {panel['title']} reads unknown metrics {unknown}"


def test_the_three_dashboards_cover_their_subjects() -> None:
    exprs = {name: " ".join(t["expr"] for _, t in dashboard_targets(board)) for name, board in dashboards().items()}
    assert all(re.search(m, exprs["overview.json"]) for m in (
        "mcp_api_requests_total", "mcp_errors_total", "mcp_api_request_duration_seconds_bucket",
        "mcp_queued_tasks", "mcp_task_queue_capacity", "budget_remaining", "mcp_admission_refused_total"))
    assert all(m in exprs["performance.json"] for m in (
        "mcp_api_request_duration_seconds_bucket", "mcp_policy_eval_seconds_bucket", "mcp_task_queue_wait_seconds_bucket",
        "mcp_sandbox_run_seconds_bucket", "mcp_audit_write_seconds_bucket", "mcp_queued_tasks"))
    assert all(m in exprs["security.json"] for m in (
        "mcp_policy_decisions_total", 'code=~"300[1-4]"', "mcp_sandbox_limit_hits_total", "mcp_auth_failures_total",
        "mcp_audit_events_total", "mcp_policy_bundle_info", "mcp_rate_limited_total"))


def test_provisioning_file() -> None:
    spec = yaml.safe_load((REPO / "deploy" / "grafana" / "provisioning" / "dashboards.yaml").read_text())
    assert spec["apiVersion"] == 1
    (provider,) = spec["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
