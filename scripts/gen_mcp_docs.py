"""Regenerate the tools table of docs/mcp.md from the MCP edge's tool table."""

from pathlib import Path

from gateway.edges.mcp_docs import render

repo = Path(__file__).resolve().parent.parent
for path, text in render(repo).items():
    if path.read_text() != text:
        path.write_text(text)
        print(f"wrote {path.relative_to(repo)}")
