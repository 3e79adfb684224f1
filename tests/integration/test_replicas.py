"""Two gateway processes sharing one real PostgreSQL act as one service: a task created on
A is visible, streamable (live, from stored output) and cancellable through B, and when A
dies B fails A's running tasks with reason ``gateway_restart``."""

from __future__ import annotations

import base64
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProcess, start_gateway
from tests.integration.test_task_lifecycle import TICKER, TICKS, execute, processes_with, sse_events, status, wait_status


@pytest.fixture
def replicas(state_root: Path, postgres_dsn: str) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {
        "MCP_GATEWAY_TASKS__STORE_DSN": postgres_dsn,
        "MCP_GATEWAY_TASKS__ORPHAN_CHECK_INTERVAL_S": "0.5",
        "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "1",
        "MCP_GATEWAY_TASKS__SHUTDOWN_GRACE_S": "1",
    }
    started = []
    try:
        for name in ("a", "b"):
            started.append(start_gateway(Path(tempfile.mkdtemp(prefix=f"replica-{name}-", dir=state_root)) / "var",
                                         env=env))
        yield started[0], started[1]
    finally:
        for gw in started:
            gw.stop()


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
