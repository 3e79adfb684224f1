"""The ``mcp_audit`` Falco plugin (falco/): its Go checks and tests, and the built library
driven through the plugin API by ``falco/test/harness``.

- ``gofmt``, ``go vet`` (harness included) and ``go test`` are clean;
- the library loads through plugin-sdk-go's loader with the expected identity, every field
  of ``gateway.audit.fields.FIELDS`` as ``mcp.<name>`` with its Falco type, and an init
  schema that refuses a bad config;
- on an audit file written by a real gateway (REST and gRPC calls: executions, a denied
  command, a status call, a file write) there is one event per line, in order, each field
  equal to the JSON value with its type (integers exact) and absent keys absent;
- bad lines of every kind mixed into that file yield exactly the good events, counted;
- follow mode delivers lines appended later and across a rotation by rename.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit.fields import FIELD_NAMES, FIELDS
from tests.conftest import GatewayProcess, Grpcurl, ReflectionClient, wait_final
from tests.falco.plugin_build import FALCO_DIR, build_harness, build_plugin, go_binary, go_env, go_unavailable

FALCO_TYPES = {"string": "string", "integer": "uint64", "boolean": "bool"}
PRIVATE_IDS = range(1073741824, 2147483648)
SUMMARY = re.compile(r"^harness: events=(\d+) .* plugin: (.*)$", re.M)


@dataclass
class Built:
    plugin: Path
    harness: Path

    def run(self, *args: str, config: str | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.harness), "-plugin", str(self.plugin), *(["-config", config] if config else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)

    def events(self, trail: Path, config: str | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The harness's events on ``trail`` and the plugin's counters (its progress string)."""
        out = self.run(str(trail), config=config)
        assert out.returncode == 0, out.stderr
        summary = SUMMARY.search(out.stderr)
        assert summary, out.stderr
        counters = {k: int(v) for k, v in (kv.split("=") for kv in summary.group(2).split())}
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert int(summary.group(1)) == len(events) == counters["events"]
        return events, counters


@pytest.fixture(scope="module")
def built() -> Built:
    plugin, harness = build_plugin(), build_harness()
    if plugin is None or harness is None:
        pytest.skip(go_unavailable() or "no Go toolchain")
    return Built(plugin, harness)


def typed(value: Any) -> Any:
    """``value`` with each scalar paired with its type, so that ``True`` differs from ``1``."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def expected_event(evtnum: int, line: dict[str, Any]) -> dict[str, Any]:
    """The harness's output for one audit line: every declared key present, nothing else."""
    return {"evtnum": evtnum, "ts": line["timestamp"],
            "fields": {f"mcp.{k}": v for k, v in line.items() if k in FIELD_NAMES}}


# -- the Go side ------------------------------------------------------------------------


def test_go_sources_are_formatted_vetted_and_tested() -> None:
    go = go_binary()
    if go is None:
        pytest.skip(go_unavailable() or "no Go toolchain")
    env = go_env()
    gofmt = subprocess.run([str(Path(go).parent / "gofmt"), "-l", "."], cwd=FALCO_DIR, env=env,
                           capture_output=True, text=True, timeout=120)
    assert (gofmt.returncode, gofmt.stdout, gofmt.stderr) == (0, "", ""), "gofmt -l: files not formatted"
    vet = subprocess.run([go, "vet", "-tags", "harness", "./..."], cwd=FALCO_DIR, env=env,
                         capture_output=True, text=True, timeout=900)
    assert (vet.returncode, vet.stdout + vet.stderr) == (0, ""), "go vet"
    test = subprocess.run([go, "test", "./..."], cwd=FALCO_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "FAIL" not in test.stdout


# -- identity, fields, init schema ----------------------------------------------------


def test_info_names_the_plugin_and_every_audit_field(built: Built) -> None:
    out = built.run("-info")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1
    info = json.loads(out.stdout)
    assert (info["name"], info["event_source"]) == ("mcp_audit", "mcp_audit")
    assert built.plugin.name == f"lib{info['name']}.so"
    assert info["id"] in PRIVATE_IDS and info["id"] != 999
    assert info["required_api_version"].startswith("3.")
    assert info["fields"] == [{"name": f"mcp.{f.name}", "type": FALCO_TYPES[f.type]} for f in FIELDS]
    schema = info["init_schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert {k: v["default"] for k, v in schema["properties"].items()} == {
        "follow": False, "maxLineBytes": 1 << 20, "pollIntervalMs": 200}


@pytest.mark.parametrize("config", ['{"follow": "yes"}', '{"maxLineBytes": 1}', '{"unknown": 1}', "[]"])
def test_a_bad_init_config_is_refused(built: Built, config: str) -> None:
    out = built.run("-info", config=config)
    assert out.returncode == 1 and "init" in out.stderr, out.stderr


def test_open_names_a_file(built: Built, tmp_path: Path) -> None:
    out = built.run(str(tmp_path / "missing.jsonl"))
    assert out.returncode == 1 and "plugin_open" in out.stderr and "missing.jsonl" in out.stderr, out.stderr


# -- a trail written by a real gateway -------------------------------------------------


@pytest.fixture(scope="module")
def trail(gateway: GatewayProcess, http: httpx.Client, grpc_client: Grpcurl | ReflectionClient) -> Path:
    """The audit file of a gateway that served REST and gRPC calls, once it has stopped."""
    session = {"mcp-session-id": "falco-plugin-test"}
    # REST: an execution, its status, a denied command, a file write.
    created = http.post("/v1/execute", json={"command": "echo", "args": ["hello"]}, headers=session)
    assert created.status_code == 202, created.text
    wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), created.json()["task_id"])
    assert http.post("/v1/execute", json={"command": "sudo", "args": ["id"]}).status_code == 403
    assert http.put("/v1/files/notes.txt?workspace=ws-falco", content=b"hello\n").status_code == 200
    # gRPC: the same.
    reply = grpc_client.call("ExecuteCommand", {"command": "echo", "args": ["over", "grpc"]})
    assert reply.code == "OK" and reply.body is not None, reply

    def grpc_status(task_id: str) -> dict[str, Any]:
        status = grpc_client.call("GetTaskStatus", {"task_id": task_id})
        assert status.body is not None, status
        return status.body

    wait_final(grpc_status, reply.body["task_id"])
    assert grpc_client.call("ExecuteCommand", {"command": "curl", "args": ["http://example.com"]}).code \
        == "PERMISSION_DENIED"
    written = grpc_client.call("WriteFile", {"path": "g.txt", "workspace": "ws-falco",
                                             "content": base64.b64encode(b"from grpc\n").decode()})
    assert written.code == "OK", written
    assert gateway.stop() == 0, gateway.stderr_path.read_text()
    return gateway.audit_path


