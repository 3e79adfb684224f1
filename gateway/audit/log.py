"""The audit log: builds ``mcp_audit_v1`` events, chains them, hands them to a sink.

Every event gets ``seq``, ``prev_hash`` and ``hash`` where
``hash = sha256(canonical_json(event without "hash"))`` and canonical JSON is
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)``; so
deleting, reordering or editing a line breaks the chain (:func:`verify_chain`).
A sink failure raises :class:`AuditError` (callers treat it as fail-closed); nothing of the
failed line is kept and the chain does not advance past it (design section 11).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.fields import FIELD_NAMES, FIELDS
from gateway.errors import InternalError
from gateway.metrics import AUDIT_EVENTS
from gateway.models import Principal, RequestContext

__all__ = [
    "GENESIS_HASH",
    "AuditError",
    "AuditLog",
    "AuditSink",
    "FileSink",
    "SinkHealth",
    "args_sha256",
    "redact_command",
    "verify_chain",
]

log = logging.getLogger("gateway.audit")

GENESIS_HASH = "0" * 64
_ERROR_LOG_INTERVAL_S = 10.0  # a failing sink is logged at ERROR at most this often, seconds
_PROBE_INTERVAL_S = 1.0  # a failing sink is probed for recovery at most this often, seconds
_MAX_COMMAND_CHARS = 1024
_MAX_REASON_CHARS = 512
_MAX_SESSIONS = 10_000
_MAX_DEFERRED = 1000  # deferred events kept in memory while the sink fails
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
    persist it whole or raise ``OSError`` leaving nothing of it behind; ``last_event``
    returns the newest stored event (to continue the chain after a restart) or None;
    ``probe`` checks, without writing an event, that a line of ``size_bytes`` could be
    written now (how a failing sink finds out that it has recovered while no call
    comes), raising ``OSError`` when it could not.
    """

    name: str

    def write(self, line: str) -> None:
        """Persist one line. Raises OSError on failure, with nothing of the line stored."""
        ...

    def last_event(self) -> dict[str, Any] | None:
        """The newest stored event, or None when empty."""
        ...

    def probe(self, size_bytes: int) -> None:
        """Raise OSError unless ``size_bytes`` could be written now."""
        ...


class FileSink:
    """Appends JSON lines to a file opened ``O_APPEND``; a line is whole or absent.

    The sink is the file's only writer (the gateway owns its state directory) and keeps
    the offset just past its last whole line. A write that fails once part of the line
    is in the file (write(2) returns a short count when the disk fills mid-line, and
    the rest then fails with ENOSPC; EIO; a failed fsync) is undone with ftruncate(2)
    back to that offset, so the file always ends with a newline: ``O_APPEND`` puts every
    write at the end, so the next line starts on a line of its own. An undo that itself
    fails is retried before the next write, which fails while it cannot be done. A file
    found at open ending without a newline (torn by a crash or power loss mid-write) is
    cut back to its last whole line, logged at ERROR: that line was never acknowledged,
    and the chain continues from the last whole event.

    Args:
        path: the audit file; its directory is created (mode 0700) when missing.
        fsync: call ``fsync`` after every event (see ``AuditSettings.fsync``).

    Raises:
        OSError: at construction, when the file cannot be opened or repaired.
    """

    name = "file"

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = path
        self._fsync = fsync
        self._probe_path = path.with_name(f".{path.name}.probe")
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._end = _cut_torn_tail(self._fd, path)
        except OSError:
            os.close(self._fd)
            raise
        self._torn = False  # bytes past self._end left by an undo that failed

    def write(self, line: str) -> None:
        """Append ``line`` + newline, whole or not at all; raises OSError on failure."""
        data = (line + "\n").encode("ascii")
        if self._torn:
            self._undo()
        try:
            view = memoryview(data)
            while view:
                # A short count is not an error yet (a signal, a page that still had
                # room): write the rest; a full disk then fails with ENOSPC.
                view = view[os.write(self._fd, view):]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            self._torn = True
            with contextlib.suppress(OSError):  # retried before the next write
                self._undo()
            raise
        self._end += len(data)

    def _undo(self) -> None:
        """Cut the file back to its last whole line (never extend it: a file someone
        else shortened stays as it is)."""
        if os.fstat(self._fd).st_size > self._end:
            os.ftruncate(self._fd, self._end)
        self._torn = False

    def probe(self, size_bytes: int) -> None:
        """Write ``size_bytes`` to a sibling file (``.<name>.probe``) and remove it; raises
        OSError when they do not fit (or the torn tail of a failed write cannot be undone).
        The audit file itself is not touched, so a tailer never sees probe bytes."""
        if self._torn:
            self._undo()
        os.fstat(self._fd)  # EBADF once closed
        fd = os.open(self._probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(b"\n" * size_bytes)
            while view:
                view = view[os.write(fd, view):]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._probe_path)

    def last_event(self) -> dict[str, Any] | None:
        """Parse the last line of the file, or None for an empty file.

        Raises:
            AuditError: when the last line is not a JSON object (an edited file: the
                chain cannot be continued safely).
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


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Truncate the file open as ``fd`` after its last newline; returns its size then.

    Only a write cut short by a crash or power loss leaves a file ending mid-line (a
    failing write is undone while the process lives); that line was never acknowledged.
    """
    size = keep = os.fstat(fd).st_size
    if size == 0:
        return 0
    with open(path, "rb") as fh:
        while keep > 0:
            start = max(0, keep - 64 * 1024)
            fh.seek(start)
            chunk = fh.read(keep - start)
            if keep == size and chunk.endswith(b"\n"):
                return size
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
    os.ftruncate(fd, keep)
    log.error(
        "audit file %s ended with %d bytes of a torn line (a write cut short by a crash or "
        "power loss); cut back to its last whole line at byte %d, the chain continues from it",
        path, size - keep, keep,
    )
    return keep


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


