"""Every ``mcp_*`` metric has HELP text and only labels whose values are declared bounded
(``gateway.observability.metrics.LABEL_VALUES``); the exposition negotiates OpenMetrics."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

import gateway.observability.metrics as metrics

MCP_FAMILIES = [m for m in REGISTRY.collect() if m.name.startswith("mcp_")]


def _label_names(family_name: str) -> set[str]:
    collector = REGISTRY._names_to_collectors[family_name]  # noqa: SLF001 - the registry's own index
    return set(getattr(collector, "_labelnames", ()))


def test_the_design_set_is_registered() -> None:
    names = {m.name for m in MCP_FAMILIES}
    assert {"mcp_api_requests", "mcp_api_request_duration_seconds", "mcp_errors", "mcp_task_duration_seconds",
            "mcp_sandbox_run_seconds", "mcp_sandbox_limit_hits", "mcp_active_tasks", "mcp_queued_tasks",
            "mcp_policy_decisions", "mcp_policy_eval_seconds", "mcp_auth_failures", "mcp_rate_limited",
            "mcp_admission_refused", "mcp_audit_events", "mcp_gateway_build_info"} <= names
    assert {m.name for m in REGISTRY.collect()} >= {"process_cpu_seconds", "python_info"}


@pytest.mark.parametrize("family", MCP_FAMILIES, ids=lambda m: m.name)
def test_every_metric_has_help_and_bounded_labels(family: object) -> None:
    name = family.name  # type: ignore[attr-defined]
    assert len(family.documentation) > 20, f"{name} has no real HELP text"  # type: ignore[attr-defined]
    undeclared = _label_names(name) - set(metrics.LABEL_VALUES)
    assert not undeclared, f"{name} has labels {undeclared} with no declared bounded values"


def test_the_method_label_names_every_route_and_rpc() -> None:
    """The edges name their calls by these strings only (the integration test checks the
    values a real gateway writes against the same set)."""
    from gateway.proto import mcp_pb2

    rpcs = {m.name for m in mcp_pb2.DESCRIPTOR.services_by_name["McpService"].methods} - {"Health"}
    assert rpcs <= metrics.LABEL_VALUES["method"]  # type: ignore[operator]


def test_openmetrics_is_served_when_asked_for() -> None:
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    body, content_type = metrics.exposition("text/plain")
    assert content_type.startswith("text/plain") and b"# EOF" not in body


def test_an_unknown_limit_reason_is_other() -> None:
    assert metrics.limit_kind("oom") == "oom"
    assert metrics.limit_kind("something new") == "other"
    assert metrics.limit_kind("cancelled") is None and metrics.limit_kind(None) is None


def test_the_docs_table_is_current() -> None:
    from gateway.observability.docs import render
    from tests.conftest import REPO

    for path, text in render(REPO).items():
        assert path.read_text() == text, f"{path} is stale: run .venv/bin/python scripts/gen_observability.py"
