"""MCP edge (design section 12): the gateway's use cases as MCP tools over streamable HTTP.

Built on the official SDK's low-level server (``mcp.server.lowlevel.Server``), which speaks
both protocol revisions it knows (2025-11-25 with its ``initialize`` handshake and
``Mcp-Session-Id``, 2026-07-28 without). ``tools/list`` answers :data:`TOOLS`;
``tools/call`` decodes the arguments with the tool's pydantic model, calls the service as
the principal the HTTP layer authenticated (in a worker thread: policy, store and audit
calls block) and encodes a ``CallToolResult`` whose ``structuredContent`` matches the
tool's ``outputSchema``, with the same JSON as its text block (MCP spec 2025-11-25,
"Tools: structured content"). A refusal is a tool error (``isError``) carrying
``{"error": {"code", "message", "details"}}`` with the project's code; only an unknown
tool is a JSON-RPC error (-32602), as the spec asks.

Each ``tools/call`` is one audit event, written by the service: an ``execute_command``'s
``decision``, a file tool's ``file`` event, a ``tool_call`` for the others; each carries
method ``tools/call``, ``tool_name``, ``jsonrpc_id``, ``protocol_version``, the client's
name and version from the handshake and the session's ``tool_invoke_count``
(``gateway.models.McpCall``). A refusal that wrote no event of its own (arguments outside
a tool's schema: 2001/2002; admission) gets one from ``GatewayService.audit_refusal``.

HTTP authorization (MCP spec 2025-11-25, "Authorization"; RFC 9728; RFC 6750), in
:class:`McpHttpApp`, before the SDK sees a request:

1. DNS-rebinding protection: ``Host`` and ``Origin`` against the lists built from the
   server's own host settings (:func:`transport_security`); 421 / 403.
2. Authentication by the same service call as every edge (API key, JWT, mTLS client
   certificate; audited, rate limited); a failure answers 401 with
   ``WWW-Authenticate: Bearer resource_metadata="<RFC 9728 URL>"`` (and
   ``error="invalid_token"`` when a credential was presented).
3. A ``tools/call`` of a tool whose scope the principal lacks answers 403 with
   ``error="insufficient_scope", scope="<scope>"`` (audited ``missing_scope``).
4. The SDK binds a session to the principal that opened it (``scope["user"]``): another
   principal naming that ``Mcp-Session-Id`` gets 404, as for an unknown session. One
   principal holds at most ``mcp.max_sessions_per_principal`` sessions (429/4290 beyond).

The SDK's own bearer middleware is not used: it knows only bearer tokens (no client
certificates), audits nothing, and its challenges lack ``scope=`` and say
``invalid_token`` when no token was sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import __version__
from gateway.config import Settings, is_loopback_host
from gateway.admission import EdgeGate
from gateway.edges.rest import (
    ADMISSION_RELEASE_KEY,
    CONNECTION_STATE_KEY,
    error_response,
    read_capped,
    request_context,
)
from gateway.errors import (
    AuthError,
    DependencyUnavailable,
    GatewayError,
    InternalError,
    InvalidFormat,
    InvalidParameter,
    MissingParameter,
    PermissionDenied,
    RateLimited,
)
from gateway.observability.metrics import MCP_SESSIONS, MCP_TOOL_CALLS
from gateway.models import SCOPES, ExecuteRequest, McpCall, OutputKind, Principal, RequestContext, TaskRecord
from gateway.service import GatewayService

__all__ = ["MCP_PATH", "METADATA_PATH", "McpEdge", "McpHttpApp", "TOOLS", "Tool", "transport_security"]

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
#: RFC 9728 section 3.1: the well-known prefix, then the resource's path.
METADATA_PATH = "/.well-known/oauth-protected-resource" + MCP_PATH
_PRINCIPAL_KEY = "mcp.principal"
_CONTEXT_KEY = "mcp.context"
_READ_OUTPUT_MAX_ENTRIES = 1000


# -- tool arguments and results ----------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


TaskIdArg = Annotated[str, Field(description="The task's id: task- and 32 lowercase hex digits.",
                                 pattern=r"^task-[0-9a-f]{32}$")]
WorkspaceArg = Annotated[str, Field(description="Workspace id in your tenant.",
                                    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
PathArg = Annotated[str, Field(description="Path in the workspace: relative, or absolute under /workspace.",
                               min_length=1)]


class ExecuteCommandArgs(_Args):
    """``execute_command``: what ``POST /v1/execute`` takes, flattened."""

    command: str = Field(description="Program name (looked up in the sandbox PATH) or absolute path.", min_length=1)
    args: list[str] = Field(default_factory=list, description="Arguments, each passed as is (no shell).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: str | None = Field(None, description="Working directory, relative to /workspace.")
    workspace: str | None = Field(
        None, description="Workspace id in your tenant (created when new) whose files the command sees at "
        "/workspace; default: a fresh one named after the task.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    timeout_s: int = Field(0, ge=0, le=2**32 - 1, description="Wall-clock limit, seconds; 0 = the server default.")
    network: Literal["none", "loopback", "restricted", "host"] = Field(
        "none", description="restricted: egress only through the gateway's proxy, to the hosts policy allows.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="network restricted: the hosts this task needs (each on the policy's "
        "allow-list); empty = what policy allows.")
    wait_s: float | None = Field(
        None, ge=0, description="How long to wait for the command to end, seconds (at most the server's "
        "tasks.max_wait_s, also the default); a task still running then is returned as it is: poll get_task.")


class TaskArgs(_Args):
    """``get_task`` and ``cancel_task``."""

    task_id: TaskIdArg


class ReadTaskOutputArgs(_Args):
    """``read_task_output``."""

    task_id: TaskIdArg
    offset: int = Field(0, ge=0, le=2**63 - 1, description="First log entry to return (entries are numbered "
                        "from 0; pass the previous answer's next_offset to continue).")
    max_entries: int = Field(100, ge=1, le=_READ_OUTPUT_MAX_ENTRIES, description="Entries to return at most.")


class ReadFileArgs(_Args):
    """``read_file``."""

    workspace: WorkspaceArg
    path: PathArg


class WriteFileArgs(_Args):
    """``write_file``."""

    workspace: WorkspaceArg = Field(description="Workspace id in your tenant; created when new.")
    path: PathArg
    content: str = Field(description="The file's new content (see encoding).")
    encoding: Literal["utf-8", "base64"] = Field("utf-8", description="How content is encoded.")
    mode: str = Field("", pattern=r"^(?:(?:0o)?0*[0-7]{1,3})?$",
                      description="Permission bits in octal, e.g. 0644 (default 0644).")
    create_dirs: bool = Field(False, description="Create missing parent directories.")


class DeleteFileArgs(_Args):
    """``delete_file``."""

    workspace: WorkspaceArg
    path: PathArg
    recursive: bool = Field(False, description="Delete a directory and everything in it.")


class ListTasksArgs(_Args):
    """``list_tasks``."""

    status: Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"] | None = Field(
        None, description="Only tasks in this state.")
    since: str | None = Field(None, description="Only tasks created at or after this RFC 3339 time, e.g. "
                              "2026-12-07T09:00:00Z.", max_length=64, json_schema_extra={"format": "date-time"})
    limit: int = Field(20, ge=1, le=100, description="Tasks per page, at most.")
    page_token: str | None = Field(None, description="The previous page's next_page_token (opaque).",
                                   max_length=64)


class UsageResult(BaseModel):
    """Measured use of a finished task."""

    cpu_time_ms: int = Field(description="User + system CPU time, milliseconds.")
    max_memory_kb: int = Field(description="Peak resident set size, KiB.")
    io_read_bytes: int
    io_write_bytes: int
    egress_bytes_sent: int
    egress_bytes_received: int


class TaskResult(BaseModel):
    """A task: its state and, once final, its result (``execute_command``, ``get_task``,
    ``cancel_task``)."""

    task_id: str
    status: str = Field(description="QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED or TIMED_OUT.")
    final: bool = Field(description="The task has ended; the fields below are its result.")
    exit_code: int | None = Field(description="Exit status (128+N when killed by signal N); null until final.")
    stdout: str = Field(description="Captured standard output (UTF-8, invalid bytes replaced).")
    stderr: str
    stdout_truncated: bool = Field(description="stdout was cut (the sandbox's output cap or the MCP result cap).")
    stderr_truncated: bool
    limit_reason: str | None = Field(description="Which limit ended the task (wall_timeout, cpu_time, ...).")
    error: str | None = Field(description="Why the sandbox failed to start (FAILED tasks).")
    execution_time_ms: int | None = Field(description="Wall time from spawn to reap, milliseconds.")
    usage: UsageResult | None
    workspace: str = Field(description="The workspace whose files the command saw at /workspace.")
    created_at_ns: int = Field(description="Unix nanoseconds.")


class OutputEntry(BaseModel):
    """One entry of a task's output log."""

    offset: int
    stream: str = Field(description="stdout, stderr, exit (text is the exit status) or event (JSON).")
    text: str = Field(description="The entry's bytes as UTF-8 (invalid bytes replaced).")


