"""Tasks that behave, against real gateway processes: live output over gRPC and SSE with
resumable offsets, cancel, queue backpressure and quotas, drain on SIGTERM, recovery after
a crash."""

from __future__ import annotations

import base64
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway

TICKS = 40  # lines printed 50 ms apart: about 2 s of output
TICKER = f"for i in $(seq 1 {TICKS}); do echo tick $i; sleep 0.05; done; echo done >&2"


def execute(http: httpx.Client, script: str, **extra: Any) -> str:
    response = http.post("/v1/execute", json={"command": "sh", "args": ["-c", script], "timeout": 120, **extra})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def status(http: httpx.Client, task_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(http: httpx.Client, task_id: str, wanted: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = status(http, task_id)
        if body["task_info"]["status"] in wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parsed SSE events (id, event, data JSON) of a streaming response, as they arrive."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(": ")
            event[key] = json.loads(value) if key == "data" else value


def grpc_stub(gateway: GatewayProcess) -> mcp_pb2_grpc.McpServiceStub:
    return mcp_pb2_grpc.McpServiceStub(grpc.insecure_channel(gateway.grpc_addr))


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> mcp_pb2_grpc.McpServiceStub:
    return grpc_stub(gateway)


def test_grpc_stream_is_live_ordered_and_ends_with_exit_code(
    http: httpx.Client, stub: mcp_pb2_grpc.McpServiceStub
) -> None:
    started = time.monotonic()
    task_id = execute(http, TICKER)
    arrivals: list[tuple[float, mcp_pb2.TaskOutputChunk]] = []
    for chunk in stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=60):
        arrivals.append((time.monotonic() - started, chunk))
    chunks = [c for _, c in arrivals]
    assert [c.offset for c in chunks] == list(range(len(chunks))), "offsets must be contiguous from 0"
    assert all(c.task_id == task_id for c in chunks)
    stdout = b"".join(c.data for c in chunks if c.type == mcp_pb2.CHUNK_STDOUT)
    assert stdout == b"".join(b"tick %d\n" % i for i in range(1, TICKS + 1))
    assert b"".join(c.data for c in chunks if c.type == mcp_pb2.CHUNK_STDERR) == b"done\n"
    assert chunks[-1].type == mcp_pb2.CHUNK_EXIT_CODE and chunks[-1].data == b"0"
    end_event = json.loads(chunks[-2].data)
    assert chunks[-2].type == mcp_pb2.CHUNK_EVENT and end_event["event"] == "task_end"
    assert end_event["status"] == "COMPLETED"
    # Incremental: the first output arrived long before the command ended (~2 s of ticks).
    first_stdout = next(t for t, c in arrivals if c.type == mcp_pb2.CHUNK_STDOUT)
    last = arrivals[-1][0]
    assert last - first_stdout > 1.0, (first_stdout, last)
    assert len([c for c in chunks if c.type == mcp_pb2.CHUNK_STDOUT]) >= 5, "output came in one lump"


def test_grpc_stream_resumes_from_an_offset(http: httpx.Client, stub: mcp_pb2_grpc.McpServiceStub) -> None:
    task_id = execute(http, TICKER)
    first: list[mcp_pb2.TaskOutputChunk] = []
    call = stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=60)
    for chunk in call:
        first.append(chunk)
        if len(first) == 3:
            call.cancel()  # the client goes away mid-stream
            break
    rest = list(stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id, offset=3), timeout=60))
    whole = list(stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=60))
    assert [(c.offset, c.type, c.data) for c in first + rest] == [(c.offset, c.type, c.data) for c in whole]
    # A finished task replays from the store; an offset past the end ends at once.
    end = whole[-1].offset + 1
    assert list(stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id, offset=end), timeout=10)) == []


def test_sse_stream_live_and_reconnect_with_last_event_id(http: httpx.Client) -> None:
    task_id = execute(http, TICKER)
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    first_at = None
    with http.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(response):
            first_at = first_at or time.monotonic() - started
            seen.append(event)
            if len(seen) == 4:
                break  # disconnect
    assert first_at is not None and first_at < 1.5, first_at
    assert [int(e["id"]) for e in seen] == [0, 1, 2, 3]
    last_id = seen[-1]["id"]
    with http.stream("GET", f"/v1/tasks/{task_id}/stream", headers={"Last-Event-ID": last_id}) as response:
        seen += list(sse_events(response))
    assert [int(e["id"]) for e in seen] == list(range(len(seen))), "no gap, no repeat"
    assert seen[-1]["event"] == "exit" and base64.b64decode(seen[-1]["data"]["data"]) == b"0"
    stdout = b"".join(base64.b64decode(e["data"]["data"]) for e in seen if e["event"] == "stdout")
    assert stdout.count(b"tick") == TICKS
    # ?offset= works the same way.
    with http.stream("GET", f"/v1/tasks/{task_id}/stream?offset={len(seen) - 1}") as response:
        tail = list(sse_events(response))
    assert [e["event"] for e in tail] == ["exit"]


