"""ExecuteCommand end to end over real sockets: gRPC (grpcurl or a reflection client) and REST."""

from __future__ import annotations

import base64
import os
import json
import re
import subprocess
from typing import Any

import grpc
import httpx
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.audit.fields import json_schema
from gateway.audit.log import verify_chain
from tests.conftest import GatewayProcess, Grpcurl, ReflectionClient, wait_final

TASK_ID = re.compile(r"^task-[0-9a-f]{32}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def grpc_status(client: Grpcurl | ReflectionClient, task_id: str) -> dict[str, Any]:
    reply = client.call("GetTaskStatus", {"task_id": task_id})
    assert reply.code == "OK", reply
    assert reply.body is not None
    return reply.body


def rest_status(http: httpx.Client, task_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_hello_world_over_grpc(grpc_client: Grpcurl | ReflectionClient) -> None:
    reply = grpc_client.call("ExecuteCommand", {"command": "echo", "args": ["hello world"], "timeout": 30})
    assert reply.code == "OK", reply
    assert reply.body is not None
    assert TASK_ID.match(reply.body["task_id"])
    assert reply.body["status"] in ("TASK_QUEUED", "TASK_RUNNING", "TASK_COMPLETED")
    assert RFC3339.match(reply.body["created_at"])
    final = wait_final(lambda t: grpc_status(grpc_client, t), reply.body["task_id"])
    assert final["task_info"]["status"] == "TASK_COMPLETED", final
    assert final["task_info"]["task_type"] == "TASK_COMMAND"
    assert RFC3339.match(final["task_info"]["started_at"]) and RFC3339.match(final["task_info"]["completed_at"])
    result = final["result"]
    assert int(result["exit_code"]) == 0
    assert result["stdout"] == "hello world\n"
    assert result["stderr"] == ""
    assert int(result["execution_time_ms"]) >= 1
    assert int(result["resource_usage"]["max_memory_kb"]) > 0


def test_grpcurl_verbatim_readme_command(gateway: GatewayProcess, grpcurl_binary: str | None) -> None:
    """The README's command, byte for byte except the port."""
    if grpcurl_binary is None:
        pytest.skip("grpcurl could not be built here (reason printed above); covered by the reflection client")
    port = gateway.grpc_addr.rsplit(":", 1)[1]
    out = subprocess.run(
        [grpcurl_binary, "-plaintext", "-d", '{"command":"echo","args":["hello world"],"timeout":30}',
         f"localhost:{port}", "mcp.McpService/ExecuteCommand"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    task_id = json.loads(out.stdout)["task_id"]
    client = Grpcurl(grpcurl_binary, f"localhost:{port}")
    wait_final(lambda t: grpc_status(client, t), task_id)
    plain = subprocess.run(  # no -emit-defaults: exit code 0 must still show
        [grpcurl_binary, "-plaintext", "-d", json.dumps({"task_id": task_id}), f"localhost:{port}",
         "mcp.McpService/GetTaskStatus"], capture_output=True, text=True, timeout=60, check=True)
    final = json.loads(plain.stdout)
    assert final["task_info"]["status"] == "TASK_COMPLETED", final
    assert final["result"]["exit_code"] == 0
    assert final["result"]["stdout"] == "hello world\n"
    listed = subprocess.run([grpcurl_binary, "-plaintext", f"localhost:{port}", "list"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert {"mcp.McpService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(listed)


def test_grpc_health_and_health_rpc(gateway: GatewayProcess, grpc_client: Grpcurl | ReflectionClient) -> None:
    with grpc.insecure_channel(gateway.grpc_addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mcp.McpService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reply = grpc_client.call("Health", {})
    assert reply.body is not None and reply.body["status"] == "SERVING"
    assert reply.body["version"]


def test_hello_world_over_rest(http: httpx.Client) -> None:
    response = http.post("/v1/execute", json={"command": "echo", "args": ["hello world"], "timeout": 30})
    assert response.status_code == 202, response.text
    body = response.json()
    assert TASK_ID.match(body["task_id"]) and body["status"] in ("QUEUED", "RUNNING", "COMPLETED")
    final = wait_final(lambda t: rest_status(http, t), body["task_id"])
    assert final["task_info"]["status"] == "COMPLETED"
    assert final["result"]["exit_code"] == 0
    assert final["result"]["stdout"] == "hello world\n"


def test_exit_code_stderr_env_and_cwd(http: httpx.Client) -> None:
    response = http.post("/v1/execute", json={
        "command": "sh", "args": ["-c", 'echo "$GREETING" in "$(pwd)"; echo oops >&2; exit 7'],
        "env": {"GREETING": "hi"}, "cwd": "/workspace", "metadata": {"job": "ci-42"},
    })
    assert response.status_code == 202, response.text
    final = wait_final(lambda t: rest_status(http, t), response.json()["task_id"])
    assert final["task_info"]["status"] == "COMPLETED"
    assert final["task_info"]["metadata"] == {"job": "ci-42"}
    assert final["result"]["exit_code"] == 7
    assert final["result"]["stdout"] == "hi in /workspace\n"
    assert final["result"]["stderr"] == "oops\n"


def test_wall_timeout_is_timed_out(http: httpx.Client) -> None:
    response = http.post("/v1/execute", json={"command": "sleep", "args": ["30"], "timeout": 1})
    final = wait_final(lambda t: rest_status(http, t), response.json()["task_id"])
    assert final["task_info"]["status"] == "TIMED_OUT"
    assert final["result"]["limit_reason"] == "wall_timeout"
    assert final["result"]["execution_time_ms"] < 10_000


def test_command_not_found_fails_not_completes(http: httpx.Client) -> None:
    # Policy allows it (allow-listed name in a system dir); Debian has no /usr/local/bin/ls,
    # so the sandbox cannot exec it: FAILED, not COMPLETED with bwrap's exit status.
    response = http.post("/v1/execute", json={"command": "/usr/local/bin/ls"})
    assert response.status_code == 202, response.text
    final = wait_final(lambda t: rest_status(http, t), response.json()["task_id"])
    assert final["task_info"]["status"] == "FAILED"
    assert final["result"]["exit_code"] == -1
    assert "execvp /usr/local/bin/ls" in final["result"]["error"]


def test_refusal_after_allow_is_audited_with_its_code(gateway: GatewayProcess, http: httpx.Client) -> None:
    """Policy allows echo, but the request asks for a path policy did not grant (3003):
    the decision event records that refusal and names no task."""
    response = http.post("/v1/execute", json={
        "command": "echo", "args": ["refused-after-allow"],
        "sandbox_config": {"ro_paths": ["/srv/data"]},
    })
    assert (response.status_code, response.json()["error"]["code"]) == (403, 3003)
    events = [e for e in gateway.audit_events() if e.get("command") == "echo refused-after-allow"]
    assert len(events) == 1
    assert events[0]["decision"] == "allow" and events[0]["error_code"] == 3003
    assert "task_id" not in events[0]


def test_rest_health_routes_and_openapi(http: httpx.Client) -> None:
    health = http.get("/health").json()
    assert health["status"] == "SERVING" and isinstance(health["uptime_seconds"], int)
    assert http.get("/health/live").json() == {"status": "live"}
    ready = http.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["policy"]["engine"] == "embedded" and ready["policy"]["revision"]
    sandbox_info = ready["sandbox"]
    assert {"memory", "pids"} <= set(sandbox_info["enforced_limits"])  # pids: a cgroup or a uid per task
    assert sandbox_info["uid_per_task"] is (os.geteuid() == 0)
    spec = http.get("/openapi.json").json()
    assert {"/v1/execute", "/v1/tasks/{task_id}", "/health", "/health/live", "/health/ready"} <= set(spec["paths"])
    assert http.get("/docs").status_code == 200


# -- errors: one table, both edges --------------------------------------------------

ERROR_CASES: list[tuple[str, dict[str, Any], int, str, int]] = [
    # (name, CommandRequest JSON, project code, gRPC status, HTTP status)
    ("empty command", {"command": ""}, 2002, "INVALID_ARGUMENT", 400),
    ("blank command", {"command": "   "}, 2002, "INVALID_ARGUMENT", 400),
    ("NUL in argument", {"command": "echo", "args": ["a\u0000b"]}, 2001, "INVALID_ARGUMENT", 400),
    ("NUL in command", {"command": "ec\u0000ho"}, 2001, "INVALID_ARGUMENT", 400),
    ("oversized args", {"command": "echo", "args": ["x" * 70_000]}, 2001, "INVALID_ARGUMENT", 400),
    ("too many args", {"command": "echo", "args": ["x"] * 600}, 2001, "INVALID_ARGUMENT", 400),
    ("oversized env", {"command": "echo", "env": {f"K{i}": "v" for i in range(200)}}, 2001, "INVALID_ARGUMENT", 400),
    ("bad env name", {"command": "echo", "env": {"A-B": "1"}}, 2003, "INVALID_ARGUMENT", 400),
    ("timeout above server max", {"command": "echo", "timeout": 99999}, 2001, "INVALID_ARGUMENT", 400),
    ("privileged tool", {"command": "sudo", "args": ["id"]}, 3001, "PERMISSION_DENIED", 403),
    ("privileged tool by path", {"command": "/usr/bin/sudo"}, 3001, "PERMISSION_DENIED", 403),
    ("network tool", {"command": "curl", "args": ["http://example.com"]}, 3002, "PERMISSION_DENIED", 403),
    ("host network", {"command": "echo", "sandbox_config": {"network_access": "NETWORK_HOST"}},
     3002, "PERMISSION_DENIED", 403),
    ("path outside workspace", {"command": "cat", "args": ["/etc/shadow"]}, 3003, "PERMISSION_DENIED", 403),
    ("path traversal", {"command": "cat", "args": ["../../etc/passwd"]}, 3003, "PERMISSION_DENIED", 403),
    ("memory above grant", {"command": "echo", "sandbox_config": {"resource_limits": {"memory_limit": 1 << 40}}},
     3004, "RESOURCE_EXHAUSTED", 403),
    ("unenforceable io weight", {"command": "echo", "sandbox_config": {"resource_limits": {"io_weight": 100}}},
     4001, "INTERNAL", 500),
    ("cpu quota above server max", {"command": "echo", "sandbox_config": {"resource_limits": {"cpu_limit": 1000}}},
     2001, "INVALID_ARGUMENT", 400),
]


@pytest.mark.parametrize(("name", "body", "code", "grpc_code", "http_code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_table_over_both_edges(
    grpc_client: Grpcurl | ReflectionClient, http: httpx.Client,
    name: str, body: dict[str, Any], code: int, grpc_code: str, http_code: int,
) -> None:
    reply = grpc_client.call("ExecuteCommand", body)
    assert reply.code == grpc_code, reply
    assert reply.error_details is not None and reply.error_details["error"]["code"] == code, reply
    rest_body = dict(body)
    if "sandbox_config" in rest_body:
        rest_body["sandbox_config"] = {"enabled": True, **body["sandbox_config"]}
    response = http.post("/v1/execute", json=rest_body)
    assert response.status_code == http_code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if 3001 <= code <= 3004:
        for details in (reply.error_details["error"]["details"], error["details"]):
            assert details["reasons"] and details["rule_ids"] and details["decision_id"]


def test_unknown_and_malformed_task_ids(grpc_client: Grpcurl | ReflectionClient, http: httpx.Client) -> None:
    unknown = "task-" + "0" * 32
    reply = grpc_client.call("GetTaskStatus", {"task_id": unknown})
    assert reply.code == "NOT_FOUND" and reply.error_details["error"]["code"] == 6001  # type: ignore[index]
    assert http.get(f"/v1/tasks/{unknown}").json()["error"]["code"] == 6001
    assert http.get(f"/v1/tasks/{unknown}").status_code == 404
    reply = grpc_client.call("GetTaskStatus", {"task_id": "../etc"})
    assert reply.code == "INVALID_ARGUMENT" and reply.error_details["error"]["code"] == 2003  # type: ignore[index]
    response = http.get("/v1/tasks/nope")
    assert (response.status_code, response.json()["error"]["code"]) == (400, 2003)


def test_rest_body_errors(http: httpx.Client) -> None:
    response = http.post("/v1/execute", content=b"{not json", headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, 2003)
    response = http.post("/v1/execute", json={"command": 5})
    assert (response.status_code, response.json()["error"]["code"]) == (422, 2001)
    response = http.post("/v1/execute", json={"args": ["x"]})
    assert (response.status_code, response.json()["error"]["code"]) == (422, 2002)
    response = http.post("/v1/execute", json={"command": "echo", "bogus": 1})
    assert response.status_code == 422
    response = http.post("/v1/execute", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (413, 2001)
    response = http.get("/v1/nowhere")
    assert (response.status_code, response.json()["error"]["code"]) == (404, 6001)


@pytest.mark.parametrize(
    ("method", "body", "code", "error_code"),
    [
        ("CancelTask", {"task_id": "task-" + "0" * 32}, "NOT_FOUND", 6001),
        ("ReadFile", {"path": "x"}, "INVALID_ARGUMENT", 2002),
        ("WriteFile", {"path": "x", "workspace": "w", "mode": 0o4755}, "INVALID_ARGUMENT", 2001),
        ("DeleteFile", {"path": "../x", "workspace": "w"}, "PERMISSION_DENIED", 3003),
    ],
)
def test_task_and_file_rpc_errors(
    grpc_client: Grpcurl | ReflectionClient, method: str, body: dict[str, Any], code: str, error_code: int
) -> None:
    reply = grpc_client.call(method, body)
    assert reply.code == code, reply
    assert reply.error_details is not None and reply.error_details["error"]["code"] == error_code


def test_stream_task_output_through_grpcurl(http: httpx.Client, grpcurl_binary: str | None,
                                            gateway: GatewayProcess) -> None:
    """The real grpcurl follows a server stream to its exit-code chunk."""
    if grpcurl_binary is None:
        pytest.skip("grpcurl could not be built here (reason printed above); streaming is covered by grpcio")
    task_id = http.post("/v1/execute", json={"command": "sh", "args": ["-c", "echo out; echo err >&2"]}).json()["task_id"]
    out = subprocess.run(
        [grpcurl_binary, "-plaintext", "-d", json.dumps({"task_id": task_id}), gateway.grpc_addr,
         "mcp.McpService/StreamTaskOutput"], capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    decoder, text, chunks = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        chunk, end = decoder.raw_decode(text)
        chunks.append(chunk)
        text = text[end:].strip()
    kinds = [c.get("type", "CHUNK_STDOUT") for c in chunks]  # proto3 JSON omits the zero enum value
    assert kinds[-1] == "CHUNK_EXIT_CODE" and base64.b64decode(chunks[-1]["data"]) == b"0"
    assert [int(c.get("offset", 0)) for c in chunks] == list(range(len(chunks)))
    assert b"".join(base64.b64decode(c["data"]) for c, k in zip(chunks, kinds, strict=True) if k == "CHUNK_STDOUT") == b"out\n"
    assert b"".join(base64.b64decode(c["data"]) for c, k in zip(chunks, kinds, strict=True) if k == "CHUNK_STDERR") == b"err\n"


def test_audit_trail_is_complete_valid_and_chained(gateway: GatewayProcess, http: httpx.Client) -> None:
    """Runs last in this module: every decision and task end so far is in the audit file."""
    allowed = http.post("/v1/execute", json={"command": "echo", "args": ["--token=abc123", "audit"]}).json()
    wait_final(lambda t: rest_status(http, t), allowed["task_id"])
    denied = http.post("/v1/execute", json={"command": "sudo", "args": ["id"]})
    assert denied.status_code == 403
    events = gateway.audit_events()
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in events:
        validator.validate(event)
    assert verify_chain(events) == len(events)
    allow = [e for e in events if e["event_type"] == "decision" and e.get("task_id") == allowed["task_id"]]
    assert len(allow) == 1 and allow[0]["decision"] == "allow" and allow[0]["transport"] == "http"
    assert "abc123" not in allow[0]["command"] and "--token=***" in allow[0]["command"]
    end = [e for e in events if e["event_type"] == "task_end" and e.get("task_id") == allowed["task_id"]]
    assert len(end) == 1 and end[0]["status"] == "COMPLETED" and end[0]["exit_code"] == 0
    deny = [e for e in events if e.get("decision") == "deny" and e.get("command", "").startswith("sudo")]
    assert deny and deny[-1]["error_code"] == 3001 and deny[-1]["policy_rule"]
    assert all("abc123" not in json.dumps(e) for e in events)
    grpc_events = [e for e in events if e["transport"] == "grpc" and e["event_type"] == "decision"]
    assert grpc_events, "gRPC decisions are audited too"
    assert all(e["principal"] == "anonymous" and e["tenant"] == "default" for e in events
               if e["event_type"] != "checkpoint")
