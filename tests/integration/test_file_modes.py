"""Nothing the gateway keeps under its state directory is open to other local users (issue
13, finding 1): after every kind of call, every file it wrote is 0600 and every directory
shuts out group and others, but for the search (x) bit the sandbox uids need on the way to
their workspaces. Checked by mode and by a real other user (uid 65534) trying to read."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess, as_user, start_gateway

NOBODY = 65534
WORKSPACE = "modes-" + uuid.uuid4().hex[:8]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def open_to_others(state_dir: Path) -> list[str]:
    """Every path under ``state_dir`` that group or others may read or write (files), or
    list or write (directories); search-only (x) is allowed on the state directory, the
    workspace root and the tenant directories, the way down bwrap takes as the sandbox uid.
    Workspace contents are the task's own files and are not walked; the workspace
    directory itself is (the gateway closes it again after each use)."""
    workspaces = state_dir / "workspaces"
    traversed = {state_dir, workspaces}
    found = []
    for top, dirs, files in os.walk(state_dir):
        here = Path(top)
        if here.parent.parent == workspaces:  # <root>/t-<hash>/<workspace id>: the task's files
            dirs[:] = []
            files = []
        if here.parent == workspaces:
            traversed.add(here)
        mode = _mode(here)
        allowed = 0o011 if here in traversed else 0
        if mode & 0o077 & ~allowed:
            found.append(f"{here} {mode:04o}")
        for name in files:
            path = here / name
            if _mode(path) & 0o077:
                found.append(f"{path} {_mode(path):04o}")
    return found


_READ_AS_NOBODY = textwrap.dedent("""
    import errno, os, sys
    for path in sys.argv[1:]:
        os.stat(path)  # reachable: the directories let this uid through
        try:
            os.close(os.open(path, os.O_RDONLY))
        except PermissionError:
            print(path, "EACCES")
        else:
            print(path, "READ")
""")


def read_as_nobody(*paths: Path) -> dict[str, str]:
    """Each path -> ``EACCES`` or ``READ``, as uid/gid 65534 with no supplementary groups."""
    out = subprocess.run(
        [*as_user(NOBODY, NOBODY), "/usr/bin/python3", "-c", _READ_AS_NOBODY, *map(str, paths)],
        capture_output=True, text=True, timeout=30, cwd="/",
    )
    assert out.returncode == 0, out.stderr
    return dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())


def _wait(http: httpx.Client, task_id: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
        if body["task_info"]["status"] in wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def every_kind_of_call(gw: GatewayProcess) -> None:
    """Commands with output, status, streams, cancel, the files API, an auth failure and a
    policy denial, over REST and gRPC."""
    stub = mcp_pb2_grpc.McpServiceStub(grpc.insecure_channel(gw.grpc_addr))
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        put = http.put(f"/v1/files/in/data.txt?workspace={WORKSPACE}&create_dirs=true&mode=0640", content=b"in\n")
        assert put.status_code == 200, put.text
        stub.WriteFile(mcp_pb2.WriteFileRequest(workspace=WORKSPACE, path="gone.txt", content=b"x"), timeout=10)
        response = http.post("/v1/execute", json={
            "command": "sh", "args": ["-c", "cat in/data.txt; echo secret-output; echo err >&2; echo made > out.txt"],
            "metadata": {"workspace": WORKSPACE},
        })
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        done = _wait(http, task_id, {"COMPLETED", "FAILED"})
        assert done["result"]["stdout"] == "in\nsecret-output\n", done
        stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=10)
        assert list(stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id), timeout=30))
        with http.stream("GET", f"/v1/tasks/{task_id}/stream") as stream:
            assert stream.status_code == 200 and b"".join(stream.iter_bytes())
        assert stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=WORKSPACE, path="out.txt")).content == b"made\n"
        assert http.get(f"/v1/files/in/data.txt?workspace={WORKSPACE}").content == b"in\n"
        assert stub.DeleteFile(mcp_pb2.DeleteFileRequest(workspace=WORKSPACE, path="gone.txt")).success
        sleeper = http.post("/v1/execute", json={"command": "sleep", "args": ["600"]}).json()["task_id"]
        _wait(http, sleeper, {"RUNNING"})
        assert http.post(f"/v1/tasks/{sleeper}/cancel").json()["task_info"]["status"] == "CANCELLED"
        refused = http.post("/v1/execute", json={"command": "true"}, headers={"Authorization": "Bearer mgw_bogus"})
        assert refused.status_code == 401, refused.text
        denied = http.post("/v1/execute", json={"command": "sudo", "args": ["id"]})
        assert (denied.status_code, denied.json()["error"]["code"]) == (403, 3001), denied.text
    time.sleep(0.3)  # the output flusher's last round


@pytest.fixture
def gw(state_root: Path) -> Iterator[GatewayProcess]:
    gateway = start_gateway(Path(tempfile.mkdtemp(prefix="modes-", dir=state_root)) / "var")
    yield gateway
    gateway.stop()


def test_state_files_are_private_to_the_gateway(gw: GatewayProcess) -> None:
    every_kind_of_call(gw)
    state = gw.state_dir
    db, wal, audit = state / "tasks.db", state / "tasks.db-wal", state / "audit.jsonl"
    assert wal.exists() and (state / "tasks.db-shm").exists(), "expected a live WAL while serving"
    assert open_to_others(state) == []
    assert read_as_nobody(db, wal, audit) == {str(db): "EACCES", str(wal): "EACCES", str(audit): "EACCES"}
    assert _mode(state) == 0o711 and _mode(state / "workspaces") == 0o711
    assert gw.stop() == 0, gw.stderr_path.read_text()
    assert open_to_others(state) == []


def test_an_older_gateways_open_files_are_tightened_at_start(state_root: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="modes-old-", dir=state_root)) / "var"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    # What an older gateway left after a crash: tasks.db with its -wal and -shm, all 0644.
    subprocess.run(["/usr/bin/python3", "-c", textwrap.dedent(f"""
        import os, sqlite3
        os.umask(0o022)
        db = sqlite3.connect({str(state / "tasks.db")!r}, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE left_over (secret TEXT)")
        db.execute("INSERT INTO left_over VALUES ('old output')")
        os._exit(0)  # no close: the WAL and its index stay behind
    """)], check=True, timeout=30)
    (state / "audit.jsonl").touch(mode=0o644)
    os.chmod(state / "audit.jsonl", 0o644)
    left = ["tasks.db", "tasks.db-wal", "tasks.db-shm", "audit.jsonl"]
    assert {name: _mode(state / name) for name in left} == dict.fromkeys(left, 0o644)
    gw = start_gateway(state)
    try:
        assert {name: _mode(state / name) for name in left if (state / name).exists()} == dict.fromkeys(
            [name for name in left if (state / name).exists()], 0o600)
        assert _mode(state) == 0o711
        every_kind_of_call(gw)
        assert open_to_others(state) == []
        with contextlib.closing(sqlite3.connect(state / "tasks.db")) as db:  # the old rows survived
            assert db.execute("SELECT secret FROM left_over").fetchall() == [("old output",)]
    finally:
        assert gw.stop() == 0, gw.stderr_path.read_text()
    log = gw.stderr_path.read_text()
    for name in ("tasks.db", "audit.jsonl"):
        assert f"{state / name} was mode 0644" in log, log
