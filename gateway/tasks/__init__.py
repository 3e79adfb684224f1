"""Tasks: the store protocol and SQLite store, and the manager that runs them."""

from gateway.tasks.manager import TaskManager, status_for_result
from gateway.tasks.store import SqliteTaskStore, TaskStore

__all__ = ["SqliteTaskStore", "TaskManager", "TaskStore", "status_for_result"]
