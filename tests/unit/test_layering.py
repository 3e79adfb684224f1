"""Layering contracts (style.md 4): sandbox/ never imports gateway/; edges never import
sandbox, policy, tasks, audit or the upstream servers (they only call the service layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offending(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(REPO)} imports {name}"
        for p in files
        for name in sorted(_imports(p))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_sandbox_never_imports_gateway() -> None:
    files = sorted((REPO / "sandbox").rglob("*.py"))
    assert files
    assert _offending(files, ("gateway",)) == []


@pytest.mark.parametrize("edge", sorted(p.name for p in (REPO / "gateway" / "edges").glob("*.py")))
def test_edges_only_call_the_service(edge: str) -> None:
    path = REPO / "gateway" / "edges" / edge
    assert _offending([path], ("sandbox", "gateway.policy", "gateway.tasks", "gateway.audit", "gateway.upstream")) == []


def test_the_client_library_needs_nothing_of_the_server() -> None:
    # gateway.client runs on a caller's machine: the error table, the wire contract, the
    # plain value types of gateway.models, and the declarations of gateway.config (for
    # is_loopback_host) only.
    files = sorted((REPO / "gateway" / "client").rglob("*.py"))
    assert files
    allowed = ("gateway.client", "gateway.errors", "gateway.proto", "gateway.models", "gateway.config")
    offending = [f"{p.relative_to(REPO)} imports {name}" for p in files for name in sorted(_imports(p))
                 if name.startswith("gateway") and not any(name == a or name.startswith(a + ".") for a in allowed)]
    assert offending == []
