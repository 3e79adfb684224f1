"""TaskStore conformance: one suite run against the SQLite store and a real PostgreSQL
server (tests/pg_server.py), then what only one backend has: SQLite's file lock and
migrations from version 1, PostgreSQL's owner liveness across replicas (closed, SIGKILLed,
cut off), its migrations and its error mapping."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.config import Settings
from gateway.errors import RateLimited, StorageError
from gateway.models import OutputChunk, OutputKind, ResourceUsage, TaskRecord, TaskResult, TaskStatus, TaskType
from gateway.tasks import PostgresTaskStore, SqliteTaskStore, TaskStore, open_store
from gateway.tasks.store import TaskQuery, TaskQuota
from tests.conftest import wait_until
from tests.pg_server import PostgresServer

REPO = Path(__file__).resolve().parents[2]
NOW_NS = 1_700_000_000_000_000_000


def _record(n: int, *, owner: str = "gw-a", status: TaskStatus = TaskStatus.QUEUED, **changes: object) -> TaskRecord:
    fields: dict[str, object] = dict(
        task_id=f"task-{n:032x}", task_type=TaskType.COMMAND, status=status, tenant="acme", principal_id="alice",
        command="echo", args=("hello", "wörld"), metadata={"ticket": "T-1", "b": "2"}, created_at_ns=NOW_NS + n,
        decision_id=f"dec-{n}", owner=owner, workspace="ws-1",
    )
    fields.update(changes)
    return TaskRecord(**fields)  # type: ignore[arg-type]


def _result(exit_code: int = 0, error: str | None = None) -> TaskResult:
    return TaskResult(exit_code=exit_code, stdout="hi\n", stderr="", stdout_truncated=False, stderr_truncated=True,
                      limit_reason=None, resource_usage=ResourceUsage(cpu_time_ms=3, max_memory_kb=2048),
                      execution_time_ms=12, error=error)


def _chunk(offset: int, data: bytes = b"out", kind: OutputKind = OutputKind.STDOUT) -> OutputChunk:
    return OutputChunk(offset=offset, kind=kind, data=data, timestamp_ms=1_700_000_000_000 + offset)


@pytest.fixture(params=["sqlite", "postgres"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], TaskStore]]:
    """Opens stores on one backing database (call it twice for two 'replicas'); closes them after."""
    if request.param == "sqlite":
        def factory() -> TaskStore:
            return SqliteTaskStore(tmp_path / "tasks.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")

        def factory() -> TaskStore:
            return PostgresTaskStore(dsn)
    opened: list[TaskStore] = []

    def open_store_() -> TaskStore:
        opened.append(factory())
        return opened[-1]

    yield open_store_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_backend: Callable[[], TaskStore]) -> TaskStore:
    return open_backend()


# -- the protocol, on both backends ---------------------------------------------------------


def test_create_get_roundtrip(store: TaskStore) -> None:
    plain = _record(1)
    full = _record(2, status=TaskStatus.COMPLETED, started_at_ns=NOW_NS + 5, completed_at_ns=NOW_NS + 9,
                   result=_result(error="boom"), owner="gw-b", workspace="ws-9", cancel_requested=True)
    store.create(plain)
    store.create(full)
    assert store.get(plain.task_id) == plain
    assert store.get(full.task_id) == full
    assert store.get("task-" + "f" * 32) is None


def test_duplicate_id_is_a_storage_error(store: TaskStore) -> None:
    store.create(_record(1))
    with pytest.raises(StorageError) as err:
        store.create(_record(1))
    assert err.value.code == 5002


def test_mark_running_only_from_waiting(store: TaskStore) -> None:
    created, queued = _record(1, status=TaskStatus.CREATED), _record(2)
    store.create(created)
    store.create(queued)
    assert store.mark_running(created.task_id, NOW_NS + 100) is True
    assert store.mark_running(queued.task_id, NOW_NS + 200) is True
    got = store.get(queued.task_id)
    assert got is not None and got.status is TaskStatus.RUNNING and got.started_at_ns == NOW_NS + 200
    assert store.mark_running(queued.task_id, NOW_NS + 300) is False  # running already
    assert store.get(queued.task_id).started_at_ns == NOW_NS + 200  # type: ignore[union-attr]
    assert store.finish(created.task_id, TaskStatus.CANCELLED, NOW_NS + 400, None)
    assert store.mark_running(created.task_id, NOW_NS + 500) is False  # final
    assert store.mark_running("task-" + "f" * 32, NOW_NS) is False


def test_output_log_order_offsets_limits_binary(store: TaskStore) -> None:
    task = _record(1, status=TaskStatus.RUNNING)
    store.create(task)
    binary = bytes(range(256)) * 300  # NULs, invalid UTF-8, 76800 bytes
    first = [_chunk(0, b"a"), _chunk(1, binary, OutputKind.STDERR), _chunk(2, b"")]
    second = [_chunk(3, b'{"event":"output_truncated"}', OutputKind.EVENT), _chunk(4, b"e")]
    store.append_output(task.task_id, first)
    store.append_output(task.task_id, second)
    store.append_output(task.task_id, [])
    assert store.read_output(task.task_id, 0, 100) == first + second
    assert store.read_output(task.task_id, 1, 2) == first[1:3]
    assert store.read_output(task.task_id, 3, 100) == second
    assert store.read_output(task.task_id, 5, 100) == []
    assert store.read_output(task.task_id, 0, 0) == []
    assert store.read_output("task-" + "f" * 32, 0, 10) == []


def test_append_refuses_a_taken_offset_or_unknown_task_and_writes_nothing(store: TaskStore) -> None:
    task = _record(1, status=TaskStatus.RUNNING)
    store.create(task)
    store.append_output(task.task_id, [_chunk(0)])
    with pytest.raises(StorageError):
        store.append_output(task.task_id, [_chunk(1, b"new"), _chunk(0, b"again")])
    assert store.read_output(task.task_id, 0, 10) == [_chunk(0)]
    with pytest.raises(StorageError):
        store.append_output("task-" + "f" * 32, [_chunk(0)])


def test_finish_happens_exactly_once(store: TaskStore) -> None:
    task = _record(1, status=TaskStatus.RUNNING, cancel_requested=True)
    store.create(task)
    store.append_output(task.task_id, [_chunk(0)])
    exit_entry = _chunk(1, b"0", OutputKind.EXIT_CODE)
    assert store.finish(task.task_id, TaskStatus.COMPLETED, NOW_NS + 50, _result(), [exit_entry]) is True
    assert store.finish(task.task_id, TaskStatus.FAILED, NOW_NS + 60, _result(-1, "late"),
                        [_chunk(2, b"-1", OutputKind.EXIT_CODE)]) is False
    got = store.get(task.task_id)
    assert got is not None
    assert (got.status, got.completed_at_ns, got.result, got.cancel_requested) == (
        TaskStatus.COMPLETED, NOW_NS + 50, _result(), False)
    assert store.read_output(task.task_id, 0, 10) == [_chunk(0), exit_entry]
    assert store.finish("task-" + "f" * 32, TaskStatus.FAILED, NOW_NS, None) is False


def test_finish_is_one_transaction(store: TaskStore) -> None:
    task = _record(1, status=TaskStatus.RUNNING)
    store.create(task)
    store.append_output(task.task_id, [_chunk(0)])
    with pytest.raises(StorageError):  # the final entries collide with the log: nothing may stick
        store.finish(task.task_id, TaskStatus.COMPLETED, NOW_NS, _result(), [_chunk(1), _chunk(0)])
    assert store.get(task.task_id) == task
    assert store.read_output(task.task_id, 0, 10) == [_chunk(0)]


def test_request_cancel_and_cancel_requests(store: TaskStore) -> None:
    mine, mine_too, theirs, done = _record(1), _record(2, status=TaskStatus.RUNNING), _record(3, owner="gw-b"), _record(
        4, status=TaskStatus.COMPLETED, completed_at_ns=NOW_NS + 1, result=_result())
    for task in (mine, mine_too, theirs, done):
        store.create(task)
    assert store.cancel_requests("gw-a") == []
    flagged = store.request_cancel(mine.task_id)
    assert flagged is not None and flagged.cancel_requested and flagged.status is TaskStatus.QUEUED
    store.request_cancel(mine_too.task_id)
    store.request_cancel(theirs.task_id)
    assert store.request_cancel(done.task_id) == done  # final: unchanged
    assert store.request_cancel("task-" + "f" * 32) is None
    assert store.cancel_requests("gw-a") == [mine.task_id, mine_too.task_id]
    assert store.cancel_requests("gw-b") == [theirs.task_id]
    assert store.finish(mine.task_id, TaskStatus.CANCELLED, NOW_NS + 9, None)
    assert store.cancel_requests("gw-a") == [mine_too.task_id]


def test_fail_orphaned_fails_other_dead_owners_tasks(store: TaskStore) -> None:
    # No process holds "old-1" or "old-2": dead on both backends.
    running = _record(1, owner="old-1", status=TaskStatus.RUNNING, started_at_ns=NOW_NS + 2)
    queued = _record(2, owner="old-2", cancel_requested=True)
    done = _record(3, owner="old-1", status=TaskStatus.COMPLETED, completed_at_ns=NOW_NS + 3, result=_result())
    mine = _record(4, owner="me", status=TaskStatus.RUNNING)
    for task in (running, queued, done, mine):
        store.create(task)
    store.append_output(running.task_id, [_chunk(0), _chunk(1)])
    store.append_output(mine.task_id, [_chunk(0)])
    store.claim_owner("me")
    now = NOW_NS + 7_000_000_000
    assert sorted(store.fail_orphaned("me", "gateway_restart", now)) == [running.task_id, queued.task_id]
    for task in (running, queued):
        got = store.get(task.task_id)
        assert got is not None
        assert (got.status, got.completed_at_ns, got.cancel_requested) == (TaskStatus.FAILED, now, False)
        assert got.result is not None and (got.result.exit_code, got.result.error) == (-1, "gateway_restart")
    exit_entry = OutputChunk(offset=2, kind=OutputKind.EXIT_CODE, data=b"-1", timestamp_ms=now // 1_000_000)
    assert store.read_output(running.task_id, 0, 10) == [_chunk(0), _chunk(1), exit_entry]
    assert store.read_output(queued.task_id, 0, 10) == [OutputChunk(0, OutputKind.EXIT_CODE, b"-1", now // 1_000_000)]
    assert store.get(done.task_id) == done
    assert store.get(mine.task_id) == mine
    assert store.read_output(mine.task_id, 0, 10) == [_chunk(0)]
    assert store.fail_orphaned("me", "gateway_restart", now) == []


def test_purge_finished_deletes_old_final_tasks_and_their_output(store: TaskStore) -> None:
    def final(n: int, completed: int) -> TaskRecord:
        return _record(n, status=TaskStatus.COMPLETED, completed_at_ns=completed, result=_result())

    old1, old2, recent = final(1, 100), final(2, 200), final(3, 10_000)
    unfinished = _record(4, status=TaskStatus.RUNNING)
    for task in (old1, old2, recent, unfinished):
        store.create(task)
        store.append_output(task.task_id, [_chunk(0), _chunk(1)])
    assert store.purge_finished(1_000, 1) == 1
    assert store.get(old1.task_id) is None and store.read_output(old1.task_id, 0, 10) == []  # oldest first
    assert store.purge_finished(1_000, 10) == 1
    assert store.purge_finished(1_000, 10) == 0
    assert store.get(old2.task_id) is None and store.read_output(old2.task_id, 0, 10) == []
    assert store.purge_finished(NOW_NS * 2, 10) == 1  # recent; never the unfinished one
    assert store.get(unfinished.task_id) == unfinished
    assert len(store.read_output(unfinished.task_id, 0, 10)) == 2


def test_list_tasks_pages_newest_first_within_a_tenant(store: TaskStore) -> None:
    # Two tasks share a creation time: the id orders them, so a page boundary between them
    # neither repeats nor skips one.
    mine = [_record(n, tenant="acme", principal_id="alice") for n in (1, 2, 3, 5)]
    mine.append(_record(4, tenant="acme", principal_id="alice", created_at_ns=NOW_NS + 5))
    others = [_record(10, tenant="acme", principal_id="carol"), _record(11, tenant="beta", principal_id="alice")]
    for record in [*mine, *others]:
        store.create(record)
    store.finish(mine[0].task_id, TaskStatus.COMPLETED, NOW_NS + 100, _result())
    newest_first = sorted(mine, key=lambda r: (r.created_at_ns, r.task_id), reverse=True)

    def page(before: tuple[int, str] | None, **query: object) -> list[TaskRecord]:
        fields: dict[str, object] = {"tenant": "acme", "principal_id": "alice", "status": None, "since_ns": 0,
                                     "before": before, "limit": 2, **query}
        return store.list_tasks(TaskQuery(**fields))  # type: ignore[arg-type]

    seen: list[str] = []
    before = None
    while True:
        records = page(before)
        seen += [r.task_id for r in records]
        if len(records) < 2:
            break
        before = (records[-1].created_at_ns, records[-1].task_id)
    assert seen == [r.task_id for r in newest_first]
    assert {r.task_id for r in page(None, principal_id=None, limit=100)} == {r.task_id for r in [*mine, others[0]]}
    assert [r.task_id for r in page(None, status=TaskStatus.COMPLETED)] == [mine[0].task_id]
    assert [r.task_id for r in page(None, since_ns=NOW_NS + 5, limit=100)] == [r.task_id for r in newest_first[:2]]
    assert page(None, tenant="gamma") == []


def test_a_closed_store_raises_storage_error(open_backend: Callable[[], TaskStore]) -> None:
    store = open_backend()
    store.close()
    with pytest.raises(StorageError):
        store.get("task-" + "0" * 32)
    store.close()  # idempotent


# -- SQLite: the file lock and migrations -----------------------------------------------------

_V1_DDL = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id         TEXT PRIMARY KEY,
    task_type       INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    tenant          TEXT NOT NULL,
    principal_id    TEXT NOT NULL,
    command         TEXT NOT NULL,
    args_json       TEXT NOT NULL,
    metadata_json   TEXT NOT NULL,
    decision_id     TEXT NOT NULL,
    created_at_ns   INTEGER NOT NULL,
    started_at_ns   INTEGER,
    completed_at_ns INTEGER,
    result_json     TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
PRAGMA user_version=1;
INSERT INTO tasks VALUES ('task-00000000000000000000000000000001', 0, 2, 'acme', 'alice', 'sleep', '["5"]',
    '{"k": "v"}', 'dec-1', 10, 11, NULL, NULL);
"""