def test_every_line_of_a_real_trail_is_an_event_with_its_exact_fields(built: Built, trail: Path) -> None:
    lines = [json.loads(raw) for raw in trail.read_text().splitlines()]
    assert all(set(line) <= FIELD_NAMES for line in lines), "the gateway wrote an undeclared key"
    # The calls above are all there: allowed and denied decisions, task ends and file calls,
    # over both edges.
    assert {"decision", "task_end", "file"} <= {line["event_type"] for line in lines}
    assert {"http", "grpc"} <= {line["transport"] for line in lines}
    assert "deny" in {line.get("decision") for line in lines}
    assert "falco-plugin-test" in {line["session_id"] for line in lines}

    events, counters = built.events(trail)
    assert counters["skipped"] == 0, counters
    assert len(events) == len(lines)
    for i, (event, line) in enumerate(zip(events, lines, strict=True), start=1):
        assert typed(event) == typed(expected_event(i, line)), f"line {i}: {json.dumps(line)}"


def test_bad_lines_are_skipped_and_counted_between_good_ones(built: Built, trail: Path, tmp_path: Path) -> None:
    good = trail.read_text().splitlines()
    first = json.loads(good[0])
    limit = max(1024, *(len(line.encode()) for line in good))
    bad = [
        ("not_json", '{"schema_version": "1",'), ("not_json", "plain text"), ("not_json", ""),
        ("not_object", "[1, 2, 3]"), ("not_object", '"a string"'), ("not_object", "42"),
        ("missing_field", json.dumps({k: v for k, v in first.items() if k != "session_id"})),
        ("missing_field", json.dumps({k: v for k, v in first.items() if k != "timestamp"})),
        ("wrong_type", json.dumps({**first, "server_port": str(first["server_port"])})),
        ("wrong_type", json.dumps({**first, "exit_code": -1})),
        ("wrong_type", json.dumps({**first, "duration_ms": 1.5})),
        ("wrong_type", json.dumps({**first, "timestamp": "TS"}).replace('"TS"', "1.7e18")),
        ("wrong_type", json.dumps({**first, "tls": "false"})),
        ("wrong_type", json.dumps({**first, "method": None})),
        ("wrong_type", json.dumps({**first, "seq": 2**64})),
        ("too_long", json.dumps({**first, "command": "x" * limit})),
    ]
    # A bad line first, one after every good line, and the rest at the end.
    mixed, placed = [bad[-1][1]], Counter([bad[-1][0]])
    for i in range(max(len(good), len(bad))):
        if i < len(good):
            mixed.append(good[i])
        reason, line = bad[i % len(bad)]
        mixed.append(line)
        placed[reason] += 1
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(mixed) + "\n" + good[-1][:40])  # the last line never got its newline

    events, counters = built.events(path, config=json.dumps({"maxLineBytes": limit}))
    lines = [json.loads(raw) for raw in good]
    assert typed(events) == typed([expected_event(i, line) for i, line in enumerate(lines, start=1)])
    assert {reason: counters[reason] for reason in placed} == dict(placed)
    assert counters["torn"] == 1
    assert counters["skipped"] == sum(placed.values()) + 1


# -- follow mode through the library ----------------------------------------------------


def test_follow_mode_delivers_appended_lines_and_follows_a_rotation(built: Built, trail: Path,
                                                                     tmp_path: Path) -> None:
    good = trail.read_text().splitlines()[:4]
    path = tmp_path / "audit.jsonl"
    path.write_text(good[0] + "\n" + good[1][:20])  # the second line is not whole yet
    cmd = [str(built.harness), "-plugin", str(built.plugin), "-config", '{"follow": true, "pollIntervalMs": 20}',
           "-max-events", "4", str(path)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(60, proc.kill)  # a hung harness fails the test, never hangs it
        watchdog.start()
        try:
            assert proc.stdout is not None
            out = [proc.stdout.readline()]
            with path.open("a") as f:
                f.write(good[1][20:] + "\n" + good[2] + "\n")
            out += [proc.stdout.readline(), proc.stdout.readline()]
            path.rename(tmp_path / "audit-1.jsonl")
            path.write_text(good[3] + "\n")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            watchdog.cancel()
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in [*out, *stdout.splitlines()] if line]
    assert typed(events) == typed([expected_event(i, json.loads(line)) for i, line in enumerate(good, start=1)])
    assert "rotations=1" in stderr and "skipped=0" in stderr, stderr
