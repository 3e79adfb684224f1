"""Logs and spans in process: the JSON and text formats with call correlation fields, the
repeat limiter, the tracing switch, and the span helpers with the SDK's in-memory exporter
(as opentelemetry-python's own tests do)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability import logs, tracing


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # The global provider can be set once per process: the test tracer comes from this one.
    original = tracing.tracer
    tracing.tracer = lambda: provider.get_tracer("test")  # type: ignore[assignment]
    yield memory
    tracing.tracer = original  # type: ignore[assignment]


def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
    handler.addFilter(logs._ContextFilter())  # noqa: SLF001 - the filter configure_logging installs
    handler.addFilter(logs.RepeatFilter(burst=2, window_s=3600))
    logger = logging.getLogger(f"test.observability.{fmt}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_a_json_line_carries_the_call_and_the_span(exporter: InMemorySpanExporter) -> None:
    logger, stream = capture("json")
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.call_span("http", "POST /v1/execute", "127.0.0.1:5000", carrier), \
            logs.bind_call("req-1", "alice", "acme"):
        logger.warning("task %s ended", "task-1")
    line = json.loads(stream.getvalue())
    assert list(line) == ["time", "level", "logger", "message", "request_id", "trace_id", "span_id", "principal",
                          "tenant"]
    assert line["message"] == "task task-1 ended" and line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (line["principal"], line["tenant"], line["request_id"]) == ("alice", "acme", "req-1")
    assert line["time"].endswith("Z") and line["level"] == "WARNING"


def test_a_json_line_outside_a_call_has_no_correlation_fields() -> None:
    logger, stream = capture("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    line = json.loads(stream.getvalue())
    assert set(line) == {"time", "level", "logger", "message", "exception"} and "RuntimeError: boom" in line["exception"]


def test_text_lines_put_the_fields_after_the_message() -> None:
    logger, stream = capture("text")
    with logs.bind_call("req-2", "bob", "globex"):
        logger.info("hello")
    assert stream.getvalue().rstrip().endswith("hello [request_id=req-2 principal=bob tenant=globex]")


def test_repeated_failures_are_held_back_and_counted() -> None:
    limiter = logs.RepeatFilter(burst=2, window_s=0.2)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "store down: %s", ("a",), None)
    passed = [limiter.filter(record) for _ in range(5)]
    assert passed == [True, True, False, False, False]
    time.sleep(0.25)
    assert limiter.filter(record) and record.suppressed == 3  # type: ignore[attr-defined]
    info = logging.LogRecord("x", logging.INFO, __file__, 1, "fine", (), None)
    assert all(limiter.filter(info) for _ in range(10))  # below WARNING: never held


def test_the_call_span_continues_the_callers_trace_and_children_nest(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with tracing.call_span("grpc", "ExecuteCommand", "10.0.0.1:4000", carrier) as call:
        with tracing.span("policy.evaluate", mcp__decision="allow", skipped=None):
            pass
        call.set_attribute("mcp.task_id", "task-x")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, child = spans["mcp.McpService/ExecuteCommand"], spans["policy.evaluate"]
    assert format(root.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert root.kind == trace.SpanKind.SERVER
    assert dict(root.attributes or {}) == {"rpc.system": "grpc", "rpc.service": "mcp.McpService",
                                           "rpc.method": "ExecuteCommand", "network.peer.address": "10.0.0.1",
                                           "network.peer.port": 4000, "mcp.task_id": "task-x"}
    assert dict(child.attributes or {}) == {"mcp.decision": "allow"}


def test_a_refusal_leaves_the_call_span_unfailed(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with pytest.raises(PermissionError), tracing.call_span("http", "POST /v1/execute", "", {}):
        raise PermissionError("denied")
    (root,) = exporter.get_finished_spans()
    assert root.status.status_code == trace.StatusCode.UNSET and not root.events


@pytest.mark.parametrize("env, on", [({}, False), ({"OTEL_TRACES_EXPORTER": "none"}, False),
                                     ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False)])
def test_tracing_is_off_unless_the_environment_asks(env: dict[str, str], on: bool) -> None:
    assert tracing.configure_tracing(env) is on


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin"})


@pytest.mark.parametrize("env, kind", [({}, "grpc"), ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http"),
                                       ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "grpc")])
def test_the_otlp_protocol_follows_the_environment(env: dict[str, str], kind: str) -> None:
    exporter = tracing._otlp_exporter(env)  # noqa: SLF001 - the factory configure_tracing uses
    try:
        assert f".proto.{kind}." in type(exporter).__module__
    finally:
        exporter.shutdown()


def test_an_unknown_otlp_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="http/json"):
        tracing._otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})  # noqa: SLF001


def test_small_export_batches_unless_the_environment_says_otherwise() -> None:
    assert tracing.batch_settings({}) == {"max_export_batch_size": 64, "schedule_delay_millis": 200}
    assert tracing.batch_settings({"OTEL_BSP_SCHEDULE_DELAY": "5000"}) == {"max_export_batch_size": 64}
