"""OpenTelemetry traces: one span per call, children for its stages, W3C context in and out.

Off by default. The standard ``OTEL_*`` environment variables configure it
(https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
``OTEL_TRACES_EXPORTER=otlp`` (or ``console``) turns it on, ``OTEL_EXPORTER_OTLP_ENDPOINT``
/ ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` say where spans go, ``OTEL_EXPORTER_OTLP_PROTOCOL``
how (``grpc``, the default, or ``http/protobuf``),
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` sample (``parentbased_traceidratio``
with ``0.01`` keeps 1 % of new traces and follows a caller's decision),
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the service, ``OTEL_BSP_*`` tune
the batch processor (this gateway's defaults: :data:`BATCH_DEFAULTS`),
``OTEL_SDK_DISABLED=true`` turns it off whatever else is set. Tracing only adds spans: it
configures no logging and changes no other output.

Span names and attributes follow the semantic conventions: a gRPC call is
``mcp.McpService/<Method>`` (``rpc.system``, ``rpc.service``, ``rpc.method``), a REST call
``<METHOD> <route>`` (``http.request.method``, ``http.route``, ``url.scheme``), both SERVER
spans with ``network.peer.address``; the gateway adds ``mcp.*`` attributes (task id,
decision, exit code, error code, principal, tenant). Children: ``authenticate``,
``policy.evaluate``, ``store.create``, ``audit.write``, and for a command task
``task.queue`` (the wait for a sandbox slot) and ``sandbox.run``, which start after the
call has answered and are parented to its span; ``audit.write`` of the task's end is a
child of ``sandbox.run``.

The request path records spans and the SDK makes them moments later in a thread of its
own, with the recorded ids and times (:mod:`gateway.observability.replay` says why and
how). The call's span and ``sandbox.run`` are current within their blocks (logs, audit
events and child spans see them); the leaf stages (:func:`stage`) are not.

A caller's ``traceparent`` (HTTP header or gRPC metadata, W3C Trace Context) continues its
trace; the trace id goes into every audit event (``trace_id``), every log line and the
request-duration histogram's exemplars.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.observability.replay import RecordedSpan, Replayer, ReplayIds

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["BATCH_DEFAULTS", "SpanIds", "batch_settings", "call_span", "configure_tracing", "current_span_ids",
           "current_trace_id", "record_stage", "set_error", "span", "stage"]

log = logging.getLogger(__name__)

_TRACER_NAME = "mcp-gateway"


class _Tracing:
    """Tracing while it is on: the provider (its resource, its sampler from
    ``OTEL_TRACES_SAMPLER``, ``processors``), the ids, and the replayer that turns recorded
    spans into the provider's spans."""

    def __init__(self, processors: Sequence[SpanProcessor], resource: Resource) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.ids = ReplayIds()
        self.provider = TracerProvider(resource=resource, id_generator=self.ids)
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.sampler: Sampler = self.provider.sampler
        self.replayer = Replayer(self.provider.get_tracer(_TRACER_NAME), self.ids)


