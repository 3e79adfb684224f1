"""REST edge (design section 4): FastAPI routes over the same service layer as gRPC.

Every route is registered in :func:`create_app`; each handler decodes the body,
authenticates the caller and calls the service (both in a worker thread: credential
checks, policy, store and audit calls block) and encodes the answer. Credentials are the
``Authorization`` header and, over HTTPS with a client CA, the verified client
certificate; health, readiness and metrics need none. 401 answers carry
``WWW-Authenticate: Bearer`` (RFC 6750), 403 for a missing scope names the scope.
Errors are ``{"error":{"code","message","details"}}`` with the HTTP status from
``gateway.errors.STATUS_TABLE``; a body that is not JSON is 400/2003, a JSON body of the
wrong shape 422/2001-2002 (pydantic's report in details), a missing or malformed path or
query parameter 400/2001-2002, a wrong method 405 with ``Allow``.

The OpenAPI document (``/openapi.json``) is the contract generated clients are built
from: each route declares the error classes it can answer (:func:`_contract`, through the
same table), its success model and media type, the bearer security it needs, and the
request shapes and bounds the service enforces.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import __version__
from gateway.admission import EdgeGate
from gateway.auth import Credentials
from gateway.config import Settings, is_loopback_host
from gateway.errors import (
    STATUS_TABLE,
    AuthError,
    CommandDenied,
    DependencyUnavailable,
    FileDenied,
    GatewayError,
    InternalError,
    InvalidFormat,
    InvalidParameter,
    MissingParameter,
    NetworkDenied,
    NotFound,
    PermissionDenied,
    PolicyEngineError,
    RateLimited,
    ResourceDenied,
    SandboxLimitExceeded,
    SandboxSetupFailed,
    StorageError,
    TokenExpired,
    Unauthenticated,
    status_for,
)
from gateway.models import (
    ExecuteRequest,
    OutputChunk,
    OutputKind,
    Principal,
    RequestContext,
    TaskRecord,
    TaskStatus,
    TaskType,
    rfc3339,
)
from gateway.service import PAGE_TOKEN_PATTERN, TASK_ID_PATTERN, GatewayService

__all__ = ["CommandBody", "GatewayHttpProtocol", "create_app", "error_response", "read_capped", "request_context"]

log = logging.getLogger(__name__)

T = TypeVar("T")
PEER_CERT_STATE_KEY = "mcp_tls_peer_cert"
CONNECTION_STATE_KEY = "mcp_connection_id"
_SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps idle streams open through proxies
_SSE_EVENTS = {0: "stdout", 1: "stderr", 2: "exit", 3: "event"}
_MAX_OFFSET = 2**63 - 1  # output log offsets are int64 (mcp.TaskOutputChunk.offset)
# Documented patterns (ECMA-262, as JSON Schema reads them: "$" ends the string):
#: workspace ids, as gateway.tasks.workspaces.WORKSPACE_ID_PATTERN checks them;
_WORKSPACE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: the ``mode`` values :func:`_file_mode` and the service accept: empty, or octal up to 0o777.
_FILE_MODE = re.compile(r"^(?:(?:0o)?0*[0-7]{1,3})?$")
#: a command: not blank (no character but Python's str.isspace() ones, which ECMA-262's
#: \s does not quite match) and no NUL byte; the service refuses either (2002 / 2001).
_COMMAND = (r"^[^\u0000]*[^\u0000\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
            r"\u202f\u205f\u3000][^\u0000]*$")


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes numbers with a zero fraction (``5.0``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The body models are strict, as their JSON Schema reads: "5" or true is no number, 1 is no
# boolean. JSON Schema's integer still takes 5.0, hence this type for integer fields.
JsonInt = Annotated[int, BeforeValidator(_integral)]


class ResourceLimitsBody(BaseModel):
    """Mirrors ``mcp.ResourceLimits``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cpu_limit: float = Field(0.0, ge=0, description="CPU share, cores.")
    memory_limit: JsonInt = Field(0, ge=0, description="Memory, bytes.")
    pids_limit: JsonInt = Field(0, ge=0, le=2**32 - 1, description="Processes.")
    io_weight: JsonInt = Field(0, ge=0, le=2**32 - 1, description="IO weight; 4001 where the host has no io "
                               "cgroup controller (GET /health/ready lists the enforced limits).")


# String shapes the service refuses otherwise (documented only: the service checks them,
# with the same codes over gRPC).
Text = Annotated[str, Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})]  # no NUL byte (2001)
EnvName = Annotated[str, Field(json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})]  # 2003
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# A name or *.domain (two labels or more), with an optional :port: what gateway.egress.allowlist
# parses (which also takes IP literals, and a trailing dot), as its refusals (2003) say.
HostEntry = Annotated[str, Field(
    max_length=253, json_schema_extra={"pattern": f"^(\\*\\.{_LABEL}\\.)?{_LABEL}(\\.{_LABEL})*(:{_PORT})?$"},
    description="A host name, or *.domain for the names below it, with an optional :port.")]
SandboxPath = Annotated[str, Field(json_schema_extra={"pattern": "^/[^\\u0000]*$"},
                                   description="An absolute path inside the sandbox.")]  # 2003


