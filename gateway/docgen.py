"""Generated sections of hand-written pages: a table derived from one declaration in the
code (audit fields, metrics, MCP tools) sits between two HTML comment markers, and a test
fails when the page in the tree differs from what its generator renders."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["SETTINGS_HEADER", "render_page", "replace_section", "settings_rows"]

REPO = Path(__file__).resolve().parent.parent
#: The head of a settings table whose rows :func:`settings_rows` makes.
SETTINGS_HEADER = ("| key | environment | type | default | meaning |", "|---|---|---|---|---|")


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


def settings_rows(model: type[BaseModel], prefix: str, env_prefix: str | None = "MCP_GATEWAY_") -> list[str]:
    """One row per setting of ``model`` under ``prefix``; ``env_prefix`` None for the fields
    of a list's or mapping's items, which the environment sets only as the whole list (JSON)."""
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_of(info.annotation)
        if nested is not None and not _is_container(info.annotation):
            rows += settings_rows(nested, key + ".", env_prefix)
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "-" if value is None or value in ([], {}, "") else f"`{_short(value)}`"
        env = f"`{env_prefix}{key.upper().replace('.', '__')}`" if env_prefix else "-"
        description = (info.description or "").replace("|", "/").replace("\n", " ")
        rows.append(f"| `{key}` | {env} | {_type_name(info.annotation)} | {default} | {description} |")
        if nested is not None:  # a list or mapping of a model: its fields, one level down
            rows += settings_rows(nested, f"{key}.<item>." if _origin(info.annotation) is list else f"{key}.<name>.",
                                   None)
    return rows


def _origin(annotation: Any) -> Any:
    return typing.get_origin(annotation)


def _is_container(annotation: Any) -> bool:
    return _origin(annotation) in (list, dict)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model ``annotation`` holds (itself, optional, or in a list or dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("gateway.config.", "")
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r"Annotated\[(\w+), [^\]]*\]", r"\1", text)
    if isinstance(annotation, types.UnionType) or _origin(annotation) is typing.Union:
        text = text.replace(" | NoneType", " | None")
    return text.replace("|", "or").replace("NoneType", "None")


def _short(value: Any) -> str:
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(REPO):
        value = value.relative_to(REPO)  # a default found from the checkout: the same everywhere
    text = str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
    return text if len(text) <= 60 else text[:57] + "..."