_tracing: _Tracing | None = None  # None: tracing is off


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider when the environment asks for one (see the module
    docstring) and start the replayer; returns whether tracing is on.

    Raises:
        ValueError: an ``OTEL_TRACES_EXPORTER`` this gateway cannot export to.
    """
    env = os.environ if environ is None else environ
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if e.strip()]
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporters in ([], ["none"]):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    processors = []
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            exporter = _otlp_exporter(env)
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this gateway exports with otlp or console")
        processors.append(BatchSpanProcessor(exporter, **batch_settings(env)))
    global _tracing
    _tracing = _Tracing(processors, Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "mcp-gateway")}))
    trace.set_tracer_provider(_tracing.provider)
    _tracing.replayer.start()
    # Registered after the provider's own exit hook, so it runs first (atexit is last in,
    # first out): the spans still waiting are made before the processors flush.
    atexit.register(_tracing.replayer.stop)
    log.info("tracing on: exporters %s, sampler %s", ",".join(exporters), _tracing.sampler.get_description())
    return True


#: The batch processor's settings where ``OTEL_BSP_*`` leaves them unset: small batches,
#: sent often. The SDK's defaults (512 spans, every 5 s) encode a batch in one go in the
#: export thread, holding the GIL for ~14 ms here, which showed as +10 ms on the p99 of an
#: ``echo`` task at sampling 1.0 (bench/observability.py); in batches of 64 every 200 ms
#: the p99 is that of tracing off, for the same total work.
BATCH_DEFAULTS = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 64),
                  "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 200)}


def batch_settings(env: Mapping[str, str]) -> dict[str, int]:
    """Keyword arguments for the SDK's BatchSpanProcessor: :data:`BATCH_DEFAULTS` for
    each ``OTEL_BSP_*`` variable that ``env`` does not set (the SDK reads those it does)."""
    return {arg: value for var, (arg, value) in BATCH_DEFAULTS.items() if var not in env}


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    """The OTLP exporter of ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
    ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` (the default) or ``http/protobuf``.

    Raises:
        ValueError: another protocol (``http/json`` is not implemented by the SDK).
    """
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this gateway exports with grpc or http/protobuf")


class SpanIds(NamedTuple):
    """The current span's ids as W3C Trace Context writes them: ``trace_id`` 32 and
    ``span_id`` 16 lowercase hex digits; ``sampled``: the span is recorded and exported."""

    trace_id: str
    span_id: str
    sampled: bool


def current_span_ids() -> SpanIds | None:
    """The ids of the current span (recording, or propagated from a caller), or None
    outside a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return SpanIds(format(context.trace_id, "032x"), format(context.span_id, "016x"), context.trace_flags.sampled)


def current_trace_id() -> str | None:
    """The current span's trace id (32 lowercase hex digits), or None outside a trace."""
    ids = current_span_ids()
    return ids.trace_id if ids is not None else None


class _Scope:
    """A span current for a with-block (``context`` attached; None: nothing attached), ended
    after it. ``mark_errors``: an exception leaving the block is recorded on the span and
    sets its status to ERROR, as the SDK's ``use_span`` does."""

    __slots__ = ("_context", "_mark_errors", "_span", "_token")

    def __init__(self, current: Span, context: otel_context.Context | None, mark_errors: bool) -> None:
        self._span = current
        self._context = context
        self._mark_errors = mark_errors

    def __enter__(self) -> Span:
        self._token = otel_context.attach(self._context) if self._context is not None else None
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._mark_errors and isinstance(exc, Exception) and self._span.is_recording():
                self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            self._span.end()


_NO_SPAN = _Scope(trace.INVALID_SPAN, None, False)  # holds no state: one serves every call


def call_span(transport: str, method: str, peer: str,
              carrier: Mapping[str, str] | Iterable[tuple[str, str]]) -> _Scope:
    """The SERVER span of one call, continuing the trace of ``carrier``'s ``traceparent``
    (the call's W3C Trace Context headers or metadata, lowercase keys, as
    ``RequestContext.trace_context`` keeps them), current within the with-block it opens.
    The provider's sampler decides, as ``Tracer.start_span`` would; an unsampled call gets a
    non-recording span with its own ids, so its trace id still reaches logs and audit
    events. An exception leaving the block does not mark it: the caller decides what is a
    failure of the call (:func:`set_error`) and what is its answer (a refusal)."""
    if _tracing is None:
        return _NO_SPAN
    parent = propagate.extract(dict(carrier)) if carrier else None
    if transport == "grpc":
        name = f"mcp.McpService/{method}"
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": "mcp.McpService", "rpc.method": method}
    else:
        verb, _, route = method.partition(" ")
        name = method
        attributes = {"http.request.method": verb, "http.route": route,
                      "url.scheme": "https" if transport == "https" else "http"}
    host, _, port = peer.rpartition(":")
    if host:
        attributes["network.peer.address"] = host.strip("[]")
        if port.isdigit():
            attributes["network.peer.port"] = int(port)
    parent_ids: SpanContext | None = trace.get_current_span(parent).get_span_context()
    if parent_ids is not None and parent_ids.is_valid:
        trace_id = parent_ids.trace_id
    else:
        parent_ids, trace_id = None, _tracing.ids.random.generate_trace_id()
    decision = _tracing.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
    flags = TraceFlags.SAMPLED if decision.decision.is_sampled() else TraceFlags.DEFAULT
    if parent_ids is None or parent_ids.trace_flags.random_trace_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    ids = SpanContext(trace_id, _tracing.ids.random.generate_span_id(), False, TraceFlags(flags),
                      decision.trace_state)
    current: Span
    if flags & TraceFlags.SAMPLED:
        current = RecordedSpan(_tracing.replayer, name, ids, parent_ids, SpanKind.SERVER,
                               {**attributes, **(decision.attributes or {})})
    else:
        current = trace.NonRecordingSpan(ids)
    return _Scope(current, trace.set_span_in_context(current), False)


def _child(name: str, parent: otel_context.Context | None, attributes: dict[str, Any]) -> RecordedSpan | None:
    """A recorded child of ``parent``'s span (or the current one), or None when that span
    is not sampled. Not sampled again: every sampler ``OTEL_TRACES_SAMPLER`` names samples
    the children of a sampled span (parent-based, or by the same trace id)."""
    if _tracing is None:
        return None
    parent_ids = trace.get_current_span(parent).get_span_context()
    if not parent_ids.trace_flags.sampled:
        return None
    ids = SpanContext(parent_ids.trace_id, _tracing.ids.random.generate_span_id(), False, parent_ids.trace_flags,
                      parent_ids.trace_state)
    return RecordedSpan(_tracing.replayer, name, ids, parent_ids, SpanKind.INTERNAL,
                        {k.replace("__", "."): v for k, v in attributes.items() if v is not None})


def span(name: str, parent: otel_context.Context | None = None, **attributes: Any) -> _Scope:
    """A child span of the current one (or of ``parent``), current within the with-block it
    opens, for a stage with children or logs of its own (``sandbox.run``); None attributes
    are left out, ``a__b`` names ``a.b``. An exception leaving the block marks it as an
    error. Outside a sampled trace the block gets ``INVALID_SPAN`` (setting attributes on it
    does nothing), with ``parent``, if given, as the current context, so the trace id still
    reaches logs and audit events."""
    child = _child(name, parent, attributes)
    if child is None:
        return _Scope(trace.INVALID_SPAN, parent, False)
    return _Scope(child, trace.set_span_in_context(child), True)


def stage(name: str, **attributes: Any) -> _Scope:
    """A child span of the current one for a stage with no children (authentication, a
    policy evaluation, a store write, an audit write), timed over the with-block it opens
    but never the current span: a log line or an audit event written inside the block
    carries the parent's span id, and a span made inside it (the audit write of an
    authentication failure) is the parent's child. Attributes, errors and the unsampled
    case as in :func:`span`."""
    child = _child(name, None, attributes)
    return _Scope(child, None, True) if child is not None else _NO_SPAN


def record_stage(name: str, parent: otel_context.Context | None, start_ns: int, end_ns: int,
                 attributes: Mapping[str, Any]) -> None:
    """A finished child span of ``parent``'s span, from ``start_ns`` to ``end_ns`` (ns since
    the epoch); nothing outside a sampled trace."""
    child = _child(name, parent, dict(attributes))
    if child is not None:
        child.start_ns = start_ns
        child.end(end_ns)


def set_error(current: Span, code: int, message: str) -> None:
    """Mark ``current`` as failed with the project error ``code``."""
    current.set_attribute("mcp.error_code", code)
    current.set_status(Status(StatusCode.ERROR, message))
