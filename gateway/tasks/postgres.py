"""The PostgreSQL task store, shared by several gateway replicas (``tasks.store_dsn``).

Same semantics as the SQLite store (:mod:`gateway.tasks.store`), with PostgreSQL types:
``bytea`` output, ``bigint`` nanoseconds, ``jsonb`` JSON. State changes are single
conditional statements or transactions, so replicas racing on one task (its owner
finishing, another replica cancelling or failing it) leave exactly one final state.

Liveness of owners: :meth:`PostgresTaskStore.claim_owner` takes a session-level advisory
lock keyed by the owner on a dedicated connection kept open for the store's lifetime. The
server releases it when that session ends, whether the process closed the store, was
SIGKILLed, or lost its connection; so "the lock is free" means "its owner is gone", and
:meth:`PostgresTaskStore.fail_orphaned` fails only tasks of such owners. The consequence:
a replica whose lock connection is cut (network, server restart, idle-session kill) is
treated as dead by the others, which fail its tasks while it may still run them. It then
sees ``finish`` return False and its appends collide with the EXIT_CODE entry written for
it; :meth:`PostgresTaskStore.owner_alive` turns False, so it can stop taking work. TCP
keepalives on the lock connection (both ends) bound how long a vanished host still counts
as alive to about half a minute instead of the kernel's two hours.

Every psycopg error becomes :class:`StorageError` here; messages never contain the DSN or
its password. Needs PostgreSQL 12 or newer (``tcp_user_timeout``) reached directly or
through a session-mode pooler: transaction pooling (PgBouncer ``pool_mode=transaction``)
would drop the session advisory locks the owner claims rest on.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from gateway.errors import StorageError
from gateway.models import OutputChunk, TaskRecord, TaskResult, TaskStatus
from gateway.tasks.store import (
    FINAL_SQL,
    ORPHAN_EXIT,
    TASK_COLUMNS,
    UNFINISHED_SQL,
    WAITING_SQL,
    Migration,
    TaskQuery,
    TaskQuota,
    check_quota,
    chunk_from_row,
    chunk_params,
    list_sql,
    orphan_result_json,
    pending_migrations,
    record_from_row,
    record_params,
    result_json,
)

__all__ = ["PostgresTaskStore"]

_MIGRATIONS: tuple[Migration, ...] = (
    (1, (
        """CREATE TABLE mcp_tasks (
            task_id          text PRIMARY KEY,
            task_type        smallint NOT NULL,
            status           smallint NOT NULL,
            tenant           text NOT NULL,
            principal_id     text NOT NULL,
            command          text NOT NULL,
            args_json        jsonb NOT NULL,
            metadata_json    jsonb NOT NULL,
            decision_id      text NOT NULL,
            created_at_ns    bigint NOT NULL,
            started_at_ns    bigint,
            completed_at_ns  bigint,
            result_json      jsonb,
            owner            text NOT NULL DEFAULT '',
            workspace        text NOT NULL DEFAULT '',
            cancel_requested boolean NOT NULL DEFAULT false
        )""",
        "CREATE INDEX mcp_tasks_purge ON mcp_tasks (status, completed_at_ns)",
        """CREATE TABLE mcp_task_output (
            task_id text NOT NULL REFERENCES mcp_tasks (task_id) ON DELETE CASCADE,
            seq     bigint NOT NULL,
            kind    smallint NOT NULL,
            data    bytea NOT NULL,
            ts_ms   bigint NOT NULL,
            PRIMARY KEY (task_id, seq)
        )""",
    )),
    # Replicas act as one (issue 16): request token buckets shared by every replica, and an
    # index to count a tenant's unfinished tasks when a task is created.
    (2, (
        """CREATE TABLE mcp_rate_buckets (
            bucket text PRIMARY KEY,
            tokens double precision NOT NULL,
            stamp  double precision NOT NULL
        )""",
        f"CREATE INDEX mcp_tasks_unfinished ON mcp_tasks (tenant, principal_id) WHERE {UNFINISHED_SQL}",
        # Which replica's tasks use a workspace on a shared volume (one at a time).
        """CREATE TABLE mcp_workspace_leases (
            tenant    text NOT NULL,
            workspace text NOT NULL,
            owner     text NOT NULL,
            since_ns  bigint NOT NULL,
            PRIMARY KEY (tenant, workspace)
        )""",
    )),
    (3, (  # task listing, newest first within a tenant
        "CREATE INDEX mcp_tasks_by_tenant ON mcp_tasks (tenant, created_at_ns, task_id)",
    )),
)
_COLUMNS = ", ".join(f"{c}::text" if c.endswith("_json") else c for c in TASK_COLUMNS)
_SELECT_TASK = "SELECT {} FROM mcp_tasks WHERE task_id = %s".format(
    _COLUMNS
)
_INSERT_TASK = "INSERT INTO mcp_tasks ({}) VALUES ({})".format(
    ", ".join(TASK_COLUMNS), ", ".join("%s::jsonb" if c.endswith("_json") else "%s" for c in TASK_COLUMNS)
)
_INSERT_CHUNK = "INSERT INTO mcp_task_output (task_id, seq, kind, data, ts_ms) VALUES (%s, %s, %s, %s, %s)"
# One round trip per call: lock the named buckets in key order (no deadlock between two
# calls), refill each to now (the server's clock: replicas' clocks may differ), and take a
# token from every one only when every one has a token. Buckets not yet in the table are not
# returned; the caller inserts them (full) and asks again.
_TAKE_TOKENS = """
WITH wanted AS (
    SELECT * FROM unnest(%(buckets)s::text[], %(rates)s::float8[], %(bursts)s::float8[]) AS w(bucket, rate, burst)
), clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
), locked AS (
    SELECT b.bucket, b.stamp, LEAST(w.burst, b.tokens + GREATEST(0, clock.now - b.stamp) * w.rate) AS available
    FROM mcp_rate_buckets b JOIN wanted w USING (bucket) CROSS JOIN clock
    ORDER BY b.bucket FOR UPDATE OF b
), verdict AS (
    SELECT coalesce(bool_and(available >= 1), false) AS taken FROM locked
)
UPDATE mcp_rate_buckets b
SET tokens = locked.available - CASE WHEN verdict.taken THEN 1 ELSE 0 END,
    stamp = GREATEST(locked.stamp, clock.now)
