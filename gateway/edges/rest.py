"""REST edge (design section 4): FastAPI routes over the same service layer as gRPC.

Every route is registered in :func:`create_app`; each handler decodes the body,
authenticates the caller and calls the service (both in a worker thread: credential
checks, policy, store and audit calls block) and encodes the answer. Credentials are the
``Authorization`` header and, over HTTPS with a client CA, the verified client
certificate; health, readiness and metrics need none. 401 answers carry
``WWW-Authenticate: Bearer`` (RFC 6750), 403 for a missing scope names the scope.
Errors are ``{"error":{"code","message","details"}}`` with the HTTP status from
``gateway.errors.STATUS_TABLE``; a body that is not JSON is 400/2003, a JSON body of the
wrong shape 422/2001-2002 (pydantic's report in details).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway import __version__
from gateway.admission import EdgeGate
from gateway.auth import Credentials
from gateway.errors import (
    AuthError,
    GatewayError,
    InternalError,
    InvalidFormat,
    InvalidParameter,
    MissingParameter,
    NotFound,
    PermissionDenied,
    RateLimited,
    status_for,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.models import ExecuteRequest, OutputChunk, Principal, RequestContext, TaskRecord, rfc3339
from gateway.service import GatewayService

__all__ = ["CommandBody", "PeerCertH11Protocol", "create_app"]

log = logging.getLogger(__name__)

T = TypeVar("T")
PEER_CERT_STATE_KEY = "mcp_tls_peer_cert"
_SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps idle streams open through proxies
_SSE_EVENTS = {0: "stdout", 1: "stderr", 2: "exit", 3: "event"}


class ResourceLimitsBody(BaseModel):
    """Mirrors ``mcp.ResourceLimits``."""

    model_config = ConfigDict(extra="forbid")
    cpu_limit: float = Field(0.0, ge=0, description="CPU share, cores.")
    memory_limit: int = Field(0, ge=0, description="Memory, bytes.")
    pids_limit: int = Field(0, ge=0, le=2**32 - 1, description="Processes.")
    io_weight: int = Field(0, ge=0, le=2**32 - 1, description="IO weight.")


class SandboxConfigBody(BaseModel):
    """Mirrors ``mcp.SandboxConfig``; it can only narrow what policy grants."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Ignored: the sandbox cannot be disabled.")
    network_access: str = Field("NETWORK_NONE", description="NETWORK_NONE | NETWORK_LOOPBACK | NETWORK_HOST | NETWORK_RESTRICTED.")
    resource_limits: ResourceLimitsBody = Field(default_factory=ResourceLimitsBody)
    rw_paths: list[str] = Field(default_factory=list)
    ro_paths: list[str] = Field(default_factory=list)
    denied_paths: list[str] = Field(default_factory=list)


