"""The task manager (gateway/tasks/manager.py) with a fake sandbox runner and everything
else real (SQLite store, workspaces, audit file): admission, scheduling and quotas, cancel
(queued, running, through the store), drain, failures, live output, retention, orphans."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import sandbox
from gateway.audit import AuditLog, FileSink
from gateway.config import Settings, TaskSettings
from gateway.errors import DependencyUnavailable, RateLimited, StorageError
from gateway.models import (
    ExecutionPlan,
    OutputChunk,
    OutputKind,
    Principal,
    RequestContext,
    TaskRecord,
    TaskResult,
    TaskStatus,
    TaskType,
)
from gateway.tasks import Isolation, SqliteTaskStore, TaskManager
from gateway.tasks import manager as manager_module
from gateway.tasks.workspaces import WorkspaceManager

from tests.conftest import wait_until

OWNER = "gw-test"
ALICE = Principal("alice", "acme", roles=("user",), scopes=("tasks:execute",))
BOB = Principal("bob", "acme", roles=("user",), scopes=("tasks:execute",))
CTX = RequestContext.for_call(transport="grpc", method="ExecuteCommand", peer="127.0.0.1:40000",
                              server_host="127.0.0.1", server_port=8081, request_bytes=0, user_agent="pytest")
STEP_TIMEOUT_S = 3.0  # generous bound for one awaited step; passing runs take milliseconds
RUNNER_GIVE_UP_S = 10.0  # a fake run nobody releases ends by itself: a broken test never hangs


class FakeRunner:
    """The sandbox seam. A run is named by ``spec.argv[1]``; it emits the output scripted
    for its name, raises the scripted exception, or else blocks until :meth:`release`
    (exit 0) or its cancel event (exit 137, ``limit_reason="cancelled"``, as the real
    supervisor reports a kill on cancel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self._started: dict[str, threading.Event] = {}
        self.calls: list[str] = []  # names, in the order their runs started
        self.cancels: dict[str, threading.Event] = {}  # the cancel event each run got
        self.specs: dict[str, sandbox.SandboxSpec] = {}
        self.outputs: dict[str, list[tuple[int, bytes]]] = {}
        self.raises: dict[str, BaseException] = {}

    def _event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        with self._lock:
            return table.setdefault(name, threading.Event())

    def release(self, *names: str) -> None:
        """Let these runs exit 0 (now, or at once when they start later)."""
        for name in names:
            self._event(self._gates, name).set()

    def wait_started(self, *names: str) -> None:
        for name in names:
            assert self._event(self._started, name).wait(STEP_TIMEOUT_S), f"run {name!r} did not start"

    def started(self, name: str) -> bool:
        return self._event(self._started, name).is_set()

    def __call__(self, spec: sandbox.SandboxSpec, *, cancel: threading.Event, bwrap_path: str,
                 cgroups: sandbox.CgroupPool | None, on_output: sandbox.OutputListener,
                 netns: sandbox.NetnsPool | None, egress: sandbox.EgressAttach | None) -> sandbox.SandboxResult:
        name = spec.argv[1]
        with self._lock:
            self.calls.append(name)
            self.cancels[name] = cancel
            self.specs[name] = spec
        self._event(self._started, name).set()
        for stream, data in self.outputs.get(name, ()):
            on_output(stream, data, False)
        if name in self.raises:
            raise self.raises[name]
        gate = self._event(self._gates, name)
        deadline = time.monotonic() + RUNNER_GIVE_UP_S
        while not gate.wait(0.002):
            if cancel.is_set():
                return _result(137, limit_reason="cancelled")
            if time.monotonic() > deadline:
                return _result(99, error="the fake run was never released")
        stdout = b"".join(data for stream, data in self.outputs.get(name, ()) if stream == 1)
        return _result(0, stdout=stdout)


def _result(exit_code: int, *, limit_reason: str | None = None, stdout: bytes = b"",
            error: str | None = None) -> sandbox.SandboxResult:
    return sandbox.SandboxResult(
        exit_code=exit_code, signal=exit_code - 128 if exit_code > 128 else None, stdout=stdout, stderr=b"",
        stdout_truncated=False, stderr_truncated=False, limit_reason=limit_reason,
        usage=sandbox.ResourceUsage(cpu_time_ms=1, max_memory_kb=1024, io_read_bytes=0, io_write_bytes=0),
        duration_ms=2.0, setup_error=error,
    )


class Harness:
    """A TaskManager on real parts in ``tmp_path``, with a FakeRunner; submits tasks the
    way ``GatewayService.execute_command`` does."""

    def __init__(self, tmp_path: Path, store: Any = None, **task_settings: Any) -> None:
        settings = Settings()
        self.tmp_path = tmp_path
        self.sqlite = SqliteTaskStore(tmp_path / "tasks.db")
        self.sqlite.claim_owner(OWNER)
        self.store = store(self.sqlite) if store is not None else self.sqlite
        root = tmp_path / "workspaces"
        root.mkdir(mode=0o711)
        root.chmod(0o711)
        self.workspaces = WorkspaceManager(root, uids=None)
        self.audit_path = tmp_path / "audit.jsonl"
        self._sink = FileSink(self.audit_path)
        self.runner = FakeRunner()
        self.task_settings = TaskSettings(**{"output_flush_ms": 10, **task_settings})
        self.manager = TaskManager(
            self.store, AuditLog(self._sink), settings.sandbox, self.task_settings, self.workspaces,
            Isolation(None, None), OWNER, runner=self.runner,
        )

    def submit(self, name: str, principal: Principal = ALICE) -> str:
        """Reserve, store and submit the task ``name``; returns its id."""
        self.manager.reserve(principal)
        task_id = "task-" + uuid.uuid4().hex
        record = TaskRecord(
            task_id=task_id, task_type=TaskType.COMMAND, status=TaskStatus.QUEUED, tenant=principal.tenant,
            principal_id=principal.id, command="fake", args=(name,), metadata={}, created_at_ns=time.time_ns(),
            decision_id=f"dec-{name}", owner=self.manager.owner, workspace=task_id,
        )
        self.sqlite.create(record)
        self.manager.submit(record, _plan(name), CTX, principal)
        return task_id

    def get(self, task_id: str) -> TaskRecord:
        record = self.sqlite.get(task_id)
        assert record is not None
        return record

    def wait_final(self, task_id: str, timeout_s: float = STEP_TIMEOUT_S) -> TaskRecord:
        return wait_until(lambda: (r := self.get(task_id)).final and r, timeout_s, f"final state of {task_id}")

    def wait_idle(self) -> None:
        """Every worker is done with its task (counters are given back after the final state)."""
        wait_until(lambda: self.manager.running == 0 and self.manager.queued == 0, what="an idle manager")

    def log(self, task_id: str) -> list[OutputChunk]:
        return self.sqlite.read_output(task_id, 0, 10_000)

    def task_end_events(self, task_id: str) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self.audit_path.read_text().splitlines()] \
            if self.audit_path.exists() else []
        return [e for e in events if e["event_type"] == "task_end" and e.get("task_id") == task_id]

    def close(self) -> None:
        self.manager.drain(0)
        self.sqlite.close()
        self._sink.close()