class SandboxConfigBody(BaseModel):
    """Mirrors ``mcp.SandboxConfig``; it can only narrow what policy grants."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool = Field(True, description="Ignored: the sandbox cannot be disabled.")
    network_access: Literal["NETWORK_NONE", "NETWORK_LOOPBACK", "NETWORK_HOST", "NETWORK_RESTRICTED"] = Field(
        "NETWORK_NONE", description="NETWORK_RESTRICTED: egress only through the gateway's proxy, to the hosts "
        "policy allows (root gateways; otherwise 4001)."
    )
    resource_limits: ResourceLimitsBody = Field(default_factory=ResourceLimitsBody)
    rw_paths: list[SandboxPath] = Field(default_factory=list)
    ro_paths: list[SandboxPath] = Field(default_factory=list)
    denied_paths: list[SandboxPath] = Field(default_factory=list)
    allowed_hosts: list[HostEntry] = Field(
        default_factory=list,
        description="NETWORK_RESTRICTED: the hosts this task needs (name, *.domain, each with an optional :port), "
        "each on the policy's allow-list; the task then reaches only hosts both name. Empty: what policy allows.",
    )


class CommandBody(BaseModel):
    """Body of ``POST /v1/execute``; mirrors ``mcp.CommandRequest``."""

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"command": "echo", "args": ["hello world"], "timeout": 30}]},
    )
    command: str = Field(description="Program name or absolute path; not blank, no NUL.",
                         json_schema_extra={"pattern": _COMMAND})
    args: list[Text] = Field(default_factory=list)
    env: dict[EnvName, Text] = Field(default_factory=dict, json_schema_extra={"additionalProperties": False})
    cwd: Text | None = Field(None, description="Working directory; relative to /workspace.")
    timeout: JsonInt = Field(0, ge=0, le=2**32 - 1, description="Wall-clock limit, seconds; 0 = server default.")
    metadata: dict[Text, Text] = Field(
        default_factory=dict, description="Free-form labels; a 'workspace' entry names the task's workspace.",
        json_schema_extra={"additionalProperties": False},
    )
    sandbox_config: SandboxConfigBody | None = None


TaskStatusName = Annotated[str, Field(json_schema_extra={"enum": [s.name for s in TaskStatus]},
                                       description="Task state: the enum name without the TASK_ prefix.")]
TaskId = Annotated[str, Field(json_schema_extra={"pattern": TASK_ID_PATTERN.pattern})]


class TaskCreatedBody(BaseModel):
    """Answer of ``POST /v1/execute``."""

    task_id: TaskId
    status: TaskStatusName
    created_at: str = Field(description="RFC 3339 UTC time.")


class TaskInfoBody(BaseModel):
    """``task_info`` of a task answer; mirrors ``mcp.TaskInfo``."""

    task_id: TaskId
    task_type: str = Field(json_schema_extra={"enum": [t.name for t in TaskType]})
    status: TaskStatusName
    created_at: str = Field(description="RFC 3339 UTC time.")
    started_at: str | None = Field(description="RFC 3339 UTC time; null until the sandbox started.")
    completed_at: str | None = Field(description="RFC 3339 UTC time; null until final.")
    metadata: dict[str, str]


class ResourceUsageBody(BaseModel):
    """Measured use of a finished task; mirrors ``mcp.ResourceUsage``."""

    cpu_time_ms: int = Field(description="User + system CPU time, milliseconds.")
    max_memory_kb: int = Field(description="Peak resident set size, KiB.")
    io_read_bytes: int = Field(description="Bytes read from block devices.")
    io_write_bytes: int = Field(description="Bytes written to block devices.")
    egress_bytes_sent: int = Field(
        0, description="Network restricted: payload bytes the egress proxy carried to the task's destinations."
    )
    egress_bytes_received: int = Field(
        0, description="Network restricted: payload bytes the egress proxy carried back from them."
    )


class TaskResultBody(BaseModel):
    """``result`` of a final task; mirrors ``mcp.ExecutionResult``."""

    exit_code: int = Field(description="Exit status; 128+N when killed by signal N; -1 when it never ran.")
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    limit_reason: str | None = Field(description="Which limit ended the task (wall_timeout, cpu_time, ...).")
    error: str | None = Field(description="Why the sandbox failed to start (FAILED tasks).")
    resource_usage: ResourceUsageBody
    execution_time_ms: int = Field(description="Wall time from spawn to reap, milliseconds.")


class TaskBody(BaseModel):
    """Answer of ``GET /v1/tasks/{task_id}`` and its cancel; mirrors ``mcp.TaskStatusResponse``."""

    task_info: TaskInfoBody
    result: TaskResultBody | None = Field(description="Null until the task is final.")


class TaskListBody(BaseModel):
    """Answer of ``GET /v1/tasks``; mirrors ``mcp.ListTasksResponse``."""

    tasks: list[TaskInfoBody] = Field(description="Newest first; a task's result is read with GET /v1/tasks/{id}.")
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null on the last.")


class FileWrittenBody(BaseModel):
    """Answer of ``PUT /v1/files/{path}``."""

    path: str
    bytes_written: int


class FileDeletedBody(BaseModel):
    """Answer of ``DELETE /v1/files/{path}``."""

    path: str
    success: bool


class PolicyStatusBody(BaseModel):
    """The active policy engine (``GET /v1/policy``, and part of readiness)."""

    engine: str = Field(description="Engine name (regorus, opa).")
    revision: str = Field(description="Active bundle revision.")
    healthy: bool
    detail: str = Field(description="Why the engine is unhealthy; empty when healthy.")


class PolicyReloadBody(PolicyStatusBody):
    """Answer of ``POST /v1/policy/reload``."""

    result: str = Field(json_schema_extra={"enum": ["applied", "unchanged"]})


_SERVER_NAME = Path(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$",
                    description="An upstream MCP server's name (mcp.servers).")


class UpstreamToolBody(BaseModel):
    """One tool an upstream MCP server lists now."""

    name: str = Field(description="The tool's own name.")
    served_as: str = Field(description="The name the gateway serves it under: '<server>__<name>'.")
    state: str = Field(json_schema_extra={"enum": ["approved", "changed", "added"]},
                       description="approved (served), changed (withheld: differs from the approval), added "
                       "(withheld: never approved).")
    sha256: str = Field(description="SHA-256 of its pinned definition (name, title, description, schemas, "
                        "annotations).")
    definition: dict[str, Any] = Field(description="The MCP Tool object as the server lists it.")


class UpstreamReviewBody(BaseModel):
    """Answer of ``GET /v1/mcp/servers/{server}/tools``."""

    server: str
    tools: list[UpstreamToolBody]
    removed: list[str] = Field(description="Approved tools the server no longer lists.")
    tools_list_sha256: str = Field(description="SHA-256 of the tool set listed now: pass it to approve.")
    approved_tools_list_sha256: str | None = Field(description="SHA-256 of the approved set; null if none.")


class ApprovedBody(BaseModel):
    """Answer of ``POST /v1/mcp/servers/{server}/approve``."""

    server: str
    tools_list_sha256: str
    approved_at: str = Field(description="RFC 3339 UTC.")
    tools: list[str] = Field(description="The approved tools' names.")


class HealthBody(BaseModel):
    """Answer of ``GET /health``."""

    status: str
    version: str
    uptime_seconds: int = Field(description="Seconds since the process started.")


class LiveBody(BaseModel):
    """Answer of ``GET /health/live``."""

    status: str = Field(json_schema_extra={"enum": ["live"]})


class ReadinessBody(BaseModel):
    """Answer of ``GET /health/ready`` (200 ready, 503 not ready)."""

    status: str = Field(json_schema_extra={"enum": ["ready", "not_ready"]})
    draining: bool = Field(description="Shutting down: new tasks are refused.")
    policy: PolicyStatusBody
    audit: dict[str, Any] = Field(description="Audit sink health: sink, healthy, detail, failing_since_ns, ...")
    tasks: dict[str, Any] = Field(description="Task pool: running, queued.")
    sandbox: dict[str, Any] = Field(description="Limits this host enforces, cgroup version, uid per task.")


class OutputEventBody(BaseModel):
    """``data`` of one Server-Sent Event of ``GET /v1/tasks/{task_id}/stream`` (see
    :func:`_sse_event`); an ``error`` event carries an :class:`ErrorBody` instead."""

    task_id: TaskId
    offset: int = Field(ge=0, description="The entry's number in the task's output log (also the event id).")
    type: str = Field(json_schema_extra={"enum": [k.name for k in OutputKind]})
    data: str = Field(description="The entry's bytes, base64.")
    text: str = Field(description="The entry's bytes decoded as UTF-8 with replacement.")
    timestamp_ms: int = Field(description="When the entry was written, unix milliseconds.")


class ErrorInfo(BaseModel):
    """The ``error`` member of every error answer (design section 4)."""

    code: int = Field(description="Project error code (design section 5); never changes meaning.")
    message: str = Field(description="One human sentence.")
    details: dict[str, Any] = Field(description="Context (field, reasons, rule_ids, limits); may be empty.")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, the C parser of Node.js: parsing costs the
    event loop a fraction of h11's pure-Python time, which under overload is the time
    probes and refusals wait for), handing every request of a connection an id of that
    connection (``scope["state"]["mcp_connection_id"]``, 32 hex digits: the session of a
    caller that names none) and, over TLS, the client certificate the handshake verified
    (DER bytes, ``scope["state"]["mcp_tls_peer_cert"]``). uvicorn copies the per-connection
    ``app_state`` into each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection, give it an id and note the verified client certificate."""
        super().connection_made(transport)
        state = {**self.app_state, CONNECTION_STATE_KEY: uuid.uuid4().hex}
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if cert:
            state[PEER_CERT_STATE_KEY] = cert
        self.app_state = state


