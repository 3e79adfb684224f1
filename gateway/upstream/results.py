"""What an upstream MCP server's tool result may carry back to the caller: redacted when
the server's ``redact_results`` is on, and no larger than ``mcp.max_result_bytes``.

Results are the wire JSON of MCP ``CallToolResult`` (schema 2025-11-25: ``content`` blocks,
``structuredContent``, ``isError``), weighed as sent (compact JSON, UTF-8).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.audit.log import redact_text

__all__ = ["cap_result", "redact_result", "result_bytes", "served_result"]

#: The keys of a result the gateway passes on (``_meta`` and anything else stay behind).
SERVED_KEYS = ("content", "structuredContent", "isError")

_NOTE_BYTES = 200  # room for the note that says a result was cut


def result_bytes(body: Any) -> int:
    """Size of ``body`` as compact JSON text, bytes."""
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


def served_result(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with only :data:`SERVED_KEYS`: an upstream server's ``_meta`` (free-form,
    unbounded by anything a client checks) never reaches the caller."""
    return {k: body[k] for k in SERVED_KEYS if k in body}


def redact_result(body: Any) -> Any:
    """``body`` with every string (keys kept) passed through ``redact_text``."""
    if isinstance(body, str):
        return redact_text(body)
    if isinstance(body, list):
        return [redact_result(v) for v in body]
    if isinstance(body, dict):
        return {k: redact_result(v) for k, v in body.items()}
    return body


def cap_result(body: dict[str, Any], max_bytes: int, *, structured_required: bool) -> dict[str, Any]:
    """``body`` (a :func:`served_result`) cut to at most ``max_bytes``: unchanged when it fits. Else its
    ``structuredContent`` goes (it cannot be cut and stay valid), and then whole content
    blocks from the end, the last text block kept in part, followed by a text block saying
    what was cut. When ``structured_required`` (the tool declares an ``outputSchema``, and a
    client checks its result against it) the cut result is marked ``isError``."""
    size = result_bytes(body)
    if size <= max_bytes:
        return body
    budget = max_bytes - _NOTE_BYTES - len('{"content":[],"isError":true}')
    kept: list[Any] = []
    for block in body.get("content") or []:
        weight = result_bytes(block) + 1
        if weight <= budget:
            kept.append(block)
            budget -= weight
            continue
        if isinstance(block, dict) and block.get("type") == "text" and budget > 64:
            text = str(block.get("text", ""))
            # Cut by characters, then weigh: escaping may make one character cost up to 12 bytes.
            share = max(0, budget - 64)
            cut = text[:share]
            while cut and result_bytes({**block, "text": cut}) > budget:
                cut = cut[: len(cut) * 3 // 4]
            if cut:
                kept.append({**block, "text": cut})
        break
    cut_body: dict[str, Any] = {"isError": body["isError"]} if "isError" in body else {}
    kept.append({"type": "text", "text": f"[mcp-gateway: the result ({size} bytes) was cut to fit "
                                         f"mcp.max_result_bytes ({max_bytes})]"})
    cut_body["content"] = kept
    if structured_required:
        cut_body["isError"] = True
    return cut_body