def _v1_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(_V1_DDL)
    db.close()


def test_sqlite_migrates_a_version_1_database_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    _v1_database(path)
    store = SqliteTaskStore(path)
    try:
        old = store.get("task-00000000000000000000000000000001")
        assert old == TaskRecord(
            task_id="task-00000000000000000000000000000001", task_type=TaskType.COMMAND, status=TaskStatus.RUNNING,
            tenant="acme", principal_id="alice", command="sleep", args=("5",), metadata={"k": "v"},
            created_at_ns=10, decision_id="dec-1", started_at_ns=11, owner="", workspace="", cancel_requested=False,
        )
        store.append_output(old.task_id, [_chunk(0)])
        store.claim_owner("new")
        assert store.fail_orphaned("new", "gateway_restart", NOW_NS) == [old.task_id]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        assert indexes == {"tasks_purge", "tasks_by_tenant"}
    finally:
        db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    SqliteTaskStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=4")
    db.close()
    with pytest.raises(StorageError, match="schema version 4, newer than this gateway"):
        SqliteTaskStore(path)


def test_sqlite_lock_refuses_a_second_store_in_this_process(tmp_path: Path) -> None:
    first, second = SqliteTaskStore(tmp_path / "tasks.db"), SqliteTaskStore(tmp_path / "tasks.db")
    try:
        first.claim_owner("a")
        with pytest.raises(StorageError, match=rf"is in use by another gateway process \(pid {os.getpid()}\)"):
            second.claim_owner("b")
        with pytest.raises(StorageError, match="needs claim_owner"):
            second.fail_orphaned("b", "gateway_restart", NOW_NS)
        first.close()
        second.claim_owner("b")  # released by close
    finally:
        first.close()
        second.close()


