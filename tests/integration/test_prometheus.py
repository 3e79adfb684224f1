"""A real Prometheus server (Debian's, see tests/prometheus_server.py) scraping a real gateway
every second, with the rules of deploy/prometheus loaded (issue 15, "See it run").

The gateway runs one sandbox at a time with a queue of one, and knows one API key whose tenant
may make one request; it gets allowed, denied (3001), failing (``false``: COMPLETED, exit 1) and
timed-out tasks, a task refused because the queue is full, an unknown credential (401), a
rate-limited call, a malformed gRPC body and a policy reload, twice: before Prometheus's first
scrape and after it. Once Prometheus has scraped all of it and evaluated its rules again: every
rule evaluates without error, the driven events are in Prometheus, and every query of every
Grafana dashboard (``$instance`` = ``.*``) returns a series with a number in it (not only NaN).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.auth.apikeys import hash_api_key, new_api_key
from tests.conftest import GatewayProcess, start_gateway, wait_final, wait_until
from tests.prometheus_server import (
    RULE_FILES,
    PrometheusServer,
    dashboard_targets,
    dashboards,
    prometheus_binaries,
)

# What Grafana puts in place of its variables when it sends a query.
GRAFANA_VARIABLES = {"instance": ".*", "__rate_interval": "1m", "__range": "5m", "__interval": "1s"}
QUERIES = [pytest.param(target["expr"], id=f"{name.removesuffix('.json')}/{panel['title']}/{target['refId']}")
           for name, board in dashboards().items() for panel, target in dashboard_targets(board)]


def grafana_expr(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"query uses ${name}, which this test does not know how to fill in: {expr}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


@dataclass
class Stack:
    gateway: GatewayProcess
    prometheus: PrometheusServer
    instance: str


def _drive_traffic(gw: GatewayProcess, limited_key: str, first_round: bool) -> None:
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        def execute(command: str, *args: str, timeout: int = 30) -> httpx.Response:
            return http.post("/v1/execute", json={"command": command, "args": list(args), "timeout": timeout})

        def status(task_id: str) -> dict[str, Any]:
            return http.get(f"/v1/tasks/{task_id}").json()

        # sandbox limit: sleep 5 in a 1 s wall-clock limit ends TIMED_OUT (wall_timeout)
        slow = execute("sleep", "5", timeout=1)
        assert slow.status_code == 202, slow.text
        slow_id = slow.json()["task_id"]
        wait_until(lambda: status(slow_id)["task_info"]["status"] != "QUEUED", 10, "the sleep task running")
        # the one slot is busy: this one waits in the queue of one, the next is refused (4290)
        queued = execute("echo", "queued")
        assert queued.status_code == 202, queued.text
        refused = execute("echo", "refused")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == 4290, refused.text
        denied = execute("sudo", "id")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == 3001, denied.text
        unknown = http.post("/v1/execute", json={"command": "echo", "args": ["x"]},
                            headers={"Authorization": "Bearer mgw_not-a-real-key"})
        assert unknown.status_code == 401, unknown.text
        # The limited tenant's bucket holds one request and refills it in 1000 s: its first call
        # asks for another tenant's task (not found, 6001), every later one is rate limited.
        limited = {"Authorization": f"Bearer {limited_key}"}
        first = http.get(f"/v1/tasks/{slow_id}", headers=limited)
        assert first.status_code == (404 if first_round else 429), first.text
        second = http.get(f"/v1/tasks/{slow_id}", headers=limited)
        assert second.status_code == 429 and second.json()["error"]["code"] == 4290, second.text
        reload = http.post("/v1/policy/reload")
        assert reload.status_code == 200, reload.text
        with grpc.insecure_channel(gw.grpc_addr) as channel:
            call = channel.unary_unary("/mcp.McpService/GetTaskStatus")
            with pytest.raises(grpc.RpcError) as garbage:
                call(b"\x0a\x10abc", timeout=10)  # a string field claiming 16 bytes, holding 3
            assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        _drive_mcp(gw)

        assert wait_final(status, slow_id, 30)["task_info"]["status"] == "TIMED_OUT"
        assert wait_final(status, queued.json()["task_id"], 30)["task_info"]["status"] == "COMPLETED"
        failing = execute("false")
        assert failing.status_code == 202, failing.text
        final = wait_final(status, failing.json()["task_id"], 30)
        assert final["task_info"]["status"] == "COMPLETED" and final["result"]["exit_code"] == 1


def _drive_mcp(gw: GatewayProcess) -> None:
    """Tool calls over MCP (the SDK's client): one answered, one refused (6001)."""
    async def run() -> tuple[bool, bool]:
        async with httpx2.AsyncClient(timeout=30) as http, Client(
                streamable_http_client(f"{gw.http_url}/mcp", http_client=http), mode="legacy") as client:
            listed = await client.call_tool("list_tasks", {"limit": 1})
            unknown = await client.call_tool("get_task", {"task_id": "task-" + "0" * 32})
            return listed.is_error, unknown.is_error

    assert asyncio.run(run()) == (False, True)


@pytest.fixture(scope="module")
def stack(state_root: Path) -> Iterator[Stack]:
    binaries = prometheus_binaries()  # skips, with the reason, where Prometheus cannot be had
    state = Path(tempfile.mkdtemp(prefix="prometheus-", dir=state_root))
    limited_key = new_api_key()
    config = state / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "tasks": {"max_concurrent": 1, "max_queued": 1},
        "auth": {"api_keys": [{"hash": hash_api_key(limited_key), "principal": "limited", "tenant": "limited",
                               "roles": ["user"], "scopes": ["tasks:read"]}]},
        "rate_limits": {"tenants": {"limited": {"principal": {"requests_per_s": 0.001, "burst": 1}}}},
    }))
    gw = start_gateway(state / "var", "--config", str(config))
    prometheus: PrometheusServer | None = None
    try:
        instance = gw.http_url.removeprefix("http://")
        prometheus = PrometheusServer.start(binaries.prometheus, {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES],
            "scrape_configs": [{"job_name": "mcp-gateway", "static_configs": [{"targets": [instance]}]}],
        })
        # The same traffic before the first scrape (Prometheus needs up to 5 s to begin) and
        # after it: every series it makes then grows while scraped, so its rate is not 0 and the
        # ratios and quantiles over it are numbers, not NaN.
        _drive_traffic(gw, limited_key, first_round=True)
        _poll(lambda: prometheus.query(f'up{{instance="{instance}"}} == 1'), 20, "the first scrape")
        _drive_traffic(gw, limited_key, first_round=False)
        _wait_for_prometheus(prometheus, instance, since=time.time())
        yield Stack(gw, prometheus, instance)
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = gw.stop()
    assert code == 0, f"gateway exited {code}:\n{gw.stderr_path.read_text()}"


