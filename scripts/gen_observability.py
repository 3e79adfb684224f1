"""Regenerate the metrics table of docs/observability.md from the metrics registry."""

from pathlib import Path

from gateway.observability.docs import render

repo = Path(__file__).resolve().parent.parent
for path, text in render(repo).items():
    if path.read_text() != text:
        path.write_text(text)
        print(f"wrote {path.relative_to(repo)}")
