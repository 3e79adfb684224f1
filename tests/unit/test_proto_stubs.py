"""The generated stubs in gateway/proto/ match proto/mcp.proto, and the contract's
field numbers are the published ones (design section 3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gateway.proto import mcp_pb2

REPO = Path(__file__).resolve().parents[2]


def test_stubs_are_up_to_date(tmp_path: Path) -> None:
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    (tmp_path / "gateway" / "proto").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Igateway/proto=proto", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", "proto/mcp.proto"],
        cwd=tmp_path, check=True,
    )
    for name in ("mcp_pb2.py", "mcp_pb2.pyi", "mcp_pb2_grpc.py"):
        fresh = (tmp_path / "gateway" / "proto" / name).read_text()
        assert fresh == (REPO / "gateway" / "proto" / name).read_text(), f"{name} is stale: run scripts/gen_proto.sh"


def _fields(message: str) -> dict[str, int]:
    return {f.name: f.number for f in mcp_pb2.DESCRIPTOR.message_types_by_name[message].fields}


def test_published_field_numbers() -> None:
    assert _fields("CommandRequest") == {
        "command": 1, "args": 2, "env": 3, "cwd": 4, "timeout": 5, "metadata": 6, "sandbox_config": 7}
    assert _fields("SandboxConfig") == {
        "enabled": 1, "network_access": 2, "resource_limits": 3, "rw_paths": 4, "ro_paths": 5, "denied_paths": 6,
        "allowed_hosts": 7}
    assert _fields("ResourceLimits") == {"cpu_limit": 1, "memory_limit": 2, "pids_limit": 3, "io_weight": 4}
    assert _fields("TaskCreatedResponse") == {"task_id": 1, "status": 2, "created_at": 3}
    assert _fields("TaskStatusResponse") == {"task_info": 1, "result": 2}
    assert _fields("TaskInfo") == {"task_id": 1, "task_type": 2, "status": 3, "created_at": 4, "started_at": 5,
                                   "completed_at": 6, "metadata": 7}
    assert _fields("TaskResult") == {"exit_code": 1, "stdout": 2, "stderr": 3, "resource_usage": 4,
                                     "execution_time_ms": 5}
    assert _fields("ResourceUsage") == {"cpu_time_ms": 1, "max_memory_kb": 2, "io_read_bytes": 3, "io_write_bytes": 4,
                                        "egress_bytes_sent": 5, "egress_bytes_received": 6}
    assert _fields("TaskOutputChunk") == {"task_id": 1, "type": 2, "data": 3, "timestamp_ms": 4, "offset": 5}
    assert _fields("TaskStatusRequest") == {"task_id": 1, "offset": 2}
    assert _fields("ReadFileRequest") == {"path": 1, "workspace": 2}
    assert _fields("HealthResponse") == {"status": 1, "version": 2, "uptime_seconds": 3}
    assert _fields("ReadFileResponse") == {"path": 1, "content": 2, "mime_type": 3, "error": 4}
    assert _fields("WriteFileRequest") == {"path": 1, "content": 2, "create_dirs": 3, "mode": 4, "workspace": 5}
    assert _fields("WriteFileResponse") == {"path": 1, "bytes_written": 2, "error": 3}
    assert _fields("DeleteFileRequest") == {"path": 1, "recursive": 2, "workspace": 3}
    assert _fields("DeleteFileResponse") == {"path": 1, "success": 2, "error": 3}
    assert _fields("ExecuteAndWaitRequest") == {"request": 1, "wait_seconds": 2}


def test_published_enums_and_rpcs() -> None:
    enums = {e.name: {v.name: v.number for v in e.values} for e in mcp_pb2.DESCRIPTOR.enum_types_by_name.values()}
    assert enums["TaskStatus"] == {"TASK_CREATED": 0, "TASK_QUEUED": 1, "TASK_RUNNING": 2, "TASK_COMPLETED": 3,
                                   "TASK_FAILED": 4, "TASK_CANCELLED": 5, "TASK_TIMED_OUT": 6}
    assert enums["NetworkAccess"] == {"NETWORK_NONE": 0, "NETWORK_HOST": 1, "NETWORK_RESTRICTED": 2}
    assert enums["TaskType"] == {"TASK_COMMAND": 0, "TASK_FILE": 1, "TASK_HTTP_REQUEST": 2}
    assert enums["OutputChunkType"] == {"CHUNK_STDOUT": 0, "CHUNK_STDERR": 1, "CHUNK_EXIT_CODE": 2, "CHUNK_EVENT": 3}
    service = mcp_pb2.DESCRIPTOR.services_by_name["McpService"]
    assert service.full_name == "mcp.McpService"
    assert {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods} == {
        "Health": ("HealthRequest", "HealthResponse", False),
        "ExecuteCommand": ("CommandRequest", "TaskCreatedResponse", False),
        "GetTaskStatus": ("TaskStatusRequest", "TaskStatusResponse", False),
        "StreamTaskOutput": ("TaskStatusRequest", "TaskOutputChunk", True),
        "CancelTask": ("TaskStatusRequest", "TaskStatusResponse", False),
        "ReadFile": ("ReadFileRequest", "ReadFileResponse", False),
        "WriteFile": ("WriteFileRequest", "WriteFileResponse", False),
        "DeleteFile": ("DeleteFileRequest", "DeleteFileResponse", False),
        # added since, with names of their own
        "ExecuteCommandAndWait": ("ExecuteAndWaitRequest", "TaskStatusResponse", False),
        "ListTasks": ("ListTasksRequest", "ListTasksResponse", False),
    }