def request_context(request: Request, method: str, server_host: str, server_port: int,
                    transport: str | None = None) -> tuple[RequestContext, Credentials]:
    """The context and credentials of one HTTP call: ``transport`` (default ``http`` or
    ``https`` by the connection), the peer, the addressed host, the session (the
    ``mcp-session-id`` or ``x-session-id`` header, else the connection), the trace context;
    credentials are the ``Authorization`` header and the TLS client certificate the
    handshake verified (see :class:`GatewayHttpProtocol`)."""
    client = request.client
    tls = request.url.scheme == "https"
    state = request.scope.get("state", {})
    headers = request.headers
    ctx = RequestContext.for_call(
        transport=transport or ("https" if tls else "http"),
        method=method,
        peer=f"{client.host}:{client.port}" if client else "",
        server_host=server_host,
        server_port=server_port,
        request_bytes=int(headers.get("content-length") or 0),
        user_agent=headers.get("user-agent"),
        tls=tls,
        connection_id=state.get(CONNECTION_STATE_KEY, ""),
        session_header=headers.get("mcp-session-id") or headers.get("x-session-id"),
        authority=headers.get("host"),
        headers=headers,
    )
    return ctx, Credentials(authorization=headers.get("authorization"), client_cert=state.get(PEER_CERT_STATE_KEY))


