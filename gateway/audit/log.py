"""The audit log: builds ``mcp_audit_v1`` events, chains them, signs checkpoints, hands
each line to every sink (design section 11).

Every event is chained (:mod:`gateway.audit.chain`). Every ``checkpoint_events`` events,
every ``checkpoint_interval_s`` seconds with events since the last, before a rotation, at
start and at shutdown, a ``checkpoint`` event signs the chain head with the gateway's
Ed25519 key (:mod:`gateway.audit.signing`). A sink failure raises :class:`AuditError`
(callers fail closed with 5001); nothing of the failed line is kept and the chain does not
advance past it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import __version__
from gateway.audit.chain import GENESIS_HASH, canonical_json, event_hash, verify_chain
from gateway.audit.fields import FIELD_NAMES, FIELDS
from gateway.audit.sessions import SessionCounters
from gateway.audit.signing import CheckpointSigner, signed_bytes
from gateway.audit.sinks import AuditSink, FileSink, WebhookSink
from gateway.errors import InternalError
from gateway.observability.metrics import AUDIT_EVENTS, AUDIT_WRITE_SECONDS, observe
from gateway.observability.tracing import current_trace_id, stage
from gateway.models import Principal, RequestContext

__all__ = [
    "GENESIS_HASH",
    "AuditError",
    "AuditLog",
    "SinkHealth",
    "args_sha256",
    "clip",
    "redact_command",
    "redact_text",
    "verify_chain",
]

log = logging.getLogger("gateway.audit")

_ERROR_LOG_INTERVAL_S = 10.0  # a failing sink is logged at ERROR at most this often, seconds
_PROBE_INTERVAL_S = 1.0  # a failing sink is probed for recovery at most this often, seconds
_TICK_S = 0.1  # the maintenance thread's period, seconds
_MAX_COMMAND_CHARS = 1024
_MAX_REASON_CHARS = 512
_MAX_DEFERRED = 1000  # deferred events kept in memory while the sink fails
_REQUIRED_BEFORE_CHAIN = frozenset(f.name for f in FIELDS if f.required) - {"seq", "prev_hash", "hash"}
#: Who writes the gateway's own events (checkpoints): no caller, no connection.
_INTERNAL = {"principal": "mcp-gateway", "tenant": "system", "auth_scheme": "none"}

# Every quantifier before the part a match is replaced in is bounded: each start position
# then costs O(1), so redacting n characters costs O(n) (unbounded, a long run of word
# characters made Python's backtracking engine quadratic: 20 kB took over a second, holding
# the GIL). The price: key names of more than 64 characters around the keyword, and URL
# user names over 256, are not recognised.
# key=value / key: value where the key names a secret; the value is replaced.
_SECRET_KV = re.compile(
    r"(?i)(?<![\w.-])([\w.-]{0,64}?(?:passw(?:or)?d|passwd|secret|token|api[_-]?key|apikey|credential|auth)"
    r"[\w.-]{0,64}?)(\s{0,8}[=:]\s{0,8})((?:(?:bearer|basic|token)\s{1,8})?\S+)"
)
# Flags whose *next* argument is a secret (``--password hunter2``).
_SECRET_FLAG = re.compile(
    r"(?i)^--?[\w-]{0,64}?(?:passw(?:or)?d|secret|token|api[_-]?key|credential)[\w-]{0,64}$")
# Credentials embedded in URLs (``https://user:pw@host``) and bearer tokens.
_URL_CREDS = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://[^/\s:@]{1,256}:)[^@\s/]{1,256}@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")


class AuditError(InternalError):
    """The audit sink could not record an event (5001). The action is refused."""


class _SinkFailed(Exception):
    def __init__(self, sink: AuditSink, error: OSError) -> None:
        super().__init__(str(error))
        self.sink, self.error = sink, error


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


def redact_text(text: str) -> str:
    """``text`` with the secret-looking values :func:`redact_command` finds inside one word
    (``key=value`` with a secret key, URL credentials, bearer tokens) replaced by ``***``;
    nothing is cut. For free text such as an upstream MCP tool's result."""
    return _BEARER.sub(r"\1***", _URL_CREDS.sub(r"\1***@", _SECRET_KV.sub(r"\1\2***", text)))