FROM locked, verdict, clock
WHERE b.bucket = locked.bucket
RETURNING b.bucket, locked.available, verdict.taken
"""
_NEW_BUCKETS = """
INSERT INTO mcp_rate_buckets (bucket, tokens, stamp)
SELECT w.bucket, w.burst, extract(epoch FROM clock_timestamp())
FROM unnest(%(buckets)s::text[], %(bursts)s::float8[]) AS w(bucket, burst)
ON CONFLICT (bucket) DO NOTHING
"""
_FINAL_SET = "UPDATE mcp_tasks SET status = %s, completed_at_ns = %s, result_json = %s::jsonb, cancel_requested = false"
# Server side of the lock connection: notice a vanished client after ~10 + 3 * 5 s idle, or
# 30 s of unacknowledged data (postgresql.conf tcp_keepalives_*, tcp_user_timeout; ignored on
# Unix sockets). The client side gets the libpq keepalives_* / tcp_user_timeout equivalents.
_KEEPALIVE_SETTINGS = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3,
                       "tcp_user_timeout": 30_000}
_KEEPALIVE_CONNINFO = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                       "tcp_user_timeout": 30_000}


def _lock_key(name: str) -> int:
    """A stable advisory-lock key for ``name``: the first 8 bytes of its SHA-256 as int64."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_MIGRATION_LOCK = _lock_key("mcp-security-gateway:schema-migrations")


