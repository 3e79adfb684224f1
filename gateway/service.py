"""The use cases every edge calls: validate, decide, audit, run, report.

``ExecuteCommand`` is one straight sequence, and the order is the security argument:

1. validate the request (sizes, NUL bytes, formats, server maxima) so policy only
   ever sees bounded, well-formed input;
2. ask policy; an engine failure is a deny (fail closed, 5003);
3. write the decision audit event *before* acting on it; if the audit sink fails
   nothing runs (fail closed);
4. on a deny, raise the policy error (3001-3004) chosen by the deny rule's category;
5. narrow the policy grant with the request and cap it with server maxima;
6. reserve a queue slot (4290 when full), store the task, hand it to the manager.

Edges translate wire formats into these calls and map :class:`GatewayError` to their
status codes; they hold no logic of their own.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway import __version__
from gateway.audit.log import AuditLog, args_sha256, clip, redact_command
from gateway.config import Settings
from gateway.errors import (
    CommandDenied,
    FileDenied,
    GatewayError,
    InvalidFormat,
    InvalidParameter,
    MissingParameter,
    NetworkDenied,
    NotFound,
    PermissionDenied,
    PolicyDenied,
    PolicyEngineError,
    ResourceDenied,
    SandboxSetupFailed,
)
from gateway.metrics import POLICY_DECISIONS, POLICY_EVAL_SECONDS, exposition
from gateway.models import (
    Decision,
    ExecuteRequest,
    ExecutionPlan,
    Principal,
    RequestContext,
    TaskRecord,
    TaskStatus,
    TaskType,
)
from gateway.policy import PolicyEngine
from gateway.tasks import TaskManager, TaskStore

__all__ = ["GatewayService", "HealthInfo", "TASK_ID_PATTERN", "new_task_id"]

TASK_ID_PATTERN = re.compile(r"^task-[0-9a-f]{32}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DENY_BY_CATEGORY: dict[str, type[PolicyDenied]] = {
    "command": CommandDenied,
    "network": NetworkDenied,
    "file": FileDenied,
    "resource": ResourceDenied,
}
# Narrowest first: a request may only move left of what policy granted.
_NETWORK_ORDER = ("none", "loopback", "restricted", "host")
_SANDBOX_CWD = "/workspace"


def new_task_id() -> str:
    """A fresh task id: ``task-`` + 32 lowercase hex (uuid4)."""
    return "task-" + uuid.uuid4().hex


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
    """

    def __init__(
        self,
        settings: Settings,
        policy: PolicyEngine,
        store: TaskStore,
        tasks: TaskManager,
        audit: AuditLog,
    ) -> None:
        self._settings = settings
        # The gateway's own files: never bound into a sandbox, whatever policy grants.
        self._own_paths = frozenset(
            os.path.abspath(p)
            for p in (settings.state_dir, settings.workspace_root, settings.policy_dir, settings.audit_path)
        )
        self._policy = policy
        self._store = store
        self._tasks = tasks
        self._audit = audit
        self._started = time.monotonic()

    # -- health ---------------------------------------------------------------

    def health(self) -> HealthInfo:
        """Liveness: the process is up and serving."""
        return HealthInfo("SERVING", __version__, int(time.monotonic() - self._started))

    def readiness(self) -> dict[str, Any]:
        """Readiness details: policy engine and revision, task pool state, and the per-task
        limits this host enforces (a request for any other is refused with 4001)."""
        policy = self._policy_status()
        return {
            "status": "ready" if policy["healthy"] else "not_ready",
            "policy": policy,
            "tasks": {"running": self._tasks.running, "queued": self._tasks.queued},
            "sandbox": {
                "enforced_limits": sorted(self._tasks.enforced),
                "cgroup_version": self._tasks.isolation.cgroup_version,
                "uid_per_task": self._tasks.isolation.uids is not None,
            },
        }

    def metrics(self) -> bytes:
        """Prometheus text exposition of the process's metrics."""
        return exposition()

    def _policy_status(self) -> dict[str, Any]:
        healthy, detail = self._policy.health()
        return {"engine": self._policy.name, "revision": self._policy.revision, "healthy": healthy,
                "detail": detail}

    # -- commands -------------------------------------------------------------

    def execute_command(self, principal: Principal, ctx: RequestContext, req: ExecuteRequest) -> TaskRecord:
        """Decide on and queue one command; returns the stored QUEUED task.

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:execute``.
            InvalidParameter / MissingParameter / InvalidFormat (2001-2003): bad request.
            CommandDenied / NetworkDenied / FileDenied / ResourceDenied (3001-3004): policy said no.
            SandboxSetupFailed (4001): the request asks for a limit this host cannot enforce.
            RateLimited (4290): the task queue is full.
            PolicyEngineError (5003): the engine failed (nothing runs).
            AuditError (5001): the decision could not be audited (nothing runs).
            StorageError (5002): the task could not be stored.
        """
        _require_scope(principal, "tasks:execute")
        count = self._audit.count_invocation(ctx.session_id)
        self._validate(req)
        cwd = _sandbox_cwd(req.cwd)
        policy_input = self._policy_input(principal, ctx, req, cwd)
        try:
            decision = self._decide(policy_input)
        except PolicyEngineError as exc:
            self._audit_decision(ctx, principal, req, None, count, error_code=exc.code, reason=exc.message)
            raise
        if not decision.allow:
            denied = _denial(decision)
            self._audit_decision(ctx, principal, req, decision, count, error_code=denied.code)
            raise denied
        try:
            # The request may still be refused after policy allowed it (paths outside the
            # grant, queue full): the decision event then carries that error instead.
            plan = self._plan(req, cwd, decision)
            self._tasks.reserve()
        except GatewayError as exc:
            self._audit_decision(ctx, principal, req, decision, count, error_code=exc.code)
            raise
        task_id = new_task_id()
        try:
            self._audit_decision(ctx, principal, req, decision, count, task_id=task_id)
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
            )
            self._store.create(record)
        except BaseException:
            self._tasks.release()
            raise
        self._tasks.submit(record, plan, ctx, principal)
        return record

    def get_task(self, principal: Principal, task_id: str) -> TaskRecord:
        """The caller's task ``task_id``.

        Raises:
            PermissionDenied (1003): the principal lacks ``tasks:read``.
            InvalidFormat (2003): ``task_id`` is not ``task-`` + 32 lowercase hex.
            NotFound (6001): no such task in the caller's tenant (another tenant's
                task answers exactly like an unknown id).
        """
        _require_scope(principal, "tasks:read")
        if not TASK_ID_PATTERN.match(task_id):
            raise InvalidFormat(
                "task_id must be 'task-' followed by 32 lowercase hex digits",
                details={"field": "task_id"},
            )
        record = self._store.get(task_id)
        if record is None or record.tenant != principal.tenant:
            raise NotFound(f"task {task_id} not found", details={"task_id": task_id})
        return record

    # -- steps ----------------------------------------------------------------

    def _decide(self, policy_input: dict[str, Any]) -> Decision:
        """The policy decision, counted and timed in metrics; PolicyEngineError (5003) on
        any engine failure (the caller audits it and nothing runs)."""
        engine = self._policy.name
        start = time.perf_counter()
        try:
            decision = self._policy.evaluate(policy_input)
        except PolicyEngineError:
            POLICY_DECISIONS.labels(engine, "error").inc()
            raise
        finally:
            POLICY_EVAL_SECONDS.labels(engine).observe(time.perf_counter() - start)
        POLICY_DECISIONS.labels(engine, "allow" if decision.allow else "deny").inc()
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
        maxima = self._settings.sandbox
        if req.timeout_s > maxima.max_timeout_s:
            raise InvalidParameter(
                f"timeout {req.timeout_s} s exceeds the server maximum of {maxima.max_timeout_s} s",
                details={"field": "timeout", "max": maxima.max_timeout_s},
            )
        if req.network is not None and req.network not in _NETWORK_ORDER:
            raise InvalidParameter(f"unknown network mode {req.network!r}", details={"field": "network"})
        if not 0 <= req.cpu_cores <= maxima.max_cpu_cores or req.cpu_cores != req.cpu_cores:
            raise InvalidParameter(
                f"cpu_limit must be between 0 and {maxima.max_cpu_cores} cores",
                details={"field": "cpu_limit", "max": maxima.max_cpu_cores},
            )
        # A limit the host cannot enforce is refused, never accepted and silently dropped.
        if req.network == "restricted":
            raise SandboxSetupFailed(
                "network access 'restricted' (a host allow-list) cannot be enforced by this sandbox yet",
                details={"field": "network"},
            )
        enforced = self._tasks.enforced
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
            "principal": {
                "id": principal.id,
                "tenant": principal.tenant,
                "roles": list(principal.roles),
                "scopes": list(principal.scopes),
            },
            "action": "command.execute",
            "command": {
                "name": req.command,
                "args": list(req.args),
                "cwd": cwd,
                "env_keys": sorted(req.env),
            },
            "network": {"access": req.network or "none", "hosts": []},
            "resources": {
                "timeout_s": req.timeout_s,
                "memory_bytes": req.memory_bytes,
                "pids": req.pids,
                "cpu": req.cpu_cores,
            },
            "context": {
                "transport": ctx.transport,
                "client_addr": ctx.client_addr,
                "request_id": ctx.request_id,
                "time_ns": time.time_ns(),
            },
        }

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
        return ExecutionPlan(
            argv=(req.command, *req.args),
            env=dict(req.env),
            cwd=cwd,
            network=_narrower_network(req.network or "none", grant.network),
            timeout_s=max(1, timeout_s),
            memory_bytes=memory_bytes,
            pids=min(req.pids or grant.pids, grant.pids, maxima.max_pids),
            cpu_seconds=max(1, min(grant.cpu_seconds, maxima.max_cpu_seconds)),
            cpu_cores=req.cpu_cores or None,
            ro_paths=ro_paths,
            rw_paths=rw_paths,
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
        invoke_count: int,
        *,
        task_id: str | None = None,
        error_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        if decision is None:
            outcome, rules, reasons = "error", None, [reason or "policy engine error"]
        else:
            outcome = "allow" if decision.allow else "deny"
            rules, reasons = ",".join(decision.rule_ids) or None, list(decision.reasons)
        self._audit.emit(
            "decision",
            ctx,
            principal,
            task_id=task_id,
            tool_name="execute_command",
            command=redact_command(req.command, req.args),
            command_sha256=_sha256(req.command),
            args_sha256=args_sha256(req.args),
            decision=outcome,
            policy_rule=rules,
            policy_reason=clip(reasons[0]) if reasons else None,
            policy_revision=decision.revision if decision else self._policy.revision,
            policy_engine=decision.engine if decision else self._policy.name,
            decision_id=decision.decision_id if decision else None,
            request_bytes=ctx.request_bytes,
            tool_invoke_count=invoke_count,
            error_code=error_code,
        )


def _require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise PermissionDenied(f"missing scope {scope}", details={"scope": scope})


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
