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
call has answered and are parented to its span.

A caller's ``traceparent`` (HTTP header or gRPC metadata, W3C Trace Context) continues its
trace; the trace id goes into every audit event (``trace_id``), every log line and the
request-duration histogram's exemplars.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["BATCH_DEFAULTS", "SpanIds", "batch_settings", "call_span", "configure_tracing", "current_span_ids",
           "current_trace_id", "set_error", "span", "tracer"]

log = logging.getLogger(__name__)

_TRACER_NAME = "mcp-gateway"


def tracer() -> trace.Tracer:
    """The gateway's tracer (a no-op one while tracing is off)."""
    return trace.get_tracer(_TRACER_NAME)


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider when the environment asks for one (see the module
    docstring); returns whether tracing is on.

    Raises:
        ValueError: an ``OTEL_TRACES_EXPORTER`` this gateway cannot export to.
    """
    env = os.environ if environ is None else environ
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if e.strip()]
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporters in ([], ["none"]):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "mcp-gateway")}))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            exporter = _otlp_exporter(env)
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this gateway exports with otlp or console")
        provider.add_span_processor(BatchSpanProcessor(exporter, **batch_settings(env)))
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporters %s, sampler %s", ",".join(exporters), provider.sampler.get_description())
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


@contextmanager
def call_span(transport: str, method: str, peer: str, carrier: Mapping[str, str]) -> Iterator[Span]:
    """The SERVER span of one call, continuing the trace of ``carrier``'s ``traceparent``
    (HTTP headers or gRPC metadata, lowercase keys), current within the block. An exception
    leaving the block does not mark it: the caller decides what is a failure of the call
    (:func:`set_error`) and what is its answer (a refusal)."""
    parent = propagate.extract(carrier) if carrier else None
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
    with tracer().start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                        record_exception=False, set_status_on_exception=False) as current:
        yield current


@contextmanager
def span(name: str, parent: otel_context.Context | None = None, **attributes: Any) -> Iterator[Span]:
    """A child span of the current one (or of ``parent``), current within the block; None
    attributes are left out. An exception leaving the block marks it as an error."""
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    with tracer().start_as_current_span(name, context=parent, attributes=attrs) as current:
        yield current


def set_error(current: Span, code: int, message: str) -> None:
    """Mark ``current`` as failed with the project error ``code``."""
    current.set_attribute("mcp.error_code", code)
    current.set_status(Status(StatusCode.ERROR, message))
