"""Tasks: the store protocol and its SQLite and PostgreSQL stores, and the manager that runs them."""

from __future__ import annotations

from typing import Any

from gateway.tasks.manager import Isolation, TaskManager, status_for_result
from gateway.tasks.store import SqliteTaskStore, TaskStore, open_store

__all__ = [
    "Isolation",
    "PostgresTaskStore",
    "SqliteTaskStore",
    "TaskManager",
    "TaskStore",
    "open_store",
    "status_for_result",
]


def __getattr__(name: str) -> Any:
    # psycopg costs ~150 ms to import: only a PostgreSQL deployment pays for it.
    if name == "PostgresTaskStore":
        from gateway.tasks.postgres import PostgresTaskStore

        return PostgresTaskStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
