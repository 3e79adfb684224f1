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
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability import logs, replay, tracing


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    # What configure_tracing installs, with the in-memory exporter, without the global
    # provider (set once per process), the replayer's thread or the exit hooks.
    original = tracing._tracing  # noqa: SLF001
    tracing._tracing = tracing._Tracing([SimpleSpanProcessor(memory)], Resource.create({}))  # noqa: SLF001
    yield memory
    tracing._tracing = original  # noqa: SLF001


def finished(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The spans made so far, by name, after the replayer made those waiting (what its
    thread does every REPLAY_INTERVAL_S)."""
    assert tracing._tracing is not None  # noqa: SLF001
    tracing._tracing.replayer.replay_waiting()  # noqa: SLF001
    return {s.name: s for s in exporter.get_finished_spans()}


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
    exporter.clear()
    logger, stream = capture("json")
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.call_span("http", "POST /v1/execute", "127.0.0.1:5000", carrier), \
            logs.bind_call("req-1", "alice", "acme"):
        logger.warning("task %s ended", "task-1")
    line = json.loads(stream.getvalue())
    (call,) = finished(exporter).values()
    assert line["span_id"] == format(call.context.span_id, "016x")  # the id the exported span has
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
        with tracing.span("sandbox.run", mcp__decision="allow", skipped=None) as run:
            assert trace.get_current_span() is run
            with tracing.stage("audit.write"):
                pass
        call.set_attribute("mcp.task_id", "task-x")
    spans = finished(exporter)
    root, child = spans["mcp.McpService/ExecuteCommand"], spans["sandbox.run"]
    assert format(root.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert root.kind == trace.SpanKind.SERVER
    assert dict(root.attributes or {}) == {"rpc.system": "grpc", "rpc.service": "mcp.McpService",
                                           "rpc.method": "ExecuteCommand", "network.peer.address": "10.0.0.1",
                                           "network.peer.port": 4000, "mcp.task_id": "task-x"}
    assert dict(child.attributes or {}) == {"mcp.decision": "allow"}
    assert spans["audit.write"].parent is not None and spans["audit.write"].parent.span_id == child.context.span_id


def test_a_stage_is_made_after_its_block_with_its_times(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with tracing.call_span("grpc", "ExecuteCommand", "", {}) as call:
        with tracing.stage("policy.evaluate", mcp__engine="embedded", skipped=None) as current:
            assert trace.get_current_span() is call  # a stage is never the current span
            current.set_attributes({"mcp.decision": "allow"})
            time.sleep(0.01)
        with pytest.raises(ValueError), tracing.stage("store.create"):
            raise ValueError("disk full")
        assert [s.name for s in exporter.get_finished_spans()] == []  # nothing on the request path
    spans = finished(exporter)
    root, policy, store = spans["mcp.McpService/ExecuteCommand"], spans["policy.evaluate"], spans["store.create"]
    assert policy.parent is not None and policy.parent.span_id == root.context.span_id
    assert policy.context.trace_id == root.context.trace_id
    assert dict(policy.attributes or {}) == {"mcp.engine": "embedded", "mcp.decision": "allow"}
    assert policy.start_time is not None and policy.end_time is not None and root.start_time is not None
    assert root.start_time <= policy.start_time and policy.end_time - policy.start_time >= 10_000_000
    assert policy.status.status_code == trace.StatusCode.UNSET
    assert store.status.status_code == trace.StatusCode.ERROR and store.status.description == "ValueError: disk full"
    assert [e.name for e in store.events] == ["exception"]


def test_a_recorded_stage_has_the_times_it_is_given(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with tracing.call_span("grpc", "ExecuteCommand", "", {}):
        parent = otel_context.get_current()
    tracing.record_stage("task.queue", parent, 1_000, 5_000, {"mcp.task_id": "t"})
    queue = finished(exporter)["task.queue"]
    assert (queue.start_time, queue.end_time, dict(queue.attributes or {})) == (1_000, 5_000, {"mcp.task_id": "t"})


def test_nothing_is_made_under_an_unsampled_call(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}  # not sampled
    with tracing.call_span("grpc", "GetTaskStatus", "", carrier):
        parent = otel_context.get_current()
        with tracing.stage("authenticate") as auth, tracing.span("sandbox.run") as run:
            auth.set_attribute("ignored", True)
            run.set_attribute("ignored", True)
            assert tracing.current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    tracing.record_stage("task.queue", parent, 1, 2, {})
    with tracing.span("sandbox.run", parent):  # a child of an ended, unsampled call: its trace id
        assert tracing.current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert finished(exporter) == {}


def test_a_refusal_leaves_the_call_span_unfailed(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with pytest.raises(PermissionError), tracing.call_span("http", "POST /v1/execute", "", {}):
        raise PermissionError("denied")
    (root,) = finished(exporter).values()
    assert root.status.status_code == trace.StatusCode.UNSET and not root.events


def test_spans_beyond_the_queue_bound_are_dropped_and_logged(exporter: InMemorySpanExporter,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    exporter.clear()
    monkeypatch.setattr(replay, "REPLAY_QUEUE_MAX", 2)
    with tracing.call_span("grpc", "GetTaskStatus", "", {}):
        for _ in range(3):
            with tracing.stage("authenticate") as auth:
                pass
    auth.set_attribute("late", True)  # after its end: ignored, as on an SDK span
    with caplog.at_level(logging.WARNING, "gateway.observability.replay"):
        finished(exporter)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["authenticate", "authenticate"]  # the third and the call's: dropped
    assert all("late" not in (s.attributes or {}) for s in spans)
    assert "tracing: 2 spans dropped, more than 2 were waiting" in caplog.text


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
