"""Regenerate what is derived from gateway/audit/fields.py (the one declaration of the audit
line): the JSON Schema, the Falco plugin's field table and the field list of docs/audit.md."""

from pathlib import Path

from gateway.audit.generated import render

repo = Path(__file__).resolve().parent.parent
for path, text in render(repo).items():
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(repo)}")
