"""gRPC edge: ``mcp.McpService`` (design section 3) over grpc.aio.

Each handler decodes the protobuf request, authenticates the caller (``authorization``
metadata; over mTLS the client certificate the handshake verified), calls the service
layer and encodes the answer; no logic lives here. A :class:`GatewayError` becomes ``context.abort`` with the
status from ``gateway.errors.STATUS_TABLE`` and trailing metadata ``error-details`` =
``{"error":{"code":..,"message":..,"details":..}}`` (ASCII JSON). Server reflection and
``grpc.health.v1.Health`` are always on.

The McpService method table is built here from the proto's service descriptor rather than by
the generated ``add_McpServiceServicer_to_server``: grpc receives each request as bytes and
the handler decodes it, because grpc's own deserializer answers a body that does not decode
with UNKNOWN and a logged traceback per call (a cheap way to flood the log). Here such a body
is INVALID_ARGUMENT 2003 (InvalidFormat), counted in ``mcp_grpc_decode_errors_total{method}``
and logged at most once per ``_DECODE_LOG_INTERVAL_S`` with the number suppressed; the
caller is authenticated first and the refusal audited (``invalid_request``) like any other,
except for Health, which needs no credentials and so writes no audit event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.admission import EdgeGate
from gateway.auth import Credentials
from gateway.errors import GatewayError, InternalError, InvalidFormat, RateLimited, status_for
from gateway.observability.metrics import GRPC_DECODE_ERRORS
from gateway.models import ExecuteRequest, OutputChunk, RequestContext, TaskRecord, TaskStatus, rfc3339
from gateway.proto import mcp_pb2, mcp_pb2_grpc
from gateway.service import GatewayService
from gateway.tls import TlsFiles

__all__ = ["GrpcEdge", "McpServicer", "create_grpc_server"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SERVICE = mcp_pb2.DESCRIPTOR.services_by_name["McpService"]
_SERVICE_NAME = _SERVICE.full_name
_NO_CREDENTIALS = frozenset({"Health"})  # RPCs that neither authenticate nor audit
_DECODE_LOG_INTERVAL_S = 10.0  # at most one undecodable-request warning this often, seconds
_NETWORK_NAMES = {
    mcp_pb2.NETWORK_NONE: "none",
    mcp_pb2.NETWORK_HOST: "host",
    mcp_pb2.NETWORK_RESTRICTED: "restricted",
}


async def _abort(context: grpc.aio.ServicerContext, error: GatewayError) -> NoReturn:
    status = status_for(error)
    trailers: tuple[tuple[str, str], ...] = (("error-details", error.to_json()),)
    if isinstance(error, RateLimited):  # the HTTP Retry-After, as trailing metadata
        trailers += (("retry-after", str(error.retry_after_s)),)
    await context.abort(grpc.StatusCode[status.grpc], error.message, trailing_metadata=trailers)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class _DecodeFailureLog:
    """At most one WARNING per ``interval_s`` about request bodies that do not decode, saying
    how many were not reported since the last one: garbage must not buy a log line per call
    (``mcp_grpc_decode_errors_total`` counts every one)."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next_s = 0.0
        self._suppressed = 0

    def note(self, method: str, message_type: str, reason: str, peer: str) -> None:
        now = time.monotonic()
        if now < self._next_s:
            self._suppressed += 1
            return
        log.warning(
            "gRPC %s from %s: request body does not decode as %s (%s), refused with 2003%s", method, peer,
            message_type, reason[:200],
            f"; {self._suppressed} more not reported since the last report" if self._suppressed else "",
        )
        self._suppressed = 0
        self._next_s = now + self._interval_s