class CommandBody(BaseModel):
    """Body of ``POST /v1/execute``; mirrors ``mcp.CommandRequest``."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(description="Program name or absolute path.")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(None, description="Working directory; relative to /workspace.")
    timeout: int = Field(0, ge=0, le=2**32 - 1, description="Wall-clock limit, seconds; 0 = server default.")
    metadata: dict[str, str] = Field(default_factory=dict)
    sandbox_config: SandboxConfigBody | None = None


class TaskCreatedBody(BaseModel):
    """Answer of ``POST /v1/execute``."""

    task_id: str
    status: str
    created_at: str


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, handing every request of a TLS connection the client
    certificate the handshake verified (DER bytes) as ``scope["state"]["mcp_tls_peer_cert"]``
    (uvicorn copies the per-connection ``app_state`` into each request's scope)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection and note the verified client certificate, if any."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if cert:
            self.app_state = {**self.app_state, PEER_CERT_STATE_KEY: cert}


def _network(body: SandboxConfigBody | None) -> str | None:
    if body is None:
        return None
    name = body.network_access.upper()
    return name.removeprefix("NETWORK_").lower()


def _execute_request(body: CommandBody) -> ExecuteRequest:
    sc = body.sandbox_config
    limits = sc.resource_limits if sc else ResourceLimitsBody()
    return ExecuteRequest(
        command=body.command,
        args=tuple(body.args),
        env=dict(body.env),
        cwd=body.cwd,
        timeout_s=body.timeout,
        metadata=dict(body.metadata),
        network=_network(sc),
        memory_bytes=limits.memory_limit,
        pids=limits.pids_limit,
        cpu_cores=limits.cpu_limit,
        io_weight=limits.io_weight,
        ro_paths=tuple(sc.ro_paths) if sc else (),
        rw_paths=tuple(sc.rw_paths) if sc else (),
        denied_paths=tuple(sc.denied_paths) if sc else (),
    )


def _task_json(record: TaskRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_info": {
            "task_id": record.task_id,
            "task_type": record.task_type.name,
            "status": record.status.name,
            "created_at": rfc3339(record.created_at_ns),
            "started_at": rfc3339(record.started_at_ns) if record.started_at_ns else None,
            "completed_at": rfc3339(record.completed_at_ns) if record.completed_at_ns else None,
            "metadata": record.metadata,
        },
        "result": None,
    }
    if record.result is not None:
        r = record.result
        body["result"] = {
            "exit_code": r.exit_code,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "stdout_truncated": r.stdout_truncated,
            "stderr_truncated": r.stderr_truncated,
            "limit_reason": r.limit_reason,
            "error": r.error,
            "resource_usage": {
                "cpu_time_ms": r.resource_usage.cpu_time_ms,
                "max_memory_kb": r.resource_usage.max_memory_kb,
                "io_read_bytes": r.resource_usage.io_read_bytes,
                "io_write_bytes": r.resource_usage.io_write_bytes,
            },
            "execution_time_ms": r.execution_time_ms,
        }
    return body


def _sse_event(task_id: str, chunk: OutputChunk) -> bytes:
    """One Server-Sent Event (https://html.spec.whatwg.org/multipage/server-sent-events.html)
    per log entry: ``id`` is the entry's offset (so a reconnecting EventSource sends it back
    as Last-Event-ID), ``event`` its kind, ``data`` one line of JSON with the bytes in
    base64 (``data``, lossless) and decoded as UTF-8 with replacement (``text``)."""
    body = {
        "task_id": task_id,
        "offset": chunk.offset,
        "type": chunk.kind.name,
        "data": base64.b64encode(chunk.data).decode(),
        "text": chunk.data.decode("utf-8", errors="replace"),
        "timestamp_ms": chunk.timestamp_ms,
    }
    return f"id: {chunk.offset}\nevent: {_SSE_EVENTS[chunk.kind.value]}\ndata: {json.dumps(body)}\n\n".encode()


async def _sse_stream(task_id: str, chunks: AsyncIterator[OutputChunk]) -> AsyncIterator[bytes]:
    """The SSE body: entries as they come, a keep-alive comment after 15 s of silence, an
    ``error`` event if reading fails. A slow client only fills its own 64-entry buffer."""
    queue: asyncio.Queue[OutputChunk | GatewayError | None] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
        except GatewayError as exc:
            await queue.put(exc)
        except Exception:
            log.exception("reading task output for SSE failed")
            await queue.put(InternalError("internal error while reading task output"))
        await queue.put(None)

    producer = asyncio.create_task(pump())
    try:
        yield b"retry: 1000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _SSE_KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, GatewayError):
                yield f"event: error\ndata: {item.to_json()}\n\n".encode()
                return
            yield _sse_event(task_id, item)
    finally:
        producer.cancel()


def _stream_offset(offset: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after the Last-Event-ID an EventSource sends on reconnect,
    else the ``offset`` query parameter, else 0."""
    if last_event_id is not None:
        if not re.fullmatch(r"[0-9]{1,19}", last_event_id.strip()):
            raise InvalidFormat("Last-Event-ID must be an entry offset (a non-negative integer)",
                                details={"field": "Last-Event-ID"})
        return int(last_event_id) + 1
    return offset or 0


def _file_mode(text: str | None) -> int:
    """``mode`` query parameter: permission bits in octal (``644``, ``0644``, ``0o644``)."""
    if not text:
        return 0
    try:
        return int(text.removeprefix("0o"), 8)
    except ValueError:
        raise InvalidFormat("mode must be octal permission bits, e.g. 0644", details={"field": "mode"}) from None


