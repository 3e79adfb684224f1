"""Task stores: the ``TaskStore`` protocol, the embedded SQLite store and :func:`open_store`.

The store is the source of truth for a task's state; the manager only writes to it.
SQLite runs in WAL mode with ``synchronous=NORMAL`` (a committed transaction survives a
process crash; power loss may drop the last few ms), one connection guarded by a lock
because calls arrive from the event loop and from worker threads, and a checkpointer
thread with a connection of its own (no commit waits for a checkpoint's fsync). The PostgreSQL store
(shared by replicas) is :mod:`gateway.tasks.postgres`; both keep the same columns and
share the row codec and the migration rule below.

Schema migrations are an ordered tuple of ``(version, statements)`` steps per backend. A
store applies the steps newer than the database's version in one transaction and
refuses a database newer than its last step, so an old gateway never writes a schema it
does not know.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from gateway.errors import RateLimited, StorageError
from gateway.models import (
    FINAL_STATUSES,
    OutputChunk,
    OutputKind,
    ResourceUsage,
    TaskRecord,
    TaskResult,
    TaskStatus,
    TaskType,
)

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = ["SqliteTaskStore", "TaskQuery", "TaskQuota", "TaskStore", "check_quota", "list_sql", "open_store"]


class TaskQuota(NamedTuple):
    """Caps on the tasks queued or running at once (0 = no cap) of a task's principal and of
    its tenant, from ``rate_limits.*.concurrent_tasks``."""

    principal: int
    tenant: int


def check_quota(quota: TaskQuota, principal_pending: int, tenant_pending: int, retry_after_s: int = 1) -> None:
    """Refuse one more task when the principal (``principal_pending`` tasks unfinished) or
    its tenant (``tenant_pending``) has its ``quota`` reached: the task manager's check over
    its own tasks, and a shared store's over every replica's.

    Raises:
        RateLimited (4290): ``details``: ``limit`` (``principal_concurrent_tasks`` /
            ``tenant_concurrent_tasks``), ``pending``, ``quota``.
    """
    for who, cap, pending in (("principal", quota.principal, principal_pending),
                              ("tenant", quota.tenant, tenant_pending)):
        if cap and pending >= cap:
            raise RateLimited(
                f"the {who} already has {pending} tasks queued or running (quota {cap}), retry later",
                retry_after_s=retry_after_s,
                details={"limit": f"{who}_concurrent_tasks", "pending": pending, "quota": cap})

log = logging.getLogger(__name__)


class TaskStore(Protocol):
    """Persistence for tasks and their output logs; the source of truth every replica reads.

    A task is written by one process only, its ``owner`` (a gateway instance id); any
    replica may read it, request its cancel, or (once the owner is dead) fail it. State
    changes are conditional on the task not being final yet, so two writers racing (the
    owner finishing, another replica cancelling a queued task) leave exactly one final
    state. Every method raises :class:`StorageError` (5002) on failure.
    """

    def create(self, record: TaskRecord, quota: TaskQuota | None = None) -> None:
        """Insert a new task (``record.owner`` and ``record.workspace`` set); with
        ``quota``, refuse it (RateLimited, 4290) when its principal or tenant has that
        many tasks unfinished in the store (every replica's)."""
        ...

    def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None when there is no such id."""
        ...

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Up to ``query.limit`` tasks of ``query.tenant`` matching ``query``, newest first
        (by creation time, then id)."""
        ...

    def mark_running(self, task_id: str, started_at_ns: int) -> bool:
        """CREATED/QUEUED -> RUNNING; False (nothing changed) when the task is not waiting
        any more (cancelled while queued)."""
        ...

    def append_output(self, task_id: str, chunks: Sequence[OutputChunk]) -> None:
        """Append entries to the task's output log in one transaction. Offsets are given
        by the owner, contiguous from the log's current end."""
        ...

    def read_output(self, task_id: str, from_offset: int, limit: int) -> list[OutputChunk]:
        """Up to ``limit`` entries with ``offset >= from_offset``, in offset order."""
        ...

    def finish(
        self,
        task_id: str,
        status: TaskStatus,
        completed_at_ns: int,
        result: TaskResult | None,
        final_chunks: Sequence[OutputChunk] = (),
    ) -> bool:
        """Record a final ``status`` and ``result`` and append ``final_chunks`` (the task's
        last log entries, ending with its EXIT_CODE entry), all in one transaction.
        Returns False and changes nothing when the task is already final."""
        ...

    def request_cancel(self, task_id: str) -> TaskRecord | None:
        """Set ``cancel_requested`` on an unfinished task; returns the task as it is now
        (None for an unknown id). The owner sees the flag through :meth:`cancel_requests`."""
        ...

    def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s unfinished tasks whose cancel was requested."""
        ...

    def claim_owner(self, owner: str) -> None:
        """Register this process as live under ``owner`` for as long as the store is open
        (SQLite: an exclusive lock on the database; PostgreSQL: a session advisory lock),
        so other processes can tell its tasks from those of a dead process.

        Raises:
            StorageError: when the store is already in use by a live process that this
                store kind cannot share with (SQLite), or the claim fails.
        """
        ...

    def owner_alive(self) -> bool:
        """True while this store's owner claim stands (never raises). False once it is
        lost (PostgreSQL: the lock session ended): other replicas may fail this process's
        tasks from then on, so the process must stop and be restarted."""
        ...

    def fail_orphaned(self, owner: str, reason: str, now_ns: int) -> list[str]:
        """Mark FAILED (result error ``reason``, exit code -1, an EXIT_CODE entry ``-1``
        appended to the log) every unfinished task whose owner is neither ``owner`` nor
        a live process; returns their ids."""
        ...

    def lease_workspace(self, tenant: str, workspace: str, owner: str) -> str | None:
        """Hold ``tenant``'s ``workspace`` for ``owner``'s running tasks, unless another
        live process holds it; returns None when ``owner`` holds it now, else the holder.
        Replicas sharing a workspace volume never run tasks in one workspace at once."""
        ...

    def release_workspace(self, tenant: str, workspace: str, owner: str) -> None:
        """Give up ``owner``'s hold on the workspace."""
        ...

    def workspace_holder(self, tenant: str, workspace: str) -> str | None:
        """The live process holding the workspace, or None."""
        ...

    def purge_finished(self, completed_before_ns: int, limit: int) -> int:
        """Delete up to ``limit`` final tasks completed before ``completed_before_ns`` and
        their output; returns how many were deleted."""
        ...

    def close(self) -> None:
        """Release the store (and the owner claim)."""
        ...


def open_store(settings: Settings) -> TaskStore:
    """The store ``settings`` select: SQLite at ``<state_dir>/tasks.db`` when
    ``tasks.store_dsn`` is unset, else PostgreSQL at that DSN.

    Raises:
        StorageError: the store cannot be opened, reached or migrated.
    """
    if settings.tasks.store_dsn is None:
        return SqliteTaskStore(settings.state_dir / "tasks.db")
    from gateway.tasks.postgres import PostgresTaskStore  # psycopg costs ~150 ms to import

    # Sandbox workers, the output flusher, housekeeping and service threads share the pool.
    return PostgresTaskStore(settings.tasks.store_dsn, max_pool=settings.tasks.max_concurrent + 16)


# -- shared by both backends: row codec, status sets, migration rule ---------------------

#: Task columns, in the order of :func:`record_params` and :func:`record_from_row`.
TASK_COLUMNS = (
    "task_id", "task_type", "status", "tenant", "principal_id", "command", "args_json", "metadata_json",
    "decision_id", "created_at_ns", "started_at_ns", "completed_at_ns", "result_json", "owner", "workspace",
    "cancel_requested",
)


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks :meth:`TaskStore.list_tasks` returns: those of ``tenant`` (and of
    ``principal_id`` unless None), in ``status`` unless None, created at or after
    ``since_ns`` (unix ns), strictly older than ``before`` (``(created_at_ns, task_id)`` of
    the previous page's last task) unless None; at most ``limit``."""

    tenant: str
    principal_id: str | None
    status: TaskStatus | None
    since_ns: int
    before: tuple[int, str] | None
    limit: int


def list_sql(query: TaskQuery, table: str, placeholder: str, columns: str) -> tuple[str, list[Any]]:
    """The SELECT of :meth:`TaskStore.list_tasks` for both backends (``placeholder``: ``?``
    or ``%s``), served by the index on (tenant, created_at_ns, task_id)."""
    where, params = ["tenant = {p}"], [query.tenant]
    if query.principal_id is not None:
        where.append("principal_id = {p}")
        params.append(query.principal_id)
    if query.status is not None:
        where.append("status = {p}")
        params.append(query.status.value)
    if query.since_ns:
        where.append("created_at_ns >= {p}")
        params.append(query.since_ns)
    if query.before is not None:
        where.append("(created_at_ns < {p} OR (created_at_ns = {p} AND task_id < {p}))")
        params += [query.before[0], query.before[0], query.before[1]]
    sql = (f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} "
           "ORDER BY created_at_ns DESC, task_id DESC LIMIT {p}")
    return sql.replace("{p}", placeholder), [*params, query.limit]


def _status_in(statuses: set[TaskStatus] | frozenset[TaskStatus]) -> str:
    return "status IN ({})".format(", ".join(str(s.value) for s in sorted(statuses, key=lambda s: s.value)))


#: SQL conditions on ``status`` (constants of :class:`TaskStatus`, safe to inline).
UNFINISHED_SQL = _status_in(set(TaskStatus) - FINAL_STATUSES)
WAITING_SQL = _status_in({TaskStatus.CREATED, TaskStatus.QUEUED})
FINAL_SQL = _status_in(FINAL_STATUSES)
#: The log entry an orphaned task ends with (an EXIT_CODE entry, design section 3).
ORPHAN_EXIT = (OutputKind.EXIT_CODE.value, b"-1")

#: ``(version, statements)``: applying ``statements`` brings a database to ``version``.
Migration = tuple[int, tuple[str, ...]]


def pending_migrations(steps: Sequence[Migration], current: int, where: str) -> list[Migration]:
    """The steps of ``steps`` (ascending versions) newer than ``current``.

    Raises:
        StorageError: ``current`` is newer than the last step (``where`` names the store).
    """
    latest = steps[-1][0]
    if current > latest:
        raise StorageError(
            f"{where} has schema version {current}, newer than this gateway ({latest}); refusing to use it"
        )
    return [step for step in steps if step[0] > current]


def record_params(record: TaskRecord) -> tuple[Any, ...]:
    """``record`` as the values of :data:`TASK_COLUMNS` (JSON columns as JSON text)."""
    return (
        record.task_id, record.task_type.value, record.status.value, record.tenant, record.principal_id,
        record.command, json.dumps(list(record.args)), json.dumps(record.metadata), record.decision_id,
        record.created_at_ns, record.started_at_ns, record.completed_at_ns, result_json(record.result),
        record.owner, record.workspace, record.cancel_requested,
    )


def record_from_row(row: Sequence[Any]) -> TaskRecord:
    """A row of :data:`TASK_COLUMNS` (JSON columns as JSON text) as a :class:`TaskRecord`."""
    (task_id, task_type, status, tenant, principal_id, command, args_json, metadata_json, decision_id,
     created_at_ns, started_at_ns, completed_at_ns, result_text, owner, workspace, cancel_requested) = row
    result = None
    if result_text:
        raw = json.loads(result_text)
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
        owner=owner,
        workspace=workspace,
        cancel_requested=bool(cancel_requested),
    )


