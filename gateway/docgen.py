"""Generated sections of hand-written pages: a table derived from one declaration in the
code (audit fields, metrics, MCP tools) sits between two HTML comment markers, and a test
fails when the page in the tree differs from what its generator renders."""

from __future__ import annotations

__all__ = ["replace_section"]


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