def _network(body: SandboxConfigBody | None) -> str | None:
    if body is None:
        return None
    return body.network_access.removeprefix("NETWORK_").lower()


def _execute_request(body: CommandBody, wait_s: float = 0.0) -> ExecuteRequest:
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
        hosts=tuple(sc.allowed_hosts) if sc else (),
        wait_s=wait_s,
    )


def _task_info_json(record: TaskRecord) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "task_type": record.task_type.name,
        "status": record.status.name,
        "created_at": rfc3339(record.created_at_ns),
        "started_at": rfc3339(record.started_at_ns) if record.started_at_ns else None,
        "completed_at": rfc3339(record.completed_at_ns) if record.completed_at_ns else None,
        "metadata": record.metadata,
    }


def _task_json(record: TaskRecord) -> dict[str, Any]:
    body: dict[str, Any] = {"task_info": _task_info_json(record), "result": None}
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
                "egress_bytes_sent": r.resource_usage.egress_bytes_sent,
                "egress_bytes_received": r.resource_usage.egress_bytes_received,
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


def _file_mode(text: str) -> int:
    """``mode`` query parameter: permission bits in octal (``644``, ``0644``, ``0o644``);
    empty or absent is 0 (the default). Not octal digits is 2003; above 0o777 the service
    refuses (2001). The document's pattern, :data:`_FILE_MODE`, allows exactly what both accept."""
    if not text:
        return 0
    if not re.fullmatch(r"(0o)?[0-7]+", text):
        raise InvalidFormat("mode must be octal permission bits, e.g. 0644", details={"field": "mode"})
    return int(text.removeprefix("0o"), 8)


class _BodyTooLarge(InvalidParameter):
    """A request body over ``limits.max_request_bytes``: 2001 like any bad parameter, which
    this edge answers 413 (RFC 9110 section 15.5.14) instead of 400."""


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused with 413/2001 once larger than ``cap`` bytes (also when it
    arrives chunked, without Content-Length)."""
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > cap:
            raise _BodyTooLarge(f"request body larger than {cap} bytes", details={"max": cap})
        parts.append(part)
    return b"".join(parts)


def error_response(error: GatewayError, status: int | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    """``error`` as the JSON error body with its HTTP status (``status`` overrides the
    table's) and the headers its class calls for (a ``WWW-Authenticate`` in ``headers``
    replaces the class's own challenge), plus ``headers``."""
    headers = dict(headers or {})
    if status is None:
        status = 413 if isinstance(error, _BodyTooLarge) else status_for(error).http
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after_s)
    elif "WWW-Authenticate" in headers:  # the caller's own challenge (MCP's names its metadata)
        pass
    elif isinstance(error, PermissionDenied):  # RFC 6750 section 3.1
        scope = error.details.get("scope", "")
        headers["WWW-Authenticate"] = f'Bearer realm="mcp-gateway", error="insufficient_scope", scope="{scope}"'
    elif isinstance(error, AuthError):
        presented = error.details.get("reason") not in ("missing_credentials", "client_certificate_required")
        headers["WWW-Authenticate"] = 'Bearer realm="mcp-gateway"' + (', error="invalid_token"' if presented else "")
    return JSONResponse(error.to_dict(), status_code=status, headers=headers or None)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """What FastAPI could not decode (design section 5): a body that is not JSON is
    400/2003; a JSON body of the wrong shape 422; a path or query parameter that is missing,
    of the wrong type or out of range 400 (it is not a body schema error). 2002 when
    something required is missing, else 2001; pydantic's report is in ``details.errors``."""
    problems = exc.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return error_response(InvalidFormat("request body is not valid JSON"))
    fields = [{"loc": [str(x) for x in p.get("loc", ())], "msg": str(p.get("msg", ""))} for p in problems[:20]]
    cls = MissingParameter if any(p.get("type") == "missing" for p in problems) else InvalidParameter
    if all(tuple(p.get("loc", ()))[:1] == ("body",) for p in problems):
        return error_response(cls("request body does not match the schema", details={"errors": fields}), 422)
    return error_response(cls("request parameters do not match the schema", details={"errors": fields}))