def test_stream_errors(http: httpx.Client, stub: mcp_pb2_grpc.McpServiceStub) -> None:
    unknown = "task-" + uuid.uuid4().hex
    response = http.get(f"/v1/tasks/{unknown}/stream")
    assert response.status_code == 404 and response.json()["error"]["code"] == 6001
    assert http.get("/v1/tasks/nope/stream").json()["error"]["code"] == 2003
    assert http.get(f"/v1/tasks/{unknown}/stream?offset=-1").status_code == 400  # a query parameter: not 422
    response = http.get(f"/v1/tasks/{unknown}/stream", headers={"Last-Event-ID": "x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == 2003
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=unknown), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_slow_reader_blocks_nothing_and_truncation_is_an_event(http: httpx.Client) -> None:
    # 3 MiB of output against the 1 MiB cap; one reader never reads its stream.
    task_id = execute(http, "head -c 3145728 /dev/zero | tr '\\0' x; echo end >&2")
    with http.stream("GET", f"/v1/tasks/{task_id}/stream") as stalled:
        assert stalled.status_code == 200
        final = wait_status(http, task_id, {"COMPLETED", "FAILED"}, timeout_s=30)
        assert final["task_info"]["status"] == "COMPLETED"
        assert final["result"]["stdout_truncated"] is True
        with http.stream("GET", f"/v1/tasks/{task_id}/stream") as reader:
            events = list(sse_events(reader))
    stdout = b"".join(base64.b64decode(e["data"]["data"]) for e in events if e["event"] == "stdout")
    assert stdout == b"x" * (1 << 20)
    notes = [json.loads(base64.b64decode(e["data"]["data"])) for e in events if e["event"] == "event"]
    assert {"event": "output_truncated", "stream": "stdout", "cap_bytes": 1 << 20} in notes
    assert [int(e["id"]) for e in events] == list(range(len(events)))


def test_cancel_kills_the_sandbox_and_is_idempotent(http: httpx.Client, stub: mcp_pb2_grpc.McpServiceStub) -> None:
    marker = f"600.{uuid.uuid4().int % 10**9}"
    task_id = execute(http, f"sleep {marker}")
    wait_status(http, task_id, {"RUNNING"})
    deadline = time.monotonic() + 10
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker), "the sleep never started"
    response = http.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["task_info"]["status"] == "CANCELLED"
    assert processes_with(marker) == [], "cancel left a process behind"
    again = stub.CancelTask(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=30)
    assert again.task_info.status == mcp_pb2.TASK_CANCELLED
    events = [json.loads(c.data) for c in stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id))
              if c.type == mcp_pb2.CHUNK_EVENT]
    assert events[-1]["status"] == "CANCELLED"
    # Cancel of a finished task answers its final state.
    done = execute(http, "true")
    wait_status(http, done, {"COMPLETED"})
    assert http.post(f"/v1/tasks/{done}/cancel").json()["task_info"]["status"] == "COMPLETED"
    assert http.post(f"/v1/tasks/task-{uuid.uuid4().hex}/cancel").json()["error"]["code"] == 6001


@pytest.fixture
def small_gateway(state_root: Path) -> Iterator[GatewayProcess]:
    """One sandbox slot, one queue place, two pending tasks per principal."""
    gw = start_gateway(Path(tempfile.mkdtemp(prefix="queue-", dir=state_root)) / "var", env={
        "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "1",
        "MCP_GATEWAY_TASKS__MAX_QUEUED": "1",
        "MCP_GATEWAY_TASKS__SHUTDOWN_GRACE_S": "1",
    })
    yield gw
    gw.stop()


