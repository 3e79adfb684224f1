"""Audit events ``mcp_audit_v1``: field table, hash chain, signed checkpoints, sinks,
verification (design sections 8 and 11)."""

from gateway.audit.chain import verify_chain
from gateway.audit.fields import FIELDS, json_schema
from gateway.audit.log import AuditError, AuditLog
from gateway.audit.sinks import AuditSink, FileSink, StdoutSink, WebhookSink

__all__ = [
    "FIELDS", "AuditError", "AuditLog", "AuditSink", "FileSink", "StdoutSink", "WebhookSink", "json_schema",
    "verify_chain",
]
