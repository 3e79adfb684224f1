"""The metrics of a real gateway after varied traffic (issue 15): the design section 9 set
counts what happened, and every series' labels take only their declared bounded values."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import LABEL_VALUES
from tests.conftest import GatewayProcess, Grpcurl, ReflectionClient, wait_final


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess, http: httpx.Client,
            grpc_client: Grpcurl | ReflectionClient) -> Iterator[dict[str, Any]]:
    def run(body: dict[str, Any]) -> str:
        answer = http.post("/v1/execute", json=body)
        assert answer.status_code == 202, answer.text
        task_id: str = answer.json()["task_id"]
        wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), task_id)
        return task_id

    run({"command": "echo", "args": ["ok"]})
    run({"command": "false"})
    run({"command": "sleep", "args": ["5"], "timeout": 1})
    assert http.post("/v1/execute", json={"command": "sudo", "args": ["id"]}).status_code == 403
    assert http.get("/v1/tasks/task-" + "0" * 32, headers={"authorization": "Bearer mgw_" + "A" * 43}).status_code == 401
    assert http.get("/v1/tasks/not-a-task").status_code == 400
    created = grpc_client.call("ExecuteCommand", {"command": "echo", "args": ["grpc"]})
    assert created.body is not None
    yield {"samples": scrape(http)}


def test_calls_tasks_and_refusals_are_counted(traffic: dict[str, Any]) -> None:
    s = traffic["samples"]
    assert value(s, "mcp_api_requests_total", transport="http", method="POST /v1/execute", status="ok") >= 3
    assert value(s, "mcp_api_requests_total", transport="http", method="POST /v1/execute", status="3001") == 1
    assert value(s, "mcp_api_requests_total", transport="http", method="GET /v1/tasks", status="1001") == 1
    assert value(s, "mcp_api_requests_total", transport="grpc", method="ExecuteCommand", status="ok") == 1
    assert value(s, "mcp_api_request_duration_seconds_count", transport="http", method="POST /v1/execute") >= 4
    assert value(s, "mcp_errors_total", type="CommandDenied", code="3001") == 1
    assert value(s, "mcp_errors_total", code="1001") == 1
    assert value(s, "mcp_task_duration_seconds_count", task_type="COMMAND", status="COMPLETED") >= 2
    assert value(s, "mcp_task_duration_seconds_count", status="TIMED_OUT") == 1
    assert value(s, "mcp_sandbox_run_seconds_count", status="TIMED_OUT") == 1
    assert value(s, "mcp_sandbox_limit_hits_total", kind="wall_timeout") == 1
    assert value(s, "mcp_task_queue_wait_seconds_count") >= 3
    assert value(s, "mcp_policy_decisions_total", outcome="deny") == 1
    assert value(s, "mcp_auth_failures_total", reason="unknown_api_key") == 1
    assert value(s, "mcp_gateway_ready") == 1
    assert value(s, "mcp_policy_engine_up", engine="embedded") == 1
    assert value(s, "mcp_store_lock_held") == 1
    assert value(s, "mcp_task_slots") > 0 and value(s, "mcp_task_queue_capacity") > 0
    assert value(s, "mcp_gateway_build_info") == 1
    assert value(s, "process_resident_memory_bytes") > 0


def test_every_label_value_is_a_declared_one(traffic: dict[str, Any]) -> None:
    bad = []
    for name, labels in traffic["samples"]:
        if not name.startswith("mcp_"):
            continue
        for label, text in labels:
            if label in ("le", "quantile"):
                continue
            allowed = LABEL_VALUES.get(label)
            ok = allowed.match(text) if isinstance(allowed, re.Pattern) else allowed is not None and text in allowed
            if not ok:
                bad.append(f"{name}{{{label}={text!r}}}")
    assert bad == []


def test_openmetrics_is_negotiated(http: httpx.Client, traffic: dict[str, Any]) -> None:
    answer = http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n") and "mcp_api_requests_total{" in answer.text
