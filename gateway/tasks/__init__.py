"""Tasks: the store protocol and SQLite store, and the manager that runs them."""

from gateway.tasks.manager import Isolation, TaskManager, status_for_result
from gateway.tasks.store import SqliteTaskStore, TaskStore

__all__ = ["Isolation", "SqliteTaskStore", "TaskManager", "TaskStore", "status_for_result"]
