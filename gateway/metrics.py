"""Prometheus metrics (text exposition at ``GET /metrics``), one set per process.

Names follow https://prometheus.io/docs/practices/naming/: ``mcp_`` prefix, base units
(seconds), ``_total`` for counters. Labels are low-cardinality by construction: the
engine (``embedded``/``opa``), an outcome from a fixed set, the bundle revision (one live
series at a time).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "ADMISSION_REFUSED",
    "IN_FLIGHT",
    "AUTH_FAILURES",
    "CONTENT_TYPE",
    "GRPC_DECODE_ERRORS",
    "RATE_LIMITED",
    "POLICY_BUNDLE",
    "POLICY_CACHE",
    "POLICY_DECISIONS",
    "POLICY_EVAL_SECONDS",
    "POLICY_RELOADS",
    "TASK_QUEUE_REJECTIONS",
    "exposition",
    "set_active_bundle",
    "track_tasks",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

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

_active: tuple[str, str] | None = None


def track_tasks(running: Callable[[], float], queued: Callable[[], float]) -> None:
    """Read ``mcp_active_tasks`` / ``mcp_queued_tasks`` from these callables at scrape time."""
    ACTIVE_TASKS.set_function(running)
    QUEUED_TASKS.set_function(queued)


def set_active_bundle(engine: str, revision: str) -> None:
    """Point ``mcp_policy_bundle_info`` at (engine, revision), dropping the previous series."""
    global _active
    if _active is not None and _active != (engine, revision):
        POLICY_BUNDLE.remove(*_active)
    POLICY_BUNDLE.labels(engine, revision).set(1)
    _active = (engine, revision)


def exposition() -> bytes:
    """The text exposition of every metric (Prometheus format 0.0.4)."""
    return generate_latest()


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
AUDIT_WRITE_SECONDS = Histogram(
    "mcp_audit_write_seconds",
    "Time to chain an audit event and hand it to every sink (the record file, copies, queues), "
    "seconds, including any wait for room in a full queue.",
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0),
)
__all__ += ["AUDIT_EVENTS", "AUDIT_QUEUE_DEPTH", "AUDIT_WRITE_SECONDS"]
