"""Regenerate docs/schema/mcp_audit_v1.json from gateway/audit/fields.py (the one declaration)."""

import json
from pathlib import Path

from gateway.audit.fields import json_schema

target = Path(__file__).resolve().parent.parent / "docs" / "schema" / "mcp_audit_v1.json"
target.write_text(json.dumps(json_schema(), indent=2) + "\n")
print(f"wrote {target}")