class PostgresTaskStore:
    """Tasks in a PostgreSQL database (tables ``mcp_tasks``, ``mcp_task_output``,
    ``mcp_schema_migrations``), shared by any number of gateway replicas.

    Opening connects the dedicated owner-lock connection, migrates the schema under
    ``pg_advisory_xact_lock`` (so replicas starting at once do not race) and opens a pool
    of ``min_pool``..``max_pool`` connections for everything else.

    Args:
        dsn: ``postgresql://user:password@host:port/dbname`` (any libpq URL or conninfo).
        min_pool, max_pool: pool size bounds, connections.
        connect_timeout_s: limit for connecting, and for waiting for a free pool
            connection, seconds (libpq rounds the connect part up to whole seconds, >= 2).

    Raises:
        StorageError: a malformed DSN, an unreachable server or failed login, a database
            whose schema is newer than this gateway, or any later failure.
    """

    def __init__(self, dsn: str, *, min_pool: int = 1, max_pool: int = 10, connect_timeout_s: float = 5.0) -> None:
        self._secrets = _dsn_secrets(dsn)
        self._target = _dsn_target(dsn)
        self._owner: str | None = None
        self._pool: ConnectionPool | None = None
        conninfo = {"autocommit": True, "connect_timeout": max(2, math.ceil(connect_timeout_s)),
                    "application_name": "mcp-gateway"}
        with self._translate("cannot connect"):
            self._owner_conn = psycopg.connect(dsn, **conninfo, **_KEEPALIVE_CONNINFO)
        try:
            with self._translate("cannot prepare the store"):
                for name, value in _KEEPALIVE_SETTINGS.items():
                    self._owner_conn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
                self._migrate()
            self._pool = ConnectionPool(
                dsn, kwargs=conninfo, min_size=min_pool, max_size=max_pool, timeout=connect_timeout_s,
                check=ConnectionPool.check_connection, name="mcp-task-store", open=False,
            )
            with self._translate("cannot open the connection pool"):
                self._pool.open(wait=True, timeout=connect_timeout_s)
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        """Apply the pending steps of ``_MIGRATIONS`` in one transaction on the lock connection."""
        conn = self._owner_conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS mcp_schema_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM mcp_schema_migrations").fetchone()
            current = row[0] if row else 0
            for version, statements in pending_migrations(_MIGRATIONS, current, f"task store {self._target}"):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO mcp_schema_migrations (version, applied_at) VALUES (%s, now())", (version,))

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """psycopg errors in the body become StorageError ``task store <host:port/db>: <what>:
        <error>`` with the DSN and password scrubbed (and not chained when they were in it)."""
        try:
            yield
        except psycopg.Error as exc:
            raw = str(exc)
            text = " ".join(raw.split())  # libpq's messages span lines
            for secret in self._secrets:
                text = text.replace(secret, "***")
            leaked = any(secret in raw for secret in self._secrets)
            raise StorageError(f"task store {self._target}: {what}: {text}") from (None if leaked else exc)

    @contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pool connection (autocommit) for one operation; errors translated."""
        if self._pool is None:
            raise StorageError(f"task store {self._target}: {what}: the store is closed")
        with self._translate(what), self._pool.connection() as conn:
            yield conn

    def create(self, record: TaskRecord, quota: TaskQuota | None = None) -> None:
        """Insert ``record``; raises StorageError (also on a duplicate id).

        With ``quota``, the insert counts its principal's and tenant's unfinished tasks
        across every replica first, under a per-tenant transaction lock, so two replicas
        cannot both take the last place.

        Raises:
            RateLimited (4290): a cap of ``quota`` is reached (``details.limit``
                ``principal_concurrent_tasks`` / ``tenant_concurrent_tasks``).
        """
        with self._connection("create") as conn, conn.transaction():
            if quota is not None and (quota.principal or quota.tenant):
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("quota:" + record.tenant),))
                mine, theirs = conn.execute(
                    "SELECT count(*) FILTER (WHERE principal_id = %s), count(*) FROM mcp_tasks"
                    f" WHERE tenant = %s AND {UNFINISHED_SQL}", (record.principal_id, record.tenant)).fetchone()
                check_quota(quota, mine, theirs)
            conn.execute(_INSERT_TASK, record_params(record))

    def take_tokens(self, buckets: Sequence[tuple[str, float, int]]) -> tuple[bool, list[float]]:
        """Take one token from each of ``buckets`` (name, refill per second, burst) if
        every one has one, in the table all replicas share. Returns whether they were
        taken and the tokens each had (in the order given; a new bucket starts full).

        Raises:
            StorageError: the server could not be asked.
        """
        params = {"buckets": [b[0] for b in buckets], "rates": [float(b[1]) for b in buckets],
                  "bursts": [float(b[2]) for b in buckets]}
        with self._connection("take_tokens") as conn:
            rows = conn.execute(_TAKE_TOKENS, params).fetchall()
            if len(rows) < len(buckets):
                conn.execute(_NEW_BUCKETS, params)
                rows = conn.execute(_TAKE_TOKENS, params).fetchall()
        available = {row[0]: row[1] for row in rows}
        return bool(rows and rows[0][2]), [available.get(b[0], 0.0) for b in buckets]

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with ``task_id`` or None."""
        with self._connection("get") as conn:
            row = conn.execute(_SELECT_TASK, (task_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Tasks matching ``query``, newest first (see :class:`TaskQuery`)."""
        sql, params = list_sql(query, "mcp_tasks", "%s", _COLUMNS)
        with self._connection("list_tasks") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [record_from_row(row) for row in rows]

    def mark_running(self, task_id: str, started_at_ns: int) -> bool:
        """CREATED/QUEUED -> RUNNING at ``started_at_ns`` (unix ns); False when the task is
        not waiting (unknown, running or final)."""
        with self._connection("mark_running") as conn:
            cur = conn.execute(
                f"UPDATE mcp_tasks SET status = %s, started_at_ns = %s WHERE task_id = %s AND {WAITING_SQL}",
                (TaskStatus.RUNNING.value, started_at_ns, task_id),
            )
            return cur.rowcount == 1

    def append_output(self, task_id: str, chunks: Sequence[OutputChunk]) -> None:
        """Insert ``chunks`` in one transaction (StorageError, nothing written, when an
        offset exists already or the task does not)."""
        with self._connection("append_output") as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(_INSERT_CHUNK, [chunk_params(task_id, c) for c in chunks])

    def read_output(self, task_id: str, from_offset: int, limit: int) -> list[OutputChunk]:
        """Up to ``limit`` entries with ``offset >= from_offset`` in offset order ([] for an
        unknown task)."""
        with self._connection("read_output") as conn:
            rows = conn.execute(
                "SELECT seq, kind, data, ts_ms FROM mcp_task_output WHERE task_id = %s AND seq >= %s"
                " ORDER BY seq LIMIT %s",
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
        with self._connection("finish") as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                f"{_FINAL_SET} WHERE task_id = %s AND {UNFINISHED_SQL}",
                (status.value, completed_at_ns, result_json(result), task_id),
            )
            if cur.rowcount != 1:
                return False
            cur.executemany(_INSERT_CHUNK, [chunk_params(task_id, c) for c in final_chunks])
            return True

    def request_cancel(self, task_id: str) -> TaskRecord | None:
        """Flag an unfinished task for cancelling; the task as it is now, None if unknown."""
        with self._connection("request_cancel") as conn, conn.transaction():
            conn.execute(
                f"UPDATE mcp_tasks SET cancel_requested = true WHERE task_id = %s AND {UNFINISHED_SQL}", (task_id,)
            )
            row = conn.execute(_SELECT_TASK, (task_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s unfinished tasks flagged for cancelling, oldest first."""
        with self._connection("cancel_requests") as conn:
            rows = conn.execute(
                f"SELECT task_id FROM mcp_tasks WHERE {UNFINISHED_SQL} AND owner = %s AND cancel_requested"
                " ORDER BY created_at_ns",
                (owner,),
            ).fetchall()
        return [row[0] for row in rows]

    def claim_owner(self, owner: str) -> None:
        """Hold ``pg_advisory_lock(key(owner))`` on the dedicated connection until
        :meth:`close` (or until that session is lost; see :meth:`owner_alive`). Call it
        before creating tasks as ``owner``: until then other replicas see ``owner`` as dead.
        The session's ``application_name`` becomes ``mcp-gateway owner <owner>``.

        Raises:
            StorageError: another live session holds ``owner`` (owner ids must be unique
                per process), or the database fails.
        """
        with self._translate(f"claim_owner({owner!r})"):
            self._owner_conn.execute("SELECT set_config('application_name', %s, false)",
                                     (f"mcp-gateway owner {owner}"[:63],))
            row = self._owner_conn.execute("SELECT pg_try_advisory_lock(%s)", (_owner_key(owner),)).fetchone()
        if not (row and row[0]):
            raise StorageError(f"task store {self._target}: owner {owner!r} is held by another live gateway process")
        self._owner = owner

    def owner_alive(self) -> bool:
        """True while this store's owner claim stands: claimed, and the lock session
        answers. False (never raises) once it is lost: other replicas may now fail this
        process's tasks, so it should stop taking work."""
        if self._owner is None:
            return False
        try:
            self._owner_conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def fail_orphaned(self, owner: str, reason: str, now_ns: int) -> list[str]:
        """FAIL the unfinished tasks of every owner other than ``owner`` whose lock is free
        (its session is gone): ``completed_at_ns = now_ns``, exit code -1, error ``reason``,
        an EXIT_CODE ``b"-1"`` entry (timestamp ``now_ns`` in ms) after the log's last
        entry. Each dead owner is one transaction holding ``pg_try_advisory_xact_lock`` of
        its key, so it stays dead while we fail its tasks and two replicas never both fail
        them; a live owner's lock is busy and its tasks are left alone. Returns the ids,
        oldest first per owner."""
        failed: list[str] = []
        with self._connection("fail_orphaned") as conn:
            owners = [row[0] for row in conn.execute(
                f"SELECT DISTINCT owner FROM mcp_tasks WHERE {UNFINISHED_SQL} AND owner <> %s", (owner,)
            ).fetchall()]
            for dead in owners:
                with conn.transaction(), conn.cursor() as cur:
                    locked = cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_owner_key(dead),)).fetchone()
                    if not (locked and locked[0]):  # its session still holds it: alive
                        continue
                    cur.execute(
                        f"SELECT task_id FROM mcp_tasks WHERE owner = %s AND {UNFINISHED_SQL}"
                        " ORDER BY created_at_ns FOR UPDATE",
                        (dead,),
                    )
                    ids = [row[0] for row in cur.fetchall()]
                    cur.executemany(
                        "INSERT INTO mcp_task_output (task_id, seq, kind, data, ts_ms)"
                        " SELECT %s, coalesce(max(seq) + 1, 0), %s, %s, %s FROM mcp_task_output WHERE task_id = %s",
                        [(task_id, *ORPHAN_EXIT, now_ns // 1_000_000, task_id) for task_id in ids],
                    )
                    cur.execute(
                        f"{_FINAL_SET} WHERE task_id = ANY(%s)",
                        (TaskStatus.FAILED.value, now_ns, orphan_result_json(reason), ids),
                    )
                    cur.execute("DELETE FROM mcp_workspace_leases WHERE owner = %s", (dead,))
                failed += ids
        return failed

    def lease_workspace(self, tenant: str, workspace: str, owner: str) -> str | None:
        """Hold ``tenant``'s ``workspace`` for the tasks of ``owner`` (this process), unless
        another live replica holds it. A holder whose owner lock is free (its process is
        gone) is replaced. Returns None when ``owner`` holds it now, else the holder."""
        with self._connection("lease_workspace") as conn, conn.transaction():
            row = conn.execute("SELECT owner FROM mcp_workspace_leases WHERE tenant = %s AND workspace = %s"
                               " FOR UPDATE", (tenant, workspace)).fetchone()
            if row is not None and row[0] != owner and not _owner_gone(conn, row[0]):
                return str(row[0])
            conn.execute("INSERT INTO mcp_workspace_leases (tenant, workspace, owner, since_ns)"
                         " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, workspace)"
                         " DO UPDATE SET owner = EXCLUDED.owner, since_ns = EXCLUDED.since_ns",
                         (tenant, workspace, owner, time.time_ns()))
            return None

    def release_workspace(self, tenant: str, workspace: str, owner: str) -> None:
        """Give up ``owner``'s hold on the workspace (nothing when it holds none)."""
        with self._connection("release_workspace") as conn:
            conn.execute("DELETE FROM mcp_workspace_leases WHERE tenant = %s AND workspace = %s AND owner = %s",
                         (tenant, workspace, owner))

    def workspace_holder(self, tenant: str, workspace: str) -> str | None:
        """The live replica holding the workspace, or None."""
        with self._connection("workspace_holder") as conn, conn.transaction():
            row = conn.execute("SELECT owner FROM mcp_workspace_leases WHERE tenant = %s AND workspace = %s",
                               (tenant, workspace)).fetchone()
            return None if row is None or _owner_gone(conn, row[0]) else str(row[0])

    def purge_finished(self, completed_before_ns: int, limit: int) -> int:
        """Delete up to ``limit`` final tasks completed before ``completed_before_ns`` (unix
        ns), oldest first, with their output (cascade); rows another replica is purging
        are skipped. Returns how many tasks."""
        with self._connection("purge_finished") as conn:
            cur = conn.execute(
                "DELETE FROM mcp_tasks WHERE task_id IN (SELECT task_id FROM mcp_tasks"
                f" WHERE {FINAL_SQL} AND completed_at_ns < %s ORDER BY completed_at_ns LIMIT %s"
                " FOR UPDATE SKIP LOCKED)",
                (completed_before_ns, limit),
            )
            # Rate buckets idle for a day are full again; a new one starts full too.
            conn.execute("DELETE FROM mcp_rate_buckets WHERE stamp < extract(epoch FROM clock_timestamp()) - 86400")
            return cur.rowcount

    def close(self) -> None:
        """Release the owner claim, close the pool and the lock connection (idempotent).

        The claim is released before returning (the server would otherwise drop it only
        once it noticed the session end), so other replicas see the owner dead at once."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._owner is not None:
            self._owner = None
            try:
                self._owner_conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                pass  # the session is gone, and its locks with it
        self._owner_conn.close()


def _owner_gone(conn: psycopg.Connection[Any], owner: str) -> bool:
    """Whether ``owner``'s process is gone: its owner lock is free, and now held by this
    transaction (so it cannot come back while the transaction runs)."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_owner_key(owner),)).fetchone()
    return bool(row and row[0])


def _owner_key(owner: str) -> int:
    return _lock_key("owner:" + owner)


def _dsn_secrets(dsn: str) -> tuple[str, ...]:
    """What a message must never show: the DSN itself and its password (as written and
    decoded), longest first."""
    found = {dsn}
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        found |= {password, unquote(password)}
    try:
        found.add(str(conninfo_to_dict(dsn).get("password") or ""))
    except psycopg.Error:
        pass
    return tuple(sorted(found - {""}, key=len, reverse=True))


def _dsn_target(dsn: str) -> str:
    """``postgresql://host:port/dbname`` of ``dsn`` (no user, no password) for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable tasks.store_dsn)"
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{params.get('host', '')}{port}/{params.get('dbname', '')}"