def test_full_queue_answers_429_with_retry_after(small_gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=small_gateway.http_url, timeout=30) as http:
        running = execute(http, "sleep 600")
        wait_status(http, running, {"RUNNING"})
        queued = execute(http, "echo queued")
        assert status(http, queued)["task_info"]["status"] == "QUEUED"
        response = http.post("/v1/execute", json={"command": "echo", "args": ["one too many"]})
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == 4290
        assert int(response.headers["retry-after"]) >= 1
        with pytest.raises(grpc.RpcError) as err:
            grpc_stub(small_gateway).ExecuteCommand(mcp_pb2.CommandRequest(command="true"), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(err.value.trailing_metadata())
        assert json.loads(trailers["error-details"])["error"]["code"] == 4290
        assert int(trailers["retry-after"]) >= 1
        # Cancelling the queued task frees its place at once; it never ran.
        cancelled = http.post(f"/v1/tasks/{queued}/cancel").json()
        assert cancelled["task_info"]["status"] == "CANCELLED" and cancelled["task_info"]["started_at"] is None
        assert http.post("/v1/execute", json={"command": "true"}).status_code == 202
        http.post(f"/v1/tasks/{running}/cancel")


def test_principal_quotas(state_root: Path) -> None:
    gw = start_gateway(Path(tempfile.mkdtemp(prefix="quota-", dir=state_root)) / "var", env={
        "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "2",
        "MCP_GATEWAY_TASKS__MAX_RUNNING_PER_PRINCIPAL": "1",
        "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__CONCURRENT_TASKS": "2",
        "MCP_GATEWAY_TASKS__SHUTDOWN_GRACE_S": "1",
    })
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            first = execute(http, "sleep 600")
            second = execute(http, "echo second")
            wait_status(http, first, {"RUNNING"})
            time.sleep(0.5)  # a free slot exists, but the principal's running quota is 1
            assert status(http, second)["task_info"]["status"] == "QUEUED"
            response = http.post("/v1/execute", json={"command": "true"})
            assert response.status_code == 429 and response.json()["error"]["code"] == 4290
            assert "quota" in response.json()["error"]["message"]
            http.post(f"/v1/tasks/{first}/cancel")
            assert wait_status(http, second, {"COMPLETED"})["result"]["stdout"] == "second\n"
    finally:
        gw.stop()


def test_sigterm_drains_and_loses_no_task(state_root: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="drain-", dir=state_root)) / "var"
    env = {"MCP_GATEWAY_TASKS__MAX_CONCURRENT": "2", "MCP_GATEWAY_TASKS__SHUTDOWN_GRACE_S": "3"}
    gw = start_gateway(state, env=env)
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        quick = execute(http, "sleep 1; echo finished in grace")
        stuck = execute(http, "sleep 600")
        queued = execute(http, "echo never")
        wait_status(http, stuck, {"RUNNING"})
        wait_status(http, quick, {"RUNNING"})
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = http.post("/v1/execute", json={"command": "true"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == 5003
        assert http.get("/health/ready").status_code == 503
    began = time.monotonic()
    assert gw.stop() == 0, gw.stderr_path.read_text()
    assert time.monotonic() - began < 15
    gw = start_gateway(state, env=env)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            assert status(http, quick)["task_info"]["status"] == "COMPLETED"
            assert status(http, quick)["result"]["stdout"] == "finished in grace\n"
            assert status(http, stuck)["task_info"]["status"] == "CANCELLED"
            assert status(http, queued)["task_info"]["status"] == "CANCELLED"
        ends = {e["task_id"]: e["status"] for e in gw.audit_events() if e["event_type"] == "task_end"}
        assert ends == {quick: "COMPLETED", stuck: "CANCELLED", queued: "CANCELLED"}
    finally:
        gw.stop()


def test_crash_marks_running_tasks_failed_on_restart(state_root: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="crash-", dir=state_root)) / "var"
    gw = start_gateway(state)
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        task_id = execute(http, "echo before; sleep 600")
        wait_status(http, task_id, {"RUNNING"})
        time.sleep(0.3)  # let the first output be flushed
    gw.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10  # the sandbox dies with its supervisor (PDEATHSIG)
    while processes_with("sleep 600") and time.monotonic() < deadline:
        time.sleep(0.1)
    gw = start_gateway(state)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            body = status(http, task_id)
            assert body["task_info"]["status"] == "FAILED"
            assert body["result"]["error"] == "gateway_restart"
            with http.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
                events = list(sse_events(response))
        assert base64.b64decode(events[0]["data"]["data"]) == b"before\n"
        assert events[-1]["event"] == "exit" and base64.b64decode(events[-1]["data"]["data"]) == b"-1"
    finally:
        gw.stop()
