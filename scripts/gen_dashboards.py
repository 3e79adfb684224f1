"""Generate the Grafana dashboards of deploy/grafana/dashboards/ from the panel lists below.

    .venv/bin/python scripts/gen_dashboards.py           # write the JSON files that changed
    .venv/bin/python scripts/gen_dashboards.py --check   # exit 1 when a committed file is stale

Plain Python on purpose: the output is ordinary Grafana dashboard JSON (schemaVersion 39,
``timeseries`` / ``stat`` / ``text`` panels), and the dashboards need no library to build them.
Every dashboard has the variables ``datasource`` (any Prometheus) and ``instance`` (one or more
gateways, from ``mcp_gateway_build_info``), and every metric selector of every query is filtered
by ``instance=~"$instance"`` (``sel()`` writes them all). ``tests/unit/test_dashboards.py`` checks
that the committed files equal this script's output and that every query is filtered;
``tests/integration/test_prometheus.py`` runs every query against a real Prometheus scraping a
real gateway. The metrics are those of gateway/observability/metrics.py; the SLO panels read the
recording rules of deploy/prometheus/mcp-gateway.rules.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "deploy" / "grafana" / "dashboards"

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
RATE = "$__rate_interval"
SERVER_ERROR = 'status=~"5[0-9]{3}|4001|4002"'  # the availability SLO's errors (rules file)
AVAILABILITY_OBJECTIVE = 0.999
LATENCY_OBJECTIVE = 0.99
LATENCY_THRESHOLD = "0.5"  # seconds: a bucket bound of mcp_api_request_duration_seconds
FAST = f'le="{LATENCY_THRESHOLD}"'
DENIED = 'code=~"300[1-4]"'  # policy denials: command, network, file, resource limit
ENGINE_ERROR = 'outcome="error"'  # a fail-closed deny (5003)
AUDIT_LOST = 'result=~"failed|dropped"'

Panel = dict[str, Any]


def sel(metric: str, *matchers: str) -> str:
    """``metric{instance=~"$instance",<matchers>}``: every selector of every panel."""
    return metric + "{" + ",".join((INSTANCE, *matchers)) + "}"


def rate(metric: str, *matchers: str) -> str:
    """PromQL ``rate()`` of ``metric`` on this dashboard's instance, over :data:`RATE`."""
    return f"rate({sel(metric, *matchers)}[{RATE}])"


def _legend(labels: str) -> str:
    """``{{a}} {{b}}`` for the comma-separated ``labels``."""
    return " ".join("{{" + label.strip() + "}}" for label in labels.split(",")) if labels else ""


def by(labels: str, metric: str, *matchers: str, prefix: str = "") -> tuple[str, str]:
    """The per-second rate of a counter summed by ``labels``, with a legend naming them."""
    return f"sum by ({labels}) ({rate(metric, *matchers)})", prefix + _legend(labels)


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    """``histogram_quantile`` targets of a histogram, per ``by`` labels (comma separated)."""
    labels = f"{by}, le" if by else "le"
    return [(f"histogram_quantile({q}, sum by ({labels}) ({rate(metric + '_bucket')}))",
             f"p{round(q * 100)} {_legend(by)}".rstrip()) for q in qs]


# -- panels ------------------------------------------------------------------------------


def _target(expr: str, legend: str, ref: str, instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DATASOURCE, "editorMode": "code", "expr": expr,
                              "legendFormat": legend or "__auto", "range": not instant, "refId": ref}
    if instant:
        target["instant"] = True
    return target


def _targets(queries: list[tuple[str, str]], instant: bool = False) -> list[dict[str, Any]]:
    return [_target(expr, legend, chr(ord("A") + i), instant) for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short", *,
               stack: bool = False, thresholds: list[tuple[str, float | None]] | None = None) -> Panel:
    """A timeseries panel: ``queries`` are (PromQL, legend) pairs, ``unit`` a Grafana unit."""
    custom: dict[str, Any] = {
        "drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 1, "fillOpacity": 10,
        "gradientMode": "none", "showPoints": "never", "pointSize": 4, "spanNulls": False,
        "axisPlacement": "auto", "axisLabel": "", "axisSoftMin": 0,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line" if thresholds else "off"},
    }
    defaults: dict[str, Any] = {
        "unit": unit, "color": {"mode": "palette-classic"}, "custom": custom,
        "thresholds": _thresholds(thresholds or [("green", None)]),
    }
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": _targets(queries),
    }