def _allowed_methods(app: FastAPI, scope: dict[str, Any]) -> str:
    """The ``Allow`` header of a 405 (RFC 9110 section 15.5.6): the methods of every route
    whose path matches (Starlette names only the first such route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods  # type: ignore[attr-defined]
    return ", ".join(sorted(methods))


# -- the OpenAPI contract -------------------------------------------------------------
#
# Each route declares the error classes it can answer; _contract turns them into OpenAPI
# responses through STATUS_TABLE, so the document and the answers share one table.

_BEARER = "bearer"
_BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (mgw_...) or a JWT. Over HTTPS with a client CA, a verified client "
    "certificate authenticates instead. In dev mode (loopback only) a call without credentials is "
    "the development principal; presented credentials are still verified.",
}
#: What a call that reaches the service can answer whatever it does: bad credentials, a
#: missing scope, the rate, in-flight and admission limits, an unexpected failure (also an
#: audit event that could not be written).
_CALL_ERRORS: tuple[type[GatewayError], ...] = (
    Unauthenticated, TokenExpired, PermissionDenied, RateLimited, InternalError,
)
_POLICY_ERRORS = (CommandDenied, NetworkDenied, FileDenied, ResourceDenied, PolicyEngineError)
_FILE_ERRORS = (InvalidParameter, MissingParameter, InvalidFormat, FileDenied, NotFound, PolicyEngineError)
_TASK_ERRORS = (InvalidFormat, NotFound, StorageError)
_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {"description": "Bearer challenge (RFC 6750 section 3).", "required": True,
                               "schema": {"type": "string"}}},
    403: {"WWW-Authenticate": {"description": "On 1003: the missing scope (RFC 6750 section 3.1).",
                               "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before retrying (4290).", "required": True,
                          "schema": {"type": "integer", "minimum": 0}}},
}


def _contract(*raised: type[GatewayError], body_schema: bool = False, auth: bool = True,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of a route decorator documenting what it can answer besides
    success: one response per HTTP status of ``raised`` (by :data:`STATUS_TABLE`) naming the
    codes it carries, with the :class:`ErrorBody` schema and its headers; always 413 (the
    body limit) and 500; 422 when ``body_schema`` (a JSON body); with ``auth`` the bearer
    security requirement. ``extra`` is merged into the operation (``openapi_extra``)."""
    by_status: dict[int, list[type[GatewayError]]] = {413: [InvalidParameter], 500: [InternalError]}
    if body_schema:
        by_status[422] = [InvalidParameter, MissingParameter]
    for cls in raised:
        classes = by_status.setdefault(STATUS_TABLE[cls].http, [])
        if cls not in classes:
            classes.append(cls)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, classes in sorted(by_status.items()):
        codes = ", ".join(f"{cls.code} {cls.__name__}" for cls in classes)
        response: dict[str, Any] = {"model": ErrorBody, "description": f"{HTTPStatus(status).phrase}: {codes}."}
        headers = _HEADERS.get(status)
        if status == 429 and SandboxLimitExceeded in classes:  # 4003 (disk or quota full) has none
            headers = {name: {**h, "required": False} for name, h in headers.items()} if headers else None
        if headers:
            response["headers"] = headers
        responses[status] = response
    operation = dict(extra or {})
    if auth:
        operation["security"] = [{_BEARER: []}]
    return {"responses": responses, "openapi_extra": operation or None}


#: One event of the task output stream (OpenAPI 3.2 ``itemSchema`` of text/event-stream).
_SSE_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": [*_SSE_EVENTS.values(), "error"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {
            "anyOf": [OutputEventBody.model_json_schema(), {"$ref": "#/components/schemas/ErrorBody"}]}},
    },
}


def _document_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """Write this server's request bounds (``limits.*``, ``sandbox.max_*``; the service
    refuses more with 2001) into the body schemas: counts and numbers as keywords, byte
    totals in the descriptions (JSON Schema counts characters, not UTF-8 bytes)."""
    lim, box = settings.limits, settings.sandbox
    command, sandbox_config = schemas["CommandBody"]["properties"], schemas["SandboxConfigBody"]["properties"]
    command["timeout"]["maximum"] = min(command["timeout"]["maximum"], box.max_timeout_s)
    command["args"]["maxItems"] = lim.max_args
    command["env"]["maxProperties"] = lim.max_env
    command["metadata"]["maxProperties"] = lim.max_metadata
    schemas["ResourceLimitsBody"]["properties"]["cpu_limit"]["maximum"] = box.max_cpu_cores
    for name in ("rw_paths", "ro_paths", "denied_paths", "allowed_hosts"):
        sandbox_config[name]["maxItems"] = lim.max_paths
    for name, cap in (("command", lim.max_command_bytes), ("args", lim.max_args_bytes),
                      ("env", lim.max_env_bytes), ("metadata", lim.max_metadata_bytes)):
        described = command[name].get("description", "").rstrip(".")
        command[name]["description"] = f"{described + '; ' if described else ''}at most {cap} bytes (UTF-8) in all."