class McpServicer(mcp_pb2_grpc.McpServiceServicer):
    """Thin adapter from ``mcp.McpService`` to :class:`GatewayService`.

    Every RPC but Health authenticates first: the ``authorization`` metadata and, over
    mTLS, the client certificate the handshake verified.

    Args:
        service: the shared service layer.
        server_host: bind address, for audit events.
        server_port: a callable giving the bound gRPC port (known only after binding).
        tls: whether the port speaks TLS.
        gate: admission control for every RPC but Health (None = unbounded); a stream holds
            its slot only while it is set up.
        max_wait_s: ``tasks.max_wait_s``, what ExecuteCommandAndWait's ``wait_seconds`` 0 means.
    """

    def __init__(
        self, service: GatewayService, server_host: str, server_port: Callable[[], int], *, tls: bool = False,
        gate: EdgeGate | None = None, max_wait_s: float = 0.0,
    ) -> None:
        self._service = service
        self._max_wait_s = max_wait_s
        self._gate = gate
        self._host = server_host
        self._port = server_port
        self._tls = tls
        self._decode_failures = _DecodeFailureLog(_DECODE_LOG_INTERVAL_S)
        # grpcio shows a servicer no connection object: a connection is named by its peer
        # address, salted per process so the id says nothing of the address.
        self._connection_salt = os.urandom(16)

    async def _decode(
        self, context: grpc.aio.ServicerContext, method: str, request_cls: type[Message], raw: bytes
    ) -> Message:
        """``raw`` decoded as ``request_cls``. A body that does not decode (corrupt wire
        format, truncation, over-long varints, nesting past upb's depth limit, invalid UTF-8
        in a string field) is counted, logged (rate-limited), and refused with InvalidFormat
        (2003) after authentication, which the service audits; Health refuses it at once."""
        try:
            return request_cls.FromString(raw)
        except (DecodeError, RecursionError, ValueError) as exc:  # upb: DecodeError; pure Python: also these
            reason = str(exc) or type(exc).__name__
        message_type = request_cls.DESCRIPTOR.full_name
        GRPC_DECODE_ERRORS.labels(method).inc()
        self._decode_failures.note(method, message_type, reason, context.peer() or "")
        error = InvalidFormat(f"request body is not a valid {message_type}", details={"message_type": message_type})
        if method in _NO_CREDENTIALS:
            await _abort(context, error)
        await self._call(context, method, raw, self._service.refuse_malformed, error)
        raise AssertionError("refuse_malformed returned")  # pragma: no cover - it always raises

    def _caller(
        self, context: grpc.aio.ServicerContext, method: str, request: Any
    ) -> tuple[RequestContext, Credentials]:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        peer = context.peer() or ""
        ctx = RequestContext.for_call(
            transport="grpc",
            method=method,
            peer=peer,
            server_host=self._host,
            server_port=self._port(),
            request_bytes=len(request) if isinstance(request, bytes) else request.ByteSize(),
            user_agent=metadata.get("user-agent"),
            tls=self._tls,
            connection_id=hashlib.sha256(self._connection_salt + peer.encode()).hexdigest()[:32],
            session_header=metadata.get("mcp-session-id") or metadata.get("x-session-id"),
            headers=metadata,
            # grpcio hands a Python servicer neither :authority nor the TLS server name
            # (only the method and metadata), so events name the listen address.
        )
        cert = None
        if self._tls:
            pem = (context.auth_context() or {}).get("x509_pem_cert")
            cert = pem[0] if pem else None
        return ctx, Credentials(authorization=metadata.get("authorization"), client_cert=cert)

    async def _call(
        self, context: grpc.aio.ServicerContext, method: str, request: Any, fn: Callable[..., T], *args: Any,
        **kwargs: Any,
    ) -> T:
        """Authenticate the caller, then ``fn(principal, ctx, *args, **kwargs)``, both in one
        worker thread (policy, store and audit calls block; the event loop keeps serving
        streams meanwhile); a GatewayError becomes the call's status."""
        ctx, credentials = self._caller(context, method, request)
        return await self._guard(
            context, lambda: asyncio.to_thread(self._service.call, ctx, credentials, fn, *args, **kwargs)
        )

    async def _guard(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        """The result of ``call()`` once it got an admission slot; a GatewayError becomes
        the call's status, anything else INTERNAL (5001) without its text."""
        try:
            if self._gate is None:
                return await call()
            async with self._gate.slot():
                return await call()
        except GatewayError as exc:
            await _abort(context, exc)
        except Exception:
            log.exception("unhandled error in gRPC handler")
            await _abort(context, InternalError("internal error"))

    async def Health(self, request: mcp_pb2.HealthRequest, context: grpc.aio.ServicerContext) -> mcp_pb2.HealthResponse:
        """Liveness and version (no credentials needed, like grpc.health.v1)."""
        info = self._service.health()
        return mcp_pb2.HealthResponse(status=info.status, version=info.version, uptime_seconds=info.uptime_s)

    async def ExecuteCommand(
        self, request: mcp_pb2.CommandRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.TaskCreatedResponse:
        """Decide on and queue a command."""
        record = await self._call(
            context, "ExecuteCommand", request, self._service.execute_command, _execute_request(request)
        )
        return mcp_pb2.TaskCreatedResponse(
            task_id=record.task_id, status=record.status.value, created_at=rfc3339(record.created_at_ns)
        )

    async def ExecuteCommandAndWait(
        self, request: mcp_pb2.ExecuteAndWaitRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.TaskStatusResponse:
        """Decide on and queue a command, then answer the task once final (or as it is
        when the wait ends). Only the first part holds an admission slot."""
        req = _execute_request(request.request, wait_s=request.wait_seconds or self._max_wait_s)
        record = await self._call(context, "ExecuteCommandAndWait", request, self._service.execute_command, req)
        return _status_response(await self._service.wait_task(record, req.wait_s))

    async def GetTaskStatus(
        self, request: mcp_pb2.TaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.TaskStatusResponse:
        """State and, once final, result of a task."""
        record = await self._call(context, "GetTaskStatus", request, self._service.get_task, request.task_id)
        return _status_response(record)

    async def ListTasks(
        self, request: mcp_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.ListTasksResponse:
        """The caller's tasks, newest first, one page (``limit`` 0 = 20)."""
        status = None
        if request.HasField("status"):  # an enum value this gateway does not know: the service refuses it (2001)
            status = TaskStatus(request.status).name if request.status in _TASK_STATUSES else str(request.status)
        page = await self._call(context, "ListTasks", request, self._service.list_tasks, status=status,
                                since=request.since or None, limit=request.limit or 20,
                                page_token=request.page_token or None)
        return mcp_pb2.ListTasksResponse(tasks=[_task_info(r) for r in page.tasks],
                                         next_page_token=page.next_page_token or "")

    async def StreamTaskOutput(
        self, request: mcp_pb2.TaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[mcp_pb2.TaskOutputChunk]:
        """The task's output log from ``request.offset``, live, ending with CHUNK_EXIT_CODE."""
        chunks = await self._call(
            context, "StreamTaskOutput", request, self._service.stream_output, request.task_id, request.offset
        )
        try:
            async for chunk in chunks:
                yield _chunk_message(request.task_id, chunk)
        except GatewayError as exc:
            await _abort(context, exc)

    async def CancelTask(
        self, request: mcp_pb2.TaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.TaskStatusResponse:
        """Cancel a task (idempotent); answers its state once final."""
        ctx, credentials = self._caller(context, "CancelTask", request)

        async def cancel() -> TaskRecord:
            principal = await asyncio.to_thread(self._service.authenticate, ctx, credentials)
            return await self._service.cancel_task(principal, ctx, request.task_id)

        return _status_response(await self._guard(context, cancel))

    async def ReadFile(self, request: mcp_pb2.ReadFileRequest, context: grpc.aio.ServicerContext) -> mcp_pb2.ReadFileResponse:
        """A file of the caller's workspace. Failures are gRPC errors with ``error-details``
        (the response's ``error`` field stays unset)."""
        found = await self._call(
            context, "ReadFile", request, self._service.read_file, request.workspace, request.path
        )
        return mcp_pb2.ReadFileResponse(path=found.path, content=found.content, mime_type=found.mime_type)

    async def WriteFile(
        self, request: mcp_pb2.WriteFileRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.WriteFileResponse:
        """Write a file of the caller's workspace (atomic replace)."""
        written = await self._call(
            context, "WriteFile", request, self._service.write_file, request.workspace, request.path,
            request.content, mode=request.mode, create_dirs=request.create_dirs,
        )
        return mcp_pb2.WriteFileResponse(path=request.path, bytes_written=written)

    async def DeleteFile(
        self, request: mcp_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> mcp_pb2.DeleteFileResponse:
        """Delete a file or (recursive) a directory of the caller's workspace."""
        await self._call(
            context, "DeleteFile", request, self._service.delete_file, request.workspace, request.path,
            recursive=request.recursive,
        )
        return mcp_pb2.DeleteFileResponse(path=request.path, success=True)


def _method_handlers(servicer: McpServicer) -> dict[str, grpc.RpcMethodHandler]:
    """McpService's method table, one row per RPC of the proto's service descriptor (so it
    cannot drift from the proto): grpc passes the request through as bytes (no request
    deserializer) and :meth:`McpServicer._decode` decodes it before the RPC's method runs."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in _SERVICE.methods:
        name = method.name
        request_cls = message_factory.GetMessageClass(method.input_type)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        impl = getattr(servicer, name)
        if method.client_streaming:  # pragma: no cover - the contract has none
            raise TypeError(f"{_SERVICE_NAME}/{name}: client streaming is not supported")
        if method.server_streaming:
            handlers[name] = grpc.unary_stream_rpc_method_handler(
                _streaming(servicer, name, request_cls, impl), response_serializer=serialize
            )
        else:
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                _unary(servicer, name, request_cls, impl), response_serializer=serialize
            )
    return handlers


def _unary(
    servicer: McpServicer, name: str, request_cls: type[Message], impl: Callable[..., Awaitable[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        return await impl(await servicer._decode(context, name, request_cls, raw), context)

    return handle


def _streaming(
    servicer: McpServicer, name: str, request_cls: type[Message], impl: Callable[..., AsyncIterator[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Message]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        async for response in impl(await servicer._decode(context, name, request_cls, raw), context):
            yield response

    return handle


def _chunk_message(task_id: str, chunk: OutputChunk) -> mcp_pb2.TaskOutputChunk:
    return mcp_pb2.TaskOutputChunk(
        task_id=task_id, type=chunk.kind.value, data=chunk.data, timestamp_ms=chunk.timestamp_ms,
        offset=chunk.offset,
    )


def _execute_request(msg: mcp_pb2.CommandRequest, wait_s: float = 0.0) -> ExecuteRequest:
    sc = msg.sandbox_config
    limits = sc.resource_limits
    network = _NETWORK_NAMES.get(sc.network_access, f"unknown({sc.network_access})") if msg.HasField(
        "sandbox_config"
    ) else None
    return ExecuteRequest(
        command=msg.command,
        args=tuple(msg.args),
        env=dict(msg.env),
        cwd=msg.cwd if msg.HasField("cwd") else None,
        timeout_s=msg.timeout,
        metadata=dict(msg.metadata),
        network=network,
        memory_bytes=limits.memory_limit,
        pids=limits.pids_limit,
        cpu_cores=limits.cpu_limit,
        io_weight=limits.io_weight,
        ro_paths=tuple(sc.ro_paths),
        rw_paths=tuple(sc.rw_paths),
        denied_paths=tuple(sc.denied_paths),
        hosts=tuple(sc.allowed_hosts),
        wait_s=wait_s,
    )


_TASK_STATUSES = frozenset(s.value for s in TaskStatus)


def _task_info(record: TaskRecord) -> mcp_pb2.TaskInfo:
    return mcp_pb2.TaskInfo(
        task_id=record.task_id,
        task_type=record.task_type.value,
        status=record.status.value,
        created_at=rfc3339(record.created_at_ns),
        started_at=rfc3339(record.started_at_ns) if record.started_at_ns is not None else None,
        completed_at=rfc3339(record.completed_at_ns) if record.completed_at_ns is not None else None,
        metadata=record.metadata,
    )


def _status_response(record: TaskRecord) -> mcp_pb2.TaskStatusResponse:
    info = _task_info(record)
    r = record.result
    if r is None:
        return mcp_pb2.TaskStatusResponse(task_info=info)
    u = r.resource_usage
    return mcp_pb2.TaskStatusResponse(task_info=info, result=mcp_pb2.TaskResult(
        exit_code=r.exit_code,
        stdout=r.stdout,
        stderr=r.stderr,
        resource_usage=mcp_pb2.ResourceUsage(
            cpu_time_ms=u.cpu_time_ms,
            max_memory_kb=u.max_memory_kb,
            io_read_bytes=u.io_read_bytes,
            io_write_bytes=u.io_write_bytes,
            egress_bytes_sent=u.egress_bytes_sent,
            egress_bytes_received=u.egress_bytes_received,
        ),
        execution_time_ms=r.execution_time_ms,
    ))


@dataclass
class GrpcEdge:
    """The bound gRPC server with its health servicer.

    Attributes:
        server: the grpc.aio server (not started until :meth:`start`).
        port: the bound port (the kernel's choice when 0 was asked).
        health: the ``grpc.health.v1`` servicer.
    """

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def start(self) -> None:
        """Start serving and report SERVING for the server and McpService."""
        await self.server.start()
        for name in ("", _SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then stop, letting in-flight calls finish for ``grace_s`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def create_grpc_server(
    service: GatewayService, host: str, port: int, *, max_message_bytes: int, tls: TlsFiles | None = None,
    gate: EdgeGate | None = None, max_wait_s: float = 0.0,
) -> GrpcEdge:
    """Build the grpc.aio server with McpService, health and reflection, bound to host:port
    (TLS, and mTLS with a client CA, when ``tls`` is given). ``max_wait_s``: see
    :class:`McpServicer`.

    Raises:
        RuntimeError: when the address cannot be bound.
    """
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes)])
    bound: list[int] = []
    servicer = McpServicer(service, host, lambda: bound[0], tls=tls is not None, gate=gate, max_wait_s=max_wait_s)
    handlers = _method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(_SERVICE_NAME, handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound.append(server.add_insecure_port(address))
        else:
            bound.append(server.add_secure_port(address, tls.grpc_credentials()))
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind gRPC on {address}: {exc}") from exc
    return GrpcEdge(server, bound[0], health_servicer)
