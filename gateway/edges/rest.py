"""REST edge (design section 4): FastAPI routes over the same service layer as gRPC.

Every route is registered in :func:`create_app`; each handler decodes the body, calls
the service and encodes the answer. Errors are ``{"error":{"code","message","details"}}``
with the HTTP status from ``gateway.errors.STATUS_TABLE``; a body that is not JSON is
400/2003, a JSON body of the wrong shape 422/2001-2002 (pydantic's report in details).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.auth import DevelopmentAuthenticator
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidFormat,
    InvalidParameter,
    MissingParameter,
    NotFound,
    RateLimited,
    status_for,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.models import ExecuteRequest, RequestContext, TaskRecord, rfc3339
from gateway.service import GatewayService

__all__ = ["CommandBody", "create_app"]

log = logging.getLogger(__name__)


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


def _error_response(error: GatewayError, status: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, RateLimited) else None
    return JSONResponse(error.to_dict(), status_code=status or status_for(error).http, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems = exc.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return _error_response(InvalidFormat("request body is not valid JSON"))
    fields = [{"loc": [str(x) for x in p.get("loc", ())], "msg": str(p.get("msg", ""))} for p in problems[:20]]
    cls = MissingParameter if any(p.get("type") == "missing" for p in problems) else InvalidParameter
    return _error_response(cls("request body does not match the schema", details={"errors": fields}), 422)


def create_app(service: GatewayService, server_host: str, server_port: Callable[[], int], max_body_bytes: int) -> FastAPI:
    """The FastAPI application with every route of the REST edge.

    Args:
        service: the shared service layer.
        server_host: bind address, for audit events.
        server_port: a callable giving the bound HTTP port.
        max_body_bytes: larger request bodies are refused with 413/2001 before parsing.
    """
    app = FastAPI(
        title="MCP Security Gateway",
        version=__version__,
        description="Policy-checked, sandboxed command execution for AI agents.",
    )
    auth = DevelopmentAuthenticator()

    def context(request: Request, method: str) -> RequestContext:
        client = request.client
        return RequestContext.for_call(
            transport="http",
            method=method,
            peer=f"{client.host}:{client.port}" if client else "",
            server_host=server_host,
            server_port=server_port(),
            request_bytes=int(request.headers.get("content-length") or 0),
            user_agent=request.headers.get("user-agent"),
        )

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
        """Ask policy, then run a command in the sandbox as a background task."""
        ctx = context(request, "POST /v1/execute")
        record = service.execute_command(auth.authenticate(dict(request.headers)), ctx, _execute_request(body))
        return TaskCreatedBody(
            task_id=record.task_id, status=record.status.name, created_at=rfc3339(record.created_at_ns)
        )

    @app.get("/v1/tasks/{task_id}", tags=["tasks"])
    async def get_task(task_id: str, request: Request) -> dict[str, Any]:
        """State of a task and, once final, its result."""
        return _task_json(service.get_task(auth.authenticate(dict(request.headers)), task_id))

    @app.get("/health", tags=["health"])
    def health_route() -> dict[str, Any]:
        """Status, version and uptime (seconds)."""
        info = service.health()
        return {"status": info.status, "version": info.version, "uptime_seconds": info.uptime_s}

    @app.get("/health/live", tags=["health"])
    def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"])
    def ready() -> JSONResponse:
        """Ready to take work: policy engine healthy (with the bundle revision), task pool
        state; 503 while the policy engine cannot decide (every request would be 5003)."""
        body = service.readiness()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics(), media_type=METRICS_CONTENT_TYPE)

    return app
