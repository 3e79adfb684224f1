"""The audit log: builds ``mcp_audit_v1`` events, chains them, hands them to a sink.

Every event gets ``seq``, ``prev_hash`` and ``hash`` where
``hash = sha256(canonical_json(event without "hash"))`` and canonical JSON is
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)``; so
deleting, reordering or editing a line breaks the chain (:func:`verify_chain`).
A sink failure raises :class:`AuditError`; callers treat it as fail-closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.fields import FIELD_NAMES, FIELDS
from gateway.errors import InternalError
from gateway.models import Principal, RequestContext

__all__ = [
    "GENESIS_HASH",
    "AuditError",
    "AuditLog",
    "AuditSink",
    "FileSink",
    "args_sha256",
    "redact_command",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
_MAX_COMMAND_CHARS = 1024
_MAX_REASON_CHARS = 512
_MAX_SESSIONS = 10_000
_REQUIRED_BEFORE_CHAIN = frozenset(f.name for f in FIELDS if f.required) - {"seq", "prev_hash", "hash"}

# key=value / key: value where the key names a secret; the value is replaced.
_SECRET_KV = re.compile(
    r"(?i)\b([\w.-]*(?:passw(?:or)?d|passwd|secret|token|api[_-]?key|apikey|credential|auth)[\w.-]*)"
    r"(\s*[=:]\s*)((?:(?:bearer|basic|token)\s+)?\S+)"
)
# Flags whose *next* argument is a secret (``--password hunter2``).
_SECRET_FLAG = re.compile(r"(?i)^--?[\w-]*(?:passw(?:or)?d|secret|token|api[_-]?key|credential)[\w-]*$")
# Credentials embedded in URLs (``https://user:pw@host``) and bearer tokens.
_URL_CREDS = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")


class AuditError(InternalError):
    """The audit sink could not record an event (5001). The action is refused."""


class AuditSink(Protocol):
    """Where chained audit lines go.

    ``write`` receives one complete JSON object with no newline and must either
    persist it or raise ``OSError``; ``last_event`` returns the newest stored event
    (to continue the chain after a restart) or None.
    """

    name: str

    def write(self, line: str) -> None:
        """Persist one line. Raises OSError on failure."""
        ...

    def last_event(self) -> dict[str, Any] | None:
        """The newest stored event, or None when empty."""
        ...


class FileSink:
    """Appends JSON lines to a file opened ``O_APPEND``; one ``write(2)`` per event.

    Args:
        path: the audit file; its directory is created (mode 0700) when missing.
        fsync: call ``fsync`` after every event (see ``AuditSettings.fsync``).
    """

    name = "file"

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = path
        self._fsync = fsync
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, line: str) -> None:
        """Append ``line`` + newline with a single write; raises OSError on failure."""
        data = (line + "\n").encode("ascii")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to audit file {self._path}: {written} of {len(data)} bytes")
        if self._fsync:
            os.fsync(self._fd)

    def last_event(self) -> dict[str, Any] | None:
        """Parse the last complete line of the file, or None for an empty file.

        Raises:
            AuditError: when the last line is not a JSON object (a torn or edited
                file: the chain cannot be continued safely).
        """
        with open(self._path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return None
            chunk = min(size, 64 * 1024)
            fh.seek(size - chunk)
            tail = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            event = json.loads(tail)
        except ValueError as exc:
            raise AuditError(f"audit file {self._path} ends with a malformed line") from exc
        if not isinstance(event, dict):
            raise AuditError(f"audit file {self._path} ends with a non-object line")
        return event

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self._fd)


def canonical_json(event: dict[str, Any]) -> str:
    """Sorted-key, compact, ASCII JSON: the form that is hashed and written."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _event_hash(event: dict[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def verify_chain(events: Iterable[dict[str, Any]]) -> int:
    """Check ``seq``/``prev_hash``/``hash`` across consecutive events.

    Returns:
        the number of events checked.

    Raises:
        ValueError: naming the first ``seq`` whose link or hash is wrong.
    """
    prev_hash, prev_seq, count = None, None, 0
    for event in events:
        if event.get("hash") != _event_hash(event):
            raise ValueError(f"event seq={event.get('seq')} has a wrong hash")
        if prev_hash is not None and (event["prev_hash"] != prev_hash or event["seq"] != prev_seq + 1):
            raise ValueError(f"event seq={event.get('seq')} does not follow seq={prev_seq}")
        prev_hash, prev_seq = event["hash"], event["seq"]
        count += 1
    return count


