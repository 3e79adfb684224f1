"""Spans recorded on the request path and made by the OpenTelemetry SDK off it.

An SDK span's start and end cost 60 us of a thread's CPU time in the gateway (measured with
``time.thread_time_ns`` around ``Tracer.start_span`` while bench/observability.py ran; 12
us in a warm loop): the SDK runs some 75 Python calls per span, and between one task and
the next the sandbox and the kernel have evicted them from the caches. At ten spans a task
that was 1 ms of CPU per ``echo`` task and 6 to 10 % of its latency.

So the request path records a sampled span as a :class:`RecordedSpan`: its ids, times,
attributes, status and events, in plain Python objects, a few microseconds. Every
:data:`REPLAY_INTERVAL_S` the :class:`Replayer` thread replays what was recorded through the
SDK, in one warm batch: ``Tracer.start_span`` with the recorded parent, kind, attributes and
start time, the events and status, ``Span.end`` with the recorded end time. The provider's
id generator (:class:`ReplayIds`, the SDK's extension point for ids) hands the SDK the ids
the request path already gave the span, so logs, audit events and exemplars written during
the call name the span that is exported. From there on it is the SDK's own pipeline: span
limits, processors, the batch processor, the OTLP exporter.

The sampling decision is the provider's sampler's, taken on the request path for a call's
span (:func:`gateway.observability.tracing.call_span`) and again at replay, where every
sampler ``OTEL_TRACES_SAMPLER`` names decides the same way for the same trace id and parent.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

__all__ = ["REPLAY_INTERVAL_S", "REPLAY_QUEUE_MAX", "RecordedSpan", "ReplayIds", "Replayer"]

log = logging.getLogger(__name__)

#: How often the replayer wakes, in seconds: every recorded span waits at most this long
#: before the SDK makes it, and the request path never wakes the thread.
REPLAY_INTERVAL_S = 0.05

#: Recorded spans waiting beyond this many are dropped (and the drop logged), as the SDK's
#: batch processor drops spans when its queue is full.
REPLAY_QUEUE_MAX = 8192


class ReplayIds(IdGenerator):
    """The provider's id generator: random ids (the SDK's ``RandomIdGenerator``), except in
    a thread replaying a recorded span (:meth:`replaying`), which gets that span's ids."""

    def __init__(self) -> None:
        self.random = RandomIdGenerator()
        self._replaying = threading.local()

    @contextmanager
    def replaying(self, trace_id: int, span_id: int) -> Iterator[None]:
        """Within the block, this thread's next ids are ``trace_id`` (128-bit) and
        ``span_id`` (64-bit)."""
        self._replaying.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._replaying.ids = None

    def generate_span_id(self) -> int:
        """The replayed span's id, or a random 64-bit one."""
        ids = getattr(self._replaying, "ids", None)
        return ids[1] if ids else self.random.generate_span_id()

    def generate_trace_id(self) -> int:
        """The replayed span's trace id, or a random 128-bit one."""
        ids = getattr(self._replaying, "ids", None)
        return ids[0] if ids else self.random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        """Every trace id is random: replayed ones came from :attr:`random` too."""
        return True


class RecordedSpan(trace.Span):
    """A sampled span recorded on the request path (the API's ``Span`` interface) and
    handed to ``replayer`` when it ends.

    ``context``: its own ids and flags; ``parent``: the parent's span context (None for a
    root); times are ns since the epoch. What is set on it after it ended is ignored, as on
    an SDK span."""

    def __init__(self, replayer: Replayer, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], start_ns: int | None = None) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.events: list[tuple[str, Mapping[str, Any], int]] = []
        self.status: Status | None = None
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.end_ns: int | None = None
        self._replayer = replayer

    def get_span_context(self) -> SpanContext:
        """Its ids and flags."""
        return self.context

    def is_recording(self) -> bool:
        """True until it ends."""
        return self.end_ns is None

    def set_attribute(self, key: str, value: Any) -> None:
        """Like the SDK's: values are checked when it is replayed."""
        if self.end_ns is None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Like the SDK's: values are checked when it is replayed."""
        if self.end_ns is None:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        """An event at ``timestamp`` (ns since the epoch; now if None)."""
        if self.end_ns is None:
            self.events.append((name, dict(attributes or {}), time.time_ns() if timestamp is None else timestamp))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Links are not recorded: the gateway makes none."""

    def update_name(self, name: str) -> None:
        """A new name."""
        if self.end_ns is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Like the SDK's (a ``Status``, or a code and a description)."""
        if self.end_ns is None:
            self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """An ``exception`` event with the attributes the SDK gives one (the semantic
        conventions' ``exception.*``)."""
        module, qualname = type(exception).__module__, type(exception).__qualname__
        self.add_event("exception", {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped), **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End it at ``end_time`` (ns since the epoch; now if None) and hand it to the
        replayer; a second end does nothing."""
        if self.end_ns is None:
            self.end_ns = time.time_ns() if end_time is None else end_time
            self._replayer.add(self)


class Replayer:
    """The thread that replays recorded spans through ``tracer`` (an SDK tracer whose
    provider's id generator is ``ids``)."""

    def __init__(self, tracer: trace.Tracer, ids: ReplayIds) -> None:
        self._tracer = tracer
        self._ids = ids
        self._waiting: collections.deque[RecordedSpan] = collections.deque()
        self._dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trace-replay", daemon=True)
            self._thread.start()

    def add(self, recorded: RecordedSpan) -> None:
        """Queue an ended span; dropped (and counted) beyond :data:`REPLAY_QUEUE_MAX`."""
        if len(self._waiting) >= REPLAY_QUEUE_MAX:
            self._dropped += 1
            return
        self._waiting.append(recorded)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Replay every span still waiting and stop the thread (at most ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def replay_waiting(self) -> None:
        """Replay every span waiting now, oldest first, in this thread."""
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            log.warning("tracing: %d spans dropped, more than %d were waiting to be made", dropped, REPLAY_QUEUE_MAX)
        while self._waiting:
            recorded = self._waiting.popleft()
            try:
                self._replay(recorded)
            except Exception:  # one span must never stop the ones after it
                log.exception("tracing: the %s span could not be made", recorded.name)

    def _run(self) -> None:
        while not self._stop.wait(REPLAY_INTERVAL_S):
            self.replay_waiting()
        self.replay_waiting()

    def _replay(self, recorded: RecordedSpan) -> None:
        parent = (trace.set_span_in_context(trace.NonRecordingSpan(recorded.parent))
                  if recorded.parent is not None else otel_context.Context())
        with self._ids.replaying(recorded.context.trace_id, recorded.context.span_id):
            made = self._tracer.start_span(recorded.name, context=parent, kind=recorded.kind,
                                           attributes=recorded.attributes, start_time=recorded.start_ns)
        for name, attributes, timestamp in recorded.events:
            made.add_event(name, attributes, timestamp)
        if recorded.status is not None:
            made.set_status(recorded.status)
        made.end(end_time=recorded.end_ns)