class TaskOutputResult(BaseModel):
    """``read_task_output``: entries from ``offset`` as stored now."""

    task_id: str
    entries: list[OutputEntry]
    next_offset: int = Field(description="Where to continue reading.")
    complete: bool = Field(description="The exit entry was returned: the log has no more entries.")


class FileReadResult(BaseModel):
    """``read_file``."""

    path: str
    content: str
    encoding: str = Field(description="utf-8, or base64 for content that is not UTF-8 text.")
    mime_type: str
    size_bytes: int


class FileWrittenResult(BaseModel):
    """``write_file``."""

    path: str
    bytes_written: int


class FileDeletedResult(BaseModel):
    """``delete_file``."""

    path: str
    deleted: bool


class TaskListResult(BaseModel):
    """``list_tasks``: the caller's tasks, newest first."""

    tasks: list[TaskResult]
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null on the last.")


# -- the tool table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """One gateway tool.

    Attributes:
        name: the MCP tool name.
        description: what it does, for the agent.
        args: its arguments model (``inputSchema``).
        result: its result model (``outputSchema``).
        scope: the scope a caller needs (checked by the service; over HTTP a call without
            it is refused with 403 first).
        read_only / destructive: the tool's annotations (``readOnlyHint``, ``destructiveHint``).
    """

    name: str
    description: str
    args: type[_Args]
    result: type[BaseModel]
    scope: str
    read_only: bool
    destructive: bool = False

    def definition(self) -> types.Tool:
        """The ``tools/list`` entry: schemas from the models, annotations."""
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=self.args.model_json_schema(),
            output_schema=self.result.model_json_schema(),
            annotations=types.ToolAnnotations(
                read_only_hint=self.read_only, destructive_hint=self.destructive if not self.read_only else None,
                idempotent_hint=self.read_only or None, open_world_hint=False,
            ),
        )


TOOLS: tuple[Tool, ...] = (
    Tool("execute_command",
         "Run a command in the gateway's sandbox (bubblewrap + seccomp, no network unless policy allows) as "
         "a task, after policy allows it, and wait for it to end. Progress notifications carry its output "
         "while it runs; cancelling the call cancels the task. Returns the exit code and captured output.",
         ExecuteCommandArgs, TaskResult, "tasks:execute", read_only=False, destructive=True),
    Tool("get_task", "A task's state and, once it has ended, its result.", TaskArgs, TaskResult,
         "tasks:read", read_only=True),
    Tool("read_task_output",
         "A task's output log from an offset: stdout and stderr entries in order, the exit entry last.",
         ReadTaskOutputArgs, TaskOutputResult, "tasks:read", read_only=True),
    Tool("cancel_task", "Cancel a task (its sandbox is killed); returns it once ended. A finished task is "
         "returned as it is.", TaskArgs, TaskResult, "tasks:cancel", read_only=False, destructive=True),
    Tool("list_tasks", "Your tasks (a tenant admin: the tenant's), newest first, a page at a time.",
         ListTasksArgs, TaskListResult, "tasks:read", read_only=True),
    Tool("read_file", "Read a file of a workspace.", ReadFileArgs, FileReadResult, "files:read", read_only=True),
    Tool("write_file", "Write a file of a workspace, replacing it atomically.", WriteFileArgs, FileWrittenResult,
         "files:write", read_only=False, destructive=True),
    Tool("delete_file", "Delete a file (or, with recursive, a directory tree) of a workspace.", DeleteFileArgs,
         FileDeletedResult, "files:write", read_only=False, destructive=True),
)
_BY_NAME = {tool.name: tool for tool in TOOLS}
_LIST_PAGE_BYTES = 256 << 10  # one tools/list page with upstream tools, at most (but one tool)


# -- encoding ------------------------------------------------------------------------------


def _cut(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (on a character boundary)."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode(errors="ignore"), True


def _result_bytes(body: dict[str, Any]) -> int:
    """What a result with ``body`` weighs on the wire, bytes: ``structuredContent`` plus the
    text block repeating it as a JSON string (escaped once more)."""
    text = json.dumps(body)
    return len(text.encode()) + len(json.dumps(text).encode())


def _task_result(record: TaskRecord, max_result_bytes: int) -> dict[str, Any]:
    """A task as :class:`TaskResult` JSON whose result weighs at most ``max_result_bytes``
    (:func:`_result_bytes`): stdout and stderr are cut (and marked truncated) until it does.
    Escaping can make a byte of output cost up to 12 on the wire (``\\u0001`` twice), so the
    cut is found by weighing, halving the streams' share."""
    r = record.result
    body: dict[str, Any] = {
        "task_id": record.task_id, "status": record.status.name, "final": record.final, "exit_code": None,
        "stdout": "", "stderr": "", "stdout_truncated": False, "stderr_truncated": False, "limit_reason": None,
        "error": None, "execution_time_ms": None, "usage": None, "workspace": record.workspace,
        "created_at_ns": record.created_at_ns,
    }
    if r is None:
        return body
    u = r.resource_usage
    body.update(
        exit_code=r.exit_code, limit_reason=r.limit_reason, error=r.error, execution_time_ms=r.execution_time_ms,
        usage={"cpu_time_ms": u.cpu_time_ms, "max_memory_kb": u.max_memory_kb, "io_read_bytes": u.io_read_bytes,
               "io_write_bytes": u.io_write_bytes, "egress_bytes_sent": u.egress_bytes_sent,
               "egress_bytes_received": u.egress_bytes_received},
    )
    share = max_result_bytes
    while True:
        stdout, out_cut = _cut(r.stdout, share)
        stderr, err_cut = _cut(r.stderr, share)
        body.update(stdout=stdout, stderr=stderr, stdout_truncated=r.stdout_truncated or out_cut,
                    stderr_truncated=r.stderr_truncated or err_cut)
        if share == 0 or _result_bytes(body) <= max_result_bytes:
            return body
        share //= 2


