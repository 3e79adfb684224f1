"""Pinned tool definitions of upstream MCP servers: what an operator approved, and how a
server's tools now compare with it.

``mcp-gateway mcp approve <server>`` records, per tool, the SHA-256 of its definition: the
canonical JSON (RFC 8785 style: sorted keys, no whitespace, UTF-8) of the tool's ``name``,
``title``, ``description``, ``inputSchema``, ``outputSchema``, ``annotations``, ``icons`` and
``execution`` as the server lists them (MCP ``Tool``, schema 2025-11-25): every field the
gateway serves (it drops ``_meta``). A server that later changes any of them (a "rug pull":
the same name, a new description that asks the model to read ``~/.ssh``) no longer
matches, and the gateway withholds that tool until it is approved again.

The approvals file (``<state_dir>/mcp-approvals.json``, mode 0600, written atomically) is::

    {"version": 1,
     "servers": {"<server>": {"approved_at": "<RFC 3339>", "tools_list_sha256": "<hex>",
                              "tools": {"<tool name>": "<hex>", ...}}}}

``tools_list_sha256`` digests the whole list (each ``name`` and digest, sorted by name), so
one value in the audit trail names a server's tool set.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["Approvals", "ServerApproval", "ToolDrift", "compare", "tool_sha256", "tools_list_sha256"]

#: The parts of a tool definition a pin covers (MCP ``Tool`` keys, camelCase as on the wire):
#: all of them but ``_meta``, which the gateway does not serve.
PINNED_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations", "icons", "execution")
_VERSION = 1


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tool_sha256(definition: Mapping[str, Any]) -> str:
    """Hex SHA-256 of one tool's pinned parts (:data:`PINNED_KEYS`; a missing key counts
    as null), from its wire JSON (``Tool.model_dump(by_alias=True)``)."""
    return hashlib.sha256(_canonical({k: definition.get(k) for k in PINNED_KEYS})).hexdigest()


def tools_list_sha256(digests: Mapping[str, str]) -> str:
    """Hex SHA-256 of a tool set: ``digests`` (tool name -> :func:`tool_sha256`) sorted by name."""
    return hashlib.sha256(_canonical(sorted(digests.items()))).hexdigest()


@dataclass(frozen=True)
class ServerApproval:
    """One server's approved tool set: ``tools`` (name -> digest), their
    ``tools_list_sha256`` and when (``approved_at``, RFC 3339 UTC)."""

    tools: Mapping[str, str]
    tools_list_sha256: str
    approved_at: str


@dataclass(frozen=True)
class ToolDrift:
    """How a server's listed tools compare with its approval.

    Attributes:
        approved: names whose definition matches the approval (served).
        changed: names approved with another definition (withheld).
        added: names never approved (withheld).
        removed: approved names the server no longer lists.
        tools_list_sha256: digest of the tool set as listed now.
        approved_sha256: the approval's digest, or None when the server was never approved.
    """

    approved: frozenset[str]
    changed: frozenset[str]
    added: frozenset[str]
    removed: frozenset[str]
    tools_list_sha256: str
    approved_sha256: str | None

    @property
    def clean(self) -> bool:
        """True when the listed tools are exactly the approved ones."""
        return self.tools_list_sha256 == self.approved_sha256


def compare(digests: Mapping[str, str], approval: ServerApproval | None) -> ToolDrift:
    """Compare ``digests`` (name -> :func:`tool_sha256`, as listed now) with ``approval``."""
    pinned = approval.tools if approval is not None else {}
    return ToolDrift(
        approved=frozenset(n for n, d in digests.items() if pinned.get(n) == d),
        changed=frozenset(n for n, d in digests.items() if n in pinned and pinned[n] != d),
        added=frozenset(n for n in digests if n not in pinned),
        removed=frozenset(n for n in pinned if n not in digests),
        tools_list_sha256=tools_list_sha256(digests),
        approved_sha256=approval.tools_list_sha256 if approval is not None else None,
    )


class Approvals:
    """The approvals file, re-read when it changes on disk (``mcp approve`` writes it while
    the gateway runs). Thread-safe.

    Args:
        path: the file; missing means nothing is approved.

    Raises (from :meth:`get` and :meth:`approve`):
        ValueError: the file is not an approvals document (the message names the file);
            callers treat every tool as unapproved (fail closed).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._servers: dict[str, ServerApproval] = {}

    def get(self, server: str) -> ServerApproval | None:
        """``server``'s approval, or None when it has none."""
        with self._lock:
            self._refresh()
            return self._servers.get(server)

    def approve(self, server: str, digests: Mapping[str, str]) -> ServerApproval:
        """Record ``digests`` (tool name -> digest) as ``server``'s approved tools, replacing
        its previous approval; the file is rewritten atomically with mode 0600."""
        approval = ServerApproval(dict(digests), tools_list_sha256(digests),
                                  datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        with self._lock:
            self._refresh()
            servers = {**self._servers, server: approval}
            document = {"version": _VERSION, "servers": {
                name: {"approved_at": a.approved_at, "tools_list_sha256": a.tools_list_sha256, "tools": dict(a.tools)}
                for name, a in sorted(servers.items())}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mcp-approvals-", dir=self.path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(document, out, indent=1, sort_keys=True)
                    out.write("\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
            self._stamp = None  # re-read on next use
        return approval

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._servers = None, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            document = json.loads(self.path.read_bytes())
            if document.get("version") != _VERSION or not isinstance(document.get("servers"), dict):
                raise ValueError("not a version 1 approvals document")
            servers = {}
            for name, entry in document["servers"].items():
                tools = entry["tools"]
                if not isinstance(tools, dict) or not all(isinstance(v, str) for v in tools.values()):
                    raise ValueError(f"server {name!r}: 'tools' must map names to digests")
                servers[name] = ServerApproval(tools, str(entry["tools_list_sha256"]), str(entry["approved_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._stamp, self._servers = None, {}
            raise ValueError(f"{self.path}: {exc}") from exc
        self._stamp, self._servers = stamp, servers
