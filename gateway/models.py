"""Internal value types shared by the service layer, policy, tasks and audit.

These are frozen dataclasses: edges convert their wire models (protobuf, pydantic)
into these at the boundary and back, so nothing inside depends on a wire format.
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = [
    "Decision",
    "addressed_host",
    "ExecutionPlan",
    "McpCall",
    "OutputChunk",
    "OutputKind",
    "ExecuteRequest",
    "FINAL_STATUSES",
    "Principal",
    "RequestContext",
    "ResourceUsage",
    "SCOPES",
    "SandboxGrant",
    "TENANT_ADMIN_ROLE",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TaskType",
    "rfc3339",
]


class TaskStatus(enum.Enum):
    """Task states of design section 3; ``value`` is the proto enum number.

    The REST name is ``status.name`` (``"COMPLETED"``); the proto name is
    ``"TASK_" + status.name``.
    """

    CREATED = 0
    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5
    TIMED_OUT = 6


#: States a task never leaves.
FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT})


class TaskType(enum.Enum):
    """Task kinds of design section 3; ``value`` is the proto enum number."""

    COMMAND = 0
    FILE = 1
    HTTP_REQUEST = 2


class OutputKind(enum.Enum):
    """Kinds of output-log entries; ``value`` is the proto ``OutputChunkType`` number."""

    STDOUT = 0
    STDERR = 1
    EXIT_CODE = 2
    EVENT = 3


@dataclass(frozen=True)
class OutputChunk:
    """One entry of a task's output log (design section 3, ``TaskOutputChunk``).

    The log of a task is a gap-free sequence of entries numbered from 0; ``offset`` is the
    entry's number, so a reader that has seen entries ``0..n-1`` resumes at offset ``n``
    and gets every later entry exactly once (the numbering of a Kafka partition).

    Attributes:
        offset: position of this entry in the task's log, 0-based.
        kind: stdout or stderr bytes; EVENT (UTF-8 JSON object with an ``event`` key,
            e.g. ``{"event":"output_truncated","stream":"stdout","cap_bytes":1048576}``);
            EXIT_CODE (the exit status in ASCII decimal, ``b"0"``, ``b"-1"``), always the
            last entry of a finished task's log.
        data: the entry's bytes (at most 64 KiB for stdout/stderr entries).
        timestamp_ms: when the gateway read the bytes, unix milliseconds.
    """

    offset: int
    kind: OutputKind
    data: bytes
    timestamp_ms: int


#: Every scope a principal can hold (issue 6): a call needs the one its operation names;
#: a missing scope answers 1003.
SCOPES: tuple[str, ...] = (
    "tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write", "policy:read", "policy:admin",
    "tools:call",
)
#: The role that lets a principal see every task of its own tenant (never another tenant's).
TENANT_ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the ``principal`` of the policy input.

    Attributes:
        id: stable principal id (``anonymous`` for the development principal).
        tenant: tenant the principal belongs to; tasks are scoped to it.
        roles: role names, e.g. ``("user",)``.
        scopes: granted scopes, e.g. ``("tasks:execute", "tasks:read")``.
        auth_scheme: how it was authenticated: ``none|basic|bearer|mtls|other``.
        credential_sha256: hex SHA-256 of the credential presented (the bearer token or
            API key as sent, or the client certificate's DER); None without one. It names
            the credential in audit events without revealing it.
    """

    id: str
    tenant: str
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    auth_scheme: str = "none"
    credential_sha256: str | None = None

    @property
    def tenant_admin(self) -> bool:
        """Whether the principal sees every task of its tenant (role ``admin``)."""
        return TENANT_ADMIN_ROLE in self.roles