def _wait_for_prometheus(prometheus: PrometheusServer, instance: str, since: float) -> None:
    """Until two scrapes have followed the traffic (so every series it made has a rate), and
    every rule group has been evaluated after them. (Prometheus starts scraping up to 5 s after
    it starts: its discovery manager hands over targets every 5 s.)"""
    def scraped() -> float | None:
        (series,) = prometheus.api("query", query=f'up{{instance="{instance}"}}[1m]')["result"] or [{"values": []}]
        after = [float(t) for t, _ in series["values"] if float(t) > since]
        return after[1] if len(after) >= 2 else None

    scraped_at = _poll(scraped, 20, "two scrapes after the traffic")

    def evaluated() -> bool:
        groups = prometheus.rule_groups()
        return bool(groups) and all(_epoch(group["lastEvaluation"]) > scraped_at for group in groups)

    _poll(evaluated, 20, "every rule group evaluated after the scrapes")


def _poll(condition: Any, timeout_s: float, what: str) -> Any:
    """``condition()`` every 0.1 s (Prometheus moves on in whole seconds) until truthy."""
    return wait_until(condition, timeout_s, what, interval_s=0.1)


def _epoch(rfc3339: str) -> float:
    """Seconds of an RFC 3339 time as Prometheus writes it (nanoseconds, Z or an offset;
    fromisoformat keeps microseconds)."""
    return datetime.fromisoformat(rfc3339).timestamp()


def test_prometheus_scrapes_the_gateway(stack: Stack) -> None:
    (target,) = stack.prometheus.api("targets")["activeTargets"]
    assert target["labels"]["job"] == "mcp-gateway" and target["health"] == "up", target
    assert stack.prometheus.query(f'up{{job="mcp-gateway",instance="{stack.instance}"}} == 1')


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    groups = stack.prometheus.rule_groups()
    loaded = {group["name"] for group in groups}
    expected = {group["name"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]}
    assert loaded == expected
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok" and not rule.get("lastError"), f"{group['name']} / {rule['name']}: {rule}"


def test_the_driven_events_are_in_prometheus(stack: Stack) -> None:
    expected = [
        'mcp_api_requests_total{method="POST /v1/execute",status="ok"} >= 3',
        'mcp_api_requests_total{status="3001"}',
        'mcp_errors_total{code="1001"}',
        'mcp_auth_failures_total{scheme="bearer"}',
        'mcp_rate_limited_total{limit="principal_requests"}',
        'mcp_task_rejections_total{reason="queue_full"}',
        'mcp_sandbox_limit_hits_total{kind="wall_timeout"}',
        'mcp_task_duration_seconds_count{status="TIMED_OUT"}',
        'mcp_task_duration_seconds_count{status="COMPLETED"} >= 2',
        'mcp_policy_decisions_total{outcome="deny"}',
        'mcp_policy_reloads_total{result="unchanged"}',
        'mcp_grpc_decode_errors_total{method="GetTaskStatus"}',
        'mcp_audit_events_total{result="written"} > 0',
        'mcp_gateway:availability_error_budget_remaining:ratio == 1',  # no 5xxx, 4001, 4002
        'mcp_gateway:latency_error:ratio_rate1h >= 0',
    ]
    missing = [expr for expr in expected if not stack.prometheus.query(expr)]
    assert not missing, f"not in Prometheus: {missing}"


def test_the_instance_variable_lists_the_gateway(stack: Stack) -> None:
    values = stack.prometheus.api("label/instance/values", **{"match[]": "mcp_gateway_build_info"})
    assert values == [stack.instance]


@pytest.mark.parametrize("expr", QUERIES)
def test_every_dashboard_query_returns_a_series(stack: Stack, expr: str) -> None:
    """At least one series, and a number (not NaN) in one of them at least."""
    found = stack.prometheus.query(grafana_expr(expr))
    assert found, f"no series for {grafana_expr(expr)}"
    assert any(sample["value"][1] != "NaN" for sample in found), f"only NaN for {grafana_expr(expr)}: {found}"