def redact_command(command: str, args: Sequence[str]) -> str:
    """``command`` and ``args`` as one line with secret-looking values replaced by ``***``.

    Redacts ``key=value`` where the key names a secret (password, token, api_key, ...),
    the argument after a secret flag (``--password X``), URL credentials and bearer
    tokens; truncates to 1024 characters. Best effort: the audit event also carries
    ``args_sha256`` so the exact arguments can be matched without being stored.
    """
    out: list[str] = []
    redact_next = False
    for word in (command, *args):
        if redact_next:
            out.append("***")
            redact_next = False
            continue
        if _SECRET_FLAG.match(word):
            redact_next = True
            out.append(word)
            continue
        word = _SECRET_KV.sub(r"\1\2***", word)
        word = _URL_CREDS.sub(r"\1***@", word)
        word = _BEARER.sub(r"\1***", word)
        out.append(word)
    line = " ".join(out)
    return line if len(line) <= _MAX_COMMAND_CHARS else line[: _MAX_COMMAND_CHARS - 3] + "..."


def args_sha256(args: Sequence[str]) -> str:
    """SHA-256 hex of the compact JSON array of ``args``."""
    return hashlib.sha256(json.dumps(list(args), separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """Builds, chains and writes audit events. Thread-safe.

    Args:
        sink: where lines go; its newest event continues the chain.

    Raises:
        AuditError: at construction, when the sink's last event cannot be read.
    """

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        last = sink.last_event()
        self._seq: int = int(last["seq"]) if last else 0
        self._prev_hash: str = str(last["hash"]) if last else GENESIS_HASH
        self._invocations: OrderedDict[str, int] = OrderedDict()

    def count_invocation(self, session_id: str) -> int:
        """Increment and return the session's cumulative call count (``tool_invoke_count``)."""
        with self._lock:
            count = self._invocations.pop(session_id, 0) + 1
            self._invocations[session_id] = count
            if len(self._invocations) > _MAX_SESSIONS:
                self._invocations.popitem(last=False)
            return count

    def emit(
        self,
        event_type: str,
        ctx: RequestContext,
        principal: Principal | None,
        /,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write one event of ``event_type`` for a call described by ``ctx``.

        ``principal`` fills ``principal``, ``tenant``, ``auth_scheme`` and
        ``credential_sha256``; without one (a failed authentication) ``fields`` must carry
        the first three. ``fields`` are further audit keys (see gateway.audit.fields); None
        values are dropped (absent = unknown).

        Returns:
            the event as written (with seq and hashes).

        Raises:
            AuditError: when the sink fails or an unknown key is passed.
        """
        event: dict[str, Any] = {
            "schema_version": "1",
            "timestamp": time.time_ns(),
            "session_id": ctx.session_id,
            "client_process": ctx.client_process,
            "server_host": ctx.server_host,
            "server_port": ctx.server_port,
            "tls": ctx.tls,
            "method": ctx.method,
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "producer": "mcp-gateway",
            "transport": ctx.transport,
        }
        if principal is not None:
            event.update(principal=principal.id, tenant=principal.tenant, auth_scheme=principal.auth_scheme)
            if principal.credential_sha256 is not None:
                event["credential_sha256"] = principal.credential_sha256
        event.update({k: v for k, v in fields.items() if v is not None})
        unknown = set(event) - FIELD_NAMES
        if unknown:
            raise AuditError(f"unknown audit fields: {sorted(unknown)}")
        missing = _REQUIRED_BEFORE_CHAIN - set(event)
        if missing:
            raise AuditError(f"missing audit fields: {sorted(missing)}")
        with self._lock:
            event["seq"] = self._seq + 1
            event["prev_hash"] = self._prev_hash
            event["hash"] = _event_hash(event)
            try:
                self._sink.write(canonical_json(event))
            except OSError as exc:
                raise AuditError(f"audit sink '{self._sink.name}' failed: {exc.strerror or exc}") from exc
            self._seq, self._prev_hash = event["seq"], event["hash"]
        return event


def clip(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