@dataclass(frozen=True)
class McpCall:
    """One MCP ``tools/call`` (design section 12), for audit events and policy context.

    Attributes:
        tool: the tool called, e.g. ``execute_command``.
        jsonrpc_id: the JSON-RPC request id, as text (a number's decimal digits).
        protocol_version: the MCP revision the client speaks, e.g. ``2025-11-25``.
        client_name: the client's name from the handshake (``clientInfo.name``), or empty.
        client_version: the client's version from the handshake, or empty.
        written: the audit event types written for this call so far (the audit log appends
            them), so the edge can tell a refusal that no event recorded yet.
    """

    tool: str
    jsonrpc_id: str
    protocol_version: str
    client_name: str = ""
    client_version: str = ""
    written: list[str] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class RequestContext:
    """Transport facts about one call, for policy ``context`` and audit events.

    Attributes:
        transport: ``grpc|http|https|mcp|stdio``.
        method: the RPC or route, e.g. ``ExecuteCommand`` or ``POST /v1/execute``.
        client_addr: peer address as ``host:port`` (empty when unknown).
        request_id: a fresh uuid4 hex per call.
        session_id: the caller's session for audit counters and correlation: the session
            id it sent (``mcp-session-id`` or ``x-session-id``), else ``conn-`` and an id of
            its connection.
        server_host: the host the client addressed (HTTP ``Host``, gRPC ``:authority``,
            without the port), else the address the gateway listens on.
        server_port: port the call arrived on.
        tls: whether the connection was TLS.
        request_bytes: size of the request as received, bytes (0 when unknown).
        client_process: the caller's client software (its user agent), or ``unknown``.
        trace_context: the W3C Trace Context the caller sent (``traceparent``,
            ``tracestate``: HTTP headers or gRPC metadata), to continue its trace.
        mcp: the MCP ``tools/call`` this call serves; None on the other edges.
    """

    transport: str
    method: str
    client_addr: str
    request_id: str
    session_id: str
    server_host: str
    server_port: int
    tls: bool = False
    request_bytes: int = 0
    client_process: str = "unknown"
    trace_context: tuple[tuple[str, str], ...] = ()
    mcp: McpCall | None = None

    @classmethod
    def for_call(
        cls,
        *,
        transport: str,
        method: str,
        peer: str,
        server_host: str,
        server_port: int,
        request_bytes: int,
        user_agent: str | None,
        tls: bool = False,
        connection_id: str = "",
        session_header: str | None = None,
        authority: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RequestContext:
        """The context of one call, with a fresh ``request_id``.

        Args:
            peer: the client's address, ``host:port``.
            server_host: the listen address, the fallback of ``server_host``.
            connection_id: an id of the connection, unique in this gateway (the fallback of
                ``session_id``; the peer address when empty).
            session_header: the ``mcp-session-id`` / ``x-session-id`` value the caller sent;
                ignored unless 1-128 visible ASCII characters (the MCP spec's session id).
            authority: the HTTP ``Host`` header or gRPC ``:authority``.
            user_agent: stands for ``client_process`` (cut to 256 characters).
            headers: the call's headers or metadata (lowercase names), for the W3C
                ``traceparent`` and ``tracestate`` (each kept when at most 512 characters).
        """
        if session_header is not None and _SESSION_ID.fullmatch(session_header):
            session_id = session_header
        else:
            session_id = f"conn-{connection_id or peer or 'unknown'}"
        return cls(
            transport=transport,
            method=method,
            client_addr=peer,
            request_id=uuid.uuid4().hex,
            session_id=session_id,
            server_host=addressed_host(authority) or server_host,
            server_port=server_port,
            tls=tls,
            request_bytes=request_bytes,
            client_process=(user_agent or "unknown")[:256],
            trace_context=tuple((k, headers[k]) for k in _TRACE_HEADERS
                                if headers is not None and k in headers and len(headers[k]) <= 512),
        )


_SESSION_ID = re.compile(r"[\x21-\x7e]{1,128}")
_TRACE_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]*))(?::\d*)?")


def addressed_host(authority: str | None) -> str | None:
    """The host of an HTTP ``Host`` header or gRPC ``:authority`` (RFC 9110 section 7.2):
    lower-cased, without the port or IPv6 brackets, at most 255 characters, anything but
    visible ASCII replaced by ``?``; None when absent or empty."""
    if not authority:
        return None
    match = _AUTHORITY.fullmatch(authority.strip())
    host = (match.group("v6") or match.group("name")) if match else authority
    host = "".join(c if "\x21" <= c <= "\x7e" else "?" for c in host.lower()[:255])
    return host or None


