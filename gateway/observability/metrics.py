"""Prometheus metrics (``GET /metrics``), one set per process: the set of design section 9.

Names follow https://prometheus.io/docs/practices/naming/: ``mcp_`` prefix, base units
(seconds, bytes), ``_total`` for counters. Every label takes its values from a bounded set,
declared in :data:`LABEL_VALUES` (a fixed set, or a pattern that admits only names the code
writes, never ids, paths or user input); ``tests/unit/test_metrics.py`` fails on a metric
without HELP text or with a label that is not declared there, and
``tests/integration/test_metrics.py`` checks every series of a real gateway's ``/metrics``
after varied traffic against the declared values. ``docs/observability.md`` has the table
of every metric, generated from this registry (``scripts/gen_observability.py``).

The default registry also carries prometheus-client's process and platform collectors
(``process_*``, ``python_info``, ``python_gc_*``). Histograms take the current trace id as
an exemplar (:func:`observe`), shown when the scraper negotiates OpenMetrics.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gateway import __version__
from gateway.config import UPSTREAM_NAME_PATTERN
from gateway.observability.tracing import current_span_ids

__all__ = [
    "ACTIVE_TASKS",
    "ADMISSION_REFUSED",
    "AUDIT_EVENTS",
    "AUDIT_QUEUE_CAPACITY",
    "AUDIT_QUEUE_DEPTH",
    "AUDIT_WRITE_SECONDS",
    "AUTH_FAILURES",
    "BUILD_INFO",
    "CROSS_TENANT_PROBES",
    "EGRESS_BYTES",
    "EGRESS_CONNECTIONS",
    "EGRESS_DENIED",
    "EGRESS_OPEN",
    "ERRORS",
    "GRPC_DECODE_ERRORS",
    "IN_FLIGHT",
    "MCP_SESSIONS",
    "MCP_TOOL_CALLS",
    "UPSTREAM_CALLS",
    "UPSTREAM_RUNNING",
    "UPSTREAM_STARTS",
    "UPSTREAM_TOOL_CHANGES",
    "LABEL_VALUES",
    "POLICY_BUNDLE",
    "POLICY_CACHE",
    "POLICY_DECISIONS",
    "POLICY_ENGINE_UP",
    "POLICY_EVAL_SECONDS",
    "POLICY_RELOADS",
    "QUEUED_TASKS",
    "RATE_LIMITED",
    "READY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SANDBOX_LIMIT_HITS",
    "SANDBOX_RUN_SECONDS",
    "STORE_LOCK_HELD",
    "TASK_QUEUE_CAPACITY",
    "TASK_QUEUE_REJECTIONS",
    "TASK_QUEUE_WAIT_SECONDS",
    "TASK_SECONDS",
    "TASK_SLOTS",
    "exposition",
    "limit_kind",
    "observe",
    "set_active_bundle",
    "start_series",
    "track_tasks",
]

#: The values each label may take, for every ``mcp_*`` metric: a set, or a regex that
#: admits only names the code itself writes (routes and RPC names, error codes, classes).
LABEL_VALUES: dict[str, frozenset[str] | re.Pattern[str]] = {
    "transport": frozenset({"grpc", "http", "https", "mcp", "stdio"}),
    # the REST routes as gateway/edges/rest.py names them, the mcp.McpService RPCs, MCP's tools/call
    "method": frozenset({
        "POST /v1/execute", "GET /v1/tasks", "POST /v1/tasks/cancel", "GET /v1/tasks/stream", "GET /v1/files",
        "PUT /v1/files", "DELETE /v1/files", "GET /v1/policy", "POST /v1/policy/reload",
        "ExecuteCommand", "ExecuteCommandAndWait", "GetTaskStatus", "StreamTaskOutput", "CancelTask", "ReadFile",
        "WriteFile", "DeleteFile", "ListTasks", "GET /v1/tasks (list)", "tools/call",
        "GET /v1/mcp/servers/tools", "POST /v1/mcp/servers/approve",
    }),
    # calls: ok or the project error code; tasks: the final status
    "status": re.compile(r"^(?:ok|[1-6][0-9]{3}|COMPLETED|FAILED|CANCELLED|TIMED_OUT)$"),
    "code": re.compile(r"^[1-6][0-9]{3}$"),  # gateway.errors codes (design section 5)
    "type": re.compile(r"^[A-Z][A-Za-z]+$"),  # the error class (gateway.errors)
    "task_type": frozenset({"COMMAND", "FILE", "HTTP_REQUEST"}),
    "kind": frozenset({"wall_timeout", "cpu_time", "file_size", "oom", "pids", "egress", "output_truncated",
                       "other"}),
    "direction": frozenset({"sent", "received"}),
    "engine": frozenset({"embedded", "wasm", "opa"}),
    "outcome": frozenset({"allow", "deny", "error"}),
    "result": frozenset({"hit", "miss", "applied", "rejected", "unchanged", "written", "failed", "dropped",
                         "ready"}),
    "revision": re.compile(r"^[\x21-\x7e]{1,128}$"),  # one live series: set_active_bundle drops the last
    "reason": re.compile(r"^[a-z_]{1,40}$"),  # fixed reasons (auth failures, task rejections)
    "scheme": frozenset({"none", "basic", "bearer", "mtls", "other"}),
    "limit": re.compile(r"^[a-z_]{1,40}$"),  # fixed limit names (rate limits, admission bounds)
    "edge": frozenset({"grpc", "http", "any"}),
    "sink": frozenset({"file", "stdout", "webhook"}),
    "version": re.compile(r"^[0-9A-Za-z.+-]{1,40}$"),
    "python_version": re.compile(r"^[0-9A-Za-z.+-]{1,40}$"),
    # the MCP edge's tools (gateway.edges.mcp_server.TOOLS), and 'upstream' for every upstream server's
    "tool": re.compile(r"^[a-z_]{1,40}$"),
    "server": re.compile(UPSTREAM_NAME_PATTERN),  # the configured upstream MCP servers (mcp.servers)
}

POLICY_DECISIONS = Counter(
    "mcp_policy_decisions_total",
    "Policy decisions by outcome: allow, deny, or error (engine failure, timeout, OPA "
    "unreachable, undefined or malformed decision: denied with 5003).",
    ["engine", "outcome"],
)
POLICY_EVAL_SECONDS = Histogram(
    "mcp_policy_eval_seconds",
    "Time to get a decision from the engine, seconds (errors included).",
    ["engine"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
POLICY_CACHE = Counter(
    "mcp_policy_cache_total",
    "Embedded engine decision cache lookups: hit or miss (only for bundles that never read input.context).",
    ["result"],
)
POLICY_RELOADS = Counter(
    "mcp_policy_reloads_total",
    "Policy bundle reloads: applied, rejected (the old bundle stays), or unchanged.",
    ["result"],
)
POLICY_BUNDLE = Gauge(
    "mcp_policy_bundle_info",
    "The active policy bundle: 1 for its engine and revision.",
    ["engine", "revision"],
)

ACTIVE_TASKS = Gauge("mcp_active_tasks", "Tasks whose sandbox is running in this process.")
QUEUED_TASKS = Gauge("mcp_queued_tasks", "Tasks of this process waiting for a sandbox slot.")
TASK_QUEUE_REJECTIONS = Counter(
    "mcp_task_rejections_total",
    "Tasks refused with 4290 before they were stored: queue full, or the principal's quota.",
    ["reason"],
)

AUTH_FAILURES = Counter(
    "mcp_auth_failures_total",
    "Calls refused by authentication or authorization, by scheme presented and reason "
    "(a fixed set: expired, unknown_api_key, missing_scope, ...).",
    ["scheme", "reason"],
)
RATE_LIMITED = Counter(
    "mcp_rate_limited_total",
    "Requests refused with 4290 by a rate limit: principal_requests or tenant_requests.",
    ["limit"],
)

ADMISSION_REFUSED = Counter(
    "mcp_admission_refused_total",
    "Calls refused with 4290 by admission control before any work: edge (grpc, http, any) and "
    "bound (grpc_in_flight, http_in_flight, principal_in_flight).",
    ["edge", "limit"],
)
IN_FLIGHT = Gauge("mcp_calls_in_flight", "Calls holding an admission slot of an edge now.", ["edge"])
GRPC_DECODE_ERRORS = Counter(
    "mcp_grpc_decode_errors_total",
    "gRPC requests whose body does not decode as the RPC's request message (answered 2003), "
    "by method (an mcp.McpService RPC name).",
    ["method"],
)

# -- calls ------------------------------------------------------------------------

_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUESTS = Counter(
    "mcp_api_requests_total",
    "Calls that passed admission, by transport, method (REST route or RPC) and status: ok, or "
    "the project error code the call answered (design section 5).",
    ["transport", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "mcp_api_request_duration_seconds",
    "Time from admission to the answer of a call (authentication, policy, store, audit; a "
    "stream until it is set up), seconds.",
    ["transport", "method"],
    buckets=_CALL_BUCKETS,
)
ERRORS = Counter(
    "mcp_errors_total",
    "Calls that failed, by the error's class and project code (design section 5).",
    ["type", "code"],
)
MCP_TOOL_CALLS = Counter(
    "mcp_tool_calls_total",
    "MCP tools/call by tool (the gateway's tools) and status: ok, or the project error code of the tool "
    "error (an unknown tool is a protocol error and not counted).",
    ["tool", "status"],
)
MCP_SESSIONS = Gauge(
    "mcp_sessions_open",
    "MCP sessions (protocol 2025-11-25) open on this gateway's /mcp; mcp.max_sessions bounds them.",
)
UPSTREAM_RUNNING = Gauge(
    "mcp_upstream_servers_running",
    "Sandboxes of an upstream MCP server running now (one per tenant that calls it), by server.",
    ["server"],
)
UPSTREAM_STARTS = Counter(
    "mcp_upstream_server_starts_total",
    "Upstream MCP server sandboxes that ended, by server and whether they had listed their tools (ready) "
    "or failed to start (failed).",
    ["server", "result"],
)
UPSTREAM_CALLS = Counter(
    "mcp_upstream_tool_calls_total",
    "Calls of upstream MCP servers' tools by server and status: ok, or the project error code of the "
    "refusal or failure (a result the server marks isError is ok here).",
    ["server", "status"],
)
UPSTREAM_TOOL_CHANGES = Counter(
    "mcp_upstream_tool_definition_changes_total",
    "Listings of an upstream MCP server whose tools differ from the approved definitions (each new "
    "tools_list_sha256 once per tenant), by server: a rug pull, or an upgrade awaiting approval.",
    ["server"],
)

# -- tasks and sandboxes ----------------------------------------------------------

_TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
TASK_SECONDS = Histogram(
    "mcp_task_duration_seconds",
    "Task latency from creation to its final state (queue wait and sandbox run), by task type "
    "and final status, seconds.",
    ["task_type", "status"],
    buckets=_TASK_BUCKETS,
)
TASK_QUEUE_WAIT_SECONDS = Histogram(
    "mcp_task_queue_wait_seconds",
    "Time a task waited for a sandbox slot, seconds.",
    buckets=_TASK_BUCKETS,
)
SANDBOX_RUN_SECONDS = Histogram(
    "mcp_sandbox_run_seconds",
    "Sandbox run time from spawn to reap, by the task's final status, seconds.",
    ["status"],
    buckets=_TASK_BUCKETS,
)
SANDBOX_LIMIT_HITS = Counter(
    "mcp_sandbox_limit_hits_total",
    "Tasks ended by a sandbox limit, by kind: wall_timeout, cpu_time, file_size, oom, pids, egress, "
    "output_truncated (other: a reason this version does not name).",
    ["kind"],
)
EGRESS_DENIED = Counter(
    "mcp_egress_denied_total",
    "Connections of restricted tasks the egress proxy refused, by reason (the audit field egress_reason).",
    ["reason"],
)
EGRESS_CONNECTIONS = Counter("mcp_egress_connections_total", "Connections restricted tasks made to the egress proxy.")
EGRESS_OPEN = Gauge("mcp_egress_open_connections", "Connections to the egress proxy open now.")
EGRESS_BYTES = Counter(
    "mcp_egress_bytes_total",
    "Payload bytes the egress proxy carried for restricted tasks: sent (to destinations) or received, bytes.",
    ["direction"],
)
TASK_SLOTS = Gauge("mcp_task_slots", "Sandboxes this process runs at once at most (tasks.max_concurrent).")
TASK_QUEUE_CAPACITY = Gauge("mcp_task_queue_capacity", "Tasks this process queues at most (tasks.max_queued).")

CROSS_TENANT_PROBES = Counter(
    "mcp_cross_tenant_probes_total",
    "Calls that named a task of another tenant (answered 6001 like an unknown id; the audit "
    "event has cross_tenant: true and names the caller).",
)

# -- health ---------------------------------------------------------------------------

READY = Gauge("mcp_gateway_ready", "1 while the gateway answers /health/ready with 200 (refreshed every 0.5 s).")
POLICY_ENGINE_UP = Gauge(
    "mcp_policy_engine_up",
    "1 while the policy engine answers its health check (an OPA server: /health?bundles), by engine.",
    ["engine"],
)
STORE_LOCK_HELD = Gauge(
    "mcp_store_lock_held",
    "1 while this process holds its task store owner lock (0: lost; the process drains and exits 4).",
)
BUILD_INFO = Gauge(
    "mcp_gateway_build_info",
    "1, labelled with the gateway's version and the Python that runs it.",
    ["version", "python_version"],
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# -- audit ------------------------------------------------------------------------------

AUDIT_EVENTS = Counter(
    "mcp_audit_events_total",
    "Audit events by sink (file, stdout, webhook) and result: written; failed (the sink refused the line and "
    "nothing of it is kept: a decision that could not be audited is refused with 5001); or "
    "dropped (a deferred task_end lost because 1000 already waited for the sink).",
    ["sink", "result"],
)
AUDIT_QUEUE_DEPTH = Gauge(
    "mcp_audit_queue_depth",
    "Audit events waiting in a queued sink (webhook) for delivery.",
    ["sink"],
)
AUDIT_QUEUE_CAPACITY = Gauge(
    "mcp_audit_queue_capacity",
    "Audit events a queued sink (webhook) holds at most (audit.webhook.queue_events); past it "
    "calls block or fail (5001).",
    ["sink"],
)
AUDIT_WRITE_SECONDS = Histogram(
    "mcp_audit_write_seconds",
    "Time to chain an audit event and hand it to every sink (the record file, copies, queues), "
    "seconds, including any wait for room in a full queue.",
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0),
)

_LIMIT_KINDS = LABEL_VALUES["kind"]
_active: tuple[str, str] | None = None


def start_series(engine: str) -> None:
    """Create at 0 the series of counters whose label values are known up front, so that
    the first event after a start shows in ``rate()``/``increase()`` (Prometheus takes a
    series' first sample as its start)."""
    for outcome in ("allow", "deny", "error"):
        POLICY_DECISIONS.labels(engine, outcome)
    for result in ("applied", "rejected", "unchanged"):
        POLICY_RELOADS.labels(result)
    for kind in _LIMIT_KINDS:
        SANDBOX_LIMIT_HITS.labels(kind)
    for limit in ("principal_requests", "tenant_requests"):
        RATE_LIMITED.labels(limit)
    for reason in ("queue_full", "principal_quota", "tenant_quota"):
        TASK_QUEUE_REJECTIONS.labels(reason)


def observe(histogram: Histogram, value: float) -> None:
    """``histogram.observe(value)``, with the current trace id as its exemplar when a span
    is recording (shown to scrapers that negotiate OpenMetrics)."""
    ids = current_span_ids()
    if ids is not None and ids.sampled:
        histogram.observe(value, exemplar={"trace_id": ids.trace_id})
    else:
        histogram.observe(value)


def limit_kind(reason: str | None) -> str | None:
    """The ``kind`` label of a sandbox ``limit_reason`` (``other`` for one not in the set),
    or None when it names no limit (none, or ``cancelled``)."""
    if not reason or reason == "cancelled":
        return None
    return reason if reason in _LIMIT_KINDS else "other"


def track_tasks(running: Callable[[], float], queued: Callable[[], float], slots: int, queue_capacity: int) -> None:
    """Read ``mcp_active_tasks`` / ``mcp_queued_tasks`` from these callables at scrape time,
    and publish the bounds they are measured against."""
    ACTIVE_TASKS.set_function(running)
    QUEUED_TASKS.set_function(queued)
    TASK_SLOTS.set(slots)
    TASK_QUEUE_CAPACITY.set(queue_capacity)


def set_active_bundle(engine: str, revision: str) -> None:
    """Point ``mcp_policy_bundle_info`` at (engine, revision), dropping the previous series."""
    global _active
    if _active is not None and _active != (engine, revision):
        POLICY_BUNDLE.remove(*_active)
    POLICY_BUNDLE.labels(engine, revision).set(1)
    _active = (engine, revision)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """Every metric of the process, in the format the scraper's ``Accept`` header asks for:
    OpenMetrics 1.0.0 (with exemplars) when it names ``application/openmetrics-text``,
    else the Prometheus text format 0.0.4.

    Returns:
        (body, content type).
    """
    if accept and "application/openmetrics-text" in accept:
        return generate_openmetrics(REGISTRY), OPENMETRICS_CONTENT_TYPE
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