def stat(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short", *,
         thresholds: list[tuple[str, float | None]] | None = None, text_mode: str = "auto",
         mappings: list[dict[str, Any]] | None = None, decimals: int | None = None) -> Panel:
    """A stat panel of instant ``queries`` (PromQL, legend), coloured by ``thresholds``."""
    defaults: dict[str, Any] = {
        "unit": unit, "color": {"mode": "thresholds"}, "mappings": mappings or [],
        "thresholds": _thresholds(thresholds or [("green", None)]),
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "none" if text_mode == "name" else "area",
                    "justifyMode": "auto", "orientation": "auto", "textMode": text_mode,
                    "wideLayout": True, "showPercentChange": False},
        "targets": _targets(queries, instant=True),
    }


def _thresholds(steps: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}]
RED_BELOW_1 = [("red", None), ("green", 1)]
BUDGET = [("red", None), ("orange", 0), ("yellow", 0.25), ("green", 0.5)]


# -- dashboards --------------------------------------------------------------------------


class Dashboard:
    """Panels laid out left to right in Grafana's 24-column grid, rows one under another."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[Panel] = []
        self._x = self._y = self._row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}, "id": len(self.panels) + 1})
        self._y += 1

    def add(self, panel: Panel, width: int, height: int = 8) -> None:
        if self._x + width > 24:
            self._newline()
        panel = {"id": len(self.panels) + 1, "gridPos": {"h": height, "w": width, "x": self._x, "y": self._y},
                 **panel}
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = self._row_height = 0

    def render(self) -> dict[str, Any]:
        return {
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
            }]},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                       "tags": ["mcp-gateway"], "targetBlank": False, "title": "MCP gateway", "type": "dashboards"}],
            "panels": self.panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": ["mcp-gateway"],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
                 "regex": "", "skipUrlSync": False},
                {"name": "instance", "label": "Gateway", "type": "query", "datasource": DATASOURCE,
                 "definition": "label_values(mcp_gateway_build_info, instance)",
                 "query": {"qryType": 1, "query": "label_values(mcp_gateway_build_info, instance)",
                           "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                 "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                 "hide": 0, "includeAll": True, "allValue": ".*", "multi": True, "options": [], "refresh": 2,
                 "regex": "", "skipUrlSync": False, "sort": 1},
            ]},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
            "weekStart": "",
        }


# -- panels on more than one dashboard (one declaration each) ---------------------------


def call_latency() -> Panel:
    """p50/p90/p99 of ``mcp_api_request_duration_seconds`` (seconds), all methods: overview and performance."""
    return timeseries("Call latency", "Time from admission to the answer of a call, all methods.",
                      quantiles("mcp_api_request_duration_seconds"), "s")


def calls_in_flight() -> Panel:
    """``mcp_calls_in_flight`` summed by edge (calls): overview and performance."""
    return timeseries("Calls in flight", "Calls holding an admission slot of an edge.",
                      [(f"sum by (edge) ({sel('mcp_calls_in_flight')})", "{{edge}}")], "short")


def decisions_by_outcome() -> Panel:
    """``mcp_policy_decisions_total`` per second by engine and outcome, stacked: performance and security."""
    return timeseries("Decisions by outcome",
                      "Policy decisions per second: allow, deny, error (an engine error is a fail-closed deny, 5003).",
                      [by("engine, outcome", "mcp_policy_decisions_total")], "ops", stack=True)


def tasks_by_status() -> Panel:
    """Tasks ended per second by final status (``mcp_task_duration_seconds_count``): overview and security."""
    return timeseries("Tasks by final status", "COMPLETED (any exit code), FAILED, CANCELLED, TIMED_OUT per second.",
                      [by("status", "mcp_task_duration_seconds_count")], "ops", stack=True)


def audit_events() -> Panel:
    """``mcp_audit_events_total`` per second by sink and result: performance and security."""
    return timeseries("Audit events by sink and result", "Events per second: written, failed, dropped.",
                      [by("sink, result", "mcp_audit_events_total")], "ops")


def audit_write_latency() -> Panel:
    """p50/p90/p99 of ``mcp_audit_write_seconds`` (seconds): performance and security."""
    return timeseries("Audit write latency", "Time to chain an event and hand it to every sink.",
                      quantiles("mcp_audit_write_seconds"), "s")


def overview() -> Dashboard:
    """Traffic, errors, latency, saturation, SLO budgets."""
    d = Dashboard("mcp-gateway-overview", "MCP gateway / Overview",
                  "Traffic, errors, latency, saturation and the SLO error budgets of the MCP security gateway.")
    calls = rate("mcp_api_requests_total")
    d.row("Service level (availability 99.9 %, latency 99 % within 0.5 s, 30 days)")
    d.add(stat("Availability (time range)",
               "Share of calls that answered without a server-side error (5xxx, 4001, 4002) over the time range.",
               [(f"1 - (sum(increase({sel('mcp_api_requests_total', SERVER_ERROR)}[$__range])) or vector(0))"
                 f" / sum(increase({sel('mcp_api_requests_total')}[$__range]))", "availability")],
               "percentunit", thresholds=[("red", None), ("green", AVAILABILITY_OBJECTIVE)], decimals=3), 4, 5)
    d.add(stat("Availability error budget left (30 d)",
               "mcp_gateway:availability_error_budget_remaining:ratio: 100 % = none of the 30 day budget "
               "(0.1 % of calls) spent, below 0 = objective missed. The worst selected gateway.",
               [(f"min({sel('mcp_gateway:availability_error_budget_remaining:ratio')})", "budget left")],
               "percentunit", thresholds=BUDGET, decimals=1), 5, 5)
    d.add(stat("Fast calls (time range)",
               f"Share of calls answered within {LATENCY_THRESHOLD} s over the time range (objective 99 %).",
               [(f"sum(increase({sel('mcp_api_request_duration_seconds_bucket', FAST)}"
                 f"[$__range])) / sum(increase({sel('mcp_api_request_duration_seconds_count')}[$__range]))",
                 "within 0.5 s")],
               "percentunit", thresholds=[("red", None), ("green", LATENCY_OBJECTIVE)], decimals=2), 4, 5)
    d.add(stat("Latency error budget left (30 d)",
               "mcp_gateway:latency_error_budget_remaining:ratio: 100 % = none of the 30 day budget (1 % of "
               "calls slower than 0.5 s) spent. The worst selected gateway.",
               [(f"min({sel('mcp_gateway:latency_error_budget_remaining:ratio')})", "budget left")],
               "percentunit", thresholds=BUDGET, decimals=1), 5, 5)
    d.add(stat("Gateways ready",
               "Selected gateways answering /health/ready with 200, of those scraped.",
               [(f"sum({sel('mcp_gateway_ready')})", "ready"), (f"count({sel('mcp_gateway_build_info')})", "scraped")],
               "short", text_mode="value_and_name"), 6, 5)
    for slo, objective in (("availability", AVAILABILITY_OBJECTIVE), ("latency", LATENCY_OBJECTIVE)):
        budget = round(1 - objective, 6)
        d.add(timeseries(
            f"{slo.capitalize()} error budget burn rate",
            f"How many times faster than allowed the {slo} budget burns (1 = spent exactly in 30 days). "
            "The alerts page above 14.4 (1h and 5m) or 6 (6h and 30m).",
            [(f"{sel(f'mcp_gateway:{slo}_error:ratio_rate{w}')} / {budget}", "{{instance}} " + w)
             for w in ("5m", "1h", "6h")],
            "short", thresholds=[("green", None), ("orange", 6), ("red", 14.4)]), 12)

    d.row("Traffic")
    d.add(timeseries("Calls by method", "Calls per second that passed admission, by transport and method.",
                     [(f"sum by (transport, method) ({calls})", "{{transport}} {{method}}")], "reqps"), 8)
    d.add(timeseries("Calls by status", "Calls per second by answer: ok or the project error code.",
                     [(f"sum by (status) ({calls})", "{{status}}")], "reqps", stack=True), 8)
    d.add(tasks_by_status(), 8)

    d.row("MCP")
    d.add(timeseries("MCP tool calls", "tools/call per second by tool (ok or refused).",
                     [by("tool", "mcp_tool_calls_total")], "reqps", stack=True), 8)
    d.add(timeseries("MCP tool refusals", "Tool errors per second by tool and project error code.",
                     [by("tool, status", "mcp_tool_calls_total", 'status!="ok"')], "reqps"), 8)
    d.add(timeseries("MCP sessions open", "2025-11-25 sessions open on /mcp, per gateway (mcp.max_sessions).",
                     [(sel("mcp_sessions_open"), "{{instance}}")], "short"), 8)

    d.row("Errors")
    d.add(timeseries("Server-side error ratio",
                     "Share of calls answering 5xxx, 4001 or 4002 (the availability SLO's errors), per gateway.",
                     [(f"(sum by (instance) ({rate('mcp_api_requests_total', SERVER_ERROR)})"
                       f" or 0 * sum by (instance) ({calls})) / sum by (instance) ({calls})", "{{instance}}")],
                     "percentunit"), 12)
    d.add(timeseries("Errors by code", "Failed calls per second by project error code and error class.",
                     [by("code, type", "mcp_errors_total")], "reqps"), 12)

    d.row("Latency")
    d.add(call_latency(), 12)
    d.add(timeseries("Task duration", "Task latency from creation to its final state (queue wait and run).",
                     quantiles("mcp_task_duration_seconds", qs=(0.5, 0.99)), "s"), 12)

    d.row("Saturation")
    d.add(timeseries("Sandbox slots and task queue in use",
                     "Running sandboxes / tasks.max_concurrent, and queued tasks / tasks.max_queued (4290 at 100 %).",
                     [(f"{sel('mcp_active_tasks')} / {sel('mcp_task_slots')}", "{{instance}} slots"),
                      (f"{sel('mcp_queued_tasks')} / {sel('mcp_task_queue_capacity')}", "{{instance}} queue")],
                     "percentunit", thresholds=[("green", None), ("orange", 0.8)]), 8)
    d.add(calls_in_flight(), 8)
    d.add(timeseries("Refused with 4290", "Load shed per second: admission bounds, task queue and quotas, rate limits.",
                     [by("limit", "mcp_admission_refused_total", prefix="admission "),
                      by("reason", "mcp_task_rejections_total", prefix="task "),
                      by("limit", "mcp_rate_limited_total", prefix="rate limit ")],
                     "reqps", stack=True), 8)
    return d


def performance() -> Dashboard:
    """Stage latencies from the histograms, policy and sandbox times, queues, the process."""
    d = Dashboard("mcp-gateway-performance", "MCP gateway / Performance",
                  "Latency of each stage of a call and a task (from the histograms), queues and the process.")
    d.row("Calls")
    d.add(call_latency(), 8)
    d.add(timeseries("Call latency p99 by method", "99th percentile per transport and method.",
                     quantiles("mcp_api_request_duration_seconds", "transport, method", (0.99,)), "s"), 8)
    d.add(timeseries("Mean call latency by method", "Average time per call, per transport and method.",
                     [(f"sum by (transport, method) ({rate('mcp_api_request_duration_seconds_sum')})"
                       f" / sum by (transport, method) ({rate('mcp_api_request_duration_seconds_count')})",
                       "{{transport}} {{method}}")], "s"), 8)

    d.row("Policy")
    d.add(timeseries("Policy evaluation latency", "Time to get a decision from the engine (errors included).",
                     quantiles("mcp_policy_eval_seconds", "engine"), "s"), 8)
    d.add(decisions_by_outcome(), 8)
    d.add(timeseries("Decision cache lookups", "Embedded engine decision cache lookups per second, hit or miss.",
                     [by("result", "mcp_policy_cache_total")], "ops", stack=True), 8)

    d.row("Tasks")
    d.add(timeseries("Queue wait", "Time a task waited for a sandbox slot.",
                     quantiles("mcp_task_queue_wait_seconds"), "s"), 8)
    d.add(timeseries("Sandbox run time", "Sandbox run time from spawn to reap, by the task's final status.",
                     quantiles("mcp_sandbox_run_seconds", "status", (0.5, 0.99)), "s"), 8)
    d.add(timeseries("Task duration p99", "Creation to final state, by task type and final status.",
                     quantiles("mcp_task_duration_seconds", "task_type, status", (0.99,)), "s"), 8)
    d.add(timeseries("Running and queued tasks", "Sandboxes running and tasks waiting, against their bounds.",
                     [(sel("mcp_active_tasks"), "{{instance}} running"),
                      (sel("mcp_task_slots"), "{{instance}} slots"),
                      (sel("mcp_queued_tasks"), "{{instance}} queued"),
                      (sel("mcp_task_queue_capacity"), "{{instance}} queue capacity")], "short"), 12)
    d.add(calls_in_flight(), 12)

    d.row("Audit")
    d.add(audit_write_latency(), 12)
    d.add(audit_events(), 12)

    d.row("Process")
    d.add(timeseries("CPU", "CPU seconds per second used by the gateway process (sandboxes not included).",
                     [(rate("process_cpu_seconds_total"), "{{instance}}")], "percentunit"), 6)
    d.add(timeseries("Resident memory", "Resident set size of the gateway process.",
                     [(sel("process_resident_memory_bytes"), "{{instance}}")], "bytes"), 6)
    d.add(timeseries("Open file descriptors", "Open descriptors / the process limit.",
                     [(f"{sel('process_open_fds')} / {sel('process_max_fds')}", "{{instance}}")], "percentunit"), 6)
    d.add(timeseries("Python GC collections", "Garbage collections per second by generation.",
                     [(f"sum by (instance, generation) ({rate('python_gc_collections_total')})",
                       "{{instance}} gen {{generation}}")], "ops"), 6)
    return d


def security() -> Dashboard:
    """Denials, limit hits, auth failures, rate limiting, cross-tenant probes, audit health, revision."""
    d = Dashboard("mcp-gateway-security", "MCP gateway / Security",
                  "Policy denials, sandbox limits, authentication failures, rate limiting and audit health.")
    d.row("Policy")
    d.add(stat("Active policy revision", "The bundle each selected gateway decides with (mcp_policy_bundle_info).",
               [(f"count by (instance, engine, revision) ({sel('mcp_policy_bundle_info')})",
                 "{{instance}}: {{engine}} {{revision}}")], text_mode="name"), 8, 5)
    d.add(stat("Policy engine", "Whether the policy engine answers its health check (OPA: /health?bundles).",
               [(f"min by (engine) ({sel('mcp_policy_engine_up')})", "{{engine}}")],
               thresholds=RED_BELOW_1, text_mode="value_and_name", mappings=UP_DOWN), 4, 5)
    d.add(stat("Denied by policy (time range)", "Calls refused with 3001 to 3004 over the time range.",
               [(f"sum(increase({sel('mcp_errors_total', DENIED)}[$__range])) or vector(0)", "denied")],
               decimals=0), 4, 5)
    d.add(stat("Failed closed (time range)",
               "Decisions that were engine errors over the time range: the calls were refused with 5003.",
               [(f"sum(increase({sel('mcp_policy_decisions_total', ENGINE_ERROR)}[$__range])) or vector(0)",
                 "engine errors")], thresholds=[("green", None), ("red", 1)], decimals=0), 4, 5)
    d.add(stat("Auth failures (time range)", "Calls refused for credentials or scopes over the time range.",
               [(f"sum(increase({sel('mcp_auth_failures_total')}[$__range])) or vector(0)", "auth failures")],
               thresholds=[("green", None), ("orange", 10)], decimals=0), 4, 5)
    d.add(decisions_by_outcome(), 8)
    d.add(timeseries("Denials by code",
                     "Calls refused by policy per second: 3001 command, 3002 network, 3003 file, 3004 resource "
                     "limit. The rule that denied is in the audit trail (rule_ids), not in a metric label.",
                     [by("code, type", "mcp_errors_total", DENIED)],
                     "reqps", stack=True), 8)
    d.add(timeseries("Policy reloads", "Bundle reloads per interval: applied, unchanged, or rejected (old bundle kept).",
                     [(f"sum by (result) (increase({sel('mcp_policy_reloads_total')}[{RATE}]))", "{{result}}")],
                     "short"), 8)

    d.row("Sandbox")
    d.add(timeseries("Sandbox limit hits by kind", "Tasks ended by a sandbox limit per second.",
                     [by("kind", "mcp_sandbox_limit_hits_total")], "ops", stack=True), 12)
    d.add(tasks_by_status(), 12)
    d.add(timeseries("Egress refusals by reason",
                     "Connections of restricted tasks the egress proxy refused, per second (not_allowed, ip_literal, "
                     "forbidden_address, gateway_port, sni_mismatch, ...). Each is an egress_denied audit event "
                     "naming the task, host and port.",
                     [by("reason", "mcp_egress_denied_total")], "ops", stack=True), 12)
    d.add(timeseries("Egress traffic",
                     "Payload bytes the egress proxy carried for restricted tasks, per second: sent to their "
                     "destinations and received from them.",
                     [by("direction", "mcp_egress_bytes_total")], "Bps"), 12)

    d.row("Authentication and rate limiting")
    d.add(timeseries("Auth failures by reason", "Calls refused by authentication or authorization, per second.",
                     [by("scheme, reason", "mcp_auth_failures_total")],
                     "reqps", stack=True), 8)
    d.add(timeseries("Rate limited", "Requests refused with 4290 by a principal or tenant request rate limit.",
                     [by("limit", "mcp_rate_limited_total")], "reqps", stack=True), 8)
    d.add(timeseries("Admission refusals and task rejections",
                     "Calls refused with 4290 by an in-flight bound, and tasks refused (queue full, quotas).",
                     [by("edge, limit", "mcp_admission_refused_total"),
                      by("reason", "mcp_task_rejections_total", prefix="task ")],
                     "reqps", stack=True), 8)
    d.add(timeseries("Malformed gRPC requests", "gRPC bodies that did not decode (answered 2003), per method.",
                     [by("method", "mcp_grpc_decode_errors_total")], "reqps"), 12)
    d.add(timeseries("Cross-tenant probes",
                     "Calls that named another tenant's task: answered 6001 like an unknown id. Who made them is "
                     "in the audit trail (not_found events with cross_tenant: true; Falco rule MCP Cross-Tenant "
                     "Probe).",
                     [(f"sum({rate('mcp_cross_tenant_probes_total')})", "probes")], "reqps"), 12)

    d.row("Audit")
    d.add(stat("Audit events failed or dropped (time range)",
               "Failed: a sink refused the line (the call was refused with 5001). Dropped: a deferred task_end lost.",
               [(f"sum(increase({sel('mcp_audit_events_total', AUDIT_LOST)}[$__range]))",
                 "failed or dropped")], thresholds=[("green", None), ("red", 1)], decimals=0), 6, 8)
    d.add(audit_events(), 9)
    d.add(audit_write_latency(), 9)
    return d


DASHBOARDS = {"overview.json": overview, "performance.json": performance, "security.json": security}


def render() -> dict[Path, str]:
    """Every dashboard file and its text."""
    return {OUT_DIR / name: json.dumps(build().render(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    """Write the dashboards (``--check``: exit 1 when a committed one differs instead)."""
    stale = []
    for path, content in render().items():
        if path.exists() and path.read_text() == content:
            continue
        if "--check" in argv:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"{path.relative_to(REPO)} is stale: run .venv/bin/python scripts/gen_dashboards.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
