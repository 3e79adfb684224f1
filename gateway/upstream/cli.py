"""``mcp-gateway mcp tools <server>`` and ``mcp-gateway mcp approve <server>``: review and
approve an upstream MCP server's tools on a running gateway (``GET`` /
``POST /v1/mcp/servers/{server}/...``, scope ``policy:admin``).

``tools`` prints each tool the server lists now with its state (``approved``; ``changed``
or ``added``: withheld) and, with ``--output json``, the whole review. ``approve`` prints the
same, then approves exactly the set shown (its ``tools_list_sha256``: a server that changes
its tools in between is refused, and the operator reviews again); on a terminal it asks
first, unless ``--yes``.

Exit status: 0 done (``tools``: every listed tool approved), 1 ``tools`` found withheld
tools or the operator declined, 2 bad arguments, 3 the gateway refused or cannot be reached
(its error on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from typing import Any

import httpx

__all__ = ["add_parser", "run_mcp_command"]


def add_parser(sub: Any) -> None:
    """Add ``mcp tools|approve`` to the ``mcp-gateway`` sub-command parser ``sub``."""
    mcp = sub.add_parser("mcp", help="review and approve upstream MCP servers' tools on a running gateway")
    msub = mcp.add_subparsers(dest="mcp_command", required=True)
    for name, text in (("tools", "show a server's tools and which are withheld"),
                       ("approve", "approve a server's tools as it lists them now")):
        cmd = msub.add_parser(name, help=text)
        cmd.add_argument("server", help="the server's name (mcp.servers)")
        cmd.add_argument("--url", default=os.environ.get("MCP_GATEWAY_URL", "http://127.0.0.1:8080"),
                         help="the gateway's URL (default $MCP_GATEWAY_URL, else http://127.0.0.1:8080)")
        cmd.add_argument("--token", default=os.environ.get("MCP_GATEWAY_TOKEN"),
                         help="API key or JWT with scope policy:admin (default $MCP_GATEWAY_TOKEN)")
        cmd.add_argument("--ca-file", help="PEM CA bundle that verifies the gateway's certificate")
        cmd.add_argument("--output", choices=("text", "json"), default="text")
        if name == "approve":
            cmd.add_argument("--yes", action="store_true", help="approve without asking")


def run_mcp_command(args: argparse.Namespace) -> int:
    """Run ``mcp tools|approve``; returns the exit status (see the module docstring)."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else True
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    base = f"{args.url.rstrip('/')}/v1/mcp/servers/{args.server}"
    try:
        with httpx.Client(headers=headers, verify=verify, timeout=120.0) as client:
            review = _answer(client.get(f"{base}/tools"))
            if args.output == "json" and args.mcp_command == "tools":
                print(json.dumps(review, indent=1))
            else:
                _print_review(review)
            withheld = [t for t in review["tools"] if t["state"] != "approved"]
            if args.mcp_command == "tools":
                return 1 if withheld or review["removed"] else 0
            if not args.yes:
                if not sys.stdin.isatty():
                    print("mcp-gateway: not a terminal: pass --yes to approve", file=sys.stderr)
                    return 2
                if input(f"approve these {len(review['tools'])} tools of {args.server}? [y/N] ").strip().lower() \
                        not in ("y", "yes"):
                    return 1
            approved = _answer(client.post(f"{base}/approve",
                                           params={"tools_list_sha256": review["tools_list_sha256"]}))
    except httpx.HTTPError as exc:
        print(f"mcp-gateway: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 3
    except _Refused as exc:
        print(f"mcp-gateway: the gateway refused: {exc}", file=sys.stderr)
        return 3
    if args.output == "json":
        print(json.dumps(approved, indent=1))
    else:
        print(f"approved {len(approved['tools'])} tools of {args.server}: tools_list_sha256 "
              f"{approved['tools_list_sha256']}")
    return 0


class _Refused(Exception):
    pass


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx answer; _Refused with the project's error otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise _Refused(f"HTTP {response.status_code}: error {error.get('code')}: {error.get('message')}")
    raise _Refused(f"HTTP {response.status_code}")


def _print_review(review: dict[str, Any]) -> None:
    for tool in review["tools"]:
        definition = tool["definition"]
        print(f"{tool['state']:<9} {tool['served_as']}  sha256:{tool['sha256'][:16]}")
        if tool["state"] != "approved":
            print(f"          description: {definition.get('description', '')!r}")
            print(f"          input schema: {json.dumps(definition.get('inputSchema', {}), sort_keys=True)}")
    for name in review["removed"]:
        print(f"removed   {review['server']}__{name}")
    print(f"tools_list_sha256 {review['tools_list_sha256']} (approved: {review['approved_tools_list_sha256']})")
