"""Traces and logs of a real gateway (issue 15).

The gateway runs with tracing on through the standard environment
(``OTEL_TRACES_EXPORTER=otlp``) and exports with the SDK's real OTLP/gRPC exporter to a
receiver in this test (grpcio serving ``opentelemetry.proto.collector.trace.v1``), with
``--log-format json``. Checked:

- each call is one SERVER span with the semantic-convention attributes, and its children:
  ``authenticate``, ``policy.evaluate``, ``audit.write``, ``store.create``, then the task's
  ``task.queue`` and ``sandbox.run`` (with its own ``audit.write`` for the task end);
- a caller's ``traceparent`` (HTTP header, gRPC metadata) is the parent of the call span;
- the trace id is in the call's audit events and in the log lines written for it;
- every stderr line is a JSON object with time, level, logger and message;
- with tracing on, logs and metrics are still there (turning tracing on turns nothing off).
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway, wait_final, wait_until


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the OTLP service's name
        with self._lock:
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get("service.name")
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append({
                            "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "kind": s.kind, "status": s.status.code,
                            "service": service, "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                        })
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    collected = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collected, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(receiver: tuple[Receiver, int], state_root: Path) -> Iterator[dict[str, Any]]:
    collected, port = receiver
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "gw-test"}
    gw: GatewayProcess = start_gateway(Path(tempfile.mkdtemp(prefix="tracing-", dir=state_root)) / "var",
                                       "--log-format", "json", env=env)
    rest_trace, grpc_trace = secrets.token_hex(16), secrets.token_hex(16)
    rest_parent, grpc_parent = secrets.token_hex(8), secrets.token_hex(8)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            created = http.post("/v1/execute", json={"command": "echo", "args": ["traced"]},
                                headers={"traceparent": f"00-{rest_trace}-{rest_parent}-01"})
            assert created.status_code == 202, created.text
            rest_task = created.json()["task_id"]
            wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), rest_task)
            assert http.post("/v1/execute", json={"command": "sudo", "args": ["id"]}).status_code == 403
            with grpc.insecure_channel(gw.grpc_addr) as channel:
                stub = mcp_pb2_grpc.McpServiceStub(channel)
                grpc_task = stub.ExecuteCommand(mcp_pb2.CommandRequest(command="echo", args=["g"]), timeout=30,
                                                metadata=[("traceparent", f"00-{grpc_trace}-{grpc_parent}-01")]).task_id
            wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), grpc_task)
            metrics = http.get("/metrics", headers={"accept": "application/openmetrics-text"}).text
        wait_until(lambda: sum(s["name"] == "sandbox.run" for s in collected.spans) >= 2, timeout_s=20,
                   what="spans at the receiver")
    finally:
        assert gw.stop() == 0, gw.stderr_path.read_text()
    yield {"gw": gw, "spans": collected.spans, "metrics": metrics, "rest": (rest_trace, rest_parent, rest_task),
           "grpc": (grpc_trace, grpc_parent, grpc_task)}


def tree(spans: list[dict[str, Any]], trace_id: str) -> dict[str, list[str]]:
    """parent span name -> sorted child names, for one trace."""
    mine = [s for s in spans if s["trace_id"] == trace_id]
    names = {s["span_id"]: s["name"] for s in mine}
    children: dict[str, list[str]] = defaultdict(list)
    for s in mine:
        children[names.get(s["parent"], "<caller>")].append(s["name"])
    return {k: sorted(v) for k, v in children.items()}


def test_a_rest_call_is_one_server_span_with_its_stages(traced: dict[str, Any]) -> None:
    trace_id, parent, task_id = traced["rest"]
    assert tree(traced["spans"], trace_id) == {
        "<caller>": ["POST /v1/execute"],
        "POST /v1/execute": ["audit.write", "authenticate", "policy.evaluate", "sandbox.run", "store.create",
                             "task.queue"],
        "sandbox.run": ["audit.write"],
    }
    call = next(s for s in traced["spans"] if s["trace_id"] == trace_id and s["name"] == "POST /v1/execute")
    assert call["parent"] == parent and call["kind"] == 2 and call["service"] == "gw-test"  # SERVER
    assert {k: call["attributes"].get(k) for k in ("http.request.method", "http.route", "url.scheme",
                                                  "mcp.task_id", "mcp.decision", "mcp.principal")} == {
        "http.request.method": "POST", "http.route": "/v1/execute", "url.scheme": "http",
        "mcp.task_id": task_id, "mcp.decision": "allow", "mcp.principal": "anonymous"}
    run = next(s for s in traced["spans"] if s["trace_id"] == trace_id and s["name"] == "sandbox.run")
    assert run["attributes"]["mcp.exit_code"] == 0 and run["attributes"]["mcp.status"] == "COMPLETED"
    queue = next(s for s in traced["spans"] if s["trace_id"] == trace_id and s["name"] == "task.queue")
    assert queue["end"] <= run["start"] + 1_000_000  # the wait ends as the run starts


def test_a_grpc_call_continues_the_callers_trace(traced: dict[str, Any]) -> None:
    trace_id, parent, task_id = traced["grpc"]
    call = next(s for s in traced["spans"] if s["trace_id"] == trace_id and s["kind"] == 2)
    assert call["name"] == "mcp.McpService/ExecuteCommand" and call["parent"] == parent
    assert {k: call["attributes"].get(k) for k in ("rpc.system", "rpc.service", "rpc.method", "mcp.task_id")} == {
        "rpc.system": "grpc", "rpc.service": "mcp.McpService", "rpc.method": "ExecuteCommand", "mcp.task_id": task_id}


def test_a_denied_call_is_a_new_trace_that_did_not_fail(traced: dict[str, Any]) -> None:
    denied = [s for s in traced["spans"] if s["kind"] == 2 and s["attributes"].get("mcp.decision") == "deny"]
    assert len(denied) == 1 and denied[0]["parent"] == ""  # no traceparent: a root span
    assert denied[0]["attributes"]["mcp.error_code"] == 3001 and denied[0]["status"] != 2  # a refusal, not an error


def test_the_trace_id_is_in_the_audit_events_and_the_logs(traced: dict[str, Any]) -> None:
    gw: GatewayProcess = traced["gw"]
    trace_id, _, task_id = traced["rest"]
    events = [e for e in gw.audit_events() if e.get("task_id") == task_id]
    assert [(e["event_type"], e.get("trace_id")) for e in events] == [("decision", trace_id), ("task_end", trace_id)]
    lines = gw.stderr_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    ended = [r for r in records if task_id in r["message"] and "ended" in r["message"]]
    assert len(ended) == 1 and ended[0]["trace_id"] == trace_id
    # Written inside sandbox.run: the span id the log names is the exported span's.
    run = next(s for s in traced["spans"] if s["trace_id"] == trace_id and s["name"] == "sandbox.run")
    assert ended[0]["span_id"] == run["span_id"]
    assert ended[0]["principal"] == "anonymous" and ended[0]["tenant"] == "default" and ended[0]["request_id"]


def test_tracing_turns_nothing_else_off(traced: dict[str, Any]) -> None:
    records = [json.loads(line) for line in traced["gw"].stderr_path.read_text().splitlines()]
    assert any(r["message"].startswith("tracing on") for r in records)
    assert any("listening" in r["message"] or "serving" in r["message"] for r in records)
    # Histograms carry the trace id as an exemplar in OpenMetrics.
    assert 'mcp_api_request_duration_seconds_bucket{' in traced["metrics"]
    assert '# {trace_id="' in traced["metrics"]
