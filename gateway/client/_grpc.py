"""The gRPC transport: grpcio's asyncio API against ``mcp.McpService`` (``proto/mcp.proto``).

A failed RPC carries the project's error body in its ``error-details`` trailer and, for
4290, ``retry-after``; it becomes the class of its code (``gateway.errors.from_wire``). An
RPC that failed without that trailer (the channel could not connect, the stream broke,
a proxy answered) is :class:`TransportError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import grpc.aio

from gateway.client._errors import TransportError, retry_after_s
from gateway.client._models import OutputChunk, ResourceUsage, Task, TaskPage, TaskResult
from gateway.errors import GatewayError, InvalidParameter, from_wire
from gateway.proto import mcp_pb2, mcp_pb2_grpc

__all__ = ["GrpcTransport", "TlsFiles"]

T = TypeVar("T")
_KINDS = {mcp_pb2.CHUNK_STDOUT: "stdout", mcp_pb2.CHUNK_STDERR: "stderr", mcp_pb2.CHUNK_EVENT: "event",
          mcp_pb2.CHUNK_EXIT_CODE: "exit"}

TlsFiles = tuple[bytes | None, bytes | None, bytes | None]
"""``(root CA PEM, client key PEM, client certificate chain PEM)``, each None when absent."""


class GrpcTransport:
    """Calls of one gateway over gRPC (HTTP/2), created inside the event loop that uses it.

    Args:
        target: ``host:port``.
        token: API key or JWT, sent as ``authorization: Bearer ...`` metadata; None sends none.
        tls: :data:`TlsFiles` for a TLS channel, or None for plaintext.
        timeout_s: deadline of each unary call, seconds (streams have none).
    """

    def __init__(self, target: str, token: str | None, tls: TlsFiles | None, timeout_s: float) -> None:
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            root, key, chain = tls
            self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root, key, chain))
        self._stub = mcp_pb2_grpc.McpServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout_s = timeout_s
        self._target = target

    async def close(self) -> None:
        await self._channel.close()

    async def execute(self, body: dict[str, Any], wait_s: float) -> Task:
        request = mcp_pb2.CommandRequest(
            command=body["command"], args=body.get("args", []), env=body.get("env", {}),
            timeout=body.get("timeout", 0), metadata=body.get("metadata", {}),
        )
        if body.get("cwd") is not None:
            request.cwd = body["cwd"]
        sandbox = body.get("sandbox_config")
        if sandbox:
            try:
                request.sandbox_config.network_access = mcp_pb2.NetworkAccess.Value(sandbox["network_access"])
            except ValueError:
                raise InvalidParameter(f"{sandbox['network_access']} is not available over gRPC (use REST)",
                                       details={"field": "network"}) from None
            request.sandbox_config.allowed_hosts.extend(sandbox.get("allowed_hosts", []))
        if wait_s:
            waited = mcp_pb2.ExecuteAndWaitRequest(request=request, wait_seconds=max(1, round(wait_s)))
            answer = await self._unary(self._stub.ExecuteCommandAndWait(
                waited, metadata=self._metadata, timeout=self._timeout_s + wait_s))
            return _task(answer)
        created = await self._unary(self._stub.ExecuteCommand(request, metadata=self._metadata,
                                                              timeout=self._timeout_s))
        return Task(created.task_id, _status(created.status), created.created_at)

    async def get_task(self, task_id: str) -> Task:
        return _task(await self._unary(self._stub.GetTaskStatus(
            mcp_pb2.TaskStatusRequest(task_id=task_id), metadata=self._metadata, timeout=self._timeout_s)))

    async def cancel_task(self, task_id: str) -> Task:
        return _task(await self._unary(self._stub.CancelTask(
            mcp_pb2.TaskStatusRequest(task_id=task_id), metadata=self._metadata, timeout=self._timeout_s)))

    async def list_tasks(self, status: str | None, since: str | None, limit: int, page_token: str | None) -> TaskPage:
        if not 0 < limit <= 100:
            raise InvalidParameter(f"limit {limit} is not from 1 to 100", details={"field": "limit"})
        request = mcp_pb2.ListTasksRequest(since=since or "", limit=limit, page_token=page_token or "")
        if status is not None:
            try:
                request.status = mcp_pb2.TaskStatus.Value(f"TASK_{status}")
            except ValueError:
                raise InvalidParameter(f"status {status!r} is no task state", details={"field": "status"}) from None
        answer = await self._unary(self._stub.ListTasks(request, metadata=self._metadata, timeout=self._timeout_s))
        return TaskPage(tuple(_info(t) for t in answer.tasks), answer.next_page_token or None)

    async def output(self, task_id: str, offset: int) -> AsyncIterator[OutputChunk]:
        call = self._stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=task_id, offset=offset),
                                           metadata=self._metadata)
        try:
            async for chunk in call:
                yield OutputChunk(chunk.offset, _KINDS.get(chunk.type, "event"), bytes(chunk.data),
                                  chunk.timestamp_ms)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from None
        finally:
            call.cancel()

    async def read_file(self, workspace: str, path: str) -> bytes:
        answer = await self._unary(self._stub.ReadFile(
            mcp_pb2.ReadFileRequest(path=path, workspace=workspace), metadata=self._metadata, timeout=self._timeout_s))
        return bytes(answer.content)

    async def write_file(self, workspace: str, path: str, data: bytes, mode: int | None, create_dirs: bool) -> int:
        request = mcp_pb2.WriteFileRequest(path=path, content=data, create_dirs=create_dirs, mode=mode or 0,
                                           workspace=workspace)
        answer = await self._unary(self._stub.WriteFile(request, metadata=self._metadata, timeout=self._timeout_s))
        return int(answer.bytes_written)

    async def delete_file(self, workspace: str, path: str, recursive: bool) -> None:
        await self._unary(self._stub.DeleteFile(
            mcp_pb2.DeleteFileRequest(path=path, recursive=recursive, workspace=workspace),
            metadata=self._metadata, timeout=self._timeout_s))

    async def _unary(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from None
        except (grpc.RpcError, ValueError, TypeError) as exc:  # e.g. metadata no header may carry
            raise TransportError(f"gRPC call to {self._target} not sent: {type(exc).__name__}") from None


def _error(exc: grpc.aio.AioRpcError, target: str) -> GatewayError | TransportError:
    """The gateway's error from the ``error-details`` trailer, else a TransportError."""
    trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    details = trailers.get("error-details")
    if details is None:
        return TransportError(f"gRPC {exc.code().name} from {target}: {exc.details()}")
    try:
        body = json.loads(details)
    except ValueError:
        return TransportError(f"gRPC {exc.code().name} from {target}: an error-details trailer that is not JSON")
    return from_wire(body, retry_after_s=retry_after_s(trailers.get("retry-after")))


def _status(value: int) -> str:
    return mcp_pb2.TaskStatus.Name(value).removeprefix("TASK_")


def _info(info: Any, result: TaskResult | None = None) -> Task:
    return Task(
        task_id=info.task_id, status=_status(info.status), created_at=info.created_at,
        started_at=info.started_at if info.HasField("started_at") else None,
        completed_at=info.completed_at if info.HasField("completed_at") else None,
        metadata=dict(info.metadata), task_type=mcp_pb2.TaskType.Name(info.task_type).removeprefix("TASK_"),
        result=result,
    )


def _task(answer: Any) -> Task:
    result = None
    if answer.HasField("result"):
        r, u = answer.result, answer.result.resource_usage
        result = TaskResult(
            exit_code=r.exit_code if r.HasField("exit_code") else -1, stdout=r.stdout, stderr=r.stderr,
            usage=ResourceUsage(u.cpu_time_ms, u.max_memory_kb, u.io_read_bytes, u.io_write_bytes,
                                u.egress_bytes_sent, u.egress_bytes_received),
            execution_time_ms=r.execution_time_ms,
        )
    return _info(answer.task_info, result)