async def _read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused with 413/2001 once larger than ``cap`` bytes (also when it
    arrives chunked, without Content-Length)."""
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > cap:
            raise InvalidParameter(f"request body larger than {cap} bytes", details={"max": cap})
        parts.append(part)
    return b"".join(parts)


def _error_response(error: GatewayError, status: int | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, PermissionDenied):  # RFC 6750 section 3.1
        scope = error.details.get("scope", "")
        headers["WWW-Authenticate"] = f'Bearer realm="mcp-gateway", error="insufficient_scope", scope="{scope}"'
    elif isinstance(error, AuthError):
        presented = error.details.get("reason") not in ("missing_credentials", "client_certificate_required")
        headers["WWW-Authenticate"] = 'Bearer realm="mcp-gateway"' + (', error="invalid_token"' if presented else "")
    return JSONResponse(error.to_dict(), status_code=status or status_for(error).http, headers=headers or None)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems = exc.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return _error_response(InvalidFormat("request body is not valid JSON"))
    fields = [{"loc": [str(x) for x in p.get("loc", ())], "msg": str(p.get("msg", ""))} for p in problems[:20]]
    cls = MissingParameter if any(p.get("type") == "missing" for p in problems) else InvalidParameter
    return _error_response(cls("request body does not match the schema", details={"errors": fields}), 422)


PROBE_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


class AdmissionMiddleware:
    """ASGI middleware in front of every route: a call takes a slot of the HTTP
    :class:`~gateway.admission.EdgeGate` before any of its work (body parsing included) and
    gives it back when its response starts, so a Server-Sent Events stream holds a slot
    only while it is set up. A call that gets no slot answers 429/4290 with Retry-After at
    once. :data:`PROBE_PATHS` never wait: a probe must answer under any load.
    """

    def __init__(self, app: Any, gate: EdgeGate) -> None:
        self._app = app
        self._gate = gate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI call (https://asgi.readthedocs.io/en/latest/specs/www.html)."""
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self._app(scope, receive, send)
            return
        slot = self._gate.slot()
        try:
            await slot.__aenter__()
        except RateLimited as exc:
            await _error_response(exc)(scope, receive, send)
            return
        held = True

        async def send_and_release(message: dict[str, Any]) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                await slot.__aexit__(None, None, None)
            await send(message)

        try:
            await self._app(scope, receive, send_and_release)
        finally:
            if held:
                await slot.__aexit__(None, None, None)


