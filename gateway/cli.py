"""``mcp-gateway`` command line.

``mcp-gateway serve [--host H] [--http-port N] [--grpc-port N] [--state-dir DIR]
[--policy-dir DIR] [--config FILE] [--log-level L]`` runs the gateway (design section 10);
port 0 picks a free port. Exit status: 0 after a clean shutdown, 2 for bad flags or
settings, 3 when the gateway cannot start (the message says what to fix).

``mcp-gateway policy eval --input FILE``, ``policy test`` and ``policy check``: see
:mod:`gateway.policy.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from gateway import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="MCP security gateway")
    parser.add_argument("--version", action="version", version=f"mcp-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (gRPC + HTTP)")
    serve.add_argument("--host", help="bind address (loopback only until authentication is configured)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8080; 0 = any free port)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8081; 0 = any free port)")
    serve.add_argument("--state-dir", type=Path, help="task store, workspaces and audit.jsonl (default ./var)")
    serve.add_argument("--policy-dir", type=Path, help="Rego policy bundle directory (default: shipped policies/)")
    serve.add_argument("--config", type=Path, help="YAML settings file (also MCP_GATEWAY_CONFIG)")
    serve.add_argument("--log-level", help="debug|info|warning|error")
    policy = sub.add_parser("policy", help="evaluate, test or check a policy bundle")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    ev = psub.add_parser("eval", help="print the decision for one input (design section 6 shape)")
    ev.add_argument("--input", type=Path, required=True, help="JSON input file ('-' for stdin)")
    ev.add_argument("--policy-dir", type=Path, default=None, help="bundle directory (default: shipped policies/)")
    ev.add_argument("--opa-url", help="ask this OPA server instead of the embedded engine")
    te = psub.add_parser("test", help="run the bundle's Rego unit tests (*_test.rego)")
    te.add_argument("--policy-dir", type=Path, default=None, help="bundle directory (default: shipped policies/)")
    te.add_argument("--opa", help="opa binary for 'opa test' too (default: opa on PATH, if any)")
    ch = psub.add_parser("check", help="load, validate and compile the bundle; print its revision")
    ch.add_argument("--policy-dir", type=Path, default=None, help="bundle directory (default: shipped policies/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mcp-gateway`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "policy":
        from gateway.policy.cli import run_policy_command

        return run_policy_command(args)
    return 2  # pragma: no cover - argparse enforces a known sub-command


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import StartupError, configure_logging, serve
    from gateway.config import load_settings

    config = args.config or (Path(os.environ["MCP_GATEWAY_CONFIG"]) if os.environ.get("MCP_GATEWAY_CONFIG") else None)
    try:
        settings = load_settings(
            config,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            state_dir=args.state_dir,
            policy_dir=args.policy_dir,
            log_level=args.log_level,
        )
    except (ValidationError, FileNotFoundError) as exc:
        print(f"mcp-gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"mcp-gateway: cannot start: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