def _plan(name: str) -> ExecutionPlan:
    return ExecutionPlan(argv=("fake", name), env={}, cwd="/workspace", network="none", timeout_s=30,
                         memory_bytes=256 << 20, pids=64, cpu_seconds=30)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``harness(**task_settings)``: a Harness drained and closed after the test."""
    made: list[Harness] = []

    def make(store: Any = None, **task_settings: Any) -> Harness:
        made.append(Harness(tmp_path / f"h{len(made)}", store, **task_settings))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _assert_ends_with_exit_code(chunks: Sequence[OutputChunk], exit_code: int, status: TaskStatus) -> None:
    """The log is contiguous from 0 and ends with exactly one task_end event and one EXIT_CODE entry."""
    assert [c.offset for c in chunks] == list(range(len(chunks)))
    assert [c.kind for c in chunks].count(OutputKind.EXIT_CODE) == 1
    assert (chunks[-1].kind, chunks[-1].data) == (OutputKind.EXIT_CODE, str(exit_code).encode())
    ends = [json.loads(c.data) for c in chunks if c.kind is OutputKind.EVENT and b'"task_end"' in c.data]
    assert len(ends) == 1 and chunks[-2].kind is OutputKind.EVENT
    assert ends[0]["status"] == status.name and ends[0]["exit_code"] == exit_code


# -- admission --------------------------------------------------------------------------


def test_reserve_beyond_queue_capacity_is_rate_limited(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1, max_queued=2)
    for principal in (ALICE, BOB, ALICE):  # capacity: max_concurrent + max_queued
        h.manager.reserve(principal)

    with pytest.raises(RateLimited) as err:
        h.manager.reserve(BOB)

    assert err.value.code == 4290
    assert err.value.retry_after_s >= 1
    assert err.value.details == {"limit": "queue", "pending": 3, "capacity": 3}


def test_stored_tasks_count_against_capacity_until_they_end(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1, max_queued=1)
    running, queued = h.submit("running"), h.submit("queued")
    h.runner.wait_started("running")

    with pytest.raises(RateLimited):
        h.manager.reserve(BOB)

    h.runner.release("running", "queued")
    h.wait_final(running), h.wait_final(queued)
    h.wait_idle()
    h.manager.reserve(BOB)


def test_the_per_principal_quota_is_rate_limited_naming_the_quota(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1, max_queued=10)
    h.submit("a1")
    h.manager.reserve(ALICE, principal_quota=2)

    with pytest.raises(RateLimited) as err:
        h.manager.reserve(ALICE, principal_quota=2)

    assert "quota 2" in err.value.message
    assert err.value.retry_after_s >= 1
    assert err.value.details == {"limit": "principal_concurrent_tasks", "pending": 2, "quota": 2}
    h.manager.reserve(BOB, principal_quota=2)  # another principal is not affected


def test_the_per_tenant_quota_counts_every_principal_of_the_tenant(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1, max_queued=10)
    carol = Principal(id=ALICE.id, tenant="other", roles=("user",), scopes=ALICE.scopes)
    h.manager.reserve(ALICE, tenant_quota=2)
    h.manager.reserve(BOB, tenant_quota=2)

    with pytest.raises(RateLimited) as err:
        h.manager.reserve(BOB, tenant_quota=2)

    assert err.value.details["limit"] == "tenant_concurrent_tasks"
    h.manager.reserve(carol, principal_quota=1, tenant_quota=2)  # same id, other tenant: counted apart
    h.manager.release(ALICE)
    h.manager.reserve(BOB, tenant_quota=2)


def test_release_gives_the_admission_back(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1, max_queued=1)
    h.manager.reserve(ALICE, principal_quota=1)
    h.manager.reserve(BOB, principal_quota=1)
    with pytest.raises(RateLimited):
        h.manager.reserve(BOB, principal_quota=1)

    h.manager.release(ALICE)

    with pytest.raises(RateLimited, match="quota 1"):
        h.manager.reserve(BOB, principal_quota=1)  # the freed slot is not bob's to exceed his own quota
    h.manager.reserve(ALICE, principal_quota=1)


# -- scheduling -------------------------------------------------------------------------


def test_a_principal_at_its_running_quota_waits_while_others_run(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=2, max_running_per_principal=1)
    a1, a2 = h.submit("a1", ALICE), h.submit("a2", ALICE)
    b1 = h.submit("b1", BOB)

    h.runner.wait_started("a1", "b1")
    assert not h.runner.started("a2")
    assert (h.manager.running, h.manager.queued) == (2, 1)
    assert h.get(a2).status is TaskStatus.QUEUED

    h.runner.release("a1")
    h.runner.wait_started("a2")
    assert h.get(a1).status is TaskStatus.COMPLETED
    h.runner.release("a2", "b1")
    assert h.wait_final(a2).status is TaskStatus.COMPLETED
    assert h.wait_final(b1).status is TaskStatus.COMPLETED
    assert sorted(h.runner.calls[:2]) == ["a1", "b1"] and h.runner.calls[2:] == ["a2"]


def test_runnable_tasks_start_in_fifo_order(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    first = h.submit("first")
    h.runner.wait_started("first")
    names = [f"t{n}" for n in range(5)]
    h.runner.release(*names)
    ids = [h.submit(name, ALICE if n % 2 else BOB) for n, name in enumerate(names)]

    h.runner.release("first")

    for task_id in [first, *ids]:
        assert h.wait_final(task_id).status is TaskStatus.COMPLETED
    assert h.runner.calls == ["first", *names]


def test_counters_return_to_zero_and_the_full_capacity_is_usable_again(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=2, max_queued=2)
    names = [f"t{n}" for n in range(4)]
    ids = [h.submit(name) for name in names]
    h.runner.wait_started("t0", "t1")
    assert (h.manager.running, h.manager.queued) == (2, 2)
    with pytest.raises(RateLimited):
        h.manager.reserve(ALICE)

    h.runner.release(*names)
    for task_id in ids:
        assert h.wait_final(task_id).status is TaskStatus.COMPLETED
    h.wait_idle()

    for _ in range(4):  # alice alone may fill the whole queue again
        h.manager.reserve(ALICE)
    with pytest.raises(RateLimited):
        h.manager.reserve(BOB)


def test_the_spec_runs_the_plan_in_the_tasks_workspace(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.runner.release("t")
    task_id = h.submit("t")
    h.wait_final(task_id)

    spec = h.runner.specs["t"]
    assert spec.argv == ("fake", "t")
    assert spec.network is sandbox.NetworkMode.NONE
    assert Path(spec.workspace).parent.parent == h.workspaces.root
    assert Path(spec.workspace).name == task_id
    assert spec.run_as is None
    assert h.workspaces.leased == 0  # the lease was given back


# -- cancel -----------------------------------------------------------------------------


def test_cancel_of_a_queued_task_records_it_without_running_it(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    blocker, victim = h.submit("blocker"), h.submit("victim")
    h.runner.wait_started("blocker")

    done = h.manager.cancel_local(victim)

    assert done is not None and done.wait(STEP_TIMEOUT_S)
    record = h.get(victim)
    assert record.status is TaskStatus.CANCELLED
    assert record.started_at_ns is None
    assert record.result is not None and record.result.limit_reason == "cancelled"
    _assert_ends_with_exit_code(h.log(victim), -1, TaskStatus.CANCELLED)
    (event,) = h.task_end_events(victim)
    assert event["status"] == "CANCELLED" and event["principal"] == "alice"
    assert not h.manager.is_local(victim)
    assert h.manager.queued == 0

    h.runner.release("blocker")
    assert h.wait_final(blocker).status is TaskStatus.COMPLETED
    h.wait_idle()
    assert "victim" not in h.runner.calls


def test_cancel_of_a_running_task_kills_its_run(harness: Callable[..., Harness]) -> None:
    h = harness()
    task_id = h.submit("victim")
    h.runner.wait_started("victim")

    done = h.manager.cancel_local(task_id)

    assert done is not None and done.wait(STEP_TIMEOUT_S)
    assert h.runner.cancels["victim"].is_set()
    record = h.get(task_id)
    assert record.status is TaskStatus.CANCELLED
    assert record.started_at_ns is not None
    assert record.result is not None and (record.result.exit_code, record.result.limit_reason) == (137, "cancelled")
    _assert_ends_with_exit_code(h.log(task_id), 137, TaskStatus.CANCELLED)
    (event,) = h.task_end_events(task_id)
    assert (event["status"], event["sandbox_violation"]) == ("CANCELLED", "cancelled")


def test_cancel_of_an_unknown_task_is_none(harness: Callable[..., Harness]) -> None:
    h = harness()

    assert h.manager.cancel_local("task-" + "f" * 32) is None


def test_a_cancel_requested_through_the_store_ends_a_running_task_within_a_second(
        harness: Callable[..., Harness]) -> None:
    h = harness()
    task_id = h.submit("victim")
    h.runner.wait_started("victim")

    asked = time.monotonic()
    assert h.sqlite.request_cancel(task_id) is not None  # what another replica does
    record = h.wait_final(task_id)

    assert time.monotonic() - asked < 1.0  # polled every 250 ms
    assert record.status is TaskStatus.CANCELLED
    assert not record.cancel_requested
    assert h.runner.cancels["victim"].is_set()


def test_a_cancel_requested_through_the_store_takes_a_queued_task_out(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    h.submit("blocker")
    victim = h.submit("victim")
    h.runner.wait_started("blocker")

    h.sqlite.request_cancel(victim)
    record = h.wait_final(victim)

    assert record.status is TaskStatus.CANCELLED and record.started_at_ns is None
    h.runner.release("blocker")
    h.wait_idle()
    assert "victim" not in h.runner.calls


# -- drain ------------------------------------------------------------------------------


def test_drain_cancels_queued_tasks_at_once_and_lets_running_ones_finish(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    running, queued = h.submit("running"), h.submit("queued")
    h.runner.wait_started("running")

    drainer = threading.Thread(target=h.manager.drain, args=(STEP_TIMEOUT_S,))
    drainer.start()
    try:
        assert h.wait_final(queued).status is TaskStatus.CANCELLED
        assert h.get(running).status is TaskStatus.RUNNING
        assert not h.manager.accepting
        h.runner.release("running")
    finally:
        drainer.join(STEP_TIMEOUT_S)

    assert not drainer.is_alive()
    assert h.get(running).status is TaskStatus.COMPLETED
    assert not h.runner.cancels["running"].is_set()
    assert "queued" not in h.runner.calls


def test_drain_cancels_running_tasks_left_after_the_grace_period(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=2)
    stubborn = h.submit("stubborn")
    h.runner.wait_started("stubborn")

    started = time.monotonic()
    h.manager.drain(0.2)
    elapsed_s = time.monotonic() - started

    assert 0.2 <= elapsed_s < 0.2 + STEP_TIMEOUT_S
    assert h.runner.cancels["stubborn"].is_set()
    assert h.get(stubborn).status is TaskStatus.CANCELLED  # final before drain returned
    assert h.task_end_events(stubborn)[0]["status"] == "CANCELLED"


def test_reserve_after_drain_is_refused_as_unavailable(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.manager.drain(0)

    with pytest.raises(DependencyUnavailable) as err:
        h.manager.reserve(ALICE)

    assert err.value.code == 5003


def test_a_task_admitted_before_drain_and_submitted_after_it_still_ends(harness: Callable[..., Harness]) -> None:
    # execute_command reserves, then audits and stores the task, then submits: a SIGTERM
    # drain can run in between. drain() promises every task of this process a final state.
    h = harness()
    h.manager.reserve(ALICE)
    h.manager.drain(0)
    task_id = "task-" + uuid.uuid4().hex
    record = TaskRecord(
        task_id=task_id, task_type=TaskType.COMMAND, status=TaskStatus.QUEUED, tenant="acme", principal_id="alice",
        command="fake", args=("late",), metadata={}, created_at_ns=time.time_ns(), decision_id="dec-late",
        owner=h.manager.owner, workspace=task_id,
    )
    h.sqlite.create(record)

    h.manager.submit(record, _plan("late"), CTX, ALICE)

    assert h.wait_final(task_id, timeout_s=1.0).status is TaskStatus.CANCELLED


# -- failures ---------------------------------------------------------------------------


def test_a_runner_crash_fails_the_task_and_the_worker_goes_on(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    h.runner.raises["boom"] = RuntimeError("kaput")
    h.runner.release("next")
    boom, after = h.submit("boom"), h.submit("next")

    record = h.wait_final(boom)

    assert record.status is TaskStatus.FAILED
    assert record.result is not None
    assert (record.result.exit_code, record.result.error) == (-1, "internal error while running the task")
    _assert_ends_with_exit_code(h.log(boom), -1, TaskStatus.FAILED)
    assert h.task_end_events(boom)[0]["status"] == "FAILED"
    assert h.wait_final(after).status is TaskStatus.COMPLETED


def test_a_sandbox_error_fails_the_task_with_its_message(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.runner.raises["setup"] = sandbox.SandboxSetupError("bwrap: Can't mount proc on /newroot/proc")

    record = h.wait_final(h.submit("setup"))

    assert record.status is TaskStatus.FAILED
    assert record.result is not None and record.result.error == "bwrap: Can't mount proc on /newroot/proc"
    assert h.workspaces.leased == 0


class _FinishFailsOnce:
    """The store, except that the first ``finish`` raises StorageError (nothing stored)."""

    def __init__(self, store: SqliteTaskStore) -> None:
        self._store = store
        self.failures = 1

    def finish(self, task_id: str, status: TaskStatus, completed_at_ns: int, result: TaskResult | None,
               final_chunks: Sequence[OutputChunk] = ()) -> bool:
        if self.failures:
            self.failures -= 1
            raise StorageError("task store: database is locked (injected)")
        return self._store.finish(task_id, status, completed_at_ns, result, final_chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_final_state_stored_on_a_retry_is_stored(harness: Callable[..., Harness]) -> None:
    h = harness(store=_FinishFailsOnce)
    h.runner.release("t")

    record = h.wait_final(h.submit("t"))

    assert record.status is TaskStatus.COMPLETED


def test_a_final_state_stored_on_a_retry_ends_the_log_with_one_exit_code(harness: Callable[..., Harness]) -> None:
    h = harness(store=_FinishFailsOnce)
    h.runner.outputs["t"] = [(1, b"hello\n")]
    h.runner.release("t")

    task_id = h.submit("t")
    h.wait_final(task_id)

    _assert_ends_with_exit_code(h.log(task_id), 0, TaskStatus.COMPLETED)


class _FinishAlwaysFails(_FinishFailsOnce):
    """The store, with every ``finish`` failing (a full disk)."""

    def __init__(self, store: SqliteTaskStore) -> None:
        super().__init__(store)
        self.failures = 10**9


def test_a_task_whose_end_cannot_be_stored_still_ends_in_the_audit_trail(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "_FINISH_ATTEMPTS", 2)
    h = harness(store=_FinishAlwaysFails)
    h.runner.release("t")

    task_id = h.submit("t")

    (event,) = wait_until(lambda: h.task_end_events(task_id), what="the task_end event")
    assert (event["status"], event["exit_code"], event["error_code"]) == ("COMPLETED", 0, 5002)
    assert not h.get(task_id).final


# -- output -----------------------------------------------------------------------------


def test_output_of_the_run_reaches_the_store_while_it_runs_and_with_its_end(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.runner.outputs["t"] = [(1, b"hello "), (2, b"oops\n"), (1, b"world\n")]
    task_id = h.submit("t")

    live = wait_until(lambda: len(h.log(task_id)) == 3 and h.log(task_id), what="live output in the store")
    assert h.get(task_id).status is TaskStatus.RUNNING
    h.runner.release("t")
    record = h.wait_final(task_id)

    chunks = h.log(task_id)
    assert chunks[:3] == live
    assert [(c.kind, c.data) for c in chunks[:3]] == [
        (OutputKind.STDOUT, b"hello "), (OutputKind.STDERR, b"oops\n"), (OutputKind.STDOUT, b"world\n"),
    ]
    _assert_ends_with_exit_code(chunks, 0, TaskStatus.COMPLETED)
    assert record.result is not None and record.result.stdout == "hello world\n"


def test_follow_gives_the_log_of_a_local_task_live_to_its_end(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.runner.outputs["t"] = [(1, b"hello\n")]
    task_id = h.submit("t")

    async def follow() -> list[OutputChunk]:
        follower = h.manager.follow(task_id, 0)
        try:
            first = await asyncio.wait_for(anext(follower), STEP_TIMEOUT_S)
            h.runner.release("t")
            return [first, *[chunk async for chunk in follower]]
        finally:
            await follower.aclose()

    seen = asyncio.run(follow())

    assert seen[0].data == b"hello\n"
    assert seen == h.log(task_id)
    _assert_ends_with_exit_code(seen, 0, TaskStatus.COMPLETED)


def test_wait_final_answers_the_stored_record_when_the_task_ends(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.runner.outputs["t"] = [(1, b"out\n")]
    task_id = h.submit("t")
    h.runner.wait_started("t")

    async def wait() -> TaskRecord | None:
        waiter = asyncio.ensure_future(h.manager.wait_final(task_id, 30))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # it waits for the end, not for a poll or its timeout
        h.runner.release("t")
        return await asyncio.wait_for(waiter, STEP_TIMEOUT_S)

    final = asyncio.run(wait())

    assert final is not None and final.status is TaskStatus.COMPLETED
    assert final == h.get(task_id)  # the answer is what the store holds, field for field
    assert final.result is not None and final.result.stdout == "out\n"


def test_wait_final_of_a_task_that_runs_on_answers_it_as_it_is(harness: Callable[..., Harness]) -> None:
    h = harness()
    task_id = h.submit("t")
    h.runner.wait_started("t")

    record = asyncio.run(h.manager.wait_final(task_id, 0.05))

    assert record is not None and record.status is TaskStatus.RUNNING and record.result is None
    h.runner.release("t")
    assert asyncio.run(h.manager.wait_final(task_id, STEP_TIMEOUT_S)) == h.wait_final(task_id)


def test_wait_final_of_a_task_cancelled_in_the_queue(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    h.submit("blocker")
    victim = h.submit("victim")
    h.runner.wait_started("blocker")

    async def wait() -> TaskRecord | None:
        waiter = asyncio.ensure_future(h.manager.wait_final(victim, 30))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(h.manager.cancel_local, victim)
        return await asyncio.wait_for(waiter, STEP_TIMEOUT_S)

    final = asyncio.run(wait())

    assert final is not None and final.status is TaskStatus.CANCELLED and final == h.get(victim)
    h.runner.release("blocker")


# -- housekeeping -----------------------------------------------------------------------


def test_sweep_purges_finished_tasks_past_retention_and_keeps_unfinished_ones(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=2)
    h.runner.release("finished")
    finished, running = h.submit("finished"), h.submit("running")
    h.wait_final(finished)
    h.runner.wait_started("running")

    assert h.manager.sweep() == (0, 0)  # nothing is old yet
    later_ns = time.time_ns() + (h.task_settings.retention_s + 60) * 1_000_000_000
    purged, removed_workspaces = h.manager.sweep(now_ns=later_ns)

    assert purged == 1
    assert removed_workspaces == 1  # the finished task's; the running one's is leased
    assert h.sqlite.get(finished) is None
    assert h.log(finished) == []
    assert h.get(running).status is TaskStatus.RUNNING
    assert Path(h.runner.specs["running"].workspace).is_dir()


def test_fail_orphaned_fails_the_unfinished_tasks_of_another_owner(harness: Callable[..., Harness]) -> None:
    h = harness()
    orphan = "task-" + "d" * 32
    h.sqlite.create(TaskRecord(
        task_id=orphan, task_type=TaskType.COMMAND, status=TaskStatus.RUNNING, tenant="acme", principal_id="alice",
        command="sleep", args=("60",), metadata={}, created_at_ns=time.time_ns(), decision_id="dec-dead",
        started_at_ns=time.time_ns(), owner="gw-dead", workspace=orphan,
    ))
    mine = h.submit("mine")
    h.runner.wait_started("mine")

    assert h.manager.fail_orphaned() == [orphan]

    record = h.get(orphan)
    assert record.status is TaskStatus.FAILED
    assert record.result is not None and (record.result.exit_code, record.result.error) == (-1, "gateway_restart")
    assert [(c.kind, c.data) for c in h.log(orphan)] == [(OutputKind.EXIT_CODE, b"-1")]
    assert h.get(mine).status is TaskStatus.RUNNING
    assert h.manager.fail_orphaned() == []
