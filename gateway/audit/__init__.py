"""Audit events ``mcp_audit_v1``: field table, chained log, sinks (design section 8)."""

from gateway.audit.fields import FIELDS, json_schema
from gateway.audit.log import AuditError, AuditLog, AuditSink, FileSink, verify_chain

__all__ = ["FIELDS", "AuditError", "AuditLog", "AuditSink", "FileSink", "json_schema", "verify_chain"]
