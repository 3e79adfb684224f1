"""The ``mcp_audit_v1`` field table: the one declaration of the audit line (design section 8).

Derived from :data:`FIELDS` by ``scripts/gen_audit.py`` (a test fails when a copy is stale):
the JSON Schema ``docs/schema/mcp_audit_v1.json``, the Falco plugin's field table
``falco/pkg/mcpaudit/fields_gen.go`` (each key extracted as ``mcp.<key>``), and the field list
of ``docs/audit.md``. The event builder checks its keys against :data:`FIELD_NAMES`.

Integer fields are non-negative JSON integers (Falco extracts them as uint64), absent means
unknown, and no field ever holds a secret in clear (commands are redacted, arguments only
hashed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EGRESS_REASONS", "FIELDS", "FIELD_NAMES", "SCHEMA_ID", "Field", "json_schema"]

SCHEMA_ID = "urn:mcp-security-gateway:schema:mcp_audit_v1"


@dataclass(frozen=True)
class Field:
    """One audit key.

    Attributes:
        name: the JSON key; Falco sees it as ``mcp.<name>``.
        type: JSON Schema type: ``string|integer|boolean``.
        description: what the value means, with its unit.
        required: present in every event.
        enum: allowed values for strings, when closed.
        minimum: lower bound for integers.
        pattern: regex for strings.
    """

    name: str
    type: str
    description: str
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    pattern: str | None = None


_HEX64 = "^[0-9a-f]{64}$"

#: Why the egress proxy refused a connection (``egress_reason``; gateway.egress.proxy).
EGRESS_REASONS = ("not_allowed", "ip_literal", "forbidden_address", "gateway_port", "sni_mismatch", "not_tls",
                  "bad_request", "connections_cap", "bytes_cap")

FIELDS: tuple[Field, ...] = (
    Field("schema_version", "string", "Audit schema version.", required=True, enum=("1",)),
    Field("timestamp", "integer", "When the event happened, unix nanoseconds.", required=True, minimum=0),
    Field("session_id", "string",
          "Caller session: the mcp-session-id or x-session-id header (gRPC metadata) the caller sent, "
          "else 'conn-' and an id of the connection.", required=True),
    Field("client_process", "string", "Caller's client software (user agent), or 'unknown'.", required=True),
    Field("server_host", "string",
          "Host the client addressed (HTTP Host, gRPC :authority, without the port), else the listen address.",
          required=True),
    Field("server_port", "integer", "Port the call arrived on.", required=True, minimum=0),
    Field("tls", "boolean", "Whether the connection was TLS.", required=True),
    Field("method", "string", "RPC or route, e.g. 'ExecuteCommand' or 'POST /v1/execute'.", required=True),
    Field("event_id", "string", "Unique event id (uuid4).", required=True),
    Field(
        "event_type", "string",
        "What happened (invalid_request: an authenticated call refused before any decision because "
        "its body does not decode, error_code 2003; not_found: a call named a task the caller cannot "
        "see, answered 6001; checkpoint: a signature over the chain head; audit_outage: written when "
        "a failing audit sink writes again, naming it and the calls refused meanwhile; egress_denied: the "
        "egress proxy refused a connection of a restricted task or upstream MCP server; tool_call: an MCP "
        "tools/call that neither runs a command nor touches a file, e.g. get_task (those two are audited by "
        "their decision and file events), or one refused before any decision; tool_result: the end of a call of "
        "an upstream MCP server's tool (its decision event came first); tool_definition_changed: an upstream "
        "server listed tools that differ from the approved definitions; tools_approved: an operator approved "
        "an upstream server's tools).", required=True,
        enum=("decision", "task_end", "file", "auth_failure", "rate_limit", "policy_reload", "invalid_request",
              "not_found", "checkpoint", "audit_outage", "egress_denied", "tool_call", "tool_result",
              "tool_definition_changed", "tools_approved"),
    ),
    Field("producer", "string", "Who wrote the event.", required=True, enum=("mcp-gateway",)),
    Field("transport", "string", "Edge the call came through ('internal' for the gateway's own events).",
          required=True, enum=("grpc", "http", "https", "mcp", "stdio", "internal")),
    Field("principal", "string", "Authenticated principal id ('unauthenticated' when authentication failed).",
          required=True),
    Field("tenant", "string", "Principal's tenant ('unknown' when authentication failed).", required=True),
    Field("auth_scheme", "string", "How the caller authenticated (or tried to).", required=True,
          enum=("none", "basic", "bearer", "mtls", "other")),
    Field("credential_sha256", "string",
          "SHA-256 (hex) of the credential presented: the bearer token or API key as sent (for an API "
          "key, the hash in its config entry), or the client certificate's DER (its fingerprint).",
          pattern=_HEX64),
    Field("auth_reason", "string",
          "auth_failure: why, e.g. expired, not_yet_valid, wrong_audience, wrong_issuer, unknown_kid, "
          "alg_not_allowed, bad_signature, unknown_api_key, revoked_api_key, missing_credentials, "
          "client_certificate_required, unmapped_client_certificate, missing_scope."),
    Field("rate_limit", "string",
          "Limit that refused the call (4290): principal_requests, tenant_requests, "
          "principal_concurrent_tasks, tenant_concurrent_tasks, queue, principal_in_flight, "
          "workspace_busy (the workspace is held by another replica's tasks), upstream_server, "
          "upstream_principal (an upstream MCP server's call rates) or upstream_instances."),
    Field("task_id", "string", "Task the event belongs to.", pattern="^task-[0-9a-f]{32}$"),
    Field("tool_name", "string",
          "Tool invoked, e.g. 'execute_command' (for file calls over gRPC and REST: file_read, file_write, "
          "file_delete; over MCP the tool's own name)."),
    Field("upstream_server", "string",
          "The upstream MCP server (mcp.servers) of the call, listing or egress refusal; its tools are "
          "named '<upstream_server>__<tool>' in tool_name."),
    Field("tools_list_sha256_old", "string",
          "tool_definition_changed, tools_approved: SHA-256 of the approved tool set (absent when never approved).",
          pattern=_HEX64),
    Field("tools_list_sha256_new", "string",
          "tool_definition_changed: SHA-256 of the tool set as listed now; tools_approved: of the set approved.",
          pattern=_HEX64),
    Field("tools_changed", "string",
          "tool_definition_changed: the withheld tools (tools_approved: what the approval changed), as "
          "'changed:a,b added:c removed:d', at most 1024 chars."),
    Field("jsonrpc_id", "string", "MCP tools/call: the JSON-RPC request id, as text, at most 128 chars."),
    Field("protocol_version", "string", "MCP tools/call: the protocol revision the client speaks, e.g. 2025-11-25."),
    Field("client_name", "string",
          "MCP tools/call: the client's name from the handshake (clientInfo.name), at most 128 chars."),
    Field("client_version", "string",
          "MCP tools/call: the client's version from the handshake (clientInfo.version), at most 128 chars."),
    Field("command", "string", "Command line with secret-looking values redacted, at most 1024 chars."),
    Field("command_sha256", "string", "SHA-256 of the command name (hex).", pattern=_HEX64),
    Field("args_sha256", "string", "SHA-256 of the JSON array of arguments (hex).", pattern=_HEX64),
    Field("decision", "string", "Policy outcome.", enum=("allow", "deny", "error")),
    Field("policy_rule", "string", "Rule ids that decided, comma-separated."),
    Field("policy_reason", "string", "First reason the policy gave, at most 512 chars."),
    Field("policy_revision", "string", "Revision of the policy bundle that decided."),
    Field("policy_engine", "string", "Engine that decided.", enum=("embedded", "wasm", "opa")),
    Field("decision_id", "string", "Id of the policy decision."),
    Field("request_bytes", "integer", "Size of the request, bytes.", minimum=0),
    Field("response_bytes", "integer", "Size of the response, bytes.", minimum=0),
    Field("tool_invoke_count", "integer",
          "Tool calls in this session so far, including this one: executions over gRPC and REST, every "
          "tools/call over MCP.", minimum=1),
    Field("file_access_count", "integer", "File calls in this session so far, including this one.", minimum=1),
    Field("session_request_bytes", "integer", "Request bytes of this session so far, this call included.",
          minimum=0),
    Field("session_response_bytes", "integer",
          "Response bytes (task output) of this session so far, this event included.", minimum=0),
    Field("exit_code", "integer", "Command exit status (128+N for signal N); absent when it never ran.",
          minimum=0),
    Field("status", "string",
          "Final task status; tool_result: COMPLETED (a result), FAILED (the server failed or its result is "
          "an error) or TIMED_OUT.",
          enum=("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")),
    Field("duration_ms", "integer", "Task wall time (tool_result: the upstream call's), milliseconds.", minimum=0),
    Field("cpu_time_ms", "integer", "Task CPU time, milliseconds.", minimum=0),
    Field("max_memory_kb", "integer", "Task peak resident memory, KiB.", minimum=0),
    Field("sandbox_violation", "string",
          "Limit that ended the task: wall_timeout, cpu_time, file_size, oom, pids, egress, output_truncated, ..."),
    Field("egress_bytes_sent", "integer",
          "task_end of a restricted task: payload bytes the egress proxy carried to its destinations.", minimum=0),
    Field("egress_bytes_received", "integer",
          "task_end of a restricted task: payload bytes the egress proxy carried back from them.", minimum=0),
    Field("egress_host", "string",
          "egress_denied: the host (name or address) the connection asked for, at most 255 chars; empty when "
          "the request did not name one."),
    Field("egress_port", "integer", "egress_denied: the port the connection asked for (0 when none).",
          minimum=0),
    Field("egress_reason", "string",
          "egress_denied: why (not_allowed: not on the task's allow-list; ip_literal; forbidden_address: "
          "loopback, private, link-local or another non-global address the operator did not allow; "
          "gateway_port; sni_mismatch: the TLS server name is not the CONNECT host; not_tls; bad_request; "
          "connections_cap; bytes_cap).",
          enum=EGRESS_REASONS),
    Field("workspace", "string", "Workspace id (in the tenant) a task or file call used."),
    Field("file_path", "string", "File call: the workspace-relative path, at most 1024 chars."),
    Field("error_code", "integer", "Project error code (design section 5) when the call failed.", minimum=1000),
    Field("cross_tenant", "boolean",
          "The call named a task or workspace of another tenant (answered 6001, exactly like an unknown id)."),
    Field("audit_sink", "string", "audit_outage event: the sink that failed.", enum=("file", "stdout", "webhook")),
    Field("failed_events", "integer", "audit_outage event: events refused (their calls failed with 5001).",
          minimum=0),
    Field("outage_ms", "integer", "audit_outage event: how long the sink failed, milliseconds.", minimum=0),
    Field("trace_id", "string", "W3C trace id of the call's trace (32 hex digits).", pattern="^[0-9a-f]{32}$"),
    Field("checkpoint", "string",
          "checkpoint event: why it was written (start, count, interval, rotation, shutdown).",
          enum=("start", "count", "interval", "rotation", "shutdown")),
    Field("key_id", "string", "checkpoint event: SHA-256 (hex) of the raw Ed25519 public key that signed it.",
          pattern=_HEX64),
    Field("checkpoint_events", "integer",
          "checkpoint event: the most events the gateway writes before its next checkpoint.", minimum=1),
    Field("signature", "string",
          "checkpoint event: Ed25519 signature (hex) of its canonical JSON without 'hash' and 'signature'; "
          "it covers prev_hash, the chain head.", pattern="^[0-9a-f]{128}$"),
    Field("seq", "integer", "Position in the hash chain, from 1.", required=True, minimum=1),
    Field("prev_hash", "string", "hash of the previous event (64 zeros for the first).", required=True,
          pattern=_HEX64),
    Field("hash", "string", "SHA-256 of this event's canonical JSON without 'hash'.", required=True,
          pattern=_HEX64),
)

FIELD_NAMES: frozenset[str] = frozenset(f.name for f in FIELDS)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one audit line, derived from :data:`FIELDS`."""
    properties: dict[str, Any] = {}
    for f in FIELDS:
        prop: dict[str, Any] = {"type": f.type, "description": f.description}
        if f.enum:
            prop["enum"] = list(f.enum)
        if f.minimum is not None:
            prop["minimum"] = f.minimum
        if f.pattern:
            prop["pattern"] = f.pattern
        properties[f.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mcp_audit_v1",
        "description": "One MCP gateway audit event, one JSON object per line (JSON Lines).",
        "type": "object",
        "properties": properties,
        "required": [f.name for f in FIELDS if f.required],
        "additionalProperties": False,
    }

