"""Per-session counters of the audit trail (design section 11).

Falco judges each event alone, so whatever a rule compares across a session is counted here
and written into every event: ``tool_invoke_count``, ``file_access_count``,
``session_request_bytes`` and ``session_response_bytes``.

A session is keyed by the principal and ``RequestContext.session_id``: two principals that
send the same session id count apart, so no caller can move another's counters. The table
holds the 100,000 most recently used sessions; an older one starts again from zero.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["SessionCounters", "SessionTotals"]

_MAX_SESSIONS = 100_000


@dataclass
class SessionTotals:
    """One session's cumulative counts.

    Attributes:
        tool_invokes: tool calls (executions), this one included.
        file_accesses: file calls, this one included.
        request_bytes: request bytes of audited calls, bytes.
        response_bytes: response bytes (task output, file content), bytes.
    """

    tool_invokes: int = 0
    file_accesses: int = 0
    request_bytes: int = 0
    response_bytes: int = 0


class SessionCounters:
    """Cumulative counters per (principal, session id). Thread-safe.

    Args:
        max_sessions: how many sessions are kept (least recently used dropped first).
    """

    def __init__(self, max_sessions: int = _MAX_SESSIONS) -> None:
        self._lock = threading.Lock()
        self._max = max_sessions
        self._sessions: OrderedDict[tuple[str, str], SessionTotals] = OrderedDict()

    def _get(self, key: tuple[str, str]) -> SessionTotals:
        """With self._lock held: the session's totals, marked most recently used."""
        totals = self._sessions.pop(key, None) or SessionTotals()
        self._sessions[key] = totals
        if len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return totals

    def count_call(self, principal: str, session_id: str, *, tool: bool, file: bool) -> tuple[int | None, int | None]:
        """Count one call of the session: a tool call, a file call, or both (a file tool
        called over MCP).

        Returns:
            the session's ``(tool_invoke_count, file_access_count)``, this call included;
            None for a counter this call does not count.
        """
        with self._lock:
            totals = self._get((principal, session_id))
            if tool:
                totals.tool_invokes += 1
            if file:
                totals.file_accesses += 1
            return (totals.tool_invokes if tool else None, totals.file_accesses if file else None)

    def add_bytes(self, principal: str, session_id: str, request_bytes: int, response_bytes: int) -> tuple[int, int]:
        """Add an event's bytes to the session.

        Returns:
            the session's cumulative ``(request_bytes, response_bytes)``, this event included.
        """
        with self._lock:
            totals = self._get((principal, session_id))
            totals.request_bytes += request_bytes
            totals.response_bytes += response_bytes
            return totals.request_bytes, totals.response_bytes