@dataclass(frozen=True)
class SandboxGrant:
    """What policy grants the sandbox (decision ``sandbox``, design section 6).

    Attributes:
        network: ``none|loopback|host|restricted``.
        allowed_hosts: host names for ``restricted`` mode.
        timeout_s: wall-clock limit, seconds.
        memory_bytes: address-space / memory limit, bytes.
        pids: maximum number of processes.
        cpu_seconds: CPU time limit, seconds.
        ro_paths: extra host paths bound read-only.
        rw_paths: extra host paths bound read-write.
    """

    network: str
    allowed_hosts: tuple[str, ...]
    timeout_s: int
    memory_bytes: int
    pids: int
    cpu_seconds: int
    cpu_cores: float | None = None
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """A policy decision (``data.mcp.decision``, design section 6).

    Attributes:
        allow: whether the action may proceed.
        reasons: human-readable reasons (deny reasons, or notes on an allow).
        rule_ids: ids of the rules that fired, namespaced by category
            (``command.*``, ``network.*``, ``file.*``, ``resource.*``); the
            category of the first deny rule picks the error code (3001-3004).
        sandbox: what the sandbox is granted; ``None`` on a deny.
        decision_id: uuid4 string identifying this evaluation in audit and logs.
        engine: ``embedded``, ``wasm`` or ``opa``.
        revision: the policy bundle revision that decided.
        eval_ms: evaluation time, milliseconds.
    """

    allow: bool
    reasons: tuple[str, ...]
    rule_ids: tuple[str, ...]
    sandbox: SandboxGrant | None
    decision_id: str
    engine: str = "embedded"
    revision: str = ""
    eval_ms: float = 0.0


@dataclass(frozen=True)
class ExecuteRequest:
    """A validated command request in internal form (mirrors ``CommandRequest``).

    Attributes:
        command: program name or absolute path; never empty, no NUL.
        args: arguments after the program name.
        env: environment for the command (the sandbox starts from an empty one).
        cwd: working directory inside the sandbox, or None for ``/workspace``.
        timeout_s: requested wall-clock limit, seconds; 0 means server default.
        metadata: caller-supplied labels stored with the task.
        network: requested network mode (``none|loopback|host|restricted``) or None.
        memory_bytes, pids: requested limits, 0 meaning "what policy grants".
        cpu_cores: requested CPU share in cores, 0 meaning "what policy grants".
        io_weight: requested IO weight, 0 meaning "what policy grants".
        ro_paths, rw_paths, denied_paths: requested path narrowing.
        hosts: ``restricted``: the requested egress allow-list (narrowing what policy
            grants; ``gateway.egress.allowlist`` syntax); empty for the whole grant.
        wait_s: how long the call that creates the task waits for its final state before
            it answers, seconds (0: it answers once the task is queued); at most
            ``tasks.max_wait_s``. Not part of the task.
    """

    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    memory_bytes: int = 0
    pids: int = 0
    cpu_cores: float = 0.0
    io_weight: int = 0
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()
    denied_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    wait_s: float = 0.0