def result_json(result: TaskResult | None) -> str | None:
    """``result`` as JSON text (None stays None)."""
    return None if result is None else json.dumps(asdict(result))


def orphan_result_json(reason: str) -> str:
    """The result of a task failed because its owner died: exit code -1, error ``reason``."""
    return json.dumps(asdict(TaskResult.not_run(reason)))


def chunk_params(task_id: str, chunk: OutputChunk) -> tuple[Any, ...]:
    """``chunk`` as ``(task_id, seq, kind, data, ts_ms)`` column values."""
    return (task_id, chunk.offset, chunk.kind.value, bytes(chunk.data), chunk.timestamp_ms)


def chunk_from_row(row: Sequence[Any]) -> OutputChunk:
    """A ``(seq, kind, data, ts_ms)`` row as an :class:`OutputChunk`."""
    seq, kind, data, ts_ms = row
    return OutputChunk(offset=seq, kind=OutputKind(kind), data=bytes(data), timestamp_ms=ts_ms)


#: Files SQLite keeps beside the database (``<db><suffix>``), and this store's lock.
_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock")


def _make_private(path: Path) -> None:
    """Create the database file ``path`` 0600 when missing, and make it and every side file
    already there that group or others may use 0600 (an older gateway's, or a crash's, may
    be 0644: every command, its arguments and its output, readable by any local user),
    logging each one tightened.

    SQLite creates ``-wal``, ``-shm`` and ``-journal`` with the database file's permission
    bits, fchmod'ed past the umask (``robust_open`` in os_unix.c), so a 0600 database keeps
    its new side files 0600; creating the file here first means it never exists with
    SQLite's default 0644 (``SQLITE_DEFAULT_FILE_PERMISSIONS``), not even for a moment.
    Raises OSError (the caller refuses to open the store: fail closed).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _tighten(fd, path)
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        try:
            # O_NOFOLLOW | O_NONBLOCK: chmod what is there, never a symlink's target, never
            # wait on a FIFO.
            fd = os.open(side, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            _tighten(fd, side)
        finally:
            os.close(fd)


def _tighten(fd: int, path: Path) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        os.fchmod(fd, 0o600)
        log.warning("task store file %s was mode %04o, open to other local users; now 0600", path, mode)


_SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    (1, (  # the first schema, as gateways before the output log created it
        """CREATE TABLE IF NOT EXISTS tasks (
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
        )""",
        "CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status)",
    )),
    (2, (  # owners, workspaces, cancel requests and the output log
        "ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN workspace TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE task_output (
            task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
            seq     INTEGER NOT NULL,
            kind    INTEGER NOT NULL,
            data    BLOB NOT NULL,
            ts_ms   INTEGER NOT NULL,
            PRIMARY KEY (task_id, seq)
        ) WITHOUT ROWID""",
        # (status, completed_at_ns) serves the purge and every status lookup tasks_status did.
        "CREATE INDEX tasks_purge ON tasks(status, completed_at_ns)",
        "DROP INDEX tasks_status",
    )),
    (3, (  # task listing, newest first within a tenant
        "CREATE INDEX tasks_by_tenant ON tasks(tenant, created_at_ns, task_id)",
    )),
)
_CHECKPOINT_INTERVAL_S = 1.0  # how often committed WAL pages are copied into the database, seconds
_SELECT_TASK = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE task_id = ?"
_INSERT_CHUNK = "INSERT INTO task_output (task_id, seq, kind, data, ts_ms) VALUES (?, ?, ?, ?, ?)"


