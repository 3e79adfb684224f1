"""Generated sections of hand-written pages: a table derived from one declaration in the
code (audit fields, metrics, MCP tools) sits between two HTML comment markers, and a test
fails when the page in the tree differs from what its generator renders."""

from __future__ import annotations

from pathlib import Path

__all__ = ["render_page", "replace_section"]


def replace_section(text: str, markers: tuple[str, str], body: str, page: str) -> str:
    """``text`` (the content of ``page``) with the part between ``markers`` (start, end)
    replaced by ``body``.

    Raises:
        ValueError: when the page lacks the markers.
    """
    start, end = markers
    head, sep, rest = text.partition(start)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"{page} lacks the markers {start!r} ... {end!r}")
    return f"{head}{start}\n{body}\n{end}{tail}"


def render_page(repo: Path, page: str, markers: tuple[str, str], body: str) -> dict[Path, str]:
    """``{path: text}`` for ``page`` (relative to ``repo``) with its section between
    ``markers`` replaced by ``body``: what a generator writes and its test compares.

    Raises:
        ValueError: when the page lacks the markers.
    """
    path = repo / page
    return {path: replace_section(path.read_text(), markers, body, page)}