def test_sqlite_lock_refuses_another_process(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.db")
    try:
        store.claim_owner("a")
        code = ("import sys, pathlib; from gateway.tasks import SqliteTaskStore; "
                "SqliteTaskStore(pathlib.Path(sys.argv[1])).claim_owner('b')")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tasks.db")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert f"is in use by another gateway process (pid {os.getpid()})" in out.stderr
    finally:
        store.close()


def test_sqlite_never_migrates_under_a_running_gateway(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    _v1_database(path)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        with pytest.raises(StorageError, match=r"in use by another gateway process \(pid 4242\)"):
            SqliteTaskStore(path)
    finally:
        os.close(fd)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    store = open_store(Settings(state_dir=tmp_path))
    try:
        assert isinstance(store, SqliteTaskStore)
        assert (tmp_path / "tasks.db").exists()
    finally:
        store.close()


def test_sqlite_checkpoints_off_the_commit_path_and_truncates_the_wal_at_close(tmp_path: Path) -> None:
    """A commit never checkpoints (that fsync stalled every store call for 2-5 ms every ~750
    commits): the checkpointer thread copies the WAL into the database on a connection of
    its own, and close leaves no WAL to replay."""
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    try:
        with store._guard() as db:  # the store's own connection
            assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = path.stat().st_size
        for n in range(200):
            store.create(_record(n))
        wait_until(lambda: path.stat().st_size > before, 5.0, "the checkpointer to copy the WAL into the database")
    finally:
        store.close()
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    reopened = SqliteTaskStore(path)
    try:
        assert reopened.get(_record(199).task_id) is not None
    finally:
        reopened.close()


# -- PostgreSQL: owners across replicas, migrations, errors ----------------------------------


def test_postgres_open_store_and_a_live_replica_keeps_its_tasks(postgres_dsn: str, tmp_path: Path) -> None:
    replica_a = open_store(Settings(state_dir=tmp_path, tasks={"store_dsn": postgres_dsn}))
    replica_b = PostgresTaskStore(postgres_dsn)
    try:
        assert isinstance(replica_a, PostgresTaskStore)
        assert not replica_a.owner_alive()  # nothing claimed yet
        replica_a.claim_owner("a")
        replica_b.claim_owner("b")
        assert replica_a.owner_alive() and replica_b.owner_alive()
        task = _record(1, owner="a", status=TaskStatus.RUNNING)
        replica_a.create(task)
        assert replica_b.fail_orphaned("b", "gateway_restart", NOW_NS) == []
        assert replica_b.get(task.task_id) == task
        with pytest.raises(StorageError, match="'a' is held by another live gateway process"):
            replica_b.claim_owner("a")
        replica_a.close()  # releases the claim before returning: "a" is dead now
        assert replica_b.fail_orphaned("b", "gateway_restart", NOW_NS) == [task.task_id]
        assert replica_b.get(task.task_id).status is TaskStatus.FAILED  # type: ignore[union-attr]
    finally:
        replica_a.close()
        replica_b.close()


def test_postgres_a_sigkilled_replica_is_orphaned(postgres_dsn: str) -> None:
    child = textwrap.dedent("""
        import sys, time
        from gateway.models import TaskRecord, TaskStatus, TaskType
        from gateway.tasks import PostgresTaskStore
        store = PostgresTaskStore(sys.argv[1])
        store.claim_owner("dead-owner")
        store.create(TaskRecord(task_id="task-" + "d" * 32, task_type=TaskType.COMMAND, status=TaskStatus.RUNNING,
                                tenant="acme", principal_id="alice", command="sleep", args=("60",), metadata={},
                                created_at_ns=1, decision_id="dec", owner="dead-owner"))
        print("ready", flush=True)
        time.sleep(600)
    """)
    survivor = PostgresTaskStore(postgres_dsn)
    proc = subprocess.Popen([sys.executable, "-c", child, postgres_dsn], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 60)
        assert readable and proc.stdout.readline().strip() == "ready"
        survivor.claim_owner("survivor")
        assert survivor.fail_orphaned("survivor", "gateway_restart", NOW_NS) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        failed = _poll(lambda: survivor.fail_orphaned("survivor", "gateway_restart", NOW_NS))
        assert failed == ["task-" + "d" * 32]
        assert survivor.read_output(failed[0], 0, 10) == [OutputChunk(0, OutputKind.EXIT_CODE, b"-1", NOW_NS // 10**6)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        survivor.close()


def test_postgres_a_replica_that_loses_its_lock_session_counts_as_dead(postgres_dsn: str) -> None:
    cut, other = PostgresTaskStore(postgres_dsn), PostgresTaskStore(postgres_dsn)
    try:
        cut.claim_owner("cut")
        other.claim_owner("other")
        task = _record(1, owner="cut", status=TaskStatus.RUNNING)
        cut.create(task)
        cut.append_output(task.task_id, [_chunk(0)])
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                          ("mcp-gateway owner cut",))
        assert _poll(lambda: not cut.owner_alive())
        # The backend releases its locks on its way out, just after telling the client.
        assert _poll(lambda: other.fail_orphaned("other", "gateway_restart", NOW_NS)) == [task.task_id]
        # The cut replica still runs the task; the store keeps the first final state.
        assert cut.finish(task.task_id, TaskStatus.COMPLETED, NOW_NS, _result(),
                          [_chunk(1, b"0", OutputKind.EXIT_CODE)]) is False
        with pytest.raises(StorageError):
            cut.append_output(task.task_id, [_chunk(1)])
        assert [c.kind for c in other.read_output(task.task_id, 0, 10)] == [OutputKind.STDOUT, OutputKind.EXIT_CODE]
    finally:
        cut.close()
        other.close()


def test_postgres_replicas_opening_at_once_migrate_once(postgres_dsn: str) -> None:
    stores: list[TaskStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresTaskStore(postgres_dsn, max_pool=2))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    with psycopg.connect(postgres_dsn) as conn:
        versions = conn.execute("SELECT version FROM mcp_schema_migrations ORDER BY version").fetchall()
        assert versions == [(1,), (2,), (3,)]


def test_postgres_refuses_a_newer_schema(postgres_dsn: str) -> None:
    PostgresTaskStore(postgres_dsn).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO mcp_schema_migrations (version) VALUES (99)")
    with pytest.raises(StorageError, match="schema version 99, newer than this gateway"):
        PostgresTaskStore(postgres_dsn)


_PASSWORD = "Sup3r-Secret-Pw"


@pytest.mark.parametrize("dsn", [
    pytest.param(f"postgresql://gw:{_PASSWORD}@127.0.0.1:{{port}}/db", id="nothing-listening"),
    pytest.param(f"postgresql://gw:{_PASSWORD}@127.0.0.1:notaport/db", id="bad-port"),
    pytest.param(f"postgresql://gw:{_PASSWORD}@[::1/db", id="unparsable"),
])
def test_postgres_bad_dsn_is_a_storage_error_without_the_password(dsn: str) -> None:
    with socket.socket() as bound_not_listening, pytest.raises(StorageError) as err:
        bound_not_listening.bind(("127.0.0.1", 0))
        PostgresTaskStore(dsn.format(port=bound_not_listening.getsockname()[1]), connect_timeout_s=2)
    assert "cannot connect" in err.value.message
    chain = [err.value, err.value.__cause__]
    assert all(_PASSWORD not in str(exc) for exc in chain), err.value.message


def test_postgres_wrong_password_is_a_storage_error_without_it(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.dsn("postgres").replace(postgres_server.password, _PASSWORD)
    with pytest.raises(StorageError, match="password authentication failed") as err:
        PostgresTaskStore(dsn)
    assert _PASSWORD not in err.value.message and postgres_server.password not in err.value.message


def _poll(probe: Callable[[], object], timeout_s: float = 10.0) -> object:
    """``probe()``'s first truthy value within ``timeout_s`` (its last value otherwise)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_postgres_shared_buckets_take_a_token_from_all_or_none(postgres_dsn: str) -> None:
    store = PostgresTaskStore(postgres_dsn, max_pool=2)
    slow = 0.001  # tokens per second: no refill worth counting during the test
    principal, tenant = ("acme\x1falice", slow, 2), ("acme\x1f", slow, 3)
    try:
        assert store.take_tokens([principal, tenant]) == (True, [pytest.approx(2, abs=0.01), pytest.approx(3, abs=0.01)])
        assert store.take_tokens([principal, tenant])[0] is True
        taken, tokens = store.take_tokens([principal, tenant])  # alice is out, acme is not
        assert taken is False and tokens == [pytest.approx(0, abs=0.01), pytest.approx(1, abs=0.01)]
        assert store.take_tokens([tenant]) == (True, [pytest.approx(1, abs=0.01)])  # the refusal took nothing
        time.sleep(0.01)  # at 1000/s: 10 tokens' worth, capped at the burst
        assert store.take_tokens([("acme\x1f", 1000.0, 3)]) == (True, [pytest.approx(3, abs=0.01)])
    finally:
        store.close()


def test_postgres_shared_buckets_give_exactly_the_burst_to_concurrent_replicas(postgres_dsn: str) -> None:
    replicas = [PostgresTaskStore(postgres_dsn, max_pool=4) for _ in range(2)]
    taken: list[bool] = []
    lock = threading.Lock()

    def take(store: PostgresTaskStore) -> None:
        for _ in range(15):
            ok, _ = store.take_tokens([("acme\x1fbob", 0.001, 25)])
            with lock:
                taken.append(ok)

    threads = [threading.Thread(target=take, args=(replicas[i % 2],)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in replicas:
            store.close()
    assert len(taken) == 60 and taken.count(True) == 25


def test_postgres_counts_the_quota_over_every_replica(postgres_dsn: str) -> None:
    a, b = PostgresTaskStore(postgres_dsn, max_pool=2), PostgresTaskStore(postgres_dsn, max_pool=2)
    quota = TaskQuota(principal=2, tenant=3)
    try:
        a.create(_record(1, owner="gw-a"), quota)
        b.create(_record(2, owner="gw-b"), quota)
        with pytest.raises(RateLimited) as refused:
            a.create(_record(3, owner="gw-a"), quota)
        assert refused.value.details == {"limit": "principal_concurrent_tasks", "pending": 2, "quota": 2}
        b.create(_record(4, owner="gw-b", principal_id="bob"), quota)  # the tenant's third
        with pytest.raises(RateLimited) as refused:
            b.create(_record(5, owner="gw-b", principal_id="carol"), quota)
        assert refused.value.details["limit"] == "tenant_concurrent_tasks"
        assert a.finish(_record(1).task_id, TaskStatus.COMPLETED, NOW_NS, _result())
        a.create(_record(6, owner="gw-a", principal_id="carol"), quota)  # a final task frees its place
        assert a.get(_record(3).task_id) is None and a.get(_record(5).task_id) is None  # refusals stored nothing
    finally:
        a.close()
        b.close()


def test_postgres_holds_a_workspace_for_one_live_replica(postgres_dsn: str) -> None:
    a, b = PostgresTaskStore(postgres_dsn, max_pool=2), PostgresTaskStore(postgres_dsn, max_pool=2)
    a.claim_owner("gw-a")
    b.claim_owner("gw-b")
    try:
        assert a.lease_workspace("acme", "ws", "gw-a") is None
        assert a.lease_workspace("acme", "ws", "gw-a") is None  # held already: still ours
        assert b.lease_workspace("acme", "ws", "gw-b") == "gw-a"
        assert b.workspace_holder("acme", "ws") == "gw-a" and b.workspace_holder("beta", "ws") is None
        a.release_workspace("acme", "ws", "gw-b")  # not ours to give up: nothing happens
        assert b.workspace_holder("acme", "ws") == "gw-a"
        a.release_workspace("acme", "ws", "gw-a")
        assert b.lease_workspace("acme", "ws", "gw-b") is None
        assert a.lease_workspace("acme", "other", "gw-a") is None
        a.close()  # gw-a's process is gone: its hold is no hold
        assert b.workspace_holder("acme", "other") is None
        assert b.lease_workspace("acme", "other", "gw-b") is None
    finally:
        a.close()
        b.close()