class SqliteTaskStore:
    """Tasks in one SQLite file (the embedded default: ``<state_dir>/tasks.db``), for one
    gateway process.

    :meth:`claim_owner` takes an exclusive ``flock(2)`` on ``<db>.lock`` (pid inside) until
    :meth:`close`; holding it proves no other gateway uses the file, so every unfinished
    task of another owner is an orphan. Migrating the schema at open takes the same lock
    for its duration, so the schema never changes under a running gateway. Output rows
    reference their task (foreign keys on): appending to an unknown task or at an offset
    already written raises StorageError. The database, its ``-wal``/``-shm`` and the lock
    are 0600: other local users may read no command, argument or output (:func:`_make_private`).

    Raises:
        StorageError: when the file cannot be opened, made private or migrated (also: a newer schema, or
            a migration while another process holds the lock), or on any later failure.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._owner: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _make_private(path)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open task store {path}: {exc}") from exc
        try:
            with self._guard() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=5000")
                db.execute("PRAGMA foreign_keys=ON")  # per connection, outside transactions
                # No checkpoint inside a commit: it fsyncs the database while every store
                # call waits (2-5 ms, every ~750 commits). The checkpointer thread does it.
                db.execute("PRAGMA wal_autocheckpoint=0")
                version = db.execute("PRAGMA user_version").fetchone()[0]
            if pending_migrations(_SQLITE_MIGRATIONS, version, f"task store {path}"):
                self._flock()
                self._migrate()
                self._unflock()
        except StorageError:
            self.close()
            raise
        self._checkpointer = threading.Thread(target=self._checkpoints, name="store-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoints(self) -> None:
        """The checkpointer thread: every :data:`_CHECKPOINT_INTERVAL_S`, copy the WAL's
        committed pages into the database (``PRAGMA wal_checkpoint(PASSIVE)``: it waits for
        no reader or writer) on a connection of its own, so no store call waits for its
        fsync. A failure is logged and tried again next time; the WAL grows meanwhile."""
        try:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            log.error("task store %s: no checkpoint connection (%s); the WAL is checkpointed at close only",
                      self._path, exc)
            return
        try:
            while not self._stop_checkpoints.wait(_CHECKPOINT_INTERVAL_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("task store %s: WAL checkpoint failed (%s); trying again", self._path, exc)
        finally:
            db.close()

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for step, statements in pending_migrations(_SQLITE_MIGRATIONS, version, f"task store {self._path}"):
                for statement in statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {step}")  # transactional: part of the commit

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """The connection under its lock; sqlite3 errors become StorageError."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StorageError(f"task store {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` under the lock; ROLLBACK when the body raises."""
        with self._guard() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # some errors (SQLITE_FULL, ...) already rolled back
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _flock(self) -> None:
        """Take the exclusive lock on ``<db>.lock`` (no-op when held) and write our pid in it.

        Raises:
            StorageError: another open file description holds it (another process, or
                another store on the same file in this process), or the file fails.
        """
        if self._lock_fd is not None:
            return
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open task store lock {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"task store {self._path} is in use by another gateway process (pid {holder})"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock task store {lock_path}: {exc}") from exc
        self._lock_fd = fd

    def _unflock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

    def create(self, record: TaskRecord, quota: TaskQuota | None = None) -> None:
        """Insert ``record``; raises StorageError (also on a duplicate id). ``quota`` is
        not counted here: one process owns a SQLite store (its lock file), and the task
        manager's own counts are exact."""
        with self._guard() as db:
            db.execute(
                f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) VALUES ({', '.join('?' * len(TASK_COLUMNS))})",
                record_params(record),
            )

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with ``task_id`` or None."""
        with self._guard() as db:
            row = db.execute(_SELECT_TASK, (task_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Tasks matching ``query``, newest first (see :class:`TaskQuery`)."""
        sql, params = list_sql(query, "tasks", "?", ", ".join(TASK_COLUMNS))
        with self._guard() as db:
            rows = db.execute(sql, params).fetchall()
        return [record_from_row(row) for row in rows]

    def mark_running(self, task_id: str, started_at_ns: int) -> bool:
        """CREATED/QUEUED -> RUNNING at ``started_at_ns`` (unix ns); False when the task is
        not waiting (unknown, running or final)."""
        with self._guard() as db:
            cur = db.execute(
                f"UPDATE tasks SET status = ?, started_at_ns = ? WHERE task_id = ? AND {WAITING_SQL}",
                (TaskStatus.RUNNING.value, started_at_ns, task_id),
            )
            return cur.rowcount == 1

    def append_output(self, task_id: str, chunks: Sequence[OutputChunk]) -> None:
        """Insert ``chunks`` in one transaction (StorageError, nothing written, when an
        offset exists already or the task does not)."""
        with self._transaction() as db:
            db.executemany(_INSERT_CHUNK, [chunk_params(task_id, c) for c in chunks])

    def read_output(self, task_id: str, from_offset: int, limit: int) -> list[OutputChunk]:
        """Up to ``limit`` entries with ``offset >= from_offset`` in offset order ([] for an
        unknown task)."""
        with self._guard() as db:
            rows = db.execute(
                "SELECT seq, kind, data, ts_ms FROM task_output WHERE task_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (task_id, from_offset, limit),
            ).fetchall()
        return [chunk_from_row(row) for row in rows]

    def finish(
        self,
        task_id: str,
        status: TaskStatus,
        completed_at_ns: int,
        result: TaskResult | None,
        final_chunks: Sequence[OutputChunk] = (),
    ) -> bool:
        """Make the task final (clearing ``cancel_requested``) and append ``final_chunks``,
        in one transaction; False, nothing changed, when it is final already or unknown."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE tasks SET status = ?, completed_at_ns = ?, result_json = ?, cancel_requested = 0"
                f" WHERE task_id = ? AND {UNFINISHED_SQL}",
                (status.value, completed_at_ns, result_json(result), task_id),
            )
            if cur.rowcount != 1:
                return False
            db.executemany(
                _INSERT_CHUNK, [chunk_params(task_id, c) for c in final_chunks]
            )
            return True

    def request_cancel(self, task_id: str) -> TaskRecord | None:
        """Flag an unfinished task for cancelling; the task as it is now, None if unknown."""
        with self._transaction() as db:
            db.execute(f"UPDATE tasks SET cancel_requested = 1 WHERE task_id = ? AND {UNFINISHED_SQL}", (task_id,))
            row = db.execute(_SELECT_TASK, (task_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s unfinished tasks flagged for cancelling, oldest first."""
        with self._guard() as db:
            rows = db.execute(
                f"SELECT task_id FROM tasks WHERE {UNFINISHED_SQL} AND owner = ? AND cancel_requested"
                " ORDER BY created_at_ns",
                (owner,),
            ).fetchall()
        return [row[0] for row in rows]

    def claim_owner(self, owner: str) -> None:
        """Take the exclusive lock on ``<db>.lock`` (held until :meth:`close`) for ``owner``.

        Raises:
            StorageError: ``task store ... is in use by another gateway process (pid N)``
                when another store holds the lock, in any process.
        """
        self._flock()
        self._owner = owner

    def owner_alive(self) -> bool:
        """True once claimed: the file lock lasts as long as this process."""
        return self._owner is not None

    def fail_orphaned(self, owner: str, reason: str, now_ns: int) -> list[str]:
        """FAIL every unfinished task not owned by ``owner`` (the lock proves its owner
        gone): ``completed_at_ns = now_ns``, exit code -1, error ``reason``, an EXIT_CODE
        ``b"-1"`` entry (timestamp ``now_ns`` in ms) after the log's last entry; one
        transaction. Returns their ids, oldest first.

        Raises:
            StorageError: ``owner`` was not claimed on this store (without the lock a live
                process may be running those tasks), or the database fails.
        """
        if self._owner != owner:
            raise StorageError(f"task store {self._path}: fail_orphaned({owner!r}) needs claim_owner({owner!r}) first")
        with self._transaction() as db:
            ids = [row[0] for row in db.execute(
                f"SELECT task_id FROM tasks WHERE {UNFINISHED_SQL} AND owner <> ? ORDER BY created_at_ns", (owner,)
            )]
            db.executemany(
                "INSERT INTO task_output (task_id, seq, kind, data, ts_ms)"
                " SELECT ?, coalesce(max(seq) + 1, 0), ?, ?, ? FROM task_output WHERE task_id = ?",
                [(task_id, *ORPHAN_EXIT, now_ns // 1_000_000, task_id) for task_id in ids],
            )
            db.executemany(
                "UPDATE tasks SET status = ?, completed_at_ns = ?, result_json = ?, cancel_requested = 0"
                " WHERE task_id = ?",
                [(TaskStatus.FAILED.value, now_ns, orphan_result_json(reason), task_id) for task_id in ids],
            )
        return ids

    # One process owns a SQLite store (its lock file), so no other process runs tasks
    # from it: a workspace is always this process's to hold.
    def lease_workspace(self, tenant: str, workspace: str, owner: str) -> str | None:
        """None: the owning process holds every workspace."""
        return None

    def release_workspace(self, tenant: str, workspace: str, owner: str) -> None:
        """Nothing to give up."""

    def workspace_holder(self, tenant: str, workspace: str) -> str | None:
        """None: no other process can hold one."""
        return None

    def purge_finished(self, completed_before_ns: int, limit: int) -> int:
        """Delete up to ``limit`` final tasks completed before ``completed_before_ns`` (unix
        ns), oldest first, with their output (cascade); returns how many tasks."""
        with self._guard() as db:
            cur = db.execute(
                "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks"
                f" WHERE {FINAL_SQL} AND completed_at_ns < ? ORDER BY completed_at_ns LIMIT ?)",
                (completed_before_ns, limit),
            )
            return cur.rowcount

    def close(self) -> None:
        """Stop the checkpointer, checkpoint the WAL into the database, close it, then
        release the lock (idempotent)."""
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # closed already, or the disk is gone: the WAL stays
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        self._unflock()
