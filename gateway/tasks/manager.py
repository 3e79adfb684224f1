"""Task lifecycle: admission, queue, run in the sandbox, live output, cancel, drain.

Admission (:meth:`TaskManager.reserve`, before anything is stored or run): at most
``tasks.max_concurrent + tasks.max_queued`` tasks pending in this process, and at most the
caller's quotas (``rate_limits`` ``concurrent_tasks``, per principal and per tenant);
beyond any of them the caller gets :class:`RateLimited` (4290) with a Retry-After
estimated from the queue and the recent task durations.

Scheduling: ``max_concurrent`` worker threads take the oldest queued task whose principal
runs fewer than ``tasks.max_running_per_principal`` tasks, so one principal's burst waits
behind its own quota while others' tasks go ahead. A running task holds a workspace lease
(the tenant's workspace directory and the uid it runs as, see ``workspaces``) and a
cgroup slot (``Isolation``), and writes its output log through the ``OutputHub``.

State transitions written to the store: QUEUED -> RUNNING -> one of COMPLETED (the
command ran and exited, any code), TIMED_OUT (wall-clock limit), CANCELLED, FAILED (the
sandbox could not start the command); QUEUED -> CANCELLED for a cancel before it ran.
Every final state is written together with the last entries of the task's output log.

Cancel works from any replica: the owner kills a local sandbox at once; another
replica sets ``cancel_requested`` in the store, which the owner polls every 250 ms.

Drain (:meth:`TaskManager.drain`, on SIGTERM): refuse new tasks, cancel queued ones,
let running ones finish within the grace period, then cancel the rest; every task ends
with a stored final state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from opentelemetry import context as otel_context

import sandbox
from gateway.audit.log import AuditError, AuditLog, redact_command
from gateway.config import SandboxSettings, TaskSettings
from gateway.egress.allowlist import AllowList
from gateway.egress.proxy import Denial, EgressProxy, EgressTask
from gateway.errors import DependencyUnavailable, RateLimited, SandboxSetupFailed, StorageError
from gateway.observability.metrics import (
    SANDBOX_LIMIT_HITS,
    SANDBOX_RUN_SECONDS,
    TASK_QUEUE_REJECTIONS,
    TASK_QUEUE_WAIT_SECONDS,
    TASK_SECONDS,
    limit_kind,
    observe,
    track_tasks,
)
from gateway.models import (
    ExecutionPlan,
    OutputChunk,
    Principal,
    RequestContext,
    ResourceUsage,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from gateway.observability.logs import bind_call
from gateway.observability.tracing import record_stage, set_error, span
from gateway.tasks.output import OutputHub, OutputLog
from gateway.tasks.store import TaskQuota, TaskStore, check_quota
from gateway.tasks.workspaces import WorkspaceLease, WorkspaceManager

__all__ = ["Isolation", "SandboxRunner", "TaskManager", "status_for_result"]

log = logging.getLogger(__name__)

#: The sandbox seam: ``sandbox.run`` in production; tests may pass another callable.
SandboxRunner = Callable[..., sandbox.SandboxResult]

_FINISH_ATTEMPTS = 8  # a final state that cannot be stored is retried, over ~50 s (store outage)
_MAX_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class Isolation:
    """What the host gives each running task beyond the sandbox itself.

    uids     a uid/gid pair per running task (gateway is root), or None: sandboxes then
             share the gateway's own uid
    cgroups  reusable per-task cgroup slots, or None (see ``sandbox.cgroup``)
    netns    network namespaces made ahead for tasks without network (root only), or None
             (see ``sandbox.netns``)
    egress   the proxy of ``restricted`` tasks (root only), or None: such tasks are then
             refused (``gateway.egress``)
    """

    uids: sandbox.UidPool | None
    cgroups: sandbox.CgroupPool | None
    netns: sandbox.NetnsPool | None = None
    egress: EgressProxy | None = None

    @property
    def cgroup_version(self) -> int | None:
        """1 or 2 when tasks run in cgroup slots, else None."""
        return self.cgroups.version if self.cgroups is not None else None

    @property
    def enforced(self) -> frozenset[str]:
        """Per-task limits this host enforces, from {"memory", "swap", "pids", "cpu",
        "egress"}. Memory always (RLIMIT_AS without a memory cgroup); pids by the pids cgroup
        or, with a uid per task, by RLIMIT_NPROC on that uid; egress (the restricted network's
        allow-list) by the egress proxy."""
        found = {"memory"}
        if self.cgroups is not None:
            found |= self.cgroups.controllers
        if self.uids is not None:
            found.add("pids")
        if self.egress is not None:
            found.add("egress")
        return frozenset(found)


@dataclass
class _Job:
    record: TaskRecord
    plan: ExecutionPlan
    ctx: RequestContext
    principal: Principal
    # the submitting call's trace context: the task's spans are children of its span
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    started_at_ns: int | None = None
    final: TaskRecord | None = None  # the record as stored final, once it is
    # called (from the worker) once the job is over: the waiters of wait_final
    on_done: list[Callable[[], object]] = field(default_factory=list)

    @property
    def running_key(self) -> tuple[str, str]:
        """Whose running quota the job counts against: (tenant, principal id)."""
        return self.principal.tenant, self.principal.id


def _pending_keys(principal: Principal) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """Where a principal's pending tasks are counted: as its own, (tenant, id), and as its
    tenant's, (tenant, None)."""
    return (principal.tenant, principal.id), (principal.tenant, None)


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
    """Runs this process's tasks with bounded concurrency; follows any task's output.

    Args:
        store: where task state and output logs are recorded (shared by replicas).
        audit: where ``task_end`` events go.
        sandbox_settings, task_settings: limits, pool and queue sizes, quotas.
        workspaces: the tenants' workspaces (and the uid each running task gets).
        isolation: cgroup slots (and the uid pool, also used by ``workspaces``).
        owner: this process's instance id, written into every task it creates.
        runner: the sandbox seam, ``sandbox.run`` by default.
    """

    def __init__(
        self,
        store: TaskStore,
        audit: AuditLog,
        sandbox_settings: SandboxSettings,
        task_settings: TaskSettings,
        workspaces: WorkspaceManager,
        isolation: Isolation,
        owner: str,
        runner: SandboxRunner = sandbox.run,
    ) -> None:
        self._store = store
        self._audit = audit
        self._sandbox = sandbox_settings
        self._settings = task_settings
        self._capacity = task_settings.max_concurrent + task_settings.max_queued
        self._running_quota = task_settings.running_per_principal
        # Without a pids cgroup or a uid per task, all sandboxes share the gateway's uid: cap
        # that uid's processes at what every concurrent task may have (a host backstop).
        self._shared_uid_cap = sandbox_settings.max_pids * task_settings.max_concurrent
        self._workspaces = workspaces
        self._isolation = isolation
        self.owner = owner
        self._runner = runner
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}  # queued or running here
        self._reserved = 0  # admitted, not yet submitted or finished
        # reserved + queued + running, by (tenant, principal id) and by (tenant, None)
        self._pending_by: Counter[tuple[str, str | None]] = Counter()
        self._running_by: Counter[tuple[str, str]] = Counter()
        self._running = 0
        self._accepting = True
        self._avg_task_s = 1.0  # EWMA of task run time, for Retry-After
        self.output = OutputHub(store, task_settings.output_flush_ms, on_tick=self._poll_cancel_requests,
                                on_lost=self.cancel_local)
        self._workers = [
            threading.Thread(target=self._work, name=f"sandbox-{i}", daemon=True)
            for i in range(task_settings.max_concurrent)
        ]
        for worker in self._workers:
            worker.start()
        track_tasks(lambda: self.running, lambda: self.queued, task_settings.max_concurrent, task_settings.max_queued)

    # -- state ------------------------------------------------------------------

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
        """Tasks of this process waiting for a worker."""
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        """Tasks whose sandbox is running in this process now."""
        with self._cond:
            return self._running

    @property
    def accepting(self) -> bool:
        """False once :meth:`drain` began."""
        return self._accepting

    # -- admission and submission -------------------------------------------------

    def reserve(self, principal: Principal, *, principal_quota: int = 0, tenant_quota: int = 0) -> None:
        """Admit one task of ``principal`` (before it is stored). A quota is the number of
        tasks queued or running at once, for the principal and for its whole tenant; 0 = none.

        Raises:
            RateLimited (4290): the queue is full, or the principal or its tenant has its
                quota of tasks pending; ``retry_after_s`` estimated.
            DependencyUnavailable (5003): the gateway is shutting down.
        """
        with self._cond:
            if not self._accepting:
                raise DependencyUnavailable("the gateway is shutting down; retry on another replica")
            pending = len(self._jobs) + self._reserved
            if pending >= self._capacity:
                TASK_QUEUE_REJECTIONS.labels("queue_full").inc()
                raise RateLimited(
                    "task queue is full, retry later",
                    retry_after_s=self._retry_after(len(self._queue) + 1),
                    details={"limit": "queue", "pending": pending, "capacity": self._capacity},
                )
            keys = _pending_keys(principal)
            try:
                check_quota(TaskQuota(principal_quota, tenant_quota), *(self._pending_by[key] for key in keys),
                            retry_after_s=self._retry_after(1))
            except RateLimited as exc:
                who = str(exc.details["limit"]).removesuffix("_concurrent_tasks")
                TASK_QUEUE_REJECTIONS.labels(f"{who}_quota").inc()
                raise
            self._reserved += 1
            self._pending_by.update(keys)

    def release(self, principal: Principal) -> None:
        """Give back an admission whose task was never submitted."""
        with self._cond:
            self._reserved -= 1
            self._forget_principal(principal)

    def submit(self, record: TaskRecord, plan: ExecutionPlan, ctx: RequestContext, principal: Principal) -> None:
        """Queue a stored, admitted task for execution."""
        job = _Job(record, plan, ctx, principal)
        with self._cond:
            self._reserved -= 1
            accepted = self._accepting
            if accepted:
                self._jobs[record.task_id] = job
                self._queue.append(job)
                self._cond.notify()  # one idle worker takes it (waking all costs a futex each)
        if not accepted:  # a drain began while the task was being stored: it never runs
            self._drop_unstarted(job)

    def _retry_after(self, ahead: int) -> int:
        """Seconds until about ``ahead`` queued tasks have started, at least 1."""
        estimate = ahead * self._avg_task_s / self._settings.max_concurrent
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(estimate)))

    def _forget_principal(self, principal: Principal) -> None:
        for key in _pending_keys(principal):
            self._pending_by[key] -= 1
            if self._pending_by[key] <= 0:
                del self._pending_by[key]

    # -- cancel -----------------------------------------------------------------

    def is_local(self, task_id: str) -> bool:
        """True while the task is queued or running in this process."""
        with self._cond:
            return task_id in self._jobs

    def cancel_local(self, task_id: str) -> threading.Event | None:
        """Cancel a task of this process: a queued one is taken out of the queue and
        recorded CANCELLED here; a running one has its sandbox killed by its worker.
        Returns the event set once the task's final state is stored, or None when the
        task is not queued or running here."""
        with self._cond:
            job = self._jobs.get(task_id)
            if job is None:
                return None
            job.cancel.set()
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
                del self._jobs[task_id]
        if queued:
            self._drop_unstarted(job)
        return job.done

    def _poll_cancel_requests(self) -> None:
        """Flusher tick: act on cancels other replicas requested for our tasks."""
        with self._cond:
            if not self._jobs:
                return
        for task_id in self._store.cancel_requests(self.owner):
            self.cancel_local(task_id)

    # -- output -----------------------------------------------------------------

    def follow(self, task_id: str, offset: int) -> AsyncIterator[OutputChunk]:
        """The task's output log from ``offset``, live (see ``OutputHub.follow``)."""

        def is_final() -> bool:
            record = self._store.get(task_id)
            return record is None or record.final

        return self.output.follow(task_id, offset, is_final)

    async def wait_final(self, task_id: str, timeout_s: float) -> TaskRecord | None:
        """The task once final, or as it is after ``timeout_s`` seconds (None if gone).

        A task of this process wakes the waiter the moment its final state is stored, and
        the answer is that stored record, kept in memory (no store read); a task of
        another replica is read from the store every 50 ms."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not ended.done():
                ended.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(settle)

        with self._cond:
            job = self._jobs.get(task_id)
            waiting = job is not None and job.final is None
            if waiting:
                job.on_done.append(wake)
        if job is not None:
            if waiting:
                timer = loop.call_later(timeout_s, settle)
                try:
                    await ended
                finally:
                    timer.cancel()
                    with self._cond:
                        if wake in job.on_done:
                            job.on_done.remove(wake)
            if job.final is not None:
                return job.final
            timeout_s = 0  # not stored as final (a store outage): the store says how it is
        deadline = time.monotonic() + timeout_s
        while True:
            record = await asyncio.to_thread(self._store.get, task_id)
            if record is None or record.final or time.monotonic() >= deadline:
                return record
            await asyncio.sleep(0.05)

    # -- workers ----------------------------------------------------------------

    def _next_job(self) -> _Job | None:
        """The oldest queued job whose principal is under its running quota (blocking);
        None when draining is done with the queue."""
        with self._cond:
            while True:
                for job in self._queue if self._accepting else ():
                    if self._running_by[job.running_key] < self._running_quota:
                        self._queue.remove(job)
                        self._running += 1
                        self._running_by[job.running_key] += 1
                        return job
                if not self._accepting and not self._queue:
                    return None  # draining: queued jobs are cancelled by drain, never started
                self._cond.wait()

    def _work(self) -> None:
        # One thread per sandbox slot, for the process's lifetime: PR_SET_PDEATHSIG fires
        # when the thread that spawned bwrap exits, so the spawning thread must outlive it.
        while (job := self._next_job()) is not None:
            try:
                self._run_job(job)
            finally:
                with self._cond:
                    self._running -= 1
                    self._running_by[job.running_key] -= 1
                    if self._running_by[job.running_key] <= 0:
                        del self._running_by[job.running_key]
                    self._jobs.pop(job.record.task_id, None)
                    self._forget_principal(job.principal)
                    self._cond.notify_all()
                self._over(job)

    def _run_job(self, job: _Job) -> None:
        """Run a dequeued job to its end, its logs and spans tied to the call that made it:
        ``task.queue`` (creation to start) and ``sandbox.run``, children of the call's span."""
        started_ns = time.time_ns()
        record_stage("task.queue", job.trace_context, job.record.created_at_ns, started_ns,
                     {"mcp.task_id": job.record.task_id})
        with bind_call(job.ctx.request_id, job.principal.id, job.principal.tenant), \
                span("sandbox.run", job.trace_context, mcp__task_id=job.record.task_id) as current:
            observe(TASK_QUEUE_WAIT_SECONDS, max(0, started_ns - job.record.created_at_ns) / 1e9)
            ended = self._start_and_run(job, started_ns)
            if ended is not None:
                status, result = ended
                current.set_attributes({"mcp.status": status.name, "mcp.exit_code": result.exit_code})
                if status is TaskStatus.FAILED:
                    set_error(current, SandboxSetupFailed.code, result.error or "the task failed")

    def _start_and_run(self, job: _Job, started_ns: int) -> tuple[TaskStatus, TaskResult] | None:
        """Mark the job running, run its sandbox and finish it; None when it never started
        (cancelled first, or the store refused)."""
        task_id = job.record.task_id
        try:
            if job.cancel.is_set() or not self._store.mark_running(task_id, started_ns):
                # Cancelled (here or through another replica) before it started.
                self._end_unstarted(job)
                return None
            job.started_at_ns = started_ns
        except Exception:
            log.exception("task %s could not be started", task_id)
            self._end_unstarted(job, "internal error while starting the task")
            return None
        output = self.output.open(task_id, self._sandbox.output_bytes)
        try:
            status, result = self._execute(job, output)
        except Exception:  # a worker must never die silently: record and log the failure
            log.exception("task %s failed inside the gateway", task_id)
            status, result = TaskStatus.FAILED, TaskResult.not_run("internal error while running the task")
        self._finish(job, output, status, result)
        duration_s = (time.time_ns() - started_ns) / 1e9
        self._avg_task_s = 0.9 * self._avg_task_s + 0.1 * duration_s
        return status, result

    def _execute(self, job: _Job, output: OutputLog) -> tuple[TaskStatus, TaskResult]:
        try:
            lease = self._workspaces.acquire(job.record.tenant, job.record.workspace)
        except (OSError, ValueError, sandbox.SandboxError) as exc:
            return TaskStatus.FAILED, TaskResult.not_run(f"workspace {job.record.workspace}: {exc}")
        try:
            spec = self.sandbox_spec(job.plan, lease)
            outcome = self._runner(
                spec, cancel=job.cancel, bwrap_path=self._sandbox.bwrap_path,
                cgroups=self._isolation.cgroups, on_output=output.add, netns=self._isolation.netns,
                egress=self._egress(job) if job.plan.network == "restricted" else None,
            )
        except sandbox.SandboxError as exc:
            return TaskStatus.FAILED, TaskResult.not_run(str(exc))
        finally:
            # run() returned only after every process of the run was reaped (and its cgroup
            # slot drained), so the lease's uid owns no process any more.
            self._workspaces.release(lease)
        return status_for_result(outcome), _to_result(outcome)

    def _finish(self, job: _Job, output: OutputLog | None, status: TaskStatus, result: TaskResult) -> None:
        """Store the final state with the log's last entries (retrying a store outage),
        then audit the end and report it to the metrics hook."""
        task_id = job.record.task_id
        completed_ns = time.time_ns()
        if output is not None:
            with output.flush_lock:  # from here on the flusher leaves this log alone
                final = output.close(status.name, result.exit_code, result.limit_reason, result.error)
        else:
            final = _last_entries(status, result)
        stored = store_down = False
        for attempt in range(_FINISH_ATTEMPTS):
            try:
                stored = self._store.finish(task_id, status, completed_ns, result, final)
                if not stored and attempt > 0:  # the failed attempt may have committed after all
                    record = self._store.get(task_id)
                    stored = record is not None and record.completed_at_ns == completed_ns
                break
            except Exception:
                log.exception("could not record the end of task %s (attempt %d)", task_id, attempt + 1)
                time.sleep(min(10.0, 0.2 * 2**attempt))
        else:
            store_down = True
        if stored:
            job.final = replace(job.record, status=status, started_at_ns=job.started_at_ns,
                                completed_at_ns=completed_ns, result=result, cancel_requested=False)
        if output is not None:
            self.output.forget(task_id)
        if not stored:
            # Already final (another replica judged this process dead and failed the task),
            # or the store stayed down through every attempt (logged above).
            log.warning("the end of task %s (%s) is not recorded", task_id, status.name)
            if store_down:  # this process did end the task: the trail says so, and that it is not stored
                self._audit_end(job, status, result, error_code=StorageError.code)
            return
        self._audit_end(job, status, result)
        self._wake(job)  # its waiters' answer: the stored final state, its task_end written
        log.info("task %s ended %s (exit %d, %d ms%s)", task_id, status.name, result.exit_code,
                 result.execution_time_ms, f", limit {result.limit_reason}" if result.limit_reason else "")
        observe(TASK_SECONDS.labels(job.record.task_type.name, status.name),
                (completed_ns - job.record.created_at_ns) / 1e9)
        if result.exit_code >= 0 or result.execution_time_ms:  # the sandbox ran
            observe(SANDBOX_RUN_SECONDS.labels(status.name), result.execution_time_ms / 1000)
        kind = limit_kind(result.limit_reason)
        if kind is not None:
            SANDBOX_LIMIT_HITS.labels(kind).inc()

    def _end_unstarted(self, job: _Job, error: str | None = None) -> None:
        """Record a task that never ran: CANCELLED, or FAILED with ``error``."""
        if error is None:
            self._finish(job, None, TaskStatus.CANCELLED, TaskResult.not_run(None, limit_reason="cancelled"))
        else:
            self._finish(job, None, TaskStatus.FAILED, TaskResult.not_run(error))

    def _drop_unstarted(self, job: _Job) -> None:
        """Cancel a job no worker will run (taken out of the queue, or refused by a
        drain): record it, give back its principal's place, wake waiters."""
        try:
            self._end_unstarted(job)
        finally:
            with self._cond:
                self._forget_principal(job.principal)
                self._cond.notify_all()
            self._over(job)

    def _over(self, job: _Job) -> None:
        """The job is out of this process's hands (its final state stored, or the store
        refused it): set ``done`` and wake its waiters."""
        job.done.set()
        self._wake(job)

    def _wake(self, job: _Job) -> None:
        """Wake the job's :meth:`wait_final` waiters (each once)."""
        with self._cond:
            waiters, job.on_done = job.on_done, []
        for wake in waiters:
            wake()

    # -- housekeeping ---------------------------------------------------------------

    def fail_orphaned(self) -> list[str]:
        """Mark FAILED (reason ``gateway_restart``) the unfinished tasks of processes that
        are gone: at start, and periodically when replicas share the store."""
        failed = self._store.fail_orphaned(self.owner, "gateway_restart", time.time_ns())
        if failed:
            log.warning("marked %d tasks of a gateway process that is gone as FAILED (gateway_restart)", len(failed))
        return failed

    def sweep(self, now_ns: int | None = None) -> tuple[int, int]:
        """Delete finished tasks (and their output) older than ``tasks.retention_s`` and
        workspaces unused for ``tasks.workspace_retention_s``; returns (tasks, workspaces)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - self._settings.retention_s * 1_000_000_000
        purged = 0
        while (n := self._store.purge_finished(cutoff, 1000)) > 0:
            purged += n
        removed = self._workspaces.sweep(self._settings.workspace_retention_s, now=now_ns / 1e9)
        if purged or removed:
            log.info("retention: deleted %d finished tasks and %d unused workspaces", purged, len(removed))
        return purged, len(removed)

    # -- shutdown -----------------------------------------------------------------

    def drain(self, grace_s: float) -> None:
        """Stop taking tasks, cancel queued ones, give running ones ``grace_s`` seconds to
        finish, cancel the rest, and wait until every task of this process is final."""
        with self._cond:
            self._accepting = False  # from now on no worker starts a queued job
            queued = [job.record.task_id for job in self._queue]
            self._cond.notify_all()
        for task_id in queued:
            self.cancel_local(task_id)
        deadline = time.monotonic() + grace_s
        with self._cond:
            while self._jobs and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            left = list(self._jobs)
        if left:
            log.warning("cancelling %d running tasks after the %.0f s shutdown grace", len(left), grace_s)
        for task_id in left:
            self.cancel_local(task_id)
        for worker in self._workers:
            worker.join()
        self.output.close()

    # -- helpers ------------------------------------------------------------------

    def run_server(self, plan: ExecutionPlan, lease: WorkspaceLease, *, stdin: int, on_output: sandbox.OutputListener,
                   cancel: threading.Event, egress: EgressTask | None = None) -> sandbox.SandboxResult:
        """Run a long-lived server (an upstream MCP server, ``gateway.upstream``) in a sandbox
        made as a task's is, with the same isolation, and wait for its end (blocking; set
        ``cancel`` to stop it). ``stdin`` (a pipe) is its standard input; everything it writes
        goes to ``on_output`` and nothing is kept (``sandbox.run(keep_output=False)``).
        ``egress``: required for a ``restricted`` plan (root only). Outside the task queue:
        the caller bounds how many run. Raises ``sandbox.SandboxError`` as ``sandbox.run``."""
        attach = None
        if plan.network == "restricted":
            if self._isolation.egress is None or egress is None:
                raise sandbox.SandboxSetupError("the restricted network needs the gateway to run as root")
            attach = self._isolation.egress.attach(egress)
        return self._runner(
            self.sandbox_spec(plan, lease), cancel=cancel, bwrap_path=self._sandbox.bwrap_path,
            cgroups=self._isolation.cgroups, on_output=on_output, netns=self._isolation.netns, egress=attach,
            stdin=stdin, keep_output=False,
        )

    def sandbox_spec(self, plan: ExecutionPlan, lease: WorkspaceLease) -> sandbox.SandboxSpec:
        """The sandbox of ``plan`` in ``lease``'s workspace, under the server's maxima."""
        s = self._sandbox
        cgroups = self._isolation.cgroups
        pids_cgroup = cgroups is not None and "pids" in cgroups.controllers
        if pids_cgroup:
            uid_process_cap = None
        elif lease.run_as is not None:
            # The uid is this workspace's own: + bwrap's two processes. Tasks running on one
            # workspace at once share its uid, and so this budget.
            uid_process_cap = plan.pids + 2
        else:
            uid_process_cap = self._shared_uid_cap
        limits = sandbox.Limits(
            timeout_s=float(plan.timeout_s),
            cpu_seconds=plan.cpu_seconds,
            memory_bytes=plan.memory_bytes,
            address_space_bytes=max(s.address_space_bytes, plan.memory_bytes),
            file_size_bytes=s.file_size_bytes,
            open_files=s.open_files,
            nice=s.nice,
            pids=plan.pids if pids_cgroup else None,
            cpu_cores=plan.cpu_cores,
            tmp_size_bytes=s.tmp_size_bytes,
            output_bytes=s.output_bytes,
            uid_process_cap=uid_process_cap,
        )
        return sandbox.SandboxSpec(
            argv=plan.argv,
            workspace=str(lease.path),
            env=dict(plan.env),
            cwd=plan.cwd,
            network=sandbox.NetworkMode(plan.network),
            ro_paths=plan.ro_paths,
            rw_paths=plan.rw_paths,
            limits=limits,
            profile=s.profile,
            run_as=lease.run_as,
        )

    def _egress(self, job: _Job) -> sandbox.EgressAttach:
        """The proxy session maker of a restricted job: its allow-list, its refusals audited as
        ``egress_denied``. Raises SandboxSetupError without a proxy (not root)."""
        proxy = self._isolation.egress
        if proxy is None:
            raise sandbox.SandboxSetupError("the restricted network needs the gateway to run as root")

        def on_denied(denial: Denial) -> None:
            self._audit.emit(
                "egress_denied", job.ctx, job.principal, defer=True, task_id=job.record.task_id,
                egress_host=denial.host[:255], egress_port=denial.port, egress_reason=denial.reason,
            )

        plan = job.plan
        narrowed = AllowList.parse(plan.requested_hosts) if plan.requested_hosts else None
        return proxy.attach(EgressTask(job.record.task_id, AllowList.parse(plan.allowed_hosts), on_denied, narrowed))

    def _audit_end(self, job: _Job, status: TaskStatus, result: TaskResult, error_code: int | None = None) -> None:
        try:
            self._audit.emit(
                "task_end",
                job.ctx,
                job.principal,
                defer=True,
                task_id=job.record.task_id,
                tool_name="execute_command",
                command=redact_command(job.record.command, job.record.args),
                decision_id=job.record.decision_id,
                exit_code=result.exit_code if result.exit_code >= 0 else None,  # absent: never ran
                status=status.name,
                duration_ms=result.execution_time_ms,
                cpu_time_ms=result.resource_usage.cpu_time_ms,
                max_memory_kb=result.resource_usage.max_memory_kb,
                sandbox_violation=result.limit_reason,
                response_bytes=result.output_bytes,
                **({"egress_bytes_sent": result.resource_usage.egress_bytes_sent,
                    "egress_bytes_received": result.resource_usage.egress_bytes_received}
                   if job.plan.network == "restricted" else {}),
                error_code=error_code,
            )
        except AuditError as exc:
            # The task already ran; its state is stored. The event waits for the sink (the
            # sink's failure itself is logged at ERROR by the audit log).
            log.warning("audit event for the end of task %s is not written yet: %s", job.record.task_id, exc)


def _last_entries(status: TaskStatus, result: TaskResult) -> list[OutputChunk]:
    """The log of a task that never ran: its ``task_end`` event and EXIT_CODE entry."""
    closing = OutputLog("", 0)
    return closing.close(status.name, result.exit_code, result.limit_reason, result.error)


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
            egress_bytes_sent=usage.egress_bytes_sent,
            egress_bytes_received=usage.egress_bytes_received,
        ),
        execution_time_ms=round(outcome.duration_ms),
        error=outcome.setup_error,
        output_bytes=len(outcome.stdout) + len(outcome.stderr),
    )
