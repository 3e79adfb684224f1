"""The audit trail of a real gateway (issue 14): sessions, the addressed host and
cross-tenant probes as the trail records them; ``kill -9`` under load leaves a trail that
``mcp-gateway audit verify`` finds whole; a webhook collector that is down for 30 s gets
every event afterwards, in order; the stdout copy equals the file."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema
import pytest
import yaml

from gateway.audit.fields import json_schema
from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.collector import Collector
from tests.conftest import GATEWAY_BIN, GatewayProcess, start_gateway, wait_final, wait_until

SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GATEWAY_BIN), "audit", *args], capture_output=True, text=True, timeout=60)


def public_key(state_dir: Path, into: Path) -> Path:
    """The public half of the key the gateway made at first start, as an operator gets it."""
    out = audit_cli("pubkey", "--key", str(state_dir / "audit-signing.key"))
    assert out.returncode == 0, out.stderr
    into.write_text(out.stdout)
    return into


def trail(state_dir: Path) -> list[str]:
    return [str(p) for p in sorted(state_dir.glob("audit*.jsonl"))]


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    return client.get(f"/v1/tasks/{task_id}").json()


@pytest.fixture(scope="module")
def tenants(state_root: Path) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    keys = {"alice": new_api_key(), "mallory": new_api_key()}
    state = Path(tempfile.mkdtemp(prefix="audit-trail-", dir=state_root))
    config = state / "gw.yaml"
    config.write_text(yaml.safe_dump({"auth": {"api_keys": [
        {"hash": hash_api_key(keys["alice"]), "principal": "alice", "tenant": "acme", "scopes": SCOPES},
        {"hash": hash_api_key(keys["mallory"]), "principal": "mallory", "tenant": "globex", "scopes": SCOPES},
    ]}}))
    gw = start_gateway(state / "var", "--config", str(config), dev=False)
    yield gw, keys
    assert gw.stop() == 0, gw.stderr_path.read_text()


def test_sessions_hosts_and_cross_tenant_probes_as_the_trail_records_them(
        tenants: tuple[GatewayProcess, dict[str, str]], tmp_path: Path) -> None:
    gw, keys = tenants
    alice = {"authorization": f"Bearer {keys['alice']}"}
    with httpx.Client(base_url=gw.http_url, timeout=30, headers=alice) as one, \
            httpx.Client(base_url=gw.http_url, timeout=30, headers=alice) as other:
        named = {"mcp-session-id": "agent-run-7", "host": "gw.example.com:8443"}
        tasks = [one.post("/v1/execute", json={"command": "echo", "args": [str(i)]}, headers=named).json()["task_id"]
                 for i in range(3)]
        one.post("/v1/execute", json={"command": "echo", "args": ["a"]})
        one.post("/v1/execute", json={"command": "echo", "args": ["b"]})
        other.post("/v1/execute", json={"command": "echo", "args": ["c"]})
        for task_id in tasks:
            wait_final(lambda t: status(one, t), task_id)
        with grpc.insecure_channel(gw.grpc_addr) as channel:
            stub = mcp_pb2_grpc.McpServiceStub(channel)
            stub.ExecuteCommand(mcp_pb2.CommandRequest(command="echo", args=["grpc"]),
                                metadata=[("authorization", f"Bearer {keys['alice']}"), ("x-session-id", "ci-42")])
        with httpx.Client(base_url=gw.http_url, timeout=30,
                          headers={"authorization": f"Bearer {keys['mallory']}"}) as mallory:
            probe = mallory.get(f"/v1/tasks/{tasks[0]}")
            unknown = mallory.get("/v1/tasks/task-" + "0" * 32)
    # The caller cannot tell another tenant's task from none at all.
    assert probe.status_code == unknown.status_code == 404
    assert probe.json()["error"]["code"] == unknown.json()["error"]["code"] == 6001
    assert probe.json()["error"]["message"].replace(tasks[0], "X") == \
        unknown.json()["error"]["message"].replace("task-" + "0" * 32, "X")

    events = gw.audit_events()
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in events:
        validator.validate(event)
    decisions = [e for e in events if e["event_type"] == "decision" and e["principal"] == "alice"]
    named_ones = [e for e in decisions if e["session_id"] == "agent-run-7"]
    assert [e["tool_invoke_count"] for e in named_ones] == [1, 2, 3]
    assert {e["server_host"] for e in named_ones} == {"gw.example.com"}
    assert [e["session_request_bytes"] for e in named_ones] == [
        sum(e["request_bytes"] for e in named_ones[:i + 1]) for i in range(3)]
    by_connection = [e for e in decisions if e["transport"] == "http" and e["session_id"] != "agent-run-7"]
    assert len(by_connection) == 3 and all(e["session_id"].startswith("conn-") for e in by_connection)
    assert by_connection[0]["session_id"] == by_connection[1]["session_id"] != by_connection[2]["session_id"]
    assert [e["tool_invoke_count"] for e in by_connection] == [1, 2, 1]
    assert all(e["server_host"] == "127.0.0.1" for e in by_connection)  # httpx sends Host: 127.0.0.1:port
    grpc_event = next(e for e in decisions if e["transport"] == "grpc")
    assert (grpc_event["session_id"], grpc_event["tool_invoke_count"]) == ("ci-42", 1)
    ends = [e for e in events if e["event_type"] == "task_end" and e.get("task_id") in tasks]
    assert all(e["session_id"] == "agent-run-7" and e["session_response_bytes"] >= e["response_bytes"]
               for e in ends)
    probes = [e for e in events if e["event_type"] == "not_found"]
    assert [(e["principal"], e["task_id"], e["cross_tenant"], e["error_code"]) for e in probes] == [
        ("mallory", tasks[0], True, 6001), ("mallory", "task-" + "0" * 32, False, 6001)]

    out = audit_cli("verify", "--public-key", str(public_key(gw.state_dir, tmp_path / "k.pub")), *trail(gw.state_dir))
    assert out.returncode == 0 and out.stdout.startswith("intact:"), out.stdout + out.stderr


def test_kill_9_under_load_leaves_whole_lines_and_at_most_an_unsigned_tail(
        state_root: Path, tmp_path: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="audit-kill-", dir=state_root)) / "var"
    env = {"MCP_GATEWAY_AUDIT__CHECKPOINT_EVENTS": "25", "MCP_GATEWAY_AUDIT__ROTATE_BYTES": "65536"}
    gw = start_gateway(state, env=env)
    stop = threading.Event()
    answered: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=gw.http_url, timeout=10) as client:
            while not stop.is_set():
                try:
                    answered.append(client.post("/v1/execute", json={"command": "echo", "args": ["x"]}).status_code)
                except httpx.HTTPError:
                    return

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(answered) >= 150, timeout_s=60, what="load")
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    stop.set()
    for worker in workers:
        worker.join()
    gw.stop()
    files = trail(state)
    assert len(files) >= 2, "the load crossed a rotation"
    for path in files:
        data = Path(path).read_bytes()
        assert data == b"" or data.endswith(b"\n"), path  # empty: killed right after a rotation
    key = public_key(state, tmp_path / "k.pub")
    out = audit_cli("verify", "--json", "--public-key", str(key), *files)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["status"] == "intact", out.stdout
    assert report["unsigned_tail"] <= 25
    # A restart signs the head it inherits, and the whole trail still verifies.
    gw = start_gateway(state, env=env)
    assert gw.stop() == 0
    out = audit_cli("verify", "--json", "--public-key", str(key), *trail(state))
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["unsigned_tail"] == 0, out.stdout


def test_a_webhook_down_for_30_s_gets_every_event_afterwards_in_order(state_root: Path) -> None:
    collector = Collector()
    state = Path(tempfile.mkdtemp(prefix="audit-webhook-", dir=state_root))
    config = state / "gw.yaml"
    config.write_text(yaml.safe_dump({"audit": {"webhook": {
        "url": collector.url, "backoff_initial_s": 0.2, "backoff_max_s": 2.0}}}))
    gw = start_gateway(state / "var", "--config", str(config))
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as client:
            client.post("/v1/execute", json={"command": "echo", "args": ["before"]})
            wait_until(lambda: len(collector.received) >= 2, timeout_s=10, what="first delivery")
            collector.down()
            down_until = time.monotonic() + 30
            calls = 0
            while time.monotonic() < down_until:
                assert client.post("/v1/execute", json={"command": "echo", "args": [str(calls)]}).status_code == 202
                calls += 1
                time.sleep(0.5)
            waiting = client.get("/metrics").text
            assert 'mcp_audit_queue_depth{sink="webhook"}' in waiting
            collector.up()
            wait_until(lambda: len(collector.received) >= len(gw.audit_events()), timeout_s=30, what="redelivery")
    finally:
        assert gw.stop() == 0
        collector.down()
    lines = gw.audit_path.read_text().splitlines()
    assert calls >= 50
    assert collector.received == lines, "every event, once, in order"


def test_the_stdout_copy_is_the_file(state_root: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="audit-stdout-", dir=state_root)) / "var"
    gw = start_gateway(state, env={"MCP_GATEWAY_AUDIT__STDOUT": "true"})
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        task = client.post("/v1/execute", json={"command": "echo", "args": ["hi"]}).json()["task_id"]
        wait_final(lambda t: status(client, t), task)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.stdout is not None
    rest, _ = gw.proc.communicate(timeout=30)
    assert gw.proc.returncode == 0
    file_lines = gw.audit_path.read_text().splitlines()
    # The start checkpoint came before the "listening" line the fixture read past.
    assert [json.loads(line)["seq"] for line in rest.splitlines()] == [json.loads(x)["seq"] for x in file_lines[1:]]
    assert rest.splitlines() == file_lines[1:]