_STREAMS = {OutputKind.STDOUT: "stdout", OutputKind.STDERR: "stderr", OutputKind.EXIT_CODE: "exit",
            OutputKind.EVENT: "event"}


def _success(body: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(body))], structured_content=body)


def _failure(error: GatewayError) -> types.CallToolResult:
    """A refusal as a tool error: the project's error body, and one line for the model."""
    body = error.to_dict()
    return types.CallToolResult(
        content=[types.TextContent(text=f"error {error.code} ({type(error).__name__}): {error.message}")],
        structured_content=body, is_error=True,
    )


def _argument_error(exc: ValidationError) -> GatewayError:
    """pydantic's report on tool arguments as the project's error (2002 when something
    required is missing, else 2001), as REST answers a body of the wrong shape."""
    problems = exc.errors()
    fields = [{"loc": [str(x) for x in p.get("loc", ())], "msg": str(p.get("msg", ""))} for p in problems[:20]]
    cls = MissingParameter if any(p.get("type") == "missing" for p in problems) else InvalidParameter
    return cls("tool arguments do not match the tool's input schema", details={"errors": fields})


# -- the server ----------------------------------------------------------------------------


class McpEdge:
    """The MCP server: the SDK's low-level server with the gateway's tools, its streamable
    HTTP session manager, and :meth:`run` for the serving process's lifetime.

    Args:
        service: the shared service layer.
        settings: the server's settings (``mcp.*``, ``tasks.max_wait_s``, ``host``).
        gate: the HTTP edge's admission control: each service call of a tool takes a slot
            (a 2025-11-25 call's response starts as an event stream at once, which gives
            back the slot its HTTP request took); None = unbounded.
    """

    def __init__(self, service: GatewayService, settings: Settings, gate: EdgeGate | None = None) -> None:
        self._service = service
        self._gate = gate
        self._max_wait_s = settings.tasks.max_wait_s
        self._max_result_bytes = settings.mcp.max_result_bytes
        self.server: Server[Any] = Server(
            "mcp-gateway", version=__version__, title="MCP Security Gateway",
            instructions="Runs commands in a sandbox after a policy decision; every call is audited.",
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
        )
        self._tools = types.ListToolsResult(tools=[tool.definition() for tool in TOOLS])  # schemas built once
        # Each tool's handler: (the SDK's request context, the call's context, principal, arguments) -> result.
        self._handlers: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
            "execute_command": self._execute, "get_task": self._get_task, "read_task_output": self._read_task_output,
            "cancel_task": self._cancel_task, "list_tasks": self._list_tasks, "read_file": self._read_file,
            "write_file": self._write_file, "delete_file": self._delete_file,
        }
        assert self._handlers.keys() == _BY_NAME.keys(), "every tool has a handler, every handler a tool"
        self.security = transport_security(settings)
        # McpHttpApp checks Host and Origin before any request reaches the manager (which
        # would check them again, the same way, without these settings).
        self.sessions = StreamableHTTPSessionManager(
            app=self.server, max_request_body_size=settings.limits.max_request_bytes,
            session_idle_timeout=settings.mcp.session_idle_timeout_s, max_sessions=settings.mcp.max_sessions,
        )
        MCP_SESSIONS.set_function(lambda: len(self.open_sessions()))
        self.serving = False  # between run()'s start and its end

    def open_sessions(self) -> frozenset[str]:
        """The ids of the sessions the SDK holds open now (its manager keeps no public list)."""
        return frozenset(getattr(self.sessions, "_server_instances", ()))

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Serve sessions while the context is open (once per instance); once it closes,
        requests get 503 (the gateway is stopping) instead of reaching a stopped manager."""
        async with self.sessions.run():
            self.serving = True
            try:
                yield
            finally:
                self.serving = False

    async def _list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        """The gateway's tools, then the upstream servers' approved ones (``<server>__<tool>``)."""
        if not self._service.has_upstream:
            return self._tools
        request, principal = _caller(ctx)
        start = 0
        if params is not None and params.cursor is not None:
            if not params.cursor.isdigit() or len(params.cursor) > 6:
                raise MCPError(code=types.INVALID_PARAMS, message="invalid cursor")
            start = int(params.cursor)
        upstream = await asyncio.to_thread(self._service.upstream_tools, principal, request.scope[_CONTEXT_KEY])
        tools = [*self._tools.tools, *upstream]
        # Pages of at most _LIST_PAGE_BYTES (a page holds one tool at least): clients cap the
        # size of one message (the SDK's SSE reader at 1 MiB), and servers may list many tools.
        page: list[types.Tool] = []
        size = 0
        for tool in tools[start:]:
            weight = len(tool.model_dump_json(by_alias=True, exclude_none=True))
            if page and size + weight > _LIST_PAGE_BYTES:
                break
            page.append(tool)
            size += weight
        end = start + len(page)
        return types.ListToolsResult(tools=page, next_cursor=str(end) if end < len(tools) else None)

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = _BY_NAME.get(params.name)
        upstream = tool is None and self._service.is_upstream_tool(params.name)
        if tool is None and not upstream:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        request, principal = _caller(ctx)
        call_ctx = self._call_context(ctx, request, params.name)
        release: Callable[[], Awaitable[None]] | None = request.scope.get(ADMISSION_RELEASE_KEY)
        if release is not None:  # the HTTP request's own slot: its work (authentication) is done
            await release()
        if upstream:
            return await self._answered(call_ctx, principal, "upstream", self._call_upstream(call_ctx, principal, params))
        assert tool is not None
        return await self._answered(call_ctx, principal, tool.name, self._call_own(ctx, call_ctx, principal, tool,
                                                                                   params.arguments))

    async def _answered(self, call_ctx: RequestContext, principal: Principal, label: str,
                        work: Awaitable[types.CallToolResult]) -> types.CallToolResult:
        """``work``'s result; a refusal or failure as the tool error the client gets, audited
        when nothing recorded it yet, and each counted in ``mcp_tool_calls_total{tool=label}``."""
        try:
            result = await work
        except GatewayError as exc:
            await self._audit_refusal(call_ctx, principal, exc)
            MCP_TOOL_CALLS.labels(label, str(exc.code)).inc()
            return _failure(exc)
        except Exception:
            log.exception("MCP tool %s failed", call_ctx.mcp.tool if call_ctx.mcp else label)
            error = InternalError("internal error")
            await self._audit_refusal(call_ctx, principal, error)
            MCP_TOOL_CALLS.labels(label, str(error.code)).inc()
            return _failure(error)
        MCP_TOOL_CALLS.labels(label, "ok").inc()
        return result

    async def _call_own(self, ctx: Any, call_ctx: RequestContext, principal: Principal, tool: Tool,
                        arguments: dict[str, Any] | None) -> types.CallToolResult:
        """One of the gateway's own tools: its arguments checked against its model, then its handler."""
        try:
            args = tool.args.model_validate(arguments or {})
        except ValidationError as exc:
            await self._in_thread(call_ctx, principal, self._service.refuse_malformed, _argument_error(exc))
            raise AssertionError("refuse_malformed returned") from None
        return _success(await self._handlers[tool.name](ctx, call_ctx, principal, args))

    async def _call_upstream(self, call_ctx: RequestContext, principal: Principal,
                             params: types.CallToolRequestParams) -> types.CallToolResult:
        """A call of an upstream server's tool: the service decides, calls and audits; its
        result goes back as the server gave it (redacted and capped by the service)."""
        cancel = threading.Event()
        try:
            body = await self._in_thread(call_ctx, principal, self._service.call_upstream_tool, params.name,
                                         dict(params.arguments or {}), cancel)
        except anyio.get_cancelled_exc_class():
            cancel.set()  # the client cancelled: so does the upstream call
            raise
        return types.CallToolResult.model_validate(body)

    @staticmethod
    def _call_context(ctx: Any, request: Request, tool: str) -> RequestContext:
        """The context of one ``tools/call``: the HTTP request's, with the call's facts.
        Its session is the MCP session; a 2026-07-28 call has none, so it is the connection
        (whatever ``Mcp-Session-Id`` it sends: the SDK checks no session there, and a caller
        must not pick the counters its events carry)."""
        base: RequestContext = request.scope[_CONTEXT_KEY]
        session_id = base.session_id
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            connection = request.scope.get("state", {}).get(CONNECTION_STATE_KEY) or base.client_addr
            session_id = f"conn-{connection}"
        params = ctx.session.client_params
        client = params.client_info if params is not None else None
        arguments = ctx.params.get("arguments") if isinstance(ctx.params, dict) else None
        return dataclasses.replace(
            base, method="tools/call", request_id=uuid.uuid4().hex, session_id=session_id,
            request_bytes=len(json.dumps(arguments or {})),
            mcp=McpCall(tool, str(ctx.request_id), ctx.protocol_version,
                        client.name if client is not None else "", client.version if client is not None else ""),
        )

    async def _audit_refusal(self, ctx: RequestContext, principal: Principal, error: GatewayError) -> None:
        """The call's one audit event when the refusal wrote none (see
        ``GatewayService.audit_refusal``); a failure to write it is logged, and the caller
        still gets the refusal."""
        try:
            await asyncio.to_thread(self._service.audit_refusal, principal, ctx, error)
        except GatewayError as exc:
            log.warning("MCP %s refusal (%s) not audited: %s", ctx.mcp.tool if ctx.mcp else "?", error.code,
                        exc.message)

    async def _in_thread(self, ctx: RequestContext, principal: Principal, fn: Callable[..., Any], *args: Any,
                         **kwargs: Any) -> Any:
        """``fn(principal, ctx, ...)`` through ``GatewayService.call_as`` in a worker thread,
        holding an admission slot of the HTTP edge."""
        async with self._gate.slot() if self._gate is not None else contextlib.nullcontext():
            return await asyncio.to_thread(lambda: self._service.call_as(ctx, principal, fn, *args, **kwargs))

    async def _execute(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                       args: ExecuteCommandArgs) -> dict[str, Any]:
        """Queue the command, stream its output as progress notifications while waiting for
        its end, and cancel the task when the client cancels the call."""
        req = ExecuteRequest(
            command=args.command, args=tuple(args.args), env=dict(args.env), cwd=args.cwd, timeout_s=args.timeout_s,
            metadata={"workspace": args.workspace} if args.workspace else {}, network=args.network,
            hosts=tuple(args.allowed_hosts), wait_s=self._max_wait_s if args.wait_s is None else args.wait_s,
        )
        # Shielded: a cancellation that arrives while the task is being created waits until
        # it exists (and is then delivered below), so no task outlives a cancelled call.
        with anyio.CancelScope(shield=True):
            record: TaskRecord = await self._in_thread(call_ctx, principal, self._service.execute_command, req)
        progress = progress_token_from_params(ctx.params) is not None  # else report_progress sends nothing
        follower = asyncio.create_task(self._report_output(ctx, record)) if progress else None
        try:
            record = await self._service.wait_task(record, req.wait_s)
            if follower is not None and record.final:  # the last entries go out before the result
                await asyncio.wait([follower], timeout=1.0)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                try:
                    await self._service.abandon_task(record)
                except GatewayError as exc:
                    log.warning("task %s of a cancelled MCP call was not cancelled: %s", record.task_id, exc.message)
            raise
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.wait([follower])
        return _task_result(record, self._max_result_bytes)

    async def _report_output(self, ctx: Any, record: TaskRecord) -> None:
        """Each stdout/stderr entry of the task's log as one progress notification:
        ``progress`` the entry's offset + 1, ``message`` the stream and its text."""
        try:
            async for chunk in self._service.follow_task(record):
                if chunk.kind in (OutputKind.STDOUT, OutputKind.STDERR):
                    text, _ = _cut(chunk.data.decode(errors="replace"), 16 << 10)
                    await ctx.session.report_progress(chunk.offset + 1, None, f"{_STREAMS[chunk.kind]}: {text}")
        except GatewayError as exc:
            log.warning("MCP progress for task %s stopped: %s", record.task_id, exc.message)

    async def _get_task(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                        args: TaskArgs) -> dict[str, Any]:
        record = await self._in_thread(call_ctx, principal, self._service.get_task, args.task_id)
        return _task_result(record, self._max_result_bytes)

    async def _cancel_task(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                           args: TaskArgs) -> dict[str, Any]:
        return _task_result(await self._service.cancel_task(principal, call_ctx, args.task_id), self._max_result_bytes)

    async def _read_task_output(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                                args: ReadTaskOutputArgs) -> dict[str, Any]:
        """Whole entries from ``args.offset``, as many as the result cap takes (the rest: the
        next call, from ``next_offset``)."""
        record, chunks = await self._in_thread(call_ctx, principal, self._service.read_output, args.task_id,
                                               args.offset, args.max_entries)
        entries: list[dict[str, Any]] = []
        used = 512  # the keys around the entries
        for chunk in chunks:
            entry = {"offset": chunk.offset, "stream": _STREAMS[chunk.kind], "text": chunk.data.decode(errors="replace")}
            used += _result_bytes(entry) + 4  # a list's weight is its entries' and their separators'
            if entries and used > self._max_result_bytes:
                break
            entries.append(entry)
        ended = bool(entries) and entries[-1]["stream"] == "exit"
        return {"task_id": args.task_id, "entries": entries,
                "next_offset": entries[-1]["offset"] + 1 if entries else args.offset,
                "complete": ended or (not chunks and record.final)}

    async def _list_tasks(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                          args: ListTasksArgs) -> dict[str, Any]:
        page = await self._in_thread(call_ctx, principal, self._service.list_tasks, status=args.status,
                                     since=args.since, limit=args.limit, page_token=args.page_token)
        share = self._max_result_bytes // max(1, len(page.tasks))
        return {"tasks": [_task_result(r, share) for r in page.tasks], "next_page_token": page.next_page_token}

    async def _read_file(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                         args: ReadFileArgs) -> dict[str, Any]:
        found = await self._in_thread(call_ctx, principal, self._service.read_file, args.workspace, args.path)
        try:
            content, encoding = found.content.decode(), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(found.content).decode(), "base64"
        body = {"path": found.path, "content": content, "encoding": encoding, "mime_type": found.mime_type,
                "size_bytes": len(found.content)}
        cap = self._max_result_bytes
        if _result_bytes(body) > cap:
            raise InvalidParameter(f"the file ({len(found.content)} bytes) does not fit an MCP result "
                                   f"(mcp.max_result_bytes {cap}); read it with GET /v1/files",
                                   details={"field": "path", "max": cap})
        return body

    async def _write_file(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                          args: WriteFileArgs) -> dict[str, Any]:
        data = args.content.encode()
        if args.encoding == "base64":
            try:
                data = base64.b64decode(args.content, validate=True)
            except (binascii.Error, ValueError):
                error = InvalidFormat("content is not base64", details={"field": "content"})
                await self._in_thread(call_ctx, principal, self._service.refuse_malformed, error)
        mode = int(args.mode.removeprefix("0o"), 8) if args.mode else 0
        written = await self._in_thread(call_ctx, principal, self._service.write_file, args.workspace, args.path,
                                        data, mode=mode, create_dirs=args.create_dirs)
        return {"path": args.path, "bytes_written": written}

    async def _delete_file(self, ctx: Any, call_ctx: RequestContext, principal: Principal,
                           args: DeleteFileArgs) -> dict[str, Any]:
        await self._in_thread(call_ctx, principal, self._service.delete_file, args.workspace, args.path,
                              recursive=args.recursive)
        return {"path": args.path, "deleted": True}


