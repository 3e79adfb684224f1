"""The client's results: frozen dataclasses, the same whether REST or gRPC carried them.

Times are RFC 3339 UTC text as the gateway sent them; sizes are bytes, durations
milliseconds (design section 3). A field one transport does not carry (gRPC has no
truncation flags, limit reason or setup error) takes its empty value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.models import ResourceUsage  # the server's own: the same fields, units and defaults

__all__ = ["FINAL_STATUSES", "OutputChunk", "ResourceUsage", "Task", "TaskPage", "TaskResult"]

#: Task states after which nothing changes (``Task.status``).
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


@dataclass(frozen=True)
class TaskResult:
    """The outcome of a final task.

    Attributes:
        exit_code: the command's exit status; 128+N when a signal N ended it (the wall clock
            and cancel kill with 9: 137); -1 when it never ran.
        stdout, stderr: the captured output (up to the gateway's cap), UTF-8 with replacement.
        usage: :class:`ResourceUsage`.
        execution_time_ms: spawn to reap, milliseconds.
        stdout_truncated, stderr_truncated: output beyond the cap was dropped (REST only).
        limit_reason: the limit that ended it (``wall_timeout``, ``oom``, ...), or None (REST only).
        error: why the sandbox did not start (FAILED tasks), or None (REST only).
    """

    exit_code: int
    stdout: str
    stderr: str
    usage: ResourceUsage
    execution_time_ms: int
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    limit_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Task:
    """A task as the gateway reports it.

    Attributes:
        task_id: ``task-`` and 32 hex digits.
        status: ``QUEUED``, ``RUNNING``, or final (:data:`FINAL_STATUSES`); ``CREATED`` briefly.
        created_at, started_at, completed_at: RFC 3339 UTC; None until it happened.
        metadata: the request's labels (``workspace`` names its workspace).
        task_type: ``COMMAND`` (the only kind the gateway runs today).
        result: :class:`TaskResult` once final (a listing carries none: ``get_task`` reads it).
    """

    task_id: str
    status: str
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    task_type: str = "COMMAND"
    result: TaskResult | None = None

    @property
    def final(self) -> bool:
        """True once the task's state can no longer change."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class OutputChunk:
    """One entry of a task's output log, numbered from 0 without gaps.

    Attributes:
        offset: the entry's number (a stream resumed at ``offset + 1`` continues after it).
        kind: ``stdout``, ``stderr``, ``event`` (JSON: ``output_truncated``, ``task_end``) or
            ``exit`` (the last entry: the exit status in ASCII decimal).
        data: the entry's bytes.
        timestamp_ms: when it was written, unix milliseconds.
    """

    offset: int
    kind: str
    data: bytes
    timestamp_ms: int

    @property
    def exit_code(self) -> int | None:
        """The exit status an ``exit`` entry carries, else None."""
        return int(self.data) if self.kind == "exit" and self.data.strip().lstrip(b"-").isdigit() else None


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first, and the token of the next page (None on the last)."""

    tasks: tuple[Task, ...]
    next_page_token: str | None