@dataclass(frozen=True)
class ExecutionPlan:
    """What the sandbox will run, after policy and narrowing (service -> task manager).

    Attributes:
        argv: program and arguments.
        env: the command's environment (on top of the sandbox's minimal base).
        cwd: working directory inside the sandbox.
        network: effective network mode (``none|loopback|restricted|host``).
        timeout_s: wall-clock limit, seconds.
        memory_bytes: memory limit of the whole task, bytes.
        pids: processes + threads limit.
        cpu_seconds: CPU time limit per process, seconds.
        cpu_cores: CPU bandwidth quota, cores, or None for no quota.
        ro_paths, rw_paths: extra host paths bound read-only / read-write.
        allowed_hosts: ``restricted``: the egress allow-list the decision granted
            (``gateway.egress.allowlist`` syntax, checked when the plan was made).
        requested_hosts: ``restricted``: the hosts the request named (each on the grant,
            as policy checked), or empty; a connection must match both lists.
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    network: str
    timeout_s: int
    memory_bytes: int
    pids: int
    cpu_seconds: int
    cpu_cores: float | None = None
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    requested_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceUsage:
    """Measured resource use of a finished task (from the child's rusage).

    Attributes:
        cpu_time_ms: user + system CPU time, milliseconds.
        max_memory_kb: peak resident set size, KiB (``ru_maxrss``).
        io_read_bytes: bytes read from block devices (``ru_inblock`` * 512).
        io_write_bytes: bytes written to block devices (``ru_oublock`` * 512).
        egress_bytes_sent, egress_bytes_received: network ``restricted``: payload bytes the
            egress proxy carried to the task's destinations and back; 0 otherwise.
    """

    cpu_time_ms: int = 0
    max_memory_kb: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    egress_bytes_sent: int = 0
    egress_bytes_received: int = 0


@dataclass(frozen=True)
class TaskResult:
    """The outcome of a finished command task.

    Attributes:
        exit_code: the command's exit status; 128+N when killed by signal N;
            -1 when the sandbox never started the command.
        stdout, stderr: captured output, decoded as UTF-8 with replacement.
        stdout_truncated, stderr_truncated: output beyond the cap was dropped.
        limit_reason: which limit ended the task (``wall_timeout``, ``cpu_time``,
            ``file_size``, ``output_truncated``, ...) or None.
        resource_usage: measured usage.
        execution_time_ms: wall time from spawn to reap, milliseconds.
        error: why the sandbox failed to start (FAILED tasks), else None.
        output_bytes: the captured output of both streams as the command wrote it, bytes
            (before decoding; what the audit event's ``response_bytes`` counts).
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    limit_reason: str | None
    resource_usage: ResourceUsage
    execution_time_ms: int
    error: str | None = None
    output_bytes: int = 0

    @classmethod
    def not_run(cls, error: str | None, *, limit_reason: str | None = None) -> TaskResult:
        """The result of a task whose command never ran or whose run was lost: exit code
        -1, nothing captured or measured; ``error`` says why (None for a plain cancel)."""
        return cls(
            exit_code=-1, stdout="", stderr="", stdout_truncated=False, stderr_truncated=False,
            limit_reason=limit_reason, resource_usage=ResourceUsage(), execution_time_ms=0, error=error,
        )


@dataclass(frozen=True)
class TaskRecord:
    """A task as stored (design section 3).

    Attributes:
        task_id: ``task-`` + 32 lowercase hex.
        task_type: kind of task.
        status: current state.
        tenant: owning tenant; other tenants see NOT_FOUND.
        principal_id: who created it.
        command, args: what runs (args as given, for the owner's eyes only).
        metadata: caller labels.
        created_at_ns, started_at_ns, completed_at_ns: unix nanoseconds (None = not yet).
        decision_id: the policy decision that allowed it.
        started_at_ns, completed_at_ns: see above.
        result: set once the task is final and ran (or failed to start).
        owner: id of the gateway process (replica instance) that runs the task.
        workspace: the tenant's workspace id the task runs in.
        cancel_requested: a cancel was asked for and the owner has not yet ended the task.
    """

    task_id: str
    task_type: TaskType
    status: TaskStatus
    tenant: str
    principal_id: str
    command: str
    args: tuple[str, ...]
    metadata: dict[str, str]
    created_at_ns: int
    decision_id: str
    started_at_ns: int | None = None
    completed_at_ns: int | None = None
    result: TaskResult | None = None
    owner: str = ""
    workspace: str = ""
    cancel_requested: bool = False

    @property
    def final(self) -> bool:
        """True once the task reached COMPLETED, FAILED, CANCELLED or TIMED_OUT."""
        return self.status in FINAL_STATUSES


def rfc3339(unix_ns: int) -> str:
    """``unix_ns`` (unix nanoseconds) as RFC 3339 UTC with milliseconds: ``2026-11-21T10:55:35.123Z``."""
    seconds, ns = divmod(unix_ns, 1_000_000_000)
    return f"{_utc_second(seconds)}.{ns // 1_000_000:03d}Z"


@functools.lru_cache(maxsize=64)
def _utc_second(unix_s: int) -> str:
    """``unix_s`` as ``YYYY-MM-DDTHH:MM:SS`` UTC (a task's three times share a few seconds)."""
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