def _openapi_document(app: FastAPI, settings: Settings | None) -> dict[str, Any]:
    """FastAPI's OpenAPI document of ``app`` (built once), with the bearer security scheme,
    the request bounds of ``settings``, and without the 422 FastAPI adds to every route with
    parameters: only a JSON body answers 422 here, and in :class:`ErrorBody`'s shape (see
    :func:`_validation_error`)."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        if settings is not None:
            _document_limits(document["components"]["schemas"], settings)
            execute = document["paths"]["/v1/execute"]["post"]
            wait = next(p for p in execute["parameters"] if p["name"] == "wait")
            wait["schema"]["maximum"] = settings.tasks.max_wait_s
        for operations in document["paths"].values():
            for operation in operations.values():
                framework = operation["responses"].get("422", {}).get("content", {}).get("application/json", {})
                if framework.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    del operation["responses"]["422"]
        components = document.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components.setdefault("securitySchemes", {})[_BEARER] = _BEARER_SCHEME
    return app.openapi_schema  # type: ignore[return-value]


PROBE_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


#: ASGI scope key of an awaitable callable that gives back the call's admission slot early
#: (a call that waits for a task's end holds no slot while it waits).
ADMISSION_RELEASE_KEY = "mcp.admission.release"


class AdmissionMiddleware:
    """ASGI middleware in front of every route: a call takes a slot of the HTTP
    :class:`~gateway.admission.EdgeGate` before any of its work (body parsing included) and
    gives it back when its response starts, so a Server-Sent Events stream holds a slot
    only while it is set up; a route may give it back sooner through
    ``scope[ADMISSION_RELEASE_KEY]``. A call that gets no slot answers 429/4290 with
    Retry-After at once. :data:`PROBE_PATHS` never wait: a probe must answer under any load.
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
            await error_response(exc)(scope, receive, send)
            return
        held = True

        async def release() -> None:
            nonlocal held
            if held:
                held = False
                await slot.__aexit__(None, None, None)

        async def send_and_release(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await release()
            await send(message)

        scope[ADMISSION_RELEASE_KEY] = release
        try:
            await self._app(scope, receive, send_and_release)
        finally:
            await release()


class BodyLimitMiddleware:
    """ASGI middleware refusing, before any route runs, a request whose ``Content-Length``
    is over ``max_body_bytes`` or not a decimal number: 413/2001. (A chunked body has no
    length; :func:`_read_capped` caps it while it is read.) Pure ASGI rather than
    ``@app.middleware``, which runs every call, probes included, through extra tasks and
    memory streams."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self._app = app
        self._max = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI call (https://asgi.readthedocs.io/en/latest/specs/www.html)."""
        if scope["type"] == "http":
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and (not length.isdigit() or int(length) > self._max):
                error = _BodyTooLarge(f"request body larger than {self._max} bytes", details={"max": self._max})
                await error_response(error)(scope, receive, send)
                return
        await self._app(scope, receive, send)


class DevRebindingGuard:
    """ASGI middleware of a ``--dev`` gateway, which lets calls without credentials in: it
    answers only requests addressed to this host by a loopback name (``Host``: localhost,
    127.0.0.1, [::1], or the bind address) and, when a browser sends ``Origin``, only pages
    served from such a name. Otherwise a web page could make a browser's name resolve to
    127.0.0.1 (DNS rebinding) and run commands through the development principal: 403/1003.
    With credentials required a rebinding page has none to send; ``/mcp`` checks for itself
    (``gateway.edges.mcp_server``)."""

    def __init__(self, app: Any, bind_host: str) -> None:
        self._app = app
        self._bind = bind_host.strip("[]").lower()

    def _local(self, host: str) -> bool:
        return bool(host) and (is_loopback_host(host) or host == self._bind)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI call (https://asgi.readthedocs.io/en/latest/specs/www.html)."""
        if scope["type"] == "http" and scope["path"] != "/mcp":
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            origins = [v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
            bad = "Host" if len(hosts) != 1 or not self._local(_hostname(hosts[0])) else \
                "Origin" if len(origins) > 1 or origins and not self._local(_hostname(origins[0].partition("://")[2])) \
                else None
            if bad is not None:
                error = PermissionDenied(f"a development gateway answers only requests addressed to a loopback name "
                                         f"(DNS-rebinding protection): {bad} refused", details={"header": bad})
                await error_response(error)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _hostname(authority: str) -> str:
    """The host of ``host[:port]`` / ``[v6][:port]``, lowercase, without brackets; "" for
    anything else (``[::1]evil``, a bad port)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
    else:
        host, _, port = authority.partition(":") if authority.count(":") <= 1 else (authority, "", "")
        rest = f":{port}" if port else ""
    return host if rest == "" or (rest[0] == ":" and rest[1:].isdigit()) else ""


def create_app(service: GatewayService, server_host: str, server_port: Callable[[], int], max_body_bytes: int,
               gate: EdgeGate | None = None, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application with every route of the REST edge.

    Args:
        service: the shared service layer.
        server_host: bind address, for audit events.
        server_port: a callable giving the bound HTTP port.
        max_body_bytes: larger request bodies are refused with 413/2001 before parsing.
        gate: admission control for every route but the probes (None = unbounded).
        settings: the server's settings, whose request bounds the OpenAPI document states
            (None = the document states none).
    """
    app = FastAPI(
        title="MCP Security Gateway",
        version=__version__,
        description="Policy-checked, sandboxed command execution for AI agents.",
        # The service layer makes one span per call on every edge (gateway.observability);
        # FastAPI's own spans, metrics and log export would make a second, REST-only set.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                   "auto_configure": False},
    )
    app.openapi = lambda: _openapi_document(app, settings)  # type: ignore[method-assign]

    def caller(request: Request, method: str) -> tuple[RequestContext, Credentials]:
        return request_context(request, method, server_host, server_port())

    async def call(request: Request, method: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Authenticate the caller, then ``fn(principal, ctx, *args, **kwargs)``, in one
        worker thread (credential checks, policy, store and audit calls block)."""
        ctx, credentials = caller(request, method)
        return await asyncio.to_thread(lambda: service.call(ctx, credentials, fn, *args, **kwargs))

    async def authenticated(request: Request, method: str) -> tuple[Principal, RequestContext]:
        ctx, credentials = caller(request, method)
        return await asyncio.to_thread(service.authenticate, ctx, credentials), ctx

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing errors (unknown path, wrong method) in the project's error shape.
        headers = dict(exc.headers or {})
        error: GatewayError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.url.path}")
        elif exc.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request.scope) or headers.get("Allow", "")
            error = InvalidParameter(f"method {request.method} not allowed; allowed: {headers['Allow']}",
                                     details={"allow": headers["Allow"]})
        else:
            error = InvalidParameter(str(exc.detail))
        return error_response(error, exc.status_code, headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client went away while its body was read: nobody reads an answer, nothing failed.
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in REST handler", exc_info=exc)
        return error_response(InternalError("internal error"))

    @app.post("/v1/execute", response_model=TaskCreatedBody, status_code=202, tags=["tasks"],
              **_contract(InvalidParameter, MissingParameter, InvalidFormat, *_CALL_ERRORS, *_POLICY_ERRORS,
                          SandboxSetupFailed, StorageError, body_schema=True, extra={"responses": {"200": {
                              "description": "With ?wait=: the task ended within the wait; its final state "
                              "and result.",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskBody"}}},
                          }}}))
    async def execute(
        body: CommandBody,
        request: Request,
        wait: float = Query(
            0.0, ge=0, description="Wait up to this many seconds (at most the server's tasks.max_wait_s) for "
            "the task to end: 200 with the final task if it does, else 202 as without a wait (0, the default).",
        ),
    ) -> Any:
        """Ask policy, then run a command in the sandbox as a background task (scope
        ``tasks:execute``); 202 with the queued task, or with ``?wait=S`` 200 and the
        final task when it ends within S seconds."""
        req = _execute_request(body, wait_s=wait)
        record = await call(request, "POST /v1/execute", service.execute_command, req)
        if req.wait_s:
            release = request.scope.get(ADMISSION_RELEASE_KEY)
            if release is not None:
                await release()
            record = await service.wait_task(record, req.wait_s)
            if record.final:
                return JSONResponse(_task_json(record))
        return TaskCreatedBody(
            task_id=record.task_id, status=record.status.name, created_at=rfc3339(record.created_at_ns)
        )

    @app.get("/v1/tasks", response_model=TaskListBody, tags=["tasks"],
             **_contract(InvalidParameter, InvalidFormat, StorageError, *_CALL_ERRORS))
    async def list_tasks(
        request: Request,
        status: Annotated[TaskStatusName | None, Query(description="Only tasks in this state.")] = None,
        since: str | None = Query(None, description="Only tasks created at or after this RFC 3339 time.",
                                  examples=["2026-12-07T09:00:00Z"], json_schema_extra={"format": "date-time"}),
        limit: int = Query(20, ge=1, le=100, description="Tasks per page."),
        page_token: str | None = Query(None, description="The previous page's next_page_token (opaque).",
                                       json_schema_extra={"pattern": PAGE_TOKEN_PATTERN.pattern}),
    ) -> dict[str, Any]:
        """Your tasks (a tenant admin: every task of the tenant), newest first, a page at a
        time; the same visibility as ``GET /v1/tasks/{task_id}`` (scope ``tasks:read``)."""
        page = await call(request, "GET /v1/tasks (list)", service.list_tasks, status=status, since=since,
                          limit=limit, page_token=page_token)
        return {"tasks": [_task_info_json(r) for r in page.tasks], "next_page_token": page.next_page_token}

    task_id_param = Path(description="The task's id: task- and 32 lowercase hex digits.",
                         json_schema_extra={"pattern": TASK_ID_PATTERN.pattern})

    @app.get("/v1/tasks/{task_id}", response_model=TaskBody, tags=["tasks"],
             **_contract(*_TASK_ERRORS, *_CALL_ERRORS))
    async def get_task(request: Request, task_id: str = task_id_param) -> dict[str, Any]:
        """State of a task and, once final, its result (scope ``tasks:read``)."""
        return _task_json(await call(request, "GET /v1/tasks", service.get_task, task_id))

    @app.post("/v1/tasks/{task_id}/cancel", response_model=TaskBody, tags=["tasks"],
              **_contract(*_TASK_ERRORS, *_CALL_ERRORS))
    async def cancel_task(request: Request, task_id: str = task_id_param) -> dict[str, Any]:
        """Cancel a task: its sandbox is killed, state CANCELLED; answers the task once
        final. Idempotent: a finished task answers its final state (scope ``tasks:cancel``)."""
        principal, ctx = await authenticated(request, "POST /v1/tasks/cancel")
        return _task_json(await service.cancel_task(principal, ctx, task_id))

    @app.get("/v1/tasks/{task_id}/stream", tags=["tasks"], response_class=StreamingResponse,
             **_contract(InvalidParameter, *_TASK_ERRORS, *_CALL_ERRORS, extra={"responses": {"200": {
                 "description": "Server-Sent Events until the task's exit event (or an error event).",
                 "content": {"text/event-stream": {"itemSchema": _SSE_ITEM_SCHEMA}}}}}))
    async def stream_task(
        request: Request,
        task_id: str = task_id_param,
        offset: int | None = Query(None, ge=0, le=_MAX_OFFSET,
                                   description="First log entry to send (entries are numbered from 0)."),
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

    path_param = Path(description="Path in the workspace: relative, or absolute under /workspace.",
                      examples=["notes.txt"])
    workspace_param = Query(description="Workspace id in your tenant.", examples=["build-1"],
                            json_schema_extra={"pattern": _WORKSPACE_ID})

    @app.get("/v1/files/{path:path}", tags=["files"], response_class=Response,
             **_contract(*_FILE_ERRORS, *_CALL_ERRORS, extra={"responses": {"200": {
                 "description": "The file's bytes; Content-Type guessed from the name, else "
                 "application/octet-stream.",
                 "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                             "*/*": {"schema": {"type": "string", "format": "binary"}}}}}}))
    async def read_file(request: Request, path: str = path_param, workspace: str = workspace_param) -> Response:
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

    @app.put("/v1/files/{path:path}", response_model=FileWrittenBody, tags=["files"],
             **_contract(*_FILE_ERRORS, SandboxLimitExceeded, *_CALL_ERRORS, extra={"requestBody": {
                 "description": "The file's new content, raw bytes.",
                 "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}))
    async def write_file(
        request: Request,
        path: str = path_param,
        workspace: str = Query(description="Workspace id in your tenant; created when new.", examples=["build-1"],
                               json_schema_extra={"pattern": _WORKSPACE_ID}),
        mode: str = Query("", description="Permission bits in octal, e.g. 0644 (default 0644).",
                          json_schema_extra={"pattern": _FILE_MODE.pattern}),
        create_dirs: bool = Query(False, description="Create missing parent directories."),
    ) -> dict[str, Any]:
        """Write the request body (raw bytes) to the file, atomically replacing it (scope
        ``files:write``). The caller is authenticated before the body is read."""
        principal, ctx = await authenticated(request, "PUT /v1/files")
        content = await read_capped(request, max_body_bytes)
        written = await asyncio.to_thread(
            lambda: service.write_file(
                principal, ctx, workspace, path, content, mode=_file_mode(mode), create_dirs=create_dirs
            )
        )
        return {"path": path, "bytes_written": written}

    @app.delete("/v1/files/{path:path}", response_model=FileDeletedBody, tags=["files"],
                **_contract(*_FILE_ERRORS, *_CALL_ERRORS))
    async def delete_file(
        request: Request,
        path: str = path_param,
        workspace: str = workspace_param,
        recursive: bool = Query(False, description="Delete a directory and everything in it."),
    ) -> dict[str, Any]:
        """Delete the file, or with ``recursive`` the directory tree (links are not
        followed; scope ``files:write``)."""
        await call(request, "DELETE /v1/files", service.delete_file, workspace, path, recursive=recursive)
        return {"path": path, "success": True}

    @app.get("/v1/policy", response_model=PolicyStatusBody, tags=["policy"], **_contract(*_CALL_ERRORS))
    async def policy_status(request: Request) -> dict[str, Any]:
        """Policy engine, bundle revision and health (scope ``policy:read``)."""
        return await call(request, "GET /v1/policy", service.policy_status)

    @app.post("/v1/policy/reload", response_model=PolicyReloadBody, tags=["policy"],
              **_contract(*_CALL_ERRORS, PolicyEngineError))
    async def policy_reload(request: Request) -> dict[str, Any]:
        """Reload the policy bundle from ``policy_dir`` now; a bundle that fails to load or
        compile is refused (5003) and the active one stays (scope ``policy:admin``)."""
        return await call(request, "POST /v1/policy/reload", service.reload_policy)

    @app.get("/v1/mcp/servers/{server}/tools", response_model=UpstreamReviewBody, tags=["mcp"],
             **_contract(InvalidParameter, *_CALL_ERRORS, NotFound, DependencyUnavailable))
    async def upstream_tools(request: Request, server: str = _SERVER_NAME) -> dict[str, Any]:
        """An upstream MCP server's tools as it lists them now, each compared with the approved
        definition (scope ``policy:admin``): what ``mcp-gateway mcp approve`` shows."""
        return await call(request, "GET /v1/mcp/servers/tools", service.review_upstream_tools, server)

    @app.post("/v1/mcp/servers/{server}/approve", response_model=ApprovedBody, tags=["mcp"],
              **_contract(InvalidParameter, *_CALL_ERRORS, NotFound, DependencyUnavailable))
    async def upstream_approve(
        request: Request, server: str = _SERVER_NAME,
        tools_list_sha256: str = Query(pattern=r"^[0-9a-f]{64}$",
                                       description="The tool set reviewed (GET .../tools); refused (2001) if the "
                                       "server's tools changed since."),
    ) -> dict[str, Any]:
        """Approve an upstream MCP server's tools as listed now, if they are the set reviewed
        (``tools_list_sha256``; else 2001): they are served from then on (scope ``policy:admin``)."""
        return await call(request, "POST /v1/mcp/servers/approve", service.approve_upstream_tools, server,
                          tools_list_sha256)

    @app.get("/health", response_model=HealthBody, tags=["health"], **_contract(auth=False))
    async def health_route() -> dict[str, Any]:
        """Status, version and uptime (seconds)."""
        info = service.health()
        return {"status": info.status, "version": info.version, "uptime_seconds": info.uptime_s}

    @app.get("/health/live", response_model=LiveBody, tags=["health"], **_contract(auth=False))
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "live"}

    @app.get("/health/ready", response_model=ReadinessBody, tags=["health"], **_contract(
        auth=False, extra={"responses": {"503": {"description": "Not ready: the same body, status not_ready.",
                                                 "content": {"application/json": {"schema": {
                                                     "$ref": "#/components/schemas/ReadinessBody"}}}}}}))
    async def ready() -> JSONResponse:
        """Ready to take work: policy engine healthy (with the bundle revision), task pool
        state; 503 while the policy engine cannot decide (every request would be 5003)."""
        body = service.readiness_snapshot()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics", tags=["health"], response_class=Response, **_contract(auth=False, extra={"responses": {
        "200": {"description": "Prometheus text format 0.0.4, or OpenMetrics 1.0.0 (with trace-id exemplars) "
                               "when the Accept header names application/openmetrics-text.",
                "content": {"text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}}}}}}))
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition, or OpenMetrics when asked for."""
        body, content_type = service.metrics(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    if settings is not None and settings.auth.dev_mode:
        app.add_middleware(DevRebindingGuard, bind_host=server_host)
    if gate is not None:  # outermost: a shed call costs nothing more
        app.add_middleware(AdmissionMiddleware, gate=gate)

    return app