@dataclass(frozen=True)
class SinkHealth:
    """Whether the audit sink takes events (readiness reports it).

    Attributes:
        sink: the sink's name (``file``).
        healthy: the last write (or recovery probe) succeeded.
        detail: why it is failing (the OS error text), "" when healthy.
        failing_since_ns: when the first failure of this outage happened, unix
            nanoseconds; None when healthy.
        failed_events: events refused since then (each one's call failed with 5001).
        deferred_events: ``defer`` events waiting for the sink (see :meth:`AuditLog.emit`).
    """

    sink: str
    healthy: bool
    detail: str = ""
    failing_since_ns: int | None = None
    failed_events: int = 0
    deferred_events: int = 0


@dataclass(frozen=True)
class _Outage:
    since_ns: int
    detail: str
    failed_events: int
    line_bytes: int  # the largest event that failed: what a probe must fit


class AuditLog:
    """Builds, chains and writes audit events. Thread-safe.

    The chain advances only past events the sink wrote. A failing sink is counted in
    ``mcp_audit_events_total{result="failed"}``, logged at ERROR at most every 10 s (with
    the number of failures not logged since), and reported unhealthy by :meth:`health`
    until a write succeeds: the next event's, or a probe that :meth:`health` makes at
    most once a second while no event comes. Events of actions already done (``defer``)
    wait in memory for the sink to recover instead of being lost.

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
        self._written = AUDIT_EVENTS.labels(sink.name, "written")
        self._failed = AUDIT_EVENTS.labels(sink.name, "failed")
        # Replaced whole (never mutated) under self._lock, so health() reads it without.
        self._outage: _Outage | None = None
        self._next_error_log = 0.0
        self._unlogged_failures = 0
        self._next_probe = 0.0
        self._deferred: deque[dict[str, Any]] = deque()
        self._dropped = AUDIT_EVENTS.labels(sink.name, "dropped")

    def health(self) -> SinkHealth:
        """The sink's health; while it is failing, first probe it (at most once a second,
        and only when no write holds the log: this never waits on a writer)."""
        if self._outage is not None and time.monotonic() >= self._next_probe and self._lock.acquire(blocking=False):
            try:
                self._probe()
            finally:
                self._lock.release()
        outage, deferred = self._outage, len(self._deferred)
        if outage is None:
            return SinkHealth(self._sink.name, True, deferred_events=deferred)
        return SinkHealth(self._sink.name, False, outage.detail, outage.since_ns, outage.failed_events, deferred)

    def _probe(self) -> None:
        """With self._lock held: probe a failing sink for room for its largest failed event."""
        outage = self._outage
        if outage is None or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + _PROBE_INTERVAL_S
        try:
            self._sink.probe(outage.line_bytes)
        except OSError as exc:
            self._outage = _Outage(outage.since_ns, exc.strerror or str(exc), outage.failed_events, outage.line_bytes)
            return
        self._recovered("a probe write")
        with contextlib.suppress(AuditError):  # counted and logged by _write
            self._write_deferred()

    def _append(self, event: dict[str, Any], *, retry: bool = False) -> None:
        """With self._lock held: chain ``event`` onto the last written one and write it;
        AuditError, and the chain stays where it is, when the sink fails (a ``retry`` of a
        deferred event is not counted as failed again)."""
        event["seq"] = self._seq + 1
        event["prev_hash"] = self._prev_hash
        event["hash"] = _event_hash(event)
        self._write(canonical_json(event), retry=retry)
        self._seq, self._prev_hash = event["seq"], event["hash"]

    def _write_deferred(self) -> None:
        """With self._lock held: write the deferred events, oldest first (AuditError at the
        first the sink refuses; it and the rest stay)."""
        while self._deferred:
            self._append(self._deferred[0], retry=True)
            self._deferred.popleft()

    def _defer(self, event: dict[str, Any]) -> None:
        if len(self._deferred) >= _MAX_DEFERRED:
            self._dropped.inc()
            log.error("audit sink '%s': %d events already wait for it, this %s event is lost",
                      self._sink.name, len(self._deferred), event["event_type"])
            return
        self._deferred.append(event)

    def _write(self, line: str, *, retry: bool = False) -> None:
        """With self._lock held: hand ``line`` to the sink, counting and logging the outcome."""
        try:
            self._sink.write(line)
        except OSError as exc:
            if not retry:
                self._failed.inc()
            self._note_failure(exc, len(line) + 1, counted=not retry)
            raise AuditError(f"audit sink '{self._sink.name}' failed: {exc.strerror or exc}") from exc
        self._written.inc()
        if self._outage is not None:
            self._recovered("an event")

    def _note_failure(self, exc: OSError, line_bytes: int, *, counted: bool) -> None:
        prev = self._outage
        detail = exc.strerror or str(exc)
        self._outage = (
            _Outage(time.time_ns(), detail, int(counted), line_bytes) if prev is None
            else _Outage(prev.since_ns, detail, prev.failed_events + counted, max(prev.line_bytes, line_bytes))
        )
        now = time.monotonic()
        if now < self._next_error_log:
            self._unlogged_failures += 1
            return
        self._next_error_log = now + _ERROR_LOG_INTERVAL_S
        unlogged, self._unlogged_failures = self._unlogged_failures, 0
        log.error(
            "audit sink '%s' cannot write events (%s): every call that must be audited is refused "
            "with 5001 and readiness fails until a write succeeds%s",
            self._sink.name, exc, f" ({unlogged} more failures since the last such message)" if unlogged else "",
        )

    def _refused_unwritten(self) -> None:
        """With self._lock held, the sink failing: count an event refused without a write."""
        self._failed.inc()
        outage = self._outage
        if outage is not None:
            self._outage = _Outage(outage.since_ns, outage.detail, outage.failed_events + 1, outage.line_bytes)

    def _recovered(self, by: str) -> None:
        outage = self._outage
        assert outage is not None
        self._outage = None
        log.warning(
            "audit sink '%s' writes again (%s succeeded) after %d failed events over %.1f s",
            self._sink.name, by, outage.failed_events, (time.time_ns() - outage.since_ns) / 1e9,
        )

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
        *,
        defer: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write one event of ``event_type`` for a call described by ``ctx``.

        ``principal`` fills ``principal``, ``tenant``, ``auth_scheme`` and
        ``credential_sha256``; without one (a failed authentication) ``fields`` must carry
        the first three. ``fields`` are further audit keys (see gateway.audit.fields); None
        values are dropped (absent = unknown).

        ``defer`` is for an event whose action is done and waits on nothing (a task's end):
        when the sink fails, the event is kept in memory (up to 1000, then counted as
        ``dropped``) and written, with its own timestamp, before the next event once the
        sink writes again; AuditError is raised all the same. Events deferred earlier are
        always written before this one, so while any wait every ``emit`` fails.

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
            try:
                try:
                    self._write_deferred()
                except AuditError:
                    self._refused_unwritten()  # this event waits behind them: refused as well
                    raise
                self._append(event)
            except AuditError:
                if defer:
                    self._defer(event)
                raise
        return event


def clip(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