def create_app(service: GatewayService, server_host: str, server_port: Callable[[], int], max_body_bytes: int,
               gate: EdgeGate | None = None) -> FastAPI:
    """The FastAPI application with every route of the REST edge.

    Args:
        service: the shared service layer.
        server_host: bind address, for audit events.
        server_port: a callable giving the bound HTTP port.
        max_body_bytes: larger request bodies are refused with 413/2001 before parsing.
        gate: admission control for every route but the probes (None = unbounded).
    """
    app = FastAPI(
        title="MCP Security Gateway",
        version=__version__,
        description="Policy-checked, sandboxed command execution for AI agents.",
    )

    def caller(request: Request, method: str) -> tuple[RequestContext, Credentials]:
        client = request.client
        tls = request.url.scheme == "https"
        ctx = RequestContext.for_call(
            transport="https" if tls else "http",
            method=method,
            peer=f"{client.host}:{client.port}" if client else "",
            server_host=server_host,
            server_port=server_port(),
            request_bytes=int(request.headers.get("content-length") or 0),
            user_agent=request.headers.get("user-agent"),
            tls=tls,
        )
        cert = request.scope.get("state", {}).get(PEER_CERT_STATE_KEY)
        return ctx, Credentials(authorization=request.headers.get("authorization"), client_cert=cert)

    async def call(request: Request, method: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Authenticate the caller, then ``fn(principal, ctx, *args, **kwargs)``, in one
        worker thread (credential checks, policy, store and audit calls block)."""
        ctx, credentials = caller(request, method)
        return await asyncio.to_thread(lambda: service.call(ctx, credentials, fn, *args, **kwargs))

    async def authenticated(request: Request, method: str) -> tuple[Principal, RequestContext]:
        ctx, credentials = caller(request, method)
        return await asyncio.to_thread(service.authenticate, ctx, credentials), ctx

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return _error_response(
                InvalidParameter(f"request body larger than {max_body_bytes} bytes"), 413
            )
        return await call_next(request)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing errors (unknown path, wrong method) in the project's error shape.
        error: GatewayError = (
            NotFound(f"no route {request.url.path}") if exc.status_code == 404
            else InvalidParameter(str(exc.detail))
        )
        return _error_response(error, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in REST handler", exc_info=exc)
        return _error_response(InternalError("internal error"))

    @app.post("/v1/execute", response_model=TaskCreatedBody, status_code=202, tags=["tasks"])
    async def execute(body: CommandBody, request: Request) -> TaskCreatedBody:
        """Ask policy, then run a command in the sandbox as a background task (scope ``tasks:execute``)."""
        record = await call(request, "POST /v1/execute", service.execute_command, _execute_request(body))
        return TaskCreatedBody(
            task_id=record.task_id, status=record.status.name, created_at=rfc3339(record.created_at_ns)
        )

    @app.get("/v1/tasks/{task_id}", tags=["tasks"])
    async def get_task(task_id: str, request: Request) -> dict[str, Any]:
        """State of a task and, once final, its result (scope ``tasks:read``)."""
        return _task_json(await call(request, "GET /v1/tasks", service.get_task, task_id))

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"])
    async def cancel_task(task_id: str, request: Request) -> dict[str, Any]:
        """Cancel a task: its sandbox is killed, state CANCELLED; answers the task once
        final. Idempotent: a finished task answers its final state (scope ``tasks:cancel``)."""
        principal, ctx = await authenticated(request, "POST /v1/tasks/cancel")
        return _task_json(await service.cancel_task(principal, ctx, task_id))

    @app.get("/v1/tasks/{task_id}/stream", tags=["tasks"], response_class=StreamingResponse)
    async def stream_task(
        task_id: str,
        request: Request,
        offset: int | None = Query(None, ge=0, description="First log entry to send (entries are numbered from 0)."),
    ) -> StreamingResponse:
        """The task's output as Server-Sent Events (text/event-stream): one event per log
        entry (``stdout``, ``stderr``, ``event``, and last ``exit``), ``id`` = the entry's
        offset. Reconnect with ``Last-Event-ID`` (or ``?offset=``) to continue without gaps
        or repeats (scope ``tasks:read``)."""
        start = _stream_offset(offset, request.headers.get("last-event-id"))
        chunks = await call(request, "GET /v1/tasks/stream", service.stream_output, task_id, start)
        return StreamingResponse(
            _sse_stream(task_id, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/files/{path:path}", tags=["files"], response_class=Response)
    async def read_file(
        path: str, request: Request, workspace: str = Query("", description="Workspace id in your tenant.")
    ) -> Response:
        """The file's bytes (Content-Type guessed from the name; served as an attachment;
        scope ``files:read``)."""
        found = await call(request, "GET /v1/files", service.read_file, workspace, path)
        return Response(
            found.content,
            media_type=found.mime_type,
            headers={
                "Content-Disposition": "attachment",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox",
            },
        )

    @app.put("/v1/files/{path:path}", tags=["files"])
    async def write_file(
        path: str,
        request: Request,
        workspace: str = Query("", description="Workspace id in your tenant; created when new."),
        mode: str | None = Query(None, description="Permission bits in octal, e.g. 0644 (default 0644)."),
        create_dirs: bool = Query(False, description="Create missing parent directories."),
    ) -> dict[str, Any]:
        """Write the request body (raw bytes) to the file, atomically replacing it (scope
        ``files:write``). The caller is authenticated before the body is read."""
        principal, ctx = await authenticated(request, "PUT /v1/files")
        content = await _read_capped(request, max_body_bytes)
        written = await asyncio.to_thread(
            lambda: service.write_file(
                principal, ctx, workspace, path, content, mode=_file_mode(mode), create_dirs=create_dirs
            )
        )
        return {"path": path, "bytes_written": written}

    @app.delete("/v1/files/{path:path}", tags=["files"])
    async def delete_file(
        path: str,
        request: Request,
        workspace: str = Query("", description="Workspace id in your tenant."),
        recursive: bool = Query(False, description="Delete a directory and everything in it."),
    ) -> dict[str, Any]:
        """Delete the file, or with ``recursive`` the directory tree (links are not
        followed; scope ``files:write``)."""
        await call(request, "DELETE /v1/files", service.delete_file, workspace, path, recursive=recursive)
        return {"path": path, "success": True}

    @app.get("/v1/policy", tags=["policy"])
    async def policy_status(request: Request) -> dict[str, Any]:
        """Policy engine, bundle revision and health (scope ``policy:read``)."""
        return await call(request, "GET /v1/policy", service.policy_status)

    @app.post("/v1/policy/reload", tags=["policy"])
    async def policy_reload(request: Request) -> dict[str, Any]:
        """Reload the policy bundle from ``policy_dir`` now; a bundle that fails to load or
        compile is refused (5003) and the active one stays (scope ``policy:admin``)."""
        return await call(request, "POST /v1/policy/reload", service.reload_policy)

    @app.get("/health", tags=["health"])
    async def health_route() -> dict[str, Any]:
        """Status, version and uptime (seconds)."""
        info = service.health()
        return {"status": info.status, "version": info.version, "uptime_seconds": info.uptime_s}

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        """Ready to take work: policy engine healthy (with the bundle revision), task pool
        state; 503 while the policy engine cannot decide (every request would be 5003)."""
        body = service.readiness_snapshot()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics(), media_type=METRICS_CONTENT_TYPE)

    if gate is not None:
        app.add_middleware(AdmissionMiddleware, gate=gate)

    return app
