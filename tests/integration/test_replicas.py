"""Gateway processes sharing one real PostgreSQL act as one service: a task created on A is
visible, streamable (live, from stored output) and cancellable through B; when A dies B
fails A's running tasks with reason ``gateway_restart``; and the rate limits and task quotas
hold for all replicas together, not for each."""

from __future__ import annotations

import base64
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProcess, start_gateway, wait_until
from tests.integration.test_task_lifecycle import TICKER, TICKS, execute, processes_with, sse_events, status, wait_status


@contextmanager
def running_replicas(state_root: Path, postgres_dsn: str, count: int,
                     env: dict[str, str] | None = None) -> Iterator[list[GatewayProcess]]:
    """``count`` gateways on one PostgreSQL store, each with a state directory of its own."""
    env = {
        "MCP_GATEWAY_TASKS__STORE_DSN": postgres_dsn,
        "MCP_GATEWAY_TASKS__ORPHAN_CHECK_INTERVAL_S": "0.5",
        "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "1",
        "MCP_GATEWAY_TASKS__SHUTDOWN_GRACE_S": "1",
        **(env or {}),
    }
    started = []
    try:
        for name in "abcdefgh"[:count]:
            started.append(start_gateway(Path(tempfile.mkdtemp(prefix=f"replica-{name}-", dir=state_root)) / "var",
                                         env=env))
        yield started
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def replicas(state_root: Path, postgres_dsn: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    with running_replicas(state_root, postgres_dsn, 2) as (a, b):
        yield a, b


def test_task_on_a_is_visible_and_streamable_through_b(replicas: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = replicas
    with httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        started = time.monotonic()
        task_id = execute(on_a, TICKER)
        assert status(on_b, task_id)["task_info"]["task_id"] == task_id
        first_at = None
        with on_b.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
            assert response.status_code == 200
            events = []
            for event in sse_events(response):
                first_at = first_at or time.monotonic() - started
                events.append(event)
        ended_at = time.monotonic() - started
        assert [int(e["id"]) for e in events] == list(range(len(events)))
        stdout = b"".join(base64.b64decode(e["data"]["data"]) for e in events if e["event"] == "stdout")
        assert stdout.count(b"tick") == TICKS
        assert events[-1]["event"] == "exit"
        assert first_at is not None and ended_at - first_at > 1.0, (first_at, ended_at)  # live, not replayed
        assert status(on_b, task_id)["result"]["stdout"] == stdout.decode()


def test_cancel_through_b_kills_the_sandbox_on_a(replicas: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = replicas
    marker = f"600.{uuid.uuid4().int % 10**9}"
    with httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        running = execute(on_a, f"sleep {marker}")
        wait_status(on_b, running, {"RUNNING"})
        queued = execute(on_a, "echo never")  # A has one slot: this one waits
        assert status(on_b, queued)["task_info"]["status"] == "QUEUED"
        assert on_b.post(f"/v1/tasks/{queued}/cancel").json()["task_info"]["status"] == "CANCELLED"
        deadline = time.monotonic() + 10
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = on_b.post(f"/v1/tasks/{running}/cancel").json()
        assert answer["task_info"]["status"] == "CANCELLED", answer
        assert processes_with(marker) == []
        assert on_a.post(f"/v1/tasks/{running}/cancel").json()["task_info"]["status"] == "CANCELLED"


def test_b_fails_the_tasks_of_a_dead_a(replicas: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = replicas
    with httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        task_id = execute(on_a, "echo hi; sleep 600")
        wait_status(on_b, task_id, {"RUNNING"})
        a.stop(signal.SIGKILL)
        final = wait_status(on_b, task_id, {"FAILED"}, timeout_s=20)
        assert final["result"]["error"] == "gateway_restart"
        with on_b.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
            events = list(sse_events(response))
        assert events[-1]["event"] == "exit" and base64.b64decode(events[-1]["data"]["data"]) == b"-1"
        # B keeps serving new work.
        fresh = execute(on_b, "echo still here")
        assert wait_status(on_b, fresh, {"COMPLETED"})["result"]["stdout"] == "still here\n"


def test_a_replica_that_loses_its_lock_session_stops(
    replicas: tuple[GatewayProcess, GatewayProcess], postgres_dsn: str
) -> None:
    """A database restart or a cut connection ends the lock session: the other replicas may
    now fail this replica's tasks, so it must drain and exit (status 4) to be restarted."""
    import psycopg

    a, b = replicas
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"mcp-gateway owner %/{a.proc.pid}/%",),
        ).fetchall()
    assert killed == [(True,)]
    assert a.proc.wait(timeout=30) == 4, a.stderr_path.read_text()
    assert "lost the task store's owner lock" in a.stderr_path.read_text()
    assert b.proc.poll() is None


def test_the_configured_request_rate_holds_for_all_replicas_together(state_root: Path, postgres_dsn: str) -> None:
    rate, burst = 4.0, 4
    env = {"MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": str(rate),
           "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__BURST": str(burst)}
    with running_replicas(state_root, postgres_dsn, 3, env) as gateways:
        clients = [httpx.Client(base_url=gw.http_url, timeout=30) for gw in gateways]
        try:
            answered: dict[int, list[int]] = {i: [] for i in range(len(clients))}
            started = time.monotonic()
            while time.monotonic() - started < 3.0:
                for i, http in enumerate(clients):  # round robin: each replica gets a third
                    answered[i].append(http.get("/v1/tasks/task-" + "0" * 32).status_code)
            elapsed = time.monotonic() - started
        finally:
            for http in clients:
                http.close()
    admitted = sum(code == 404 for codes in answered.values() for code in codes)
    assert {code for codes in answered.values() for code in codes} == {404, 429}
    # A bucket per replica would admit about three times this.
    assert burst <= admitted <= burst + rate * elapsed + 1, (admitted, elapsed)
    assert all(429 in codes and 404 in codes for codes in answered.values()), answered


def test_the_task_quota_holds_for_all_replicas_together(state_root: Path, postgres_dsn: str) -> None:
    env = {"MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__CONCURRENT_TASKS": "2", "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "2"}
    with running_replicas(state_root, postgres_dsn, 2, env) as (a, b), \
            httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        first, second = execute(on_a, "sleep 30"), execute(on_b, "sleep 30")
        # A has one task of this principal, under its own count of 2: only the store's
        # count over both replicas refuses the third.
        refused = on_a.post("/v1/execute", json={"command": "true"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"]["code"] == 4290
        assert refused.json()["error"]["details"] == {"limit": "principal_concurrent_tasks", "pending": 2, "quota": 2}
        for task_id in (first, second):
            assert on_b.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
            wait_status(on_a, task_id, {"CANCELLED"})
        assert on_a.post("/v1/execute", json={"command": "true"}).status_code == 202  # places free again
    # The refused task's trail: allowed by policy, ended before it ran, with the refusal.
    refusals = [e for e in a.audit_events() if e["event_type"] == "task_end" and e.get("error_code") == 4290]
    assert len(refusals) == 1 and refusals[0]["status"] == "FAILED"


@pytest.fixture
def shared_volume(state_root: Path) -> Path:
    """One workspace root for every replica, as a shared volume would be."""
    root = Path(tempfile.mkdtemp(prefix="shared-workspaces-", dir=state_root))
    root.chmod(0o711)
    return root


def in_workspace(http: httpx.Client, script: str, workspace: str) -> httpx.Response:
    return http.post("/v1/execute", json={"command": "sh", "args": ["-c", script], "timeout": 120,
                                          "metadata": {"workspace": workspace}})


def test_a_workspace_on_a_shared_volume_serves_every_replica_one_at_a_time(
        state_root: Path, postgres_dsn: str, shared_volume: Path) -> None:
    env = {"MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT": str(shared_volume), "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "2"}
    with running_replicas(state_root, postgres_dsn, 2, env) as (a, b), \
            httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        # Written through A, read through B.
        assert on_a.put("/v1/files/notes.txt?workspace=ws-1", content=b"from a\n").status_code == 200
        got = on_b.get("/v1/files/notes.txt?workspace=ws-1")
        assert got.status_code == 200 and got.content == b"from a\n"
        # A task on B works in it (its uid now: the tree is handed over to B's pool) ...
        done = wait_status(on_b, in_workspace(on_b, "cat notes.txt; echo from b >> notes.txt", "ws-1").json()["task_id"],
                           {"COMPLETED", "FAILED"})
        assert done["task_info"]["status"] == "COMPLETED" and done["result"]["stdout"] == "from a\n", done
        # ... and while it runs one there, A refuses to start one in the same workspace.
        running = in_workspace(on_b, "echo started > flag; sleep 30", "ws-1").json()["task_id"]
        wait_until(lambda: on_b.get("/v1/files/flag?workspace=ws-1").status_code == 200, timeout_s=30,
                   what="the task on B to start")
        refused = in_workspace(on_a, "true", "ws-1")
        assert refused.status_code == 429 and refused.json()["error"]["details"] == {"limit": "workspace_busy"}
        assert refused.headers["retry-after"] == "1"
        # The files API serves it from A meanwhile, with the running task's files.
        assert on_a.get("/v1/files/notes.txt?workspace=ws-1").content == b"from a\nfrom b\n"
        assert in_workspace(on_a, "true", "ws-2").status_code == 202  # other workspaces are free
        on_b.post(f"/v1/tasks/{running}/cancel")
        wait_status(on_a, running, {"CANCELLED"})
        # Given back: A may use it again.
        wait_until(lambda: in_workspace(on_a, "cat flag", "ws-1").status_code == 202, timeout_s=10,
                   what="the workspace free again")
    decision = [e for e in a.audit_events() if e["event_type"] == "decision" and e.get("rate_limit")]
    assert [e["rate_limit"] for e in decision] == ["workspace_busy"]


def test_killing_a_replica_mid_task_frees_its_workspace(
        state_root: Path, postgres_dsn: str, shared_volume: Path) -> None:
    env = {"MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT": str(shared_volume)}
    with running_replicas(state_root, postgres_dsn, 2, env) as (a, b), \
            httpx.Client(base_url=a.http_url, timeout=30) as on_a, httpx.Client(base_url=b.http_url, timeout=30) as on_b:
        task_id = in_workspace(on_a, "echo started > flag; sleep 60", "ws-k").json()["task_id"]
        wait_until(lambda: on_a.get("/v1/files/flag?workspace=ws-k").status_code == 200, timeout_s=30,
                   what="the task on A to start")
        assert in_workspace(on_b, "true", "ws-k").status_code == 429
        a.proc.kill()
        a.proc.wait()
        # B fails A's task (orphan check) and, A's process gone, its hold on the workspace
        # is no hold: B runs a task there, as its own uid.
        wait_status(on_b, task_id, {"FAILED"}, timeout_s=30)
        created = in_workspace(on_b, "cat flag", "ws-k")
        assert created.status_code == 202, created.text
        done = wait_status(on_b, created.json()["task_id"], {"COMPLETED", "FAILED"})
        assert done["task_info"]["status"] == "COMPLETED" and done["result"]["stdout"] == "started\n", done