def _caller(ctx: Any) -> tuple[Request, Principal]:
    """The HTTP request and principal of an SDK request context (McpHttpApp set them)."""
    request: Request | None = ctx.request
    if request is None or _PRINCIPAL_KEY not in request.scope:  # only McpHttpApp serves this server
        raise MCPError(code=types.INTERNAL_ERROR, message="no authenticated caller")
    return request, request.scope[_PRINCIPAL_KEY]


# -- HTTP: authorization in front of the SDK's transport --------------------------------


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection for ``/mcp`` from the server's own host settings
    (``mcp.allowed_hosts`` / ``mcp.allowed_origins``, else derived from ``host``): a
    loopback bind answers only the loopback names; a bind to one address that address; a
    wildcard bind checks ``Host`` only when the operator lists the service's names (it
    cannot know them), and ``Origin`` always (a browser page may then call only from a
    listed origin)."""
    mcp = settings.mcp
    host = settings.host
    if is_loopback_host(host):
        names = ["127.0.0.1", "localhost", "[::1]"]
    elif _wildcard(host):
        names = []
    else:
        names = [f"[{host}]" if ":" in host else host]
    hosts = mcp.allowed_hosts or [entry for name in names for entry in (name, f"{name}:*")]
    origins = mcp.allowed_origins or [f"{scheme}://{name}{port}" for name in names for scheme in ("http", "https")
                                      for port in ("", ":*")]
    if not hosts:  # wildcard bind, no names listed: Origin only (no Host check can pass)
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class McpHttpApp:
    """The ASGI app of ``/mcp`` and its RFC 9728 document (the module docstring gives the
    order of the checks), handing authenticated requests to the SDK's session manager.

    Args:
        edge: the MCP server.
        service: the shared service layer (authentication, scopes, audit).
        settings: the server's settings.
        server_host: the bind address, for audit events.
        server_port: a callable giving the bound HTTP port.
    """

    def __init__(self, edge: McpEdge, service: GatewayService, settings: Settings, server_host: str,
                 server_port: Callable[[], int]) -> None:
        self._edge = edge
        self._service = service
        self._settings = settings
        self._server_host = server_host
        self._server_port = server_port
        self._check = TransportSecurityMiddleware(edge.security)
        # Without a wildcard bind's names, Origin is still checked (a request without one is no browser's).
        self._origins = settings.mcp.allowed_origins
        self._host_checked = edge.security.enable_dns_rebinding_protection
        self._max_sessions = settings.mcp.max_sessions_per_principal
        self._sessions_of: dict[tuple[str, str], set[str]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI call (https://asgi.readthedocs.io/en/latest/specs/www.html)."""
        request = Request(scope, receive)
        refusal = await self._check.validate_request(request, is_post=request.method == "POST")
        if refusal is None and not self._host_checked and not _origin_allowed(request.headers.get("origin"),
                                                                              self._origins):
            refusal = JSONResponse({"error": "Invalid Origin header"}, status_code=403)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["path"] == METADATA_PATH:
            await self._metadata(request)(scope, receive, send)
            return
        ctx, credentials = request_context(request, f"{request.method} {MCP_PATH}", self._server_host,
                                           self._server_port(), transport="mcp")
        body = b""
        opens_session = False
        try:
            principal = await asyncio.to_thread(self._service.authenticate, ctx, credentials)
            if request.method == "POST":
                body = await read_capped(request, self._settings.limits.max_request_bytes)
                method, tool = _rpc_call(body)
                scope_needed = _BY_NAME[tool].scope if tool in _BY_NAME else \
                    "tools:call" if tool is not None and self._service.is_upstream_tool(tool) else None
                if scope_needed is not None:
                    await asyncio.to_thread(self._service.authorize, principal, ctx, scope_needed)
                opens_session = method == "initialize" and "mcp-session-id" not in request.headers
                if opens_session:
                    self._admit_session(principal)
        except GatewayError as exc:
            await self._refusal(request, exc)(scope, receive, send)
            return
        if not self._edge.serving:  # stopping: the session manager has ended
            error = DependencyUnavailable("the gateway is shutting down; retry on another replica")
            await self._refusal(request, error)(scope, receive, send)
            return
        scope["user"] = AuthenticatedUser(AccessToken(
            token="", client_id=f"{principal.tenant}/{principal.id}", scopes=list(principal.scopes),
            subject=principal.id))
        scope[_PRINCIPAL_KEY] = principal
        scope[_CONTEXT_KEY] = ctx
        if opens_session:
            send = self._noting_session(principal, send)
        await self._edge.sessions.handle_request(scope, _replay(body, receive), send)

    def _admit_session(self, principal: Principal) -> None:
        """RateLimited (4290) when ``principal`` has ``mcp.max_sessions_per_principal``
        sessions open: one caller cannot take every session of the server
        (``mcp.max_sessions``). Sessions the SDK has closed since (idle, DELETE) are
        forgotten first."""
        key = (principal.tenant, principal.id)
        held = self._sessions_of.get(key, set()) & self._edge.open_sessions()
        self._sessions_of[key] = held
        if len(held) >= self._max_sessions:
            raise RateLimited(f"{len(held)} MCP sessions of yours are open (mcp.max_sessions_per_principal); "
                              "close one (DELETE /mcp) or let it idle out", retry_after_s=5,
                              details={"limit": "mcp_sessions"})

    def _noting_session(self, principal: Principal, send: Any) -> Any:
        """``send``, noting the session id the response names as ``principal``'s."""
        key = (principal.tenant, principal.id)

        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name.lower() == b"mcp-session-id":
                        self._sessions_of.setdefault(key, set()).add(value.decode("latin-1"))
            await send(message)

        return noting

    def routes(self) -> list[Route]:
        """The routes to add to the HTTP app: ``/mcp`` exactly (no redirect to ``/mcp/``)
        and its RFC 9728 document."""
        return [Route(MCP_PATH, self, methods=["GET", "POST", "DELETE"]),
                Route(METADATA_PATH, self, methods=["GET"])]

    def _resource(self, request: Request) -> str:
        """This server's MCP URL (RFC 9728 ``resource``): ``mcp.resource_url``, else the
        request's scheme and ``Host`` (checked against the allowed hosts already)."""
        configured = self._settings.mcp.resource_url
        if configured:
            return configured
        host = request.headers.get("host") or f"{self._server_host}:{self._server_port()}"
        return f"{request.url.scheme}://{host}{MCP_PATH}"

    def _metadata_url(self, request: Request) -> str:
        resource = self._resource(request)
        scheme, _, rest = resource.partition("://")
        authority, _, path = rest.partition("/")
        return f"{scheme}://{authority}/.well-known/oauth-protected-resource/{path}"

    def _metadata(self, request: Request) -> JSONResponse:
        """The RFC 9728 protected-resource metadata document."""
        servers = self._settings.mcp.authorization_servers or (
            [self._settings.auth.jwt.issuer] if self._settings.auth.jwt.issuer else [])
        document: dict[str, Any] = {
            "resource": self._resource(request),
            "scopes_supported": list(SCOPES),
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP Security Gateway",
        }
        if servers:
            document["authorization_servers"] = servers
        # Built from a Host nobody checked (a wildcard bind without mcp.allowed_hosts): no cache keeps it.
        cacheable = self._host_checked or self._settings.mcp.resource_url
        return JSONResponse(document, headers={"Cache-Control": "max-age=300" if cacheable else "no-store"})

    def _refusal(self, request: Request, error: GatewayError) -> JSONResponse:
        """``error`` as the project's error body with the challenge MCP clients follow: the
        RFC 9728 metadata URL on every 401 and 403 (RFC 9728 section 5.1)."""
        metadata = f'resource_metadata="{self._metadata_url(request)}"'
        if isinstance(error, PermissionDenied):  # RFC 6750 section 3.1
            scope = error.details.get("scope", "")
            challenge = f'Bearer error="insufficient_scope", scope="{scope}", {metadata}'
        elif isinstance(error, AuthError):
            presented = error.details.get("reason") not in ("missing_credentials", "client_certificate_required")
            challenge = f'Bearer {metadata}' + (', error="invalid_token"' if presented else "")
        else:
            return error_response(error)
        return error_response(error, headers={"WWW-Authenticate": challenge})


def _rpc_call(body: bytes) -> tuple[str | None, str | None]:
    """The JSON-RPC ``method`` of a request body and, for ``tools/call``, the tool's name
    (None for what is not there or does not parse: the SDK answers that)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None, None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return None, None
    params = message.get("params")
    name = params.get("name") if message["method"] == "tools/call" and isinstance(params, dict) else None
    return message["method"], name if isinstance(name, str) else None


def _origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """Whether a request's ``Origin`` passes ``allowed`` (exact, or ``scheme://host:*`` for
    any port, as the SDK matches them); a request without one is no browser's and passes."""
    if origin is None or origin in allowed:
        return True
    return any(entry.endswith(":*") and origin.startswith(entry[:-1]) and origin[len(entry) - 1:].isdigit()
               for entry in allowed)


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that hands out ``body`` (already read) first, then waits on the
    connection (for the disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return replayed
