"""The files API against a real gateway: workspaces shared with commands, policy checks,
and the path tricks (``..``, absolute paths, symbolic links) that must not leave the
workspace, over REST and gRPC."""

from __future__ import annotations

import time
from pathlib import Path
import uuid
from typing import Any

import grpc
import httpx
import pytest

from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess


def run(http: httpx.Client, script: str, workspace: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"command": "sh", "args": ["-c", script], "timeout": 60}
    if workspace is not None:
        body["metadata"] = {"workspace": workspace}
    response = http.post("/v1/execute", json=body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + 60
    while True:
        state = http.get(f"/v1/tasks/{task_id}").json()
        if state["task_info"]["status"] not in ("QUEUED", "RUNNING"):
            return {"task_id": task_id, **state}
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> mcp_pb2_grpc.McpServiceStub:
    return mcp_pb2_grpc.McpServiceStub(grpc.insecure_channel(gateway.grpc_addr))


@pytest.fixture
def ws() -> str:
    return "ws-" + uuid.uuid4().hex[:12]


def test_written_files_are_seen_by_commands_and_back(http: httpx.Client, stub: Any, ws: str) -> None:
    response = http.put(f"/v1/files/src/main.txt?workspace={ws}&create_dirs=true&mode=0640", content=b"hello\n")
    assert response.status_code == 200, response.text
    assert response.json() == {"path": "src/main.txt", "bytes_written": 6}
    done = run(http, "cat /workspace/src/main.txt; stat -c %a src/main.txt; echo made > out.bin", ws)
    assert done["task_info"]["status"] == "COMPLETED", done
    assert done["result"]["stdout"] == "hello\n640\n"
    reply = stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path="/workspace/out.bin"), timeout=10)
    assert reply.content == b"made\n"
    got = http.get(f"/v1/files/src/main.txt?workspace={ws}")
    assert got.status_code == 200 and got.content == b"hello\n"
    assert got.headers["content-type"].startswith("text/plain")
    assert got.headers["x-content-type-options"] == "nosniff"
    # A second task in the same workspace sees the first one's files.
    assert run(http, "cat out.bin", ws)["result"]["stdout"] == "made\n"
    # Without metadata.workspace a task gets a fresh workspace, named by its task id.
    fresh = run(http, "ls -A; echo x > mine")
    assert fresh["result"]["stdout"] == ""
    assert stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=fresh["task_id"], path="mine")).content == b"x\n"


def test_write_replace_and_delete_over_grpc(stub: Any, ws: str) -> None:
    reply = stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=ws, path="a/b/c.txt", content=b"1",
                                                    create_dirs=True), timeout=10)
    assert reply.bytes_written == 1
    stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=ws, path="a/b/c.txt", content=b"22"), timeout=10)
    assert stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path="a/b/c.txt")).content == b"22"
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteFile(mcp_pb2.DeleteFileRequest(workspace=ws, path="a"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not empty, not recursive
    assert stub.DeleteFile(mcp_pb2.DeleteFileRequest(workspace=ws, path="a", recursive=True)).success
    with pytest.raises(grpc.RpcError) as err:
        stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path="a/b/c.txt"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "/workspace/../etc/passwd", "/workspacefoo/x", "a/../b"]
)
def test_paths_outside_the_workspace_are_refused(stub: Any, ws: str, path: str) -> None:
    stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=ws, path="keep", content=b"k"), timeout=10)
    calls = {
        "read": lambda: stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path=path), timeout=10),
        "write": lambda: stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=ws, path=path, content=b"z"), timeout=10),
        "delete": lambda: stub.DeleteFile(
            mcp_pb2.DeleteFileRequest(workspace=ws, path=path, recursive=True), timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, path, err.value.details())
        details = dict(err.value.trailing_metadata())["error-details"]
        assert '"code":3003' in details.replace(" ", ""), details
    assert stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path="keep")).content == b"k"


def test_rest_paths_with_dotdot_are_refused(http: httpx.Client, ws: str) -> None:
    # Encoded so the client does not normalise the path away.
    for path in ("..%2Fx", "a%2F..%2F..%2Fx"):
        response = http.get(f"/v1/files/{path}?workspace={ws}")
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == 3003


def test_symlinks_made_by_a_command_are_not_followed(http: httpx.Client, stub: Any, ws: str) -> None:
    done = run(http, "ln -s /etc/hostname link && ln -s / root && mkdir d && ln -s /tmp d/t", ws)
    assert done["task_info"]["status"] == "COMPLETED", done
    for path in ("link", "root/etc/hostname", "d/t/x"):
        with pytest.raises(grpc.RpcError) as err:
            stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=ws, path=path), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, path
        with pytest.raises(grpc.RpcError) as err:
            stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=ws, path=path, content=b"pwned"), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, path
    # Deleting a link removes the link, never its target.
    assert stub.DeleteFile(mcp_pb2.DeleteFileRequest(workspace=ws, path="root", recursive=True)).success
    assert Path("/etc/hostname").read_text()


def test_workspace_ids_and_limits(http: httpx.Client, ws: str) -> None:
    response = http.get("/v1/files/x")
    assert response.status_code == 400 and response.json()["error"]["code"] == 2002
    response = http.get("/v1/files/x?workspace=../other")
    assert response.status_code == 400 and response.json()["error"]["code"] == 2003
    response = http.get(f"/v1/files/x?workspace=never-{uuid.uuid4().hex[:8]}")
    assert response.status_code == 404 and response.json()["error"]["code"] == 6001
    response = http.put(f"/v1/files/big?workspace={ws}", content=b"x" * ((1 << 20) + 1))
    assert response.status_code in (400, 413) and response.json()["error"]["code"] == 2001
    response = http.put(f"/v1/files/m?workspace={ws}&mode=4755", content=b"x")
    assert response.status_code == 400 and response.json()["error"]["code"] == 2001
    response = http.post("/v1/execute", json={"command": "true", "metadata": {"workspace": "a/b"}})
    assert response.status_code == 400 and response.json()["error"]["code"] == 2003


def test_file_calls_are_audited(gateway: GatewayProcess, http: httpx.Client, ws: str) -> None:
    assert http.put(f"/v1/files/audited.txt?workspace={ws}", content=b"a").status_code == 200
    assert http.get(f"/v1/files/..%2Fescape?workspace={ws}").status_code == 403
    events = [e for e in gateway.audit_events() if e["event_type"] == "file" and e.get("workspace") == ws]
    assert [(e["tool_name"], e["decision"], e["file_path"]) for e in events] == [
        ("file_write", "allow", "audited.txt"),
        ("file_read", "deny", "../escape"),
    ]
    assert events[1]["policy_rule"] == "file.path_traversal" and events[1]["error_code"] == 3003
