"""The gateway's logs: JSON lines in production, text for development (``--log-format``).

Built on the standard library's :mod:`logging`, with a JSON formatter, not structlog:
every module of the gateway and every library it runs on (uvicorn, grpcio, httpx,
psycopg) already logs through :mod:`logging`, so one formatter on the root handler renders
all of them alike, with no call site rewritten and no second pipeline to bridge.

A JSON line is one object (keys in this order; absent ones are left out)::

    {"time": "2026-12-06T22:01:02.345Z", "level": "WARNING", "logger": "gateway.service",
     "message": "...", "request_id": "...", "trace_id": "...", "span_id": "...",
     "principal": "...", "tenant": "...", "suppressed": 3, "exception": "Traceback ..."}

``request_id``, ``principal`` and ``tenant`` come from the call being served
(:func:`bind_call`, set by the service layer for the call's thread and by the task
manager for the task's), ``trace_id`` and ``span_id`` from the current OpenTelemetry span.
Text lines carry the same fields after the message.

Repeated failures are rate-limited (:class:`RepeatFilter`): past a burst, records of the
same logger, level and message template at WARNING or above are held back for the rest of
a window, and the next one let through says how many were (``suppressed``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from gateway.observability.tracing import current_span_ids

__all__ = ["JsonFormatter", "RepeatFilter", "TextFormatter", "bind_call", "call_fields", "configure_logging"]

LogFormat = Literal["json", "text"]


@dataclass(frozen=True)
class _Call:
    request_id: str
    principal: str | None = None
    tenant: str | None = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("mcp_call", default=None)


@contextmanager
def bind_call(request_id: str, principal: str | None = None, tenant: str | None = None) -> Iterator[None]:
    """Within the block (and what it runs in this thread or context), log records carry
    this call's request id, principal and tenant."""
    token = _CALL.set(_Call(request_id, principal, tenant))
    try:
        yield
    finally:
        _CALL.reset(token)


def call_fields() -> dict[str, str]:
    """The correlation fields of the current context: ``request_id``, ``principal``,
    ``tenant`` (those known) and the current span's ``trace_id`` / ``span_id`` (32 and 16
    lowercase hex digits, when a span is recording or was propagated)."""
    fields: dict[str, str] = {}
    call = _CALL.get()
    if call is not None:
        fields["request_id"] = call.request_id
        if call.principal:
            fields["principal"] = call.principal
        if call.tenant:
            fields["tenant"] = call.tenant
    ids = current_span_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids.trace_id, ids.span_id
    return fields


_FIELD_ORDER = ("request_id", "trace_id", "span_id", "principal", "tenant")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (ASCII, no newline inside)."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "mcp", None) or {}
        line.update((k, fields[k]) for k in _FIELD_ORDER if k in fields)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line["suppressed"] = suppressed
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``: the development format."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, with its correlation fields after the message."""
        text = super().format(record)
        fields = getattr(record, "mcp", None) or {}
        extra = [f"{k}={fields[k]}" for k in _FIELD_ORDER if k in fields]
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            extra.append(f"suppressed={suppressed}")
        if not extra:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the first line
        return f"{head} [{' '.join(extra)}]{sep}{tail}"


class _ContextFilter(logging.Filter):
    """Puts :func:`call_fields` on every record (``record.mcp``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.mcp = call_fields()
        return True


class RepeatFilter(logging.Filter):
    """Rate-limits repeated records at WARNING and above: per (logger, level, message
    template), at most ``burst`` records per ``window_s`` seconds pass; the first one to
    pass after some were held back carries their number as ``record.suppressed``.

    Args:
        burst: records let through per window.
        window_s: the window, seconds.
        max_keys: how many distinct templates are tracked (the oldest are forgotten).
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_keys: int = 1024) -> None:
        super().__init__()
        self._burst, self._window_s, self._max_keys = burst, window_s, max_keys
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [window start, passed, held]

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record held back."""
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self._window_s:
                held = int(state[2]) if state is not None else 0
                if state is None and len(self._seen) >= self._max_keys:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[key] = [now, 1, 0]
                record.suppressed = held
                return True
            if state[1] < self._burst:
                state[1] = int(state[1]) + 1
                record.suppressed, state[2] = int(state[2]), 0
                return True
            state[2] = int(state[2]) + 1
            return False


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Route every logger to stderr in ``fmt`` (``json`` or ``text``) at ``level``
    (debug|info|warning|error), with call correlation fields and repeat limiting.
    Replaces handlers configured earlier (so it can be called again)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # The MCP SDK logs every session it opens and closes, with its id, at INFO: one line per
    # agent connection, naming what a session hijack needs. Its warnings (refused Host or
    # Origin, a session named by another principal) and errors still show; debug shows all.
    logging.getLogger("mcp").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
