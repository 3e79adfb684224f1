"""Task stores: the ``TaskStore`` protocol and the embedded SQLite implementation.

The store is the source of truth for a task's state; the manager only writes to it.
SQLite runs in WAL mode with ``synchronous=NORMAL`` (a committed transaction survives a
process crash; power loss may drop the last few ms), one connection guarded by a lock
because calls arrive from the event loop and from worker threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import StorageError
from gateway.models import ResourceUsage, TaskRecord, TaskResult, TaskStatus, TaskType

__all__ = ["SqliteTaskStore", "TaskStore"]


class TaskStore(Protocol):
    """Persistence for tasks. Every method raises :class:`StorageError` on failure."""

    def create(self, record: TaskRecord) -> None:
        """Insert a new task."""
        ...

    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None when there is no such id."""
        ...

    def mark_running(self, task_id: str, started_at_ns: int) -> None:
        """Move a queued task to RUNNING."""
        ...

    def finish(self, task_id: str, status: TaskStatus, completed_at_ns: int, result: TaskResult | None) -> None:
        """Record a final state and its result."""
        ...

    def fail_unfinished(self, reason: str, now_ns: int) -> int:
        """Mark tasks left CREATED/QUEUED/RUNNING by a dead process FAILED; returns how many."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


_SCHEMA = """
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
"""
_SCHEMA_VERSION = 1
_UNFINISHED = (TaskStatus.CREATED.value, TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)


class SqliteTaskStore:
    """Tasks in one SQLite file (the embedded default: ``<state_dir>/tasks.db``).

    Raises:
        StorageError: when the file cannot be opened or migrated, or on any later failure.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StorageError(
                    f"task store {path} has schema version {version}, newer than this gateway "
                    f"({_SCHEMA_VERSION}); refusing to use it"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open task store {path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"task store error: {exc}") from exc

    def create(self, record: TaskRecord) -> None:
        """Insert ``record``; raises StorageError (also on a duplicate id)."""
        self._run(
            "INSERT INTO tasks (task_id, task_type, status, tenant, principal_id, command, args_json,"
            " metadata_json, decision_id, created_at_ns) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                record.task_id,
                record.task_type.value,
                record.status.value,
                record.tenant,
                record.principal_id,
                record.command,
                json.dumps(list(record.args)),
                json.dumps(record.metadata),
                record.decision_id,
                record.created_at_ns,
            ),
        )

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with ``task_id`` or None."""
        row = self._run("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _to_record(row)

    def mark_running(self, task_id: str, started_at_ns: int) -> None:
        """QUEUED/CREATED -> RUNNING; a task already final is left alone."""
        self._run(
            "UPDATE tasks SET status = ?, started_at_ns = ? WHERE task_id = ? AND status IN (?, ?)",
            (TaskStatus.RUNNING.value, started_at_ns, task_id, TaskStatus.CREATED.value, TaskStatus.QUEUED.value),
        )

    def finish(self, task_id: str, status: TaskStatus, completed_at_ns: int, result: TaskResult | None) -> None:
        """Record the final ``status`` and ``result``; a task already final is left alone."""
        self._run(
            "UPDATE tasks SET status = ?, completed_at_ns = ?, result_json = ?"
            " WHERE task_id = ? AND status IN (?, ?, ?)",
            (
                status.value,
                completed_at_ns,
                None if result is None else json.dumps(asdict(result)),
                task_id,
                *_UNFINISHED,
            ),
        )

    def fail_unfinished(self, reason: str, now_ns: int) -> int:
        """Mark every unfinished task FAILED with ``reason`` as its result error."""
        result = TaskResult(
            exit_code=-1, stdout="", stderr="", stdout_truncated=False, stderr_truncated=False,
            limit_reason=None, resource_usage=ResourceUsage(), execution_time_ms=0, error=reason,
        )
        cur = self._run(
            "UPDATE tasks SET status = ?, completed_at_ns = ?, result_json = ? WHERE status IN (?, ?, ?)",
            (TaskStatus.FAILED.value, now_ns, json.dumps(asdict(result)), *_UNFINISHED),
        )
        return cur.rowcount

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


def _to_record(row: tuple[Any, ...]) -> TaskRecord:
    (task_id, task_type, status, tenant, principal_id, command, args_json, metadata_json,
     decision_id, created_at_ns, started_at_ns, completed_at_ns, result_json) = row
    result = None
    if result_json:
        raw = json.loads(result_json)
        raw["resource_usage"] = ResourceUsage(**raw["resource_usage"])
        result = TaskResult(**raw)
    return TaskRecord(
        task_id=task_id,
        task_type=TaskType(task_type),
        status=TaskStatus(status),
        tenant=tenant,
        principal_id=principal_id,
        command=command,
        args=tuple(json.loads(args_json)),
        metadata=json.loads(metadata_json),
        created_at_ns=created_at_ns,
        decision_id=decision_id,
        started_at_ns=started_at_ns,
        completed_at_ns=completed_at_ns,
        result=result,
    )
