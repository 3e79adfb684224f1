"""The use cases every edge calls: validate, decide, audit, run, report.

Every call starts with :meth:`GatewayService.authenticate` (credentials -> principal; a
failure is audited as ``auth_failure`` and answers 1001/1002; then the principal's and its
tenant's request rate limits, 4290 audited as ``rate_limit``) and the scope its operation
needs (1003, audited as ``auth_failure`` with reason ``missing_scope``). A task is visible
only to its principal and to its tenant's admins (role ``admin``); anyone else gets 6001,
exactly as for an unknown id.

``ExecuteCommand`` is one straight sequence, and the order is the security argument:

1. validate the request (sizes, NUL bytes, formats, server maxima) so policy only
   ever sees bounded, well-formed input;
2. ask policy; an engine failure is a deny (fail closed, 5003);
3. write the decision audit event *before* acting on it; if the audit sink fails
   nothing runs (fail closed);
4. on a deny, raise the policy error (3001-3004) chosen by the deny rule's category;
5. narrow the policy grant with the request and cap it with server maxima;
6. admit the task (4290 when the queue or the principal's quota is full), store it,
   hand it to the manager.

File calls follow the same order: validate, decide (``file.read|write|delete``), audit
the decision, then act beneath the tenant's workspace directory by fd (``gateway.files``).

Edges translate wire formats into these calls and map :class:`GatewayError` to their
status codes; they hold no logic of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from opentelemetry import trace

from gateway import __version__, files
from gateway.admission import PrincipalSlots
from gateway.audit.log import AuditError, AuditLog, args_sha256, clip, redact_command
from gateway.auth import AuthFailure, Authenticator, Credentials
from gateway.config import RateLimit, Settings
from gateway.egress.allowlist import AllowList
from gateway.errors import (
    CommandDenied,
    FileDenied,
    GatewayError,
    InternalError,
    InvalidFormat,
    InvalidParameter,
    InvalidRequest,
    MissingParameter,
    NetworkDenied,
    NotFound,
    PermissionDenied,
    PolicyDenied,
    PolicyEngineError,
    RateLimited,
    ResourceDenied,
    SandboxSetupFailed,
    ToolDenied,
    status_for,
)
from gateway.observability.metrics import (
    AUTH_FAILURES,
    CROSS_TENANT_PROBES,
    ERRORS,
    POLICY_DECISIONS,
    POLICY_ENGINE_UP,
    POLICY_EVAL_SECONDS,
    RATE_LIMITED,
    READY,
    UPSTREAM_CALLS,
    UPSTREAM_TOOL_CHANGES,
    REQUEST_SECONDS,
    REQUESTS,
    exposition,
    observe,
    start_series,
)
from gateway.observability.logs import bind_call
from gateway.observability.tracing import call_span, set_error, stage
from gateway.models import (
    Decision,
    ExecuteRequest,
    ExecutionPlan,
    OutputChunk,
    Principal,
    RequestContext,
    TaskRecord,
    TaskStatus,
    TaskType,
)
from gateway.policy.active import ActivePolicy
from gateway.ratelimit import RateLimiter
from gateway.tasks import TaskManager, TaskStore
from gateway.tasks.store import TaskQuery, TaskQuota
from gateway.tasks.workspaces import WORKSPACE_ID_PATTERN, WorkspaceManager
from gateway.upstream.pins import Approvals, ToolDrift, compare
from gateway.upstream.results import cap_result, redact_result, result_bytes, served_result
from gateway.upstream.servers import Listing, UpstreamHub, exposed_name, split_name

__all__ = ["FileContent", "GatewayService", "HealthInfo", "PAGE_TOKEN_PATTERN", "TASK_ID_PATTERN", "TaskPage",
           "new_task_id"]

log = logging.getLogger("gateway.service")

T = TypeVar("T")
READINESS_REFRESH_S = 0.5  # how often serve() refreshes the readiness probes answer, seconds
TASK_ID_PATTERN = re.compile(r"^task-[0-9a-f]{32}$")
#: What list_tasks issues as a page token (creation time in unix ns, the task id): up to
#: 8,999,999,999,999,999,999 ns, within int64 (documented to clients as an opaque string).
PAGE_TOKEN_PATTERN = re.compile(r"^(?:[0-9]{1,18}|[1-8][0-9]{18})\.task-[0-9a-f]{32}$")
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DENY_BY_CATEGORY: dict[str, type[PolicyDenied]] = {
    "command": CommandDenied,
    "network": NetworkDenied,
    "file": FileDenied,
    "resource": ResourceDenied,
    "tool": ToolDenied,
}
# Narrowest first: a request may only move left of what policy granted.
_NETWORK_ORDER = ("none", "loopback", "restricted", "host")
_SANDBOX_CWD = "/workspace"
_CANCEL_WAIT_S = 10.0  # CancelTask waits this long for the final state, seconds
_MAX_OFFSET = 2**63 - 1
_MAX_PAGE = 100  # tasks per list_tasks page, at most


def new_task_id() -> str:
    """A fresh task id: ``task-`` + 32 lowercase hex (uuid4)."""
    return "task-" + uuid.uuid4().hex


@dataclass(frozen=True)
class FileContent:
    """A file read from a workspace: ``path`` as asked, ``content`` bytes, ``mime_type``."""

    path: str
    content: bytes
    mime_type: str


@dataclass(frozen=True)
class TaskPage:
    """One page of :meth:`GatewayService.list_tasks`: ``tasks`` newest first, and the
    ``next_page_token`` that continues after them (None on the last page)."""

    tasks: tuple[TaskRecord, ...]
    next_page_token: str | None


@dataclass(frozen=True)
class HealthInfo:
    """Liveness answer: ``status`` (``SERVING``), ``version``, ``uptime_s`` (seconds)."""

    status: str
    version: str
    uptime_s: int


class GatewayService:
    """The gateway's use cases, shared by every edge.

    Args:
        settings: gateway settings (limits, sandbox maxima).
        policy: the policy engine (embedded regopy or OPA server).
        store: the task store.
        tasks: the task manager.
        audit: the audit log.
        workspaces: the tenants' workspaces (the files API works inside them).
        authenticator: verifies credentials (``auth`` settings).
        limiter: request rate limits and task quotas (``rate_limits`` settings).
    """

    def __init__(
        self,
        settings: Settings,
        policy: ActivePolicy,
        store: TaskStore,
        tasks: TaskManager,
        audit: AuditLog,
        workspaces: WorkspaceManager,
        authenticator: Authenticator,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        # The gateway's own files: never bound into a sandbox, whatever policy grants.
        self._own_paths = frozenset(
            os.path.abspath(p)
            for p in (settings.state_dir, settings.workspace_root, settings.policy_dir, settings.audit_path,
                      settings.mcp_approvals_path)
        )
        self._policy = policy
        self._store = store
        self._tasks = tasks
        self._audit = audit
        self._workspaces = workspaces
        self._auth = authenticator
        self._limiter = limiter
        self._in_flight = PrincipalSlots(settings.admission.principal_in_flight)
        self._readiness: dict[str, Any] | None = None
        self._approvals = Approvals(settings.mcp_approvals_path)
        for name, server in settings.mcp.servers.items():  # the same rule as a task's binds
            try:
                self._refuse_gateway_paths(tuple(server.ro_paths))
            except FileDenied as exc:
                raise ValueError(f"mcp.servers.{name}.ro_paths: {exc.message}") from None
        self._upstream = UpstreamHub(settings.mcp.servers, tasks, workspaces,
                                     max_instances=settings.mcp.max_upstream_instances,
                                     on_listing=self._observe_listing, on_egress_denied=self._upstream_egress_denied)
        self._drift_seen: dict[tuple[str, str], str] = {}  # (server, tenant) -> last audited tools_list_sha256
        # Each server's buckets: all callers, and one principal (made once, not per call).
        self._upstream_limits = {
            name: (RateLimit(requests_per_s=server.requests_per_s, burst=server.burst),
                   RateLimit(requests_per_s=server.principal_requests_per_s, burst=server.principal_burst))
            for name, server in settings.mcp.servers.items()}
        self._upstream.start()
        start_series(policy.name)
        self._started = time.monotonic()

    # -- health ---------------------------------------------------------------

    def health(self) -> HealthInfo:
        """Liveness: the process is up and serving."""
        return HealthInfo("SERVING", __version__, int(time.monotonic() - self._started))

    def readiness(self) -> dict[str, Any]:
        """Readiness details: policy engine and revision, audit sink health (not ready while
        it cannot write: every audited call would fail with 5001), task pool state, and the
        per-task limits this host enforces (a request for any other is refused with 4001)."""
        policy = self._policy_status()
        audit = self._audit.health()
        draining = not self._tasks.accepting
        return {
            "status": "ready" if policy["healthy"] and audit.healthy and not draining else "not_ready",
            "draining": draining,
            "policy": policy,
            "audit": {"sink": audit.sink, "healthy": audit.healthy, "detail": audit.detail,
                      "failing_since_ns": audit.failing_since_ns, "failed_events": audit.failed_events},
            "tasks": {"running": self._tasks.running, "queued": self._tasks.queued},
            "sandbox": {
                "enforced_limits": sorted(self._tasks.enforced),
                "cgroup_version": self._tasks.isolation.cgroup_version,
                "uid_per_task": self._tasks.isolation.uids is not None,
            },
        }

    def readiness_snapshot(self) -> dict[str, Any]:
        """The last :meth:`readiness` answer that :meth:`refresh_readiness` computed (at most
        ``READINESS_REFRESH_S`` old): what probes are served, without waiting on a policy
        engine, a store or a lock that task work may hold."""
        snapshot = self._readiness
        if snapshot is None:
            snapshot = self.refresh_readiness()
        if not self._tasks.accepting and not snapshot["draining"]:  # a drain shows at once
            snapshot = {**snapshot, "status": "not_ready", "draining": True}
        return snapshot

    def refresh_readiness(self) -> dict[str, Any]:
        """Compute :meth:`readiness` now and keep it for :meth:`readiness_snapshot` (and
        in the ``mcp_gateway_ready`` and ``mcp_policy_engine_up`` gauges)."""
        self._readiness = snapshot = self.readiness()
        READY.set(snapshot["status"] == "ready")
        POLICY_ENGINE_UP.labels(snapshot["policy"]["engine"]).set(snapshot["policy"]["healthy"])
        return snapshot

    def metrics(self, accept: str | None = None) -> tuple[bytes, str]:
        """The process's metrics as ``(body, content type)``: OpenMetrics when ``accept``
        (the scraper's Accept header) asks for it, else the Prometheus text format."""
        return exposition(accept)

    def policy_status(self, principal: Principal, ctx: RequestContext) -> dict[str, Any]:
        """The policy engine, bundle revision and health (scope ``policy:read``):
        ``{"engine", "revision", "healthy", "detail"}``.

        Raises:
            PermissionDenied (1003): the principal lacks ``policy:read``.
        """
        self.authorize(principal, ctx, "policy:read")
        return self._policy_status()

    def reload_policy(self, principal: Principal, ctx: RequestContext) -> dict[str, Any]:
        """Reload ``policy_dir`` now (scope ``policy:admin``); answers ``{"result":
        "applied"|"unchanged", ...policy_status}``.

        Raises:
            PermissionDenied (1003): the principal lacks ``policy:admin``.
            PolicyEngineError (5003): the bundle was rejected (the active one stays), or
                OPA loads the bundle itself.
        """
        self.authorize(principal, ctx, "policy:admin")
        try:
            result = self._policy.reload()
        except PolicyEngineError as exc:
            self._audit.emit("policy_reload", ctx, principal, error_code=exc.code, policy_reason=clip(exc.message),
                             policy_revision=self._policy.revision, policy_engine=self._policy.name)
            raise
        self._audit.emit("policy_reload", ctx, principal, policy_reason=result,
                         policy_revision=self._policy.revision, policy_engine=self._policy.name)
        return {"result": result, **self._policy_status()}

    def _policy_status(self) -> dict[str, Any]:
        healthy, detail = self._policy.health()
        return {"engine": self._policy.name, "revision": self._policy.revision, "healthy": healthy,
                "detail": detail}

    # -- callers --------------------------------------------------------------

    def call(self, ctx: RequestContext, credentials: Credentials, fn: Callable[..., T], /, *args: Any,
             **kwargs: Any) -> T:
        """``fn(principal, ctx, *args, **kwargs)`` for the caller behind ``credentials``,
        holding one of the principal's in-flight slots (``admission.principal_in_flight``)
        while it runs: how every edge makes a call.

        Raises:
            what :meth:`authenticate` raises; RateLimited (4290) when the principal has
            its limit of calls in flight (audited as ``rate_limit``); what ``fn`` raises.
        """
        return self._call(ctx, lambda: self.authenticate(ctx, credentials), fn, args, kwargs)

    def call_as(self, ctx: RequestContext, principal: Principal, fn: Callable[..., T], /, *args: Any,
                **kwargs: Any) -> T:
        """:meth:`call` for a caller the edge authenticated already (with :meth:`authenticate`)
        for the connection or request that carries this call: an MCP ``tools/call`` rides
        a POST whose credentials were checked before the MCP session saw it.

        Raises:
            RateLimited (4290): the principal has its limit of calls in flight (audited as
                ``rate_limit``); what ``fn`` raises.
        """
        return self._call(ctx, lambda: principal, fn, args, kwargs)

    def _call(self, ctx: RequestContext, identify: Callable[[], Principal], fn: Callable[..., T],
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        start = time.perf_counter()
        status = "ok"
        with call_span(ctx.transport, ctx.method, ctx.client_addr, ctx.trace_context) as current, \
                bind_call(ctx.request_id):
            try:
                with stage("authenticate"):
                    principal = identify()
                current.set_attributes({"mcp.principal": principal.id, "mcp.tenant": principal.tenant})
                key = (principal.tenant, principal.id)
                try:
                    self._in_flight.enter(key)
                except RateLimited as exc:
                    self._audit.emit("rate_limit", ctx, principal, rate_limit="principal_in_flight",
                                     error_code=exc.code, **self._mcp_counts(principal, ctx))
                    raise
                try:
                    with bind_call(ctx.request_id, principal.id, principal.tenant):
                        return fn(principal, ctx, *args, **kwargs)
                finally:
                    self._in_flight.leave(key)
            except Exception as exc:
                error = exc if isinstance(exc, GatewayError) else InternalError("internal error")
                status = str(error.code)
                ERRORS.labels(type(error).__name__, status).inc()
                # The server span fails only on what the gateway failed at (a 5xx answer);
                # a refusal (4xx) is the call's outcome, kept as mcp.error_code.
                if status_for(error).http >= 500:
                    set_error(current, error.code, error.message)
                else:
                    current.set_attribute("mcp.error_code", error.code)
                raise
            finally:
                REQUESTS.labels(ctx.transport, ctx.method, status).inc()
                observe(REQUEST_SECONDS.labels(ctx.transport, ctx.method), time.perf_counter() - start)

    def authenticate(self, ctx: RequestContext, credentials: Credentials) -> Principal:
        """The principal behind a call, after its request rate limits.

        Raises:
            Unauthenticated (1001) / TokenExpired (1002): bad credentials; audited as
                ``auth_failure`` with the reason and the credential's SHA-256, never the
                credential.
            RateLimited (4290): the principal's or its tenant's request bucket is empty;
                audited as ``rate_limit``.
            AuditError (5001): the failure could not be audited.
        """
        try:
            principal = self._auth.authenticate(credentials)
        except AuthFailure as failure:
            AUTH_FAILURES.labels(failure.scheme, failure.reason).inc()
            self._audit.emit(
                "auth_failure", ctx, None, principal="unauthenticated", tenant="unknown",
                auth_scheme=failure.scheme, credential_sha256=failure.credential_sha256,
                auth_reason=failure.reason, error_code=failure.error.code,
            )
            raise failure.error from None
        try:
            self._limiter.check(principal)
        except RateLimited as exc:
            limit = str(exc.details["limit"])
            RATE_LIMITED.labels(limit).inc()
            self._audit.emit("rate_limit", ctx, principal, rate_limit=limit, error_code=exc.code)
            raise
        return principal

    def authorize(self, principal: Principal, ctx: RequestContext, scope: str) -> None:
        """Check that ``principal`` holds ``scope`` (every use case does this itself; an
        edge asks too where its protocol answers a missing scope before the call runs,
        as MCP over HTTP does with 403).

        Raises:
            PermissionDenied (1003): it does not; audited as ``auth_failure`` with reason
                ``missing_scope``.
        """
        if scope in principal.scopes:
            return
        AUTH_FAILURES.labels(principal.auth_scheme, "missing_scope").inc()
        self._audit.emit("auth_failure", ctx, principal, auth_reason="missing_scope", error_code=1003,
                         **self._mcp_counts(principal, ctx))
        raise PermissionDenied(f"missing scope {scope}", details={"scope": scope})

    def refuse_malformed(self, principal: Principal, ctx: RequestContext, error: InvalidRequest) -> None:
        """Refuse an authenticated call whose body does not decode, or (over MCP) whose tool
        arguments do not match the tool's schema (the edge found it), with an
        ``invalid_request`` audit event (``error_code`` 2001-2003, ``request_bytes`` as sent);
        never returns.

        Raises:
            InvalidRequest (2001-2003): ``error``, always, once audited.
            AuditError (5001): the refusal could not be audited.
        """
        self._audit.emit("invalid_request", ctx, principal, error_code=error.code,
                         request_bytes=ctx.request_bytes, **self._mcp_counts(principal, ctx))
        raise error

    # -- commands -------------------------------------------------------------

    def execute_command(self, principal: Principal, ctx: RequestContext, req: ExecuteRequest) -> TaskRecord:
        """Decide on and queue one command; returns the stored QUEUED task.

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:execute``.
            InvalidParameter / MissingParameter / InvalidFormat (2001-2003): bad request.
            CommandDenied / NetworkDenied / FileDenied / ResourceDenied (3001-3004): policy said no.
            SandboxSetupFailed (4001): the request asks for a limit this host cannot enforce.
            RateLimited (4290): the task queue or the principal's quota is full.
            PolicyEngineError (5003): the engine failed (nothing runs).
            AuditError (5001): the decision could not be audited (nothing runs).
            StorageError (5002): the task could not be stored (nothing runs; its ``allow``
                decision is closed by a ``task_end`` FAILED event with 5002).
        """
        self.authorize(principal, ctx, "tasks:execute")
        self._validate(req)
        workspace = req.metadata.get("workspace")
        if workspace is not None:
            _check_workspace_id(workspace, "metadata.workspace")
        cwd = _sandbox_cwd(req.cwd)
        counts = self._audit.count_call(ctx, principal)  # the call is audited from here on
        policy_input = self._policy_input(principal, ctx, req, cwd)
        try:
            decision = self._decide(policy_input)
        except PolicyEngineError as exc:
            self._audit_decision(ctx, principal, req, None, counts, error_code=exc.code, reason=exc.message)
            raise
        if not decision.allow:
            denied = _denial(decision)
            self._audit_decision(ctx, principal, req, decision, counts, error_code=denied.code)
            raise denied
        try:
            # The request may still be refused after policy allowed it (paths outside the
            # grant, queue full): the decision event then carries that error instead.
            plan = self._plan(req, cwd, decision)
            if workspace is not None:
                holder = self._workspaces.held_elsewhere(principal.tenant, workspace)
                if holder is not None:
                    raise RateLimited(f"workspace {workspace!r} is in use by tasks on another replica; retry later",
                                      retry_after_s=1, details={"limit": "workspace_busy"})
            principal_quota, tenant_quota = self._limiter.task_quotas(principal)
            self._tasks.reserve(principal, principal_quota=principal_quota, tenant_quota=tenant_quota)
        except GatewayError as exc:
            limit = str(exc.details.get("limit", "queue")) if isinstance(exc, RateLimited) else None
            self._audit_decision(ctx, principal, req, decision, counts, error_code=exc.code, rate_limit=limit)
            raise
        task_id = new_task_id()
        try:
            self._audit_decision(ctx, principal, req, decision, counts, task_id=task_id)
        except BaseException:
            self._tasks.release(principal)
            raise
        try:
            record = TaskRecord(
                task_id=task_id,
                task_type=TaskType.COMMAND,
                status=TaskStatus.QUEUED,
                tenant=principal.tenant,
                principal_id=principal.id,
                command=req.command,
                args=req.args,
                metadata=dict(req.metadata),
                created_at_ns=time.time_ns(),
                decision_id=decision.decision_id,
                owner=self._tasks.owner,
                workspace=workspace or task_id,
            )
            with stage("store.create", mcp__task_id=task_id):
                # The quotas again, counted in the store over every replica (a shared
                # PostgreSQL store); a refusal here is audited as the task's end, 4290.
                self._store.create(record, TaskQuota(principal_quota, tenant_quota))
        except BaseException as exc:
            self._tasks.release(principal)
            self._audit_not_run(ctx, principal, task_id, decision, exc)
            raise
        trace.get_current_span().set_attribute("mcp.task_id", task_id)
        self._tasks.submit(record, plan, ctx, principal)
        return record

    def get_task(
        self, principal: Principal, ctx: RequestContext, task_id: str, *, scope: str = "tasks:read"
    ) -> TaskRecord:
        """The caller's task ``task_id``: one the principal created, or any task of its
        tenant for a tenant admin.

        Raises:
            PermissionDenied (1003): the principal lacks ``scope``.
            InvalidFormat (2003): ``task_id`` is not ``task-`` + 32 lowercase hex.
            NotFound (6001): no such task visible to the caller (another tenant's or,
                for a non-admin, another principal's task answers exactly like an
                unknown id); audited as ``not_found``, with ``cross_tenant`` when the
                task is another tenant's.
            AuditError (5001): that event could not be written.
            StorageError (5002): the store failed.
        """
        self.authorize(principal, ctx, scope)
        if not TASK_ID_PATTERN.match(task_id):
            raise InvalidFormat(
                "task_id must be 'task-' followed by 32 lowercase hex digits",
                details={"field": "task_id"},
            )
        record = self._store.get(task_id)
        if record is None or not _visible(record, principal):
            # The caller learns nothing; the trail records whether it named another
            # tenant's task (cross-tenant probing).
            cross_tenant = record is not None and record.tenant != principal.tenant
            if cross_tenant:
                CROSS_TENANT_PROBES.inc()
            self._audit.emit("not_found", ctx, principal, task_id=task_id, error_code=NotFound.code,
                             cross_tenant=cross_tenant, **self._mcp_counts(principal, ctx))
            raise NotFound(f"task {task_id} not found", details={"task_id": task_id})
        self._audit_tool_call(principal, ctx, task_id=task_id)
        return record

    def list_tasks(
        self, principal: Principal, ctx: RequestContext, *, status: str | None = None, since: str | None = None,
        limit: int = 20, page_token: str | None = None,
    ) -> TaskPage:
        """The caller's tasks (a tenant admin: every task of its tenant), newest first, one
        page of at most ``limit``; the same visibility as :meth:`get_task`.

        Args:
            status: only tasks in this state (a :class:`TaskStatus` name), or all.
            since: only tasks created at or after this RFC 3339 time (``2026-12-07T09:00:00Z``;
                a time without an offset is UTC), or all.
            limit: tasks per page, 1-100.
            page_token: the previous page's ``next_page_token`` (opaque), or None for the first.

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:read``.
            InvalidParameter (2001): ``status`` or ``limit`` out of range.
            InvalidFormat (2003): ``since`` is no RFC 3339 time; ``page_token`` is not one this
                gateway issued.
            StorageError (5002): the store failed.
        """
        self.authorize(principal, ctx, "tasks:read")
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidParameter(f"limit must be between 1 and {_MAX_PAGE}", details={"field": "limit"})
        since_ns = _unix_ns(since) if since is not None else 0
        try:
            state = TaskStatus[status] if status else None
        except KeyError:
            raise InvalidParameter(f"status must be one of {', '.join(s.name for s in TaskStatus)}",
                                   details={"field": "status"}) from None
        # One more than a page: a next page exists only when it does.
        query = TaskQuery(principal.tenant, None if principal.tenant_admin else principal.id, state, since_ns,
                          _page_cursor(page_token) if page_token is not None else None, limit + 1)
        records = self._store.list_tasks(query)
        self._audit_tool_call(principal, ctx)
        page = records[:limit]
        return TaskPage(tuple(page), _page_token(page[-1]) if len(records) > limit else None)

    def audit_refusal(self, principal: Principal, ctx: RequestContext, error: GatewayError) -> None:
        """Write the one audit event of an MCP ``tools/call`` that ``error`` refused before
        any event of its own was written (``ctx.mcp.written`` is empty): arguments the
        service found malformed (``invalid_request``) or anything else (``tool_call`` with
        the error code), with the session's counters. Other edges answer such refusals
        without an event.

        Raises:
            AuditError (5001): the event could not be written.
        """
        if ctx.mcp is not None and not ctx.mcp.written:
            self._audit_tool_call(principal, ctx, "invalid_request" if isinstance(error, InvalidRequest) else "tool_call",
                                  error_code=error.code)

    def _audit_tool_call(self, principal: Principal, ctx: RequestContext, event_type: str = "tool_call",
                         **fields: Any) -> None:
        """An MCP ``tools/call``'s one audit event (``event_type``), for tools with no
        decision or file event of their own (reading tasks) and for refusals that wrote
        none; nothing on the other edges."""
        if ctx.mcp is not None:
            self._audit.emit(event_type, ctx, principal, request_bytes=ctx.request_bytes,
                             **self._mcp_counts(principal, ctx), **fields)

    def _mcp_counts(self, principal: Principal, ctx: RequestContext) -> dict[str, int]:
        """The session counters of an MCP ``tools/call``'s one event, where the call ends
        in no decision or file event (every ``tools/call`` counts); nothing on other edges."""
        return self._audit.count_call(ctx, principal) if ctx.mcp is not None else {}

    # -- upstream MCP servers (gateway.upstream) --------------------------------------

    @property
    def has_upstream(self) -> bool:
        """Whether upstream MCP servers are configured (``mcp.servers``)."""
        return bool(self._upstream.servers)

    def is_upstream_tool(self, name: str) -> bool:
        """Whether ``name`` is ``<server>__<tool>`` of a configured upstream server (a call
        of it needs the ``tools:call`` scope)."""
        parts = split_name(name)
        return parts is not None and parts[0] in self._upstream.servers

    def upstream_tools(self, principal: Principal, ctx: RequestContext) -> list[Any]:
        """The upstream servers' tools ``principal`` is offered, as MCP ``Tool`` models named
        ``<server>__<tool>``: only tools whose definition is the approved one (the rest are
        withheld, and the change audited once as ``tool_definition_changed``); none without
        the ``tools:call`` scope. Each server is started for the principal's tenant when it
        is not running; a server that cannot start is left out (and logged), not an error.
        Whether a call is allowed is policy's, per call."""
        if not self._upstream.servers or "tools:call" not in principal.scopes:
            return []
        offered: list[Any] = []
        for server, listing in self._upstream.listings(principal.tenant).items():
            if isinstance(listing, GatewayError):
                log.warning("upstream MCP server %s left out of tools/list: %s", server, listing.message)
                continue
            # Only the pinned fields are served: _meta (free-form, unpinned) stays behind.
            offered += [listing.tools[name].model_copy(update={"name": exposed_name(server, name), "meta": None})
                        for name in sorted(self._drift(server, listing).approved)]
        return offered

    def call_upstream_tool(self, principal: Principal, ctx: RequestContext, name: str,
                           arguments: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        """Call the upstream tool ``name`` (``<server>__<tool>``) with ``arguments``.

        In order: the ``tools:call`` scope; the arguments (JSON without NaN, at most
        ``limits.max_args_bytes``); policy decides (action ``tool.call``, input ``tool:
        {server, name, arguments, arguments_sha256}``); if it allows, the server's rate limits
        (all callers, and this principal), and the tool must be listed now (this may start the
        tenant's sandbox of the server) with its approved definition (``gateway.upstream.pins``);
        the ``decision`` event is written (allow or deny, with the refusal's code); then the
        call, within the server's ``call_timeout_s``, and a ``tool_result`` event with the
        decision's id. The result comes back without ``_meta``, cut to ``mcp.max_result_bytes``
        and redacted (``redact_results``). Nothing of the caller (credentials, identity) goes
        upstream. Setting ``cancel`` (the client cancelled) cancels the upstream call.

        Returns:
            the MCP ``CallToolResult`` as wire JSON (``content``, ``structuredContent``,
            ``isError``); a result the server marks as an error is returned, not raised.

        Raises:
            PermissionDenied (1003): no ``tools:call`` scope.
            InvalidParameter (2001): no such server or tool.
            ToolDenied (3005): policy denied the call, or the tool's definition is not approved.
            RateLimited (4290): a rate limit of the server, or every server sandbox busy.
            DependencyUnavailable (5003): the server cannot start, failed, or timed out
                (``details.timeout_s``); PolicyEngineError (5003) when policy cannot decide.
            AuditError (5001): the decision could not be audited (nothing was called).
        """
        self.authorize(principal, ctx, "tools:call")
        server, tool = split_name(name) or ("", "")
        settings = self._upstream.servers.get(server)
        if settings is None:
            raise InvalidParameter(f"no upstream MCP server serves tool {name!r}", details={"field": "name"})
        try:
            encoded = json.dumps(arguments, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise InvalidParameter("arguments hold a number JSON does not have (NaN or Infinity)",
                                   details={"field": "arguments"}) from None
        max_bytes = self._settings.limits.max_args_bytes
        if len(encoded) > max_bytes:  # they are policy input: bounded like a command's arguments
            raise InvalidParameter(f"arguments are {len(encoded)} bytes as JSON, more than {max_bytes}",
                                   details={"field": "arguments", "max": max_bytes})
        counts = self._audit.count_call(ctx, principal)  # the call is audited from here on
        digest = hashlib.sha256(encoded.encode()).hexdigest()
        policy_input = {
            "principal": self._principal_input(principal),
            "action": "tool.call",
            "tool": {"server": server, "name": tool, "arguments": arguments, "arguments_sha256": digest},
            "context": self._context_input(ctx),
        }
        audit = {"upstream_server": server, "args_sha256": digest, "request_bytes": ctx.request_bytes, **counts}
        try:
            decision = self._decide(policy_input)
        except PolicyEngineError as exc:
            UPSTREAM_CALLS.labels(server, str(exc.code)).inc()
            self._audit.emit("decision", ctx, principal, error_code=exc.code, **audit,
                             **self._decision_fields(None, exc.message))
            raise
        # Only an allowed call may start the server's sandbox (listing): a principal policy
        # denies cannot make sandboxes, nor push another tenant's idle one out.
        refusal: GatewayError | None = None if decision.allow else _denial(decision)
        listing: Listing | None = None
        if refusal is None:
            try:
                self._take_upstream_tokens(principal, server)
                listing = self._upstream.listing(server, principal.tenant)
                self._check_approved(server, tool, listing)
            except GatewayError as exc:
                refusal = exc
        self._audit.emit(
            "decision", ctx, principal, error_code=refusal.code if refusal else None,
            rate_limit=refusal.details.get("limit") if isinstance(refusal, RateLimited) else None,
            **audit, **self._decision_fields(decision, None))
        if refusal is not None:
            UPSTREAM_CALLS.labels(server, str(refusal.code)).inc()
            raise refusal
        assert listing is not None
        started = time.monotonic()
        result: dict[str, Any] | None = None
        try:
            called = self._upstream.call_tool(server, principal.tenant, tool, arguments, cancel)
            result = served_result(called.model_dump(by_alias=True, exclude_none=True, mode="json"))
            # Cut first, then redact (its cost is linear, and bounded this way by the cap), then
            # cut again: a value of one or two characters comes back as three.
            structured = listing.tools[tool].output_schema is not None
            result = cap_result(result, self._settings.mcp.max_result_bytes, structured_required=structured)
            if settings.redact_results:
                result = cap_result(redact_result(result), self._settings.mcp.max_result_bytes,
                                    structured_required=structured)
        except GatewayError as exc:
            UPSTREAM_CALLS.labels(server, str(exc.code)).inc()
            self._audit_tool_result(ctx, principal, server, decision, started, error=exc)
            raise
        UPSTREAM_CALLS.labels(server, "ok").inc()
        self._audit_tool_result(ctx, principal, server, decision, started, result=result)
        return result

    def _take_upstream_tokens(self, principal: Principal, server: str) -> None:
        """One token of ``server``'s bucket (all callers) and of the principal's on it;
        RateLimited (4290, ``details.limit`` ``upstream_server`` / ``upstream_principal``)."""
        every, one = self._upstream_limits[server]
        key = f"mcp-server:{server}"
        try:
            self._limiter.take([((key, None), every, "upstream_server"),
                                ((key, f"{principal.tenant}/{principal.id}"), one, "upstream_principal")])
        except RateLimited as exc:
            RATE_LIMITED.labels(exc.details["limit"]).inc()
            raise

    def _check_approved(self, server: str, tool: str, listing: Listing) -> None:
        """InvalidParameter (2001) when ``server`` lists no ``tool``; ToolDenied (3005) when
        its definition is not the approved one."""
        if tool not in listing.tools:
            raise InvalidParameter(f"upstream MCP server {server!r} lists no tool {tool[:128]!r}",
                                   details={"field": "name"})
        drift = self._drift(server, listing)
        if tool not in drift.approved:
            why = "changed since it was approved" if tool in drift.changed else "was never approved"
            raise ToolDenied(
                f"tool {exposed_name(server, tool)!r} is withheld: its definition {why}; an operator must review "
                f"it and run 'mcp-gateway mcp approve {server}'",
                details={"server": server, "tool": tool, "tools_list_sha256": drift.tools_list_sha256})

    def review_upstream_tools(self, principal: Principal, ctx: RequestContext, server: str) -> dict[str, Any]:
        """What ``mcp-gateway mcp approve`` shows before approving ``server``'s tools: each tool
        its upstream server lists now (for the caller's tenant), its definition, digest and
        state (``approved``, ``changed``, ``added``), the approved names it no longer lists
        (``removed``), and the ``tools_list_sha256`` to pass to :meth:`approve_upstream_tools`.

        Raises:
            PermissionDenied (1003): no ``policy:admin`` scope.
            NotFound (6001): no such server. DependencyUnavailable (5003): it cannot start.
        """
        self.authorize(principal, ctx, "policy:admin")
        listing = self._server_listing(principal, server)
        drift = self._drift(server, listing)
        tools = []
        for name, tool in sorted(listing.tools.items()):
            definition = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
            state = "approved" if name in drift.approved else "changed" if name in drift.changed else "added"
            tools.append({"name": name, "served_as": exposed_name(server, name), "state": state,
                          "sha256": listing.digests[name], "definition": definition})
        return {"server": server, "tools": tools, "removed": sorted(drift.removed),
                "tools_list_sha256": drift.tools_list_sha256, "approved_tools_list_sha256": drift.approved_sha256}

    def approve_upstream_tools(self, principal: Principal, ctx: RequestContext, server: str,
                               tools_list_sha256: str) -> dict[str, Any]:
        """Approve ``server``'s tools as listed now, if they are still the set the operator
        reviewed (``tools_list_sha256`` from :meth:`review_upstream_tools`): the approvals
        file (mode 0600) records each tool's digest, and a ``tools_approved`` event the
        change. Served at once by every sandbox of the server on this gateway.

        Raises:
            PermissionDenied (1003): no ``policy:admin`` scope. NotFound (6001): no such server.
            InvalidParameter (2001): the listing changed since it was reviewed (review again).
            DependencyUnavailable (5003): it cannot start.
        """
        self.authorize(principal, ctx, "policy:admin")
        listing = self._server_listing(principal, server)
        digests = listing.digests
        drift = self._drift(server, listing)
        if drift.tools_list_sha256 != tools_list_sha256:
            raise InvalidParameter(
                f"the tools of {server!r} changed since they were reviewed (now {drift.tools_list_sha256}); "
                "review them again", details={"field": "tools_list_sha256", "tools_list_sha256": drift.tools_list_sha256})
        approval = self._approvals.approve(server, digests)
        changes = _changes_text(drift)
        self._audit.emit("tools_approved", ctx, principal, upstream_server=server,
                         tools_list_sha256_old=drift.approved_sha256, tools_list_sha256_new=approval.tools_list_sha256,
                         tools_changed=clip(changes, 1024) if changes else None)
        log.warning("upstream MCP server %s: tools approved by %s/%s (%s)", server, principal.tenant, principal.id,
                    changes or "unchanged")
        return {"server": server, "tools_list_sha256": approval.tools_list_sha256, "approved_at": approval.approved_at,
                "tools": sorted(digests)}

    def _server_listing(self, principal: Principal, server: str) -> Listing:
        if server not in self._upstream.servers:
            raise NotFound(f"no upstream MCP server {server!r} is configured (mcp.servers)",
                           details={"server": server})
        return self._upstream.listing(server, principal.tenant)

    def stop_upstream(self) -> None:
        """Stop every upstream server's sandbox (shutdown; blocking until they are reaped)."""
        self._upstream.close()

    def _audit_tool_result(self, ctx: RequestContext, principal: Principal, server: str, decision: Decision,
                           started: float, *, result: dict[str, Any] | None = None,
                           error: GatewayError | None = None) -> None:
        """The ``tool_result`` event closing an upstream call whose decision is audited; a
        failing sink keeps it for later (deferred) and the caller still gets the result."""
        if error is not None:
            status = "TIMED_OUT" if "timeout_s" in error.details else \
                "CANCELLED" if error.details.get("cancelled") else "FAILED"
        else:
            status = "FAILED" if result and result.get("isError") else "COMPLETED"
        try:
            self._audit.emit(
                "tool_result", ctx, principal, defer=True, upstream_server=server, status=status,
                decision_id=decision.decision_id,
                duration_ms=int((time.monotonic() - started) * 1000), error_code=error.code if error else None,
                response_bytes=result_bytes(result) if result is not None else None)
        except AuditError as exc:
            log.warning("audit event for the end of an upstream call of %s is not written yet: %s", server, exc)

    def _drift(self, server: str, listing: Listing) -> ToolDrift:
        """How ``listing`` compares with ``server``'s approval (an unreadable approvals
        file approves nothing: fail closed, logged)."""
        try:
            approval = self._approvals.get(server)
        except ValueError as exc:
            log.error("approvals unreadable, every upstream tool is withheld: %s", exc)
            approval = None
        return compare(listing.digests, approval)

    def _observe_listing(self, server: str, tenant: str, listing: Listing) -> None:
        """Each listing of an upstream server (on the hub's thread): a tool set that differs
        from the approved one is audited (``tool_definition_changed``) and counted, once for
        each tenant until its listing differs again (or matches the approval in between)."""
        drift = self._drift(server, listing)
        key = (server, tenant)
        if drift.clean:
            self._drift_seen.pop(key, None)
            return
        if self._drift_seen.get(key) == drift.tools_list_sha256:
            return
        self._drift_seen[key] = drift.tools_list_sha256
        UPSTREAM_TOOL_CHANGES.labels(server).inc()
        changes = _changes_text(drift)
        log.warning("upstream MCP server %s (tenant %s) lists tools that are not approved (%s): withheld",
                    server, tenant, changes)
        self._audit_upstream("tool_definition_changed", server, tenant, method="tools/list",
                             tools_list_sha256_old=drift.approved_sha256,
                             tools_list_sha256_new=drift.tools_list_sha256, tools_changed=clip(changes, 1024))

    def _upstream_egress_denied(self, server: str, tenant: str, denial: Any) -> None:
        """A restricted upstream server's refused connection: an ``egress_denied`` event."""
        self._audit_upstream("egress_denied", server, tenant, method="upstream", egress_host=denial.host[:255],
                             egress_port=denial.port, egress_reason=denial.reason)

    def _audit_upstream(self, event_type: str, server: str, tenant: str, **fields: Any) -> None:
        """An event of an upstream server that no call caused (the gateway's own, in
        ``tenant``); a failing sink keeps it for later (deferred), and it is logged."""
        try:
            self._audit.emit(event_type, None, None, defer=True, principal="mcp-gateway", tenant=tenant,
                             auth_scheme="none", upstream_server=server, **fields)
        except AuditError as exc:
            log.warning("audit event %s of upstream MCP server %s is not written yet: %s", event_type, server, exc)

    async def cancel_task(self, principal: Principal, ctx: RequestContext, task_id: str) -> TaskRecord:
        """Cancel the caller's task and return it once final (CANCELLED, or the state it
        reached first); a task already final is returned as it is, so cancel is idempotent.
        A task another replica runs is cancelled through the store; if it is not final
        within 10 s the task is returned as it is then, with the cancel still requested.

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:cancel``.
            InvalidFormat (2003) / NotFound (6001) / StorageError (5002): as ``get_task``.
        """
        record = await asyncio.to_thread(self.get_task, principal, ctx, task_id, scope="tasks:cancel")
        return await self.abandon_task(record)

    async def abandon_task(self, record: TaskRecord) -> TaskRecord:
        """Cancel ``record``, a task the caller has just created (``execute_command``) and
        no longer waits for (an MCP client cancelled its ``tools/call``); returns it as
        :meth:`cancel_task` does.

        Raises:
            StorageError (5002): the store failed.
        """
        if record.final:
            return record
        task_id = record.task_id
        if await asyncio.to_thread(self._tasks.cancel_local, task_id) is None:
            # run by another replica (or it just ended): ask its owner
            await asyncio.to_thread(self._store.request_cancel, task_id)
        final = await self._tasks.wait_final(task_id, _CANCEL_WAIT_S)
        return final if final is not None else record

    async def wait_task(self, record: TaskRecord, wait_s: float) -> TaskRecord:
        """``record``, a task the caller has just created (``execute_command`` with
        ``req.wait_s``, which it validated), once final, or as it is after ``wait_s``
        seconds. The caller was authorized when it created the task; the wait holds no
        admission slot and no thread. A task of this process answers the moment its final
        state is stored and its ``task_end`` event written.

        Raises:
            StorageError (5002): the store failed while the task's state was read.
        """
        if wait_s <= 0:
            return record
        current = await self._tasks.wait_final(record.task_id, wait_s)
        return current if current is not None else record

    def follow_task(self, record: TaskRecord, offset: int = 0) -> AsyncIterator[OutputChunk]:
        """The output log of ``record``, a task the caller has just created
        (``execute_command``, which authorized it), from entry ``offset`` on, live, ending
        with the EXIT_CODE entry: what an edge that waits for the task streams meanwhile.

        Raises (while iterating):
            StorageError (5002): the store failed.
        """
        return self._tasks.follow(record.task_id, offset)

    def read_output(
        self, principal: Principal, ctx: RequestContext, task_id: str, offset: int, limit: int
    ) -> tuple[TaskRecord, list[OutputChunk]]:
        """The caller's task, and up to ``limit`` entries of its output log from entry
        ``offset`` as stored now (no waiting; an empty list past the end).

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:read``.
            InvalidParameter (2001): ``offset`` is negative or too large, ``limit`` below 1.
            InvalidFormat (2003) / NotFound (6001) / StorageError (5002): as ``get_task``.
        """
        if not 0 <= offset <= _MAX_OFFSET:
            raise InvalidParameter("offset must be between 0 and 2^63-1", details={"field": "offset"})
        if limit < 1:
            raise InvalidParameter("limit must be at least 1", details={"field": "limit"})
        record = self.get_task(principal, ctx, task_id)
        return record, self._store.read_output(task_id, offset, limit)

    def stream_output(
        self, principal: Principal, ctx: RequestContext, task_id: str, offset: int
    ) -> AsyncIterator[OutputChunk]:
        """The caller's task output log from entry ``offset`` on, live, ending with the
        EXIT_CODE entry (see ``OutputChunk`` for the numbering).

        Raises (before the first entry):
            PermissionDenied (1003): the principal lacks ``tasks:read``.
            InvalidParameter (2001): ``offset`` is negative or too large.
            InvalidFormat (2003) / NotFound (6001) / StorageError (5002): as ``get_task``.
        """
        if not 0 <= offset <= _MAX_OFFSET:
            raise InvalidParameter("offset must be between 0 and 2^63-1", details={"field": "offset"})
        self.get_task(principal, ctx, task_id)
        return self._tasks.follow(task_id, offset)

    # -- files ----------------------------------------------------------------

    def read_file(self, principal: Principal, ctx: RequestContext, workspace: str, path: str) -> FileContent:
        """Read a file of the caller's workspace (policy action ``file.read``).

        Raises:
            PermissionDenied (1003): the principal lacks ``files:read``.
            MissingParameter / InvalidFormat (2002 / 2003): no or a malformed workspace id.
            InvalidParameter (2001): a directory, or larger than ``files.max_read_bytes``.
            FileDenied (3003): policy said no, or the path leaves the workspace (``..``,
                another absolute path, a symbolic link on the way).
            NotFound (6001): no such workspace in the tenant, or no such file.
            PolicyEngineError (5003) / AuditError (5001): fail closed, nothing is read.
        """
        rel = self._authorize_file(principal, ctx, "files:read", "file.read", workspace, path)
        with self._workspaces.open_dir(principal.tenant, workspace, create=False) as wdir:
            content = files.read_file(wdir.fd, rel, max_bytes=self._settings.files.max_read_bytes)
        return FileContent(path, content, files.guess_mime_type(rel))

    def write_file(
        self, principal: Principal, ctx: RequestContext, workspace: str, path: str, content: bytes,
        *, mode: int, create_dirs: bool,
    ) -> int:
        """Write (atomically replace) a file of the caller's workspace, creating the
        workspace when new; returns the bytes written. Policy action ``file.write``.

        Raises:
            PermissionDenied (1003): the principal lacks ``files:write``.
            InvalidParameter (2001): content over ``files.max_write_bytes``, a bad mode,
                a missing parent without ``create_dirs``, a directory in the way.
            SandboxLimitExceeded (4003): the disk or quota is full.
            others as :meth:`read_file`.
        """
        cap = self._settings.files.max_write_bytes
        if len(content) > cap:
            raise InvalidParameter(f"content is larger than {cap} bytes", details={"field": "content", "max": cap})
        if not 0 <= mode <= 0o777:
            raise InvalidParameter("mode must be permission bits within 0o777", details={"field": "mode"})
        rel = self._authorize_file(
            principal, ctx, "files:write", "file.write", workspace, path, mode=f"{mode:04o}" if mode else "",
            request_bytes=len(content),
        )
        with self._workspaces.open_dir(principal.tenant, workspace, create=True) as wdir:
            return files.write_file(wdir.fd, rel, content, mode=mode, create_dirs=create_dirs, owner=wdir.owner)

    def delete_file(
        self, principal: Principal, ctx: RequestContext, workspace: str, path: str, *, recursive: bool
    ) -> None:
        """Delete a file (or, with ``recursive``, a directory tree; symbolic links are
        removed, never followed) of the caller's workspace. Policy action ``file.delete``.

        Raises:
            PermissionDenied (1003): the principal lacks ``files:write``.
            InvalidParameter (2001): the workspace root itself, or a non-empty directory
                without ``recursive``.
            others as :meth:`read_file`.
        """
        rel = self._authorize_file(principal, ctx, "files:write", "file.delete", workspace, path)
        with self._workspaces.open_dir(principal.tenant, workspace, create=False) as wdir:
            files.delete_path(wdir.fd, rel, recursive=recursive)

    def _authorize_file(
        self, principal: Principal, ctx: RequestContext, scope: str, action: str, workspace: str, path: str,
        *, mode: str = "", request_bytes: int | None = None,
    ) -> str:
        """Scope, validation, policy decision and its audit event for one file call;
        returns the workspace-relative path to act on."""
        self.authorize(principal, ctx, scope)
        _check_workspace_id(workspace, "workspace")
        # Policy sees the canonical sandbox path (/workspace/<rel>), so path roots apply to
        # relative paths too; a path that leaves the workspace reaches policy as given, so
        # the attempt is a denial with its rule id in the audit trail. (A NUL or an
        # over-long path is refused before policy: InvalidParameter.)
        refused: FileDenied | None = None
        try:
            rel = files.workspace_relative(path)
            policy_path = f"{_SANDBOX_CWD}/{rel}" if rel else _SANDBOX_CWD
        except FileDenied as exc:
            rel, refused, policy_path = "", exc, path
        counts = self._audit.count_call(ctx, principal, file=True)  # the call is audited from here on
        policy_input = {
            "principal": self._principal_input(principal),
            "action": action,
            "file": {"path": policy_path, "mode": mode},
            "context": self._context_input(ctx),
        }
        tool = action.replace(".", "_")  # file_read, file_write, file_delete
        audit = {"tool_name": tool, "workspace": workspace, "file_path": clip(path, 1024) or ".",
                 "request_bytes": request_bytes if request_bytes is not None else ctx.request_bytes,
                 **counts}
        try:
            decision = self._decide(policy_input)
        except PolicyEngineError as exc:
            self._audit.emit("file", ctx, principal, error_code=exc.code, **audit,
                             **self._decision_fields(None, exc.message))
            raise
        denied = None if decision.allow else _denial(decision)
        self._audit.emit("file", ctx, principal, error_code=denied.code if denied else None, **audit,
                         **self._decision_fields(decision, None))
        if denied is not None:
            raise denied
        if refused is not None:  # whatever policy allowed, the call acts strictly beneath the workspace
            raise refused
        return rel

    # -- steps ----------------------------------------------------------------

    def _decide(self, policy_input: dict[str, Any]) -> Decision:
        """The policy decision, counted and timed in metrics; PolicyEngineError (5003) on
        any engine failure (the caller audits it and nothing runs)."""
        engine = self._policy.name
        start = time.perf_counter()
        with stage("policy.evaluate", mcp__policy_engine=engine, mcp__action=policy_input.get("action")) as current:
            try:
                decision = self._policy.evaluate(policy_input)
            except PolicyEngineError as exc:
                POLICY_DECISIONS.labels(engine, "error").inc()
                current.set_attribute("mcp.decision", "error")
                set_error(current, exc.code, exc.message)
                raise
            finally:
                observe(POLICY_EVAL_SECONDS.labels(engine), time.perf_counter() - start)
            outcome = "allow" if decision.allow else "deny"
            current.set_attributes({"mcp.decision": outcome, "mcp.policy_revision": decision.revision,
                                    "mcp.policy_rule": ",".join(decision.rule_ids)})
        POLICY_DECISIONS.labels(engine, outcome).inc()
        trace.get_current_span().set_attribute("mcp.decision", outcome)
        return decision

    def _validate(self, req: ExecuteRequest) -> None:
        lim = self._settings.limits
        if not req.command.strip():
            raise MissingParameter("command is required and must not be blank", details={"field": "command"})
        _no_nul("command", [req.command])
        if len(req.command.encode()) > lim.max_command_bytes:
            raise InvalidParameter(
                f"command is longer than {lim.max_command_bytes} bytes", details={"field": "command"}
            )
        _no_nul("args", req.args)
        if len(req.args) > lim.max_args:
            raise InvalidParameter(f"more than {lim.max_args} arguments", details={"field": "args"})
        if sum(len(a.encode()) for a in req.args) > lim.max_args_bytes:
            raise InvalidParameter(
                f"arguments exceed {lim.max_args_bytes} bytes in total", details={"field": "args"}
            )
        _no_nul("env", [*req.env, *req.env.values()])
        if len(req.env) > lim.max_env:
            raise InvalidParameter(f"more than {lim.max_env} environment variables", details={"field": "env"})
        if sum(len(k.encode()) + len(v.encode()) for k, v in req.env.items()) > lim.max_env_bytes:
            raise InvalidParameter(f"environment exceeds {lim.max_env_bytes} bytes", details={"field": "env"})
        bad_keys = sorted(k for k in req.env if not _ENV_KEY.match(k))
        if bad_keys:
            raise InvalidFormat(
                "environment variable names must match [A-Za-z_][A-Za-z0-9_]*",
                details={"field": "env", "keys": bad_keys[:10]},
            )
        _no_nul("metadata", [*req.metadata, *req.metadata.values()])
        if len(req.metadata) > lim.max_metadata or (
            sum(len(k.encode()) + len(v.encode()) for k, v in req.metadata.items()) > lim.max_metadata_bytes
        ):
            raise InvalidParameter(
                f"metadata exceeds {lim.max_metadata} entries or {lim.max_metadata_bytes} bytes",
                details={"field": "metadata"},
            )
        if req.cwd is not None:
            _no_nul("cwd", [req.cwd])
            if len(req.cwd.encode()) > lim.max_command_bytes:
                raise InvalidParameter("cwd is too long", details={"field": "cwd"})
        for name, paths in (("ro_paths", req.ro_paths), ("rw_paths", req.rw_paths),
                            ("denied_paths", req.denied_paths)):
            _no_nul(name, paths)
            if len(paths) > lim.max_paths:
                raise InvalidParameter(f"more than {lim.max_paths} {name}", details={"field": name})
            if any(not p.startswith("/") for p in paths):
                raise InvalidFormat(f"{name} must be absolute paths", details={"field": name})
        _no_nul("allowed_hosts", req.hosts)
        if len(req.hosts) > lim.max_paths:
            raise InvalidParameter(f"more than {lim.max_paths} allowed_hosts", details={"field": "allowed_hosts"})
        try:
            AllowList.parse(req.hosts)
        except ValueError as exc:
            raise InvalidFormat(str(exc), details={"field": "allowed_hosts"}) from exc
        maxima = self._settings.sandbox
        if req.timeout_s > maxima.max_timeout_s:
            raise InvalidParameter(
                f"timeout {req.timeout_s} s exceeds the server maximum of {maxima.max_timeout_s} s",
                details={"field": "timeout", "max": maxima.max_timeout_s},
            )
        max_wait_s = self._settings.tasks.max_wait_s
        if not 0 <= req.wait_s <= max_wait_s:  # NaN fails both
            raise InvalidParameter(
                f"wait must be between 0 and the server maximum of {max_wait_s:g} s",
                details={"field": "wait", "max": max_wait_s},
            )
        if req.network is not None and req.network not in _NETWORK_ORDER:
            raise InvalidParameter(f"unknown network mode {req.network!r}", details={"field": "network"})
        if not 0 <= req.cpu_cores <= maxima.max_cpu_cores or req.cpu_cores != req.cpu_cores:
            raise InvalidParameter(
                f"cpu_limit must be between 0 and {maxima.max_cpu_cores} cores",
                details={"field": "cpu_limit", "max": maxima.max_cpu_cores},
            )
        # A limit the host cannot enforce is refused, never accepted and silently dropped.
        enforced = self._tasks.enforced
        if req.network == "restricted" and "egress" not in enforced:
            raise SandboxSetupFailed(
                "network access 'restricted' (a host allow-list) needs the gateway to run as root, "
                "where its egress proxy can enforce it",
                details={"field": "network", "enforced": sorted(enforced)},
            )
        for field, value, needs in (("cpu_limit", req.cpu_cores, "cpu"), ("pids_limit", req.pids, "pids"),
                                    ("io_weight", req.io_weight, "io")):
            if value and needs not in enforced:
                raise SandboxSetupFailed(
                    f"{field} cannot be enforced on this host (no {needs} cgroup controller)",
                    details={"field": field, "enforced": sorted(enforced)},
                )

    def _policy_input(
        self, principal: Principal, ctx: RequestContext, req: ExecuteRequest, cwd: str
    ) -> dict[str, Any]:
        return {
            "principal": self._principal_input(principal),
            "action": "command.execute",
            "command": {
                "name": req.command,
                "args": list(req.args),
                "cwd": cwd,
                "env_keys": sorted(req.env),
            },
            "network": {"access": req.network or "none", "hosts": list(req.hosts)},
            "resources": {
                "timeout_s": req.timeout_s,
                "memory_bytes": req.memory_bytes,
                "pids": req.pids,
                "cpu": req.cpu_cores,
            },
            "context": self._context_input(ctx),
        }

    @staticmethod
    def _principal_input(principal: Principal) -> dict[str, Any]:
        return {
            "id": principal.id,
            "tenant": principal.tenant,
            "roles": list(principal.roles),
            "scopes": list(principal.scopes),
        }

    @staticmethod
    def _context_input(ctx: RequestContext) -> dict[str, Any]:
        context: dict[str, Any] = {
            "transport": ctx.transport,
            "client_addr": ctx.client_addr,
            "request_id": ctx.request_id,
            "time_ns": time.time_ns(),
        }
        if ctx.mcp is not None:
            context["mcp"] = {"tool": ctx.mcp.tool, "protocol_version": ctx.mcp.protocol_version,
                              "client_name": ctx.mcp.client_name, "client_version": ctx.mcp.client_version}
        return context

    def _plan(self, req: ExecuteRequest, cwd: str, decision: Decision) -> ExecutionPlan:
        grant = decision.sandbox
        if grant is None:  # the engine validates this; an allow without a grant is malformed
            raise PolicyEngineError("policy allowed without a sandbox grant")
        maxima = self._settings.sandbox
        timeout_s = min(req.timeout_s or maxima.default_timeout_s, grant.timeout_s, maxima.max_timeout_s)
        memory_bytes = min(req.memory_bytes or grant.memory_bytes, grant.memory_bytes, maxima.max_memory_bytes)
        ro_paths = _narrow_paths(req.ro_paths, grant.ro_paths + grant.rw_paths, req.denied_paths, "ro_paths")
        rw_paths = _narrow_paths(req.rw_paths, grant.rw_paths, req.denied_paths, "rw_paths")
        self._refuse_gateway_paths(ro_paths + rw_paths)
        network = _narrower_network(req.network or "none", grant.network)
        allowed_hosts: tuple[str, ...] = ()
        if network == "restricted":
            allowed_hosts = tuple(grant.allowed_hosts)
            try:
                AllowList.parse(allowed_hosts)
            except ValueError as exc:  # the policy's data is wrong: nothing runs
                raise PolicyEngineError(f"policy granted an egress allow-list the proxy cannot enforce: {exc}") from exc
        return ExecutionPlan(
            argv=(req.command, *req.args),
            env=dict(req.env),
            cwd=cwd,
            network=network,
            timeout_s=max(1, timeout_s),
            memory_bytes=memory_bytes,
            pids=min(req.pids or grant.pids, grant.pids, maxima.max_pids),
            cpu_seconds=max(1, min(grant.cpu_seconds, maxima.max_cpu_seconds)),
            cpu_cores=req.cpu_cores or None,
            ro_paths=ro_paths,
            rw_paths=rw_paths,
            allowed_hosts=allowed_hosts,
            requested_hosts=req.hosts if network == "restricted" else (),
        )

    def _refuse_gateway_paths(self, paths: tuple[str, ...]) -> None:
        """No bind may expose the gateway's own state (task store, audit log, every task's
        workspace) or its policy, whatever policy grants: a path equal to, inside or above
        one of them is refused (FileDenied, 3003)."""
        exposed = [p for p in paths if any(_within(p, o) or _within(o, p) for o in self._own_paths)]
        if exposed:
            raise FileDenied(
                f"binding {', '.join(exposed[:5])} would expose the gateway's own state or policy",
                details={"paths": exposed[:5]},
            )

    def _audit_decision(
        self,
        ctx: RequestContext,
        principal: Principal,
        req: ExecuteRequest,
        decision: Decision | None,
        counts: dict[str, int],
        *,
        task_id: str | None = None,
        error_code: int | None = None,
        reason: str | None = None,
        rate_limit: str | None = None,
    ) -> None:
        self._audit.emit(
            "decision",
            ctx,
            principal,
            task_id=task_id,
            tool_name="execute_command",
            command=redact_command(req.command, req.args),
            command_sha256=_sha256(req.command),
            args_sha256=args_sha256(req.args),
            request_bytes=ctx.request_bytes,
            **counts,
            error_code=error_code,
            rate_limit=rate_limit,
            **self._decision_fields(decision, reason),
        )

    def _audit_not_run(
        self, ctx: RequestContext, principal: Principal, task_id: str, decision: Decision, exc: BaseException
    ) -> None:
        """Close the trail of a task whose ``allow`` decision is audited but that failed
        before it was queued (the store refused it): ``task_end`` FAILED with the failure's
        code, deferred until the sink writes again when it fails now (a full disk fails the
        store and the audit file alike). The caller raises the original error either way."""
        try:
            self._audit.emit(
                "task_end", ctx, principal, defer=True, task_id=task_id, tool_name="execute_command",
                decision_id=decision.decision_id, status=TaskStatus.FAILED.name,
                error_code=exc.code if isinstance(exc, GatewayError) else InternalError.code,
            )
        except AuditError as exc:
            log.warning("audit event for the end of task %s (never run) is not written yet: %s", task_id, exc)

    def _decision_fields(self, decision: Decision | None, reason: str | None) -> dict[str, Any]:
        """The audit fields of a decision (``decision``, ``policy_*``, ``decision_id``);
        no decision means the engine failed with ``reason``."""
        if decision is None:
            return {"decision": "error", "policy_reason": clip(reason or "policy engine error"),
                    "policy_revision": self._policy.revision, "policy_engine": self._policy.name}
        return {
            "decision": "allow" if decision.allow else "deny",
            "policy_rule": ",".join(decision.rule_ids) or None,
            "policy_reason": clip(decision.reasons[0]) if decision.reasons else None,
            "policy_revision": decision.revision,
            "policy_engine": decision.engine,
            "decision_id": decision.decision_id,
        }


def _check_workspace_id(workspace: str, field: str) -> None:
    if not workspace:
        raise MissingParameter(f"{field} is required", details={"field": field})
    if not WORKSPACE_ID_PATTERN.match(workspace):
        raise InvalidFormat(
            f"{field} must match {WORKSPACE_ID_PATTERN.pattern}", details={"field": field}
        )


def _visible(record: TaskRecord, principal: Principal) -> bool:
    """Tasks are the tenant's: its admins see them all, other principals their own."""
    return record.tenant == principal.tenant and (record.principal_id == principal.id or principal.tenant_admin)


def _unix_ns(text: str) -> int:
    """An RFC 3339 ``date-time`` (section 5.6: ``T`` or a space, ``Z`` or an offset, a leap
    second read as :59) as unix nanoseconds, within 0 .. 2^63-1; InvalidFormat (2003)
    otherwise."""
    match = _RFC3339.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
        zone = timezone.utc if match[8] in ("Z", "z") else timezone(
            (-1 if match[8][0] == "-" else 1) * timedelta(hours=int(match[8][1:3]), minutes=int(match[8][4:6])))
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except ValueError:
        raise InvalidFormat("since must be an RFC 3339 time, e.g. 2026-12-07T09:00:00Z",
                            details={"field": "since"}) from None
    fraction = int((match[7] or ".0")[1:10].ljust(9, "0"))
    ns = int(moment.timestamp()) * 1_000_000_000 + fraction
    return min(max(0, ns), _MAX_OFFSET)  # int64 in both stores


def _page_token(last: TaskRecord) -> str:
    """An opaque cursor after ``last``: its creation time and id. It names no tenant or
    principal: a page is always read with the caller's own visibility, so a forged token can
    only move the cursor within what the caller may see anyway."""
    return f"{last.created_at_ns}.{last.task_id}"


def _page_cursor(token: str) -> tuple[int, str]:
    """The ``(created_at_ns, task_id)`` of a :func:`_page_token`; InvalidFormat (2003) otherwise."""
    created, _, task_id = token.partition(".")
    if PAGE_TOKEN_PATTERN.fullmatch(token) and int(created) <= _MAX_OFFSET:
        return int(created), task_id
    raise InvalidFormat("page_token is not a token this gateway issued", details={"field": "page_token"})


def _changes_text(drift: ToolDrift) -> str:
    """``changed:a,b added:c removed:d`` (the parts that are not empty)."""
    return " ".join(f"{what}:{','.join(sorted(names))}" for what, names in
                    (("changed", drift.changed), ("added", drift.added), ("removed", drift.removed)) if names)


def _no_nul(field: str, values: Any) -> None:
    if any("\x00" in v for v in values):
        raise InvalidParameter(f"{field} contains a NUL byte", details={"field": field})


def _sandbox_cwd(cwd: str | None) -> str:
    """The working directory inside the sandbox: relative paths are under /workspace."""
    if not cwd:
        return _SANDBOX_CWD
    return cwd if cwd.startswith("/") else f"{_SANDBOX_CWD}/{cwd}"


def _denial(decision: Decision) -> PolicyDenied:
    category = decision.rule_ids[0].split(".", 1)[0] if decision.rule_ids else "command"
    cls = _DENY_BY_CATEGORY.get(category, CommandDenied)
    reasons = list(decision.reasons) or ["denied by policy"]
    return cls(
        "policy denied the request: " + "; ".join(reasons),
        details={"reasons": reasons, "rule_ids": list(decision.rule_ids), "decision_id": decision.decision_id},
    )


def _narrower_network(requested: str, granted: str) -> str:
    return min(requested, granted, key=_NETWORK_ORDER.index)


def _narrow_paths(
    requested: tuple[str, ...], granted: tuple[str, ...], denied: tuple[str, ...], field: str
) -> tuple[str, ...]:
    """Requested paths that lie within a grant (an empty request takes the grant), minus denied ones."""
    if requested:
        outside = [p for p in requested if not any(_within(p, g) for g in granted)]
        if outside:
            raise FileDenied(
                f"{field} outside what policy grants: {', '.join(outside[:5])}",
                details={"field": field, "paths": outside[:5]},
            )
        chosen = requested
    else:
        chosen = granted
    kept = tuple(p for p in chosen if not any(_within(p, d) for d in denied))
    for d in denied:
        if any(_within(d, p) and d != p for p in kept):
            raise InvalidParameter(
                f"denied path {d} lies inside a granted path; masking sub-paths is not supported",
                details={"field": "denied_paths"},
            )
    return kept


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