def args_sha256(args: Sequence[str]) -> str:
    """SHA-256 hex of the compact JSON array of ``args``."""
    return hashlib.sha256(json.dumps(list(args), separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class SinkHealth:
    """Whether the audit sink takes events (readiness reports it).

    Attributes:
        sink: the failing sink's name (``file``, ``stdout``, ``webhook``); ``file`` when healthy.
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
    sink: str
    since_ns: int
    detail: str
    failed_events: int
    line_bytes: int  # the largest event that failed: what a probe must fit


class AuditLog:
    """Builds, chains, signs and writes audit events. Thread-safe.

    ``record`` is the file the chain lives in: its newest event continues the chain, and
    it rotates. ``copies`` receive every line too, in order: a direct one (stdout) is
    written after the record, and a line it refuses is taken back from the record; a
    queued one (webhook) has its place reserved before the record is written, so the
    line is in every sink or in none.

    The chain advances only past events every sink took. A failing sink is counted in
    ``mcp_audit_events_total{sink,result="failed"}``, logged at ERROR at most every 10 s
    (with the number of failures not logged since), and reported unhealthy by
    :meth:`health` until a write succeeds: the next event's, or a probe that :meth:`health`
    makes at most once a second while no event comes. Events of actions already done
    (``defer``) wait in memory for the sink to recover instead of being lost.

    Args:
        record: the audit file.
        copies: further sinks (stdout, webhook).
        signer: signs checkpoints (None: no checkpoints; the chain alone).
        checkpoint_events: a checkpoint follows at most this many events.
        checkpoint_interval_s: and at most this long after an event, seconds.
        server_host: the listen address, for the gateway's own events.

    Raises:
        AuditError: at construction, when the record's last event cannot be read or the
            start checkpoint cannot be written.
    """

    def __init__(
        self,
        record: FileSink,
        copies: Sequence[AuditSink] = (),
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_events: int = 1000,
        checkpoint_interval_s: float = 60.0,
        server_host: str = "127.0.0.1",
    ) -> None:
        self._record = record
        self._queued = [c for c in copies if c.queued]
        self._direct = [c for c in copies if not c.queued]
        self._sinks: list[AuditSink] = [record, *copies]
        self._lock = threading.Lock()
        try:
            last = record.last_event()
        except (OSError, ValueError) as exc:
            raise AuditError(str(exc)) from exc
        self._seq: int = int(last["seq"]) if last else 0
        self._prev_hash: str = str(last["hash"]) if last else GENESIS_HASH
        self.sessions = SessionCounters()
        self._written = {s.name: AUDIT_EVENTS.labels(s.name, "written") for s in self._sinks}
        self._failed = {s.name: AUDIT_EVENTS.labels(s.name, "failed") for s in self._sinks}
        self._dropped = AUDIT_EVENTS.labels(record.name, "dropped")
        # Replaced whole (never mutated) under self._lock, so health() reads it without.
        self._outage: _Outage | None = None
        self._ended_outage: _Outage | None = None  # recovered, not yet in the trail
        self._next_error_log = 0.0
        self._unlogged_failures = 0
        self._next_probe = 0.0
        self._deferred: deque[dict[str, Any]] = deque()
        self._signer = signer
        self._checkpoint_events = checkpoint_events
        self._checkpoint_interval_s = checkpoint_interval_s
        self._server_host = server_host
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if signer is not None:
            with self._lock:
                self._checkpoint("start")
        if signer is not None or any(s.queued for s in copies) or record.needs_tick:
            self._thread = threading.Thread(target=self._maintain, name="audit-maintenance", daemon=True)
            self._thread.start()

    # -- health ----------------------------------------------------------------

    def health(self) -> SinkHealth:
        """The sinks' health; while one is failing, first probe them (at most once a
        second, and only when no write holds the log: this never waits on a writer)."""
        if self._outage is not None and time.monotonic() >= self._next_probe and self._lock.acquire(blocking=False):
            try:
                self._probe()
            finally:
                self._lock.release()
        outage, deferred = self._outage, len(self._deferred)
        if outage is None:
            return SinkHealth(self._record.name, True, deferred_events=deferred)
        return SinkHealth(outage.sink, False, outage.detail, outage.since_ns, outage.failed_events, deferred)

    def _probe(self) -> None:
        """With self._lock held: probe the sinks for room for the largest failed event."""
        outage = self._outage
        if outage is None or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + _PROBE_INTERVAL_S
        for sink in self._sinks:
            try:
                sink.probe(outage.line_bytes)
            except OSError as exc:
                self._outage = _Outage(sink.name, outage.since_ns, exc.strerror or str(exc), outage.failed_events,
                                       outage.line_bytes)
                return
        self._recovered("a probe write")
        self._record_outage()
        with contextlib.suppress(AuditError):  # counted and logged by _write
            self._write_deferred()

    # -- writing ---------------------------------------------------------------

    def _append(self, event: dict[str, Any], *, retry: bool = False) -> None:
        """With self._lock held: chain ``event`` onto the last written one and write it
        (rotating the record first when due); AuditError, and the chain stays where it is,
        when a sink fails (a ``retry`` of a deferred event is not counted as failed again)."""
        line = self._chained(event)
        if self._record.rotation_due(len(line) + 1):
            self._rotate()
            line = None  # chained again, after the rotation's checkpoint
        self._chain_and_write(event, retry=retry, line=line)
        self._since_checkpoint += 1
        self._record_outage()
        if self._signer is not None and self._since_checkpoint >= self._checkpoint_events:
            with contextlib.suppress(AuditError):  # counted and logged; tried again after the next event
                self._checkpoint("count")

    def _chained(self, event: dict[str, Any]) -> str:
        """With self._lock held: ``event`` given the next ``seq``, ``prev_hash``, a
        checkpoint's ``signature`` and ``hash``; returns its line."""
        event["seq"] = self._seq + 1
        event["prev_hash"] = self._prev_hash
        if event["event_type"] == "checkpoint":
            assert self._signer is not None
            event["signature"] = self._signer.sign(signed_bytes(event))
        event["hash"] = event_hash(event)
        return canonical_json(event)

    def _chain_and_write(self, event: dict[str, Any], *, retry: bool = False, line: str | None = None) -> None:
        """With self._lock held: write ``event`` chained (``line``: as :meth:`_chained`
        just made it) and advance the chain past it; AuditError as :meth:`_write`."""
        self._write(line if line is not None else self._chained(event), retry=retry)
        self._seq, self._prev_hash = event["seq"], event["hash"]

    def _checkpoint(self, reason: str) -> None:
        """With self._lock held: write a ``checkpoint`` event signing the chain head.

        Raises:
            AuditError: a sink refused it.
        """
        assert self._signer is not None
        event = self._base("checkpoint", None, method="checkpoint")
        event.update(_INTERNAL, checkpoint=reason, key_id=self._signer.key_id,
                     checkpoint_events=self._checkpoint_events)
        self._chain_and_write(event)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _rotate(self) -> None:
        """With self._lock held: close the record with a checkpoint and rotate it. A
        rename that fails is logged and the record stays as it is (it is tried again at the
        next event).

        Raises:
            AuditError: the checkpoint could not be written.
        """
        if self._signer is not None:
            self._checkpoint("rotation")
        try:
            rotated = self._record.rotate(self._seq)
        except OSError as exc:
            log.error("audit file %s cannot be rotated (%s); it keeps growing", self._record.path, exc)
            return
        log.info("audit file rotated to %s at seq %d", rotated, self._seq)

    def _write_deferred(self) -> None:
        """With self._lock held: write the deferred events, oldest first (AuditError at the
        first a sink refuses; it and the rest stay)."""
        while self._deferred:
            self._append(self._deferred[0], retry=True)
            self._deferred.popleft()

    def _defer(self, event: dict[str, Any]) -> None:
        if len(self._deferred) >= _MAX_DEFERRED:
            self._dropped.inc()
            log.error("audit sinks: %d events already wait for them, this %s event is lost",
                      len(self._deferred), event["event_type"])
            return
        for key in ("seq", "prev_hash", "hash", "signature"):
            event.pop(key, None)
        self._deferred.append(event)

    def _write(self, line: str, *, retry: bool = False) -> None:
        """With self._lock held: hand ``line`` to every sink, counting and logging the outcome.

        Raises:
            AuditError: a sink refused it; no sink keeps it.
        """
        started = time.perf_counter()
        try:
            self._deliver(line)
        except _SinkFailed as failure:
            exc = failure.error
            if not retry:
                self._failed[failure.sink.name].inc()
            self._note_failure(failure.sink, exc, len(line) + 1, counted=not retry)
            raise AuditError(f"audit sink '{failure.sink.name}' failed: {exc.strerror or exc}") from exc
        finally:
            observe(AUDIT_WRITE_SECONDS, time.perf_counter() - started)
        for sink in self._sinks:
            self._written[sink.name].inc()
        if self._outage is not None:
            self._recovered("an event")

    def _deliver(self, line: str) -> None:
        """Reserve room in the queued sinks, write the record, then the direct copies, then
        queue: the line ends in every sink or in none.

        Raises:
            _SinkFailed: naming the sink that refused the line.
        """
        reserved: list[WebhookSink] = []
        try:
            for queued in self._queued:
                try:
                    queued.reserve()  # type: ignore[attr-defined]
                except OSError as exc:
                    raise _SinkFailed(queued, exc) from exc
                reserved.append(queued)  # type: ignore[arg-type]
            try:
                self._record.write(line)
            except OSError as exc:
                raise _SinkFailed(self._record, exc) from exc
            for direct in self._direct:
                try:
                    direct.write(line)
                except OSError as exc:
                    with contextlib.suppress(OSError):  # a failed retract is redone before the next write
                        self._record.retract()
                    raise _SinkFailed(direct, exc) from exc
        except _SinkFailed:
            for queued in reserved:
                queued.release()
            raise
        for queued in reserved:
            queued.write(line)

    def _note_failure(self, sink: AuditSink, exc: OSError, line_bytes: int, *, counted: bool) -> None:
        prev = self._outage
        detail = exc.strerror or str(exc)
        self._outage = (
            _Outage(sink.name, time.time_ns(), detail, int(counted), line_bytes) if prev is None
            else _Outage(sink.name, prev.since_ns, detail, prev.failed_events + counted,
                         max(prev.line_bytes, line_bytes))
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
            sink.name, exc, f" ({unlogged} more failures since the last such message)" if unlogged else "",
        )

    def _refused_unwritten(self) -> None:
        """With self._lock held, a sink failing: count an event refused without a write."""
        outage = self._outage
        self._failed[outage.sink if outage else self._record.name].inc()
        if outage is not None:
            self._outage = _Outage(outage.sink, outage.since_ns, outage.detail, outage.failed_events + 1,
                                   outage.line_bytes)

    def _recovered(self, by: str) -> None:
        """With self._lock held: the failing sink writes again; the outage is logged now and
        recorded in the trail by the next :meth:`_record_outage`."""
        outage = self._outage
        assert outage is not None
        self._outage = None
        self._ended_outage = outage
        log.warning(
            "audit sink '%s' writes again (%s succeeded) after %d failed events over %.1f s",
            outage.sink, by, outage.failed_events, (time.time_ns() - outage.since_ns) / 1e9,
        )

    def _record_outage(self) -> None:
        """With self._lock held: write the ``audit_outage`` event of the outage that just
        ended (once; a sink failing again meanwhile keeps it for the next recovery)."""
        outage = self._ended_outage
        if outage is None:
            return
        event = self._base("audit_outage", None, method="audit")
        event.update(_INTERNAL, audit_sink=outage.sink, failed_events=outage.failed_events,
                     outage_ms=max(0, (time.time_ns() - outage.since_ns) // 1_000_000), error_code=5001,
                     policy_reason=clip(outage.detail))
        try:
            self._chain_and_write(event)
        except AuditError:
            return  # the sink failed again: the next recovery writes it
        self._ended_outage = None

    # -- periodic work and shutdown ---------------------------------------------

    def _maintain(self) -> None:
        """The maintenance thread: interval checkpoints and the sinks' periodic work."""
        while not self._stop.wait(_TICK_S):
            now = time.monotonic()
            work: list[Callable[[], None]] = []
            with self._lock:
                if (self._signer is not None and self._since_checkpoint and self._outage is None
                        and now - self._last_checkpoint >= self._checkpoint_interval_s):
                    with contextlib.suppress(AuditError):  # counted and logged by _write
                        self._checkpoint("interval")
                for sink in self._sinks:
                    job = sink.tick(now)
                    if job is not None:
                        work.append(job)
            for job in work:  # outside the lock: an fsync never holds up a caller
                job()

    def close(self) -> None:
        """Write the shutdown checkpoint, stop the maintenance thread, flush and close every
        sink (a webhook delivers what waits, for up to its close timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._signer is not None:
                try:
                    self._checkpoint("shutdown")
                except AuditError as exc:
                    log.error("audit: the shutdown checkpoint could not be written (%s); verify will report "
                              "the events after the last checkpoint as an unsigned tail", exc)
            for sink in reversed(self._sinks):
                try:
                    sink.close()
                except OSError as exc:
                    log.error("audit sink '%s' did not close cleanly: %s", sink.name, exc)

    # -- events ----------------------------------------------------------------

    def count_call(self, ctx: RequestContext, principal: Principal, *, file: bool = False) -> dict[str, int]:
        """Count one call of the caller's session: an execution, or with ``file`` a file
        call; over MCP (``ctx.mcp``) every ``tools/call`` also counts as a tool call.

        Returns:
            the counter fields of the call's event, this call included:
            ``tool_invoke_count`` and/or ``file_access_count``.
        """
        tools, files = self.sessions.count_call(principal.id, ctx.session_id, tool=not file or ctx.mcp is not None,
                                                file=file)
        counts = {"tool_invoke_count": tools, "file_access_count": files}
        return {k: v for k, v in counts.items() if v is not None}

    def _base(self, event_type: str, ctx: RequestContext | None, *, method: str = "") -> dict[str, Any]:
        """The keys every event has; ``ctx`` None for the gateway's own events."""
        if ctx is None:
            return {
                "schema_version": "1", "timestamp": time.time_ns(), "session_id": "gateway",
                "client_process": f"mcp-gateway/{__version__}", "server_host": self._server_host,
                "server_port": 0, "tls": False, "method": method, "event_id": str(uuid.uuid4()),
                "event_type": event_type, "producer": "mcp-gateway", "transport": "internal",
            }
        return {
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
        values are dropped (absent = unknown). An event with ``request_bytes`` or
        ``response_bytes`` adds them to its session's totals and carries those.

        ``defer`` is for an event whose action is done and waits on nothing (a task's end):
        when a sink fails, the event is kept in memory (up to 1000, then counted as
        ``dropped``) and written, with its own timestamp, before the next event once the
        sink writes again; AuditError is raised all the same. Events deferred earlier are
        always written before this one, so while any wait every ``emit`` fails.

        Returns:
            the event as written (with seq and hashes).

        Raises:
            AuditError: when a sink fails or an unknown key is passed.
        """
        with stage("audit.write", mcp__event_type=event_type):
            return self._emit(event_type, ctx, principal, defer, fields)

    def _emit(self, event_type: str, ctx: RequestContext, principal: Principal | None, defer: bool,
              fields: dict[str, Any]) -> dict[str, Any]:
        event = self._base(event_type, ctx)
        trace_id = current_trace_id()
        if trace_id is not None:
            event["trace_id"] = trace_id
        if principal is not None:
            event.update(principal=principal.id, tenant=principal.tenant, auth_scheme=principal.auth_scheme)
            if principal.credential_sha256 is not None:
                event["credential_sha256"] = principal.credential_sha256
        event.update({k: v for k, v in fields.items() if v is not None})
        if ctx is not None and ctx.mcp is not None:
            call = ctx.mcp
            event.update(tool_name=call.tool, jsonrpc_id=clip(call.jsonrpc_id, 128),
                         protocol_version=clip(call.protocol_version, 64))
            event.update({k: clip(v, 128) for k, v in (("client_name", call.client_name),
                                                       ("client_version", call.client_version)) if v})
        unknown = set(event) - FIELD_NAMES
        if unknown:
            raise AuditError(f"unknown audit fields: {sorted(unknown)}")
        missing = _REQUIRED_BEFORE_CHAIN - set(event)
        if missing:
            raise AuditError(f"missing audit fields: {sorted(missing)}")
        if "request_bytes" in event or "response_bytes" in event:
            event["session_request_bytes"], event["session_response_bytes"] = self.sessions.add_bytes(
                event.get("principal", ""), ctx.session_id, event.get("request_bytes", 0),
                event.get("response_bytes", 0),
            )
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
        if ctx is not None and ctx.mcp is not None:
            ctx.mcp.written.append(event_type)
        return event


def clip(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
