"""Task lifecycle: queue, run in the sandbox, record the result, audit the end.

A bounded pool of worker threads (``tasks.max_concurrent``) runs sandboxes; at most
``tasks.max_queued`` more tasks may wait, beyond that :meth:`TaskManager.submit` raises
:class:`RateLimited` (4290) *before* anything is stored or run. A running task holds, from
:class:`Isolation`, a host uid of its own (when the gateway is root) and a cgroup slot, and
gets a fresh workspace directory (mode 0700, owned by that uid, made through a directory
fd) that is removed when it ends.

State transitions written to the store: QUEUED -> RUNNING -> one of COMPLETED (the
command ran and exited, any code), TIMED_OUT (wall-clock limit), CANCELLED, FAILED (the
sandbox could not start the command).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import sandbox
from gateway.audit.log import AuditError, AuditLog
from gateway.config import SandboxSettings, TaskSettings
from gateway.errors import RateLimited
from gateway.models import (
    ExecutionPlan,
    Principal,
    RequestContext,
    ResourceUsage,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from gateway.tasks.store import TaskStore

__all__ = ["Isolation", "SandboxRunner", "TaskManager", "status_for_result"]

log = logging.getLogger(__name__)

#: The sandbox seam: ``sandbox.run`` in production; tests may pass another callable.
SandboxRunner = Callable[..., sandbox.SandboxResult]


@dataclass(frozen=True)
class Isolation:
    """What the host gives each running task beyond the sandbox itself.

    uids     a uid/gid pair per running task (gateway is root), or None: sandboxes then
             share the gateway's own uid
    cgroups  reusable per-task cgroup slots, or None (see ``sandbox.cgroup``)
    """

    uids: sandbox.UidPool | None
    cgroups: sandbox.CgroupPool | None

    @property
    def cgroup_version(self) -> int | None:
        """1 or 2 when tasks run in cgroup slots, else None."""
        return self.cgroups.version if self.cgroups is not None else None

    @property
    def enforced(self) -> frozenset[str]:
        """Per-task limits this host enforces, from {"memory", "swap", "pids", "cpu"}.
        Memory always (RLIMIT_AS without a memory cgroup); pids by the pids cgroup or, with
        a uid per task, by RLIMIT_NPROC on that uid."""
        found = {"memory"}
        if self.cgroups is not None:
            found |= self.cgroups.controllers
        if self.uids is not None:
            found.add("pids")
        return frozenset(found)


@dataclass(frozen=True)
class _Job:
    record: TaskRecord
    plan: ExecutionPlan
    ctx: RequestContext
    principal: Principal


def status_for_result(result: sandbox.SandboxResult) -> TaskStatus:
    """Map a sandbox outcome to a final task state (design section 3)."""
    if result.setup_error is not None:
        return TaskStatus.FAILED
    if result.limit_reason == "wall_timeout":
        return TaskStatus.TIMED_OUT
    if result.limit_reason == "cancelled":
        return TaskStatus.CANCELLED
    return TaskStatus.COMPLETED


class TaskManager:
    """Runs tasks in the background with bounded concurrency.

    Args:
        store: where task state is recorded.
        audit: where ``task_end`` events go.
        sandbox_settings, task_settings: limits and pool sizes.
        workspace_root: parent directory of per-task workspaces.
        isolation: per-task uids and cgroup slots.
        runner: the sandbox seam, ``sandbox.run`` by default.
        on_task_end: called with (record, duration_ms) after a task is final
            (metrics hook); must not raise.
    """

    def __init__(
        self,
        store: TaskStore,
        audit: AuditLog,
        sandbox_settings: SandboxSettings,
        task_settings: TaskSettings,
        workspace_root: Path,
        isolation: Isolation,
        runner: SandboxRunner = sandbox.run,
        on_task_end: Callable[[TaskRecord, float], None] | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._sandbox = sandbox_settings
        self._capacity = task_settings.max_concurrent + task_settings.max_queued
        # Without a pids cgroup or a uid per task, all sandboxes share the gateway's uid: cap
        # that uid's processes at what every concurrent task may have (a host backstop).
        self._shared_uid_cap = sandbox_settings.max_pids * task_settings.max_concurrent
        self._pool = ThreadPoolExecutor(task_settings.max_concurrent, thread_name_prefix="sandbox")
        self._workspace_root = workspace_root
        self._isolation = isolation
        self._runner = runner
        self._on_task_end = on_task_end
        self._lock = threading.Lock()
        self._pending = 0
        self._running = 0
        self._cancels: dict[str, threading.Event] = {}

    @property
    def isolation(self) -> Isolation:
        """The per-task uids and cgroup slots tasks run with."""
        return self._isolation

    @property
    def enforced(self) -> frozenset[str]:
        """Per-task limits this host enforces (see :attr:`Isolation.enforced`)."""
        return self._isolation.enforced

    @property
    def queued(self) -> int:
        """Tasks accepted but not yet running."""
        with self._lock:
            return self._pending - self._running

    @property
    def running(self) -> int:
        """Tasks whose sandbox is running now."""
        with self._lock:
            return self._running

    def reserve(self) -> None:
        """Claim a queue slot for a task about to be created.

        Raises:
            RateLimited: when ``max_concurrent + max_queued`` tasks are already pending.
        """
        with self._lock:
            if self._pending >= self._capacity:
                raise RateLimited(
                    "task queue is full, retry later",
                    retry_after_s=1,
                    details={"pending": self._pending, "capacity": self._capacity},
                )
            self._pending += 1

    def release(self) -> None:
        """Give back a slot claimed by :meth:`reserve` when the task was never submitted."""
        with self._lock:
            self._pending -= 1

    def submit(self, record: TaskRecord, plan: ExecutionPlan, ctx: RequestContext, principal: Principal) -> None:
        """Queue a stored task (its slot already reserved) for execution."""
        cancel = threading.Event()
        with self._lock:
            self._cancels[record.task_id] = cancel
        self._pool.submit(self._run_job, _Job(record, plan, ctx, principal), cancel)

    def shutdown(self, *, cancel_running: bool) -> None:
        """Stop accepting work; optionally cancel running sandboxes; wait for workers."""
        if cancel_running:
            with self._lock:
                for event in self._cancels.values():
                    event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run_job(self, job: _Job, cancel: threading.Event) -> None:
        task_id = job.record.task_id
        started_ns = time.time_ns()
        with self._lock:
            self._running += 1
        try:
            self._store.mark_running(task_id, started_ns)
            status, result = self._execute(job, cancel)
            completed_ns = time.time_ns()
            self._store.finish(task_id, status, completed_ns, result)
            self._audit_end(job, status, result)
            if self._on_task_end is not None:
                self._on_task_end(job.record, (completed_ns - started_ns) / 1e6)
        except Exception:  # a worker must never die silently: record and log the failure
            log.exception("task %s failed inside the gateway", task_id)
            self._store_failure(task_id, "internal error while running the task")
        finally:
            with self._lock:
                self._running -= 1
                self._pending -= 1
                self._cancels.pop(task_id, None)

    def _execute(self, job: _Job, cancel: threading.Event) -> tuple[TaskStatus, TaskResult]:
        uids = self._isolation.uids
        run_as = uids.acquire() if uids is not None else None
        try:
            workspace = self._make_workspace(job.record.task_id, run_as)
            try:
                spec = self._spec(job.plan, workspace, run_as)
                outcome = self._runner(
                    spec, cancel=cancel, bwrap_path=self._sandbox.bwrap_path,
                    cgroups=self._isolation.cgroups,
                )
            except sandbox.SandboxError as exc:
                return TaskStatus.FAILED, _failed_result(str(exc))
            finally:
                shutil.rmtree(workspace, ignore_errors=True)
        finally:
            # run() returned only after every process of the run was reaped (and its cgroup
            # slot drained), so the uid owns nothing any more.
            if uids is not None and run_as is not None:
                uids.release(run_as)
        return status_for_result(outcome), _to_result(outcome)

    def _spec(self, plan: ExecutionPlan, workspace: Path, run_as: sandbox.RunAs | None) -> sandbox.SandboxSpec:
        s = self._sandbox
        cgroups = self._isolation.cgroups
        pids_cgroup = cgroups is not None and "pids" in cgroups.controllers
        if pids_cgroup:
            uid_process_cap = None
        elif run_as is not None:
            uid_process_cap = plan.pids + 2  # the uid is this task's own; + bwrap's two processes
        else:
            uid_process_cap = self._shared_uid_cap
        limits = sandbox.Limits(
            timeout_s=float(plan.timeout_s),
            cpu_seconds=plan.cpu_seconds,
            memory_bytes=plan.memory_bytes,
            address_space_bytes=max(s.address_space_bytes, plan.memory_bytes),
            file_size_bytes=s.file_size_bytes,
            open_files=s.open_files,
            pids=plan.pids if pids_cgroup else None,
            cpu_cores=plan.cpu_cores,
            tmp_size_bytes=s.tmp_size_bytes,
            output_bytes=s.output_bytes,
            uid_process_cap=uid_process_cap,
        )
        return sandbox.SandboxSpec(
            argv=plan.argv,
            workspace=str(workspace),
            env=dict(plan.env),
            cwd=plan.cwd,
            network=sandbox.NetworkMode(plan.network),
            ro_paths=plan.ro_paths,
            rw_paths=plan.rw_paths,
            limits=limits,
            profile=s.profile,
            run_as=run_as,
        )

    def _make_workspace(self, task_id: str, run_as: sandbox.RunAs | None) -> Path:
        """``<workspace_root>/<task_id>``, 0700, owned by ``run_as``, made through directory
        fds (``sandbox.mounts.create_workspace``); the sandbox re-checks it by fd too."""
        return Path(sandbox.create_workspace(str(self._workspace_root), task_id, run_as))

    def _audit_end(self, job: _Job, status: TaskStatus, result: TaskResult) -> None:
        try:
            self._audit.emit(
                "task_end",
                job.ctx,
                job.principal,
                task_id=job.record.task_id,
                tool_name="execute_command",
                decision_id=job.record.decision_id,
                exit_code=result.exit_code,
                status=status.name,
                duration_ms=result.execution_time_ms,
                cpu_time_ms=result.resource_usage.cpu_time_ms,
                max_memory_kb=result.resource_usage.max_memory_kb,
                sandbox_violation=result.limit_reason,
                response_bytes=len(result.stdout) + len(result.stderr),
            )
        except AuditError:
            # The task already ran; its state is stored. Losing the event is logged loudly.
            log.exception("audit event for the end of task %s was not written", job.record.task_id)

    def _store_failure(self, task_id: str, reason: str) -> None:
        try:
            self._store.finish(task_id, TaskStatus.FAILED, time.time_ns(), _failed_result(reason))
        except Exception:
            log.exception("could not record failure of task %s", task_id)


def _failed_result(error: str) -> TaskResult:
    return TaskResult(
        exit_code=-1, stdout="", stderr="", stdout_truncated=False, stderr_truncated=False,
        limit_reason=None, resource_usage=ResourceUsage(), execution_time_ms=0, error=error,
    )


def _to_result(outcome: sandbox.SandboxResult) -> TaskResult:
    usage = outcome.usage
    return TaskResult(
        exit_code=outcome.exit_code,
        stdout=outcome.stdout.decode("utf-8", errors="replace"),
        stderr=outcome.stderr.decode("utf-8", errors="replace"),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        limit_reason=outcome.limit_reason,
        resource_usage=ResourceUsage(
            cpu_time_ms=usage.cpu_time_ms,
            max_memory_kb=usage.max_memory_kb,
            io_read_bytes=usage.io_read_bytes,
            io_write_bytes=usage.io_write_bytes,
        ),
        execution_time_ms=round(outcome.duration_ms),
        error=outcome.setup_error,
    )
