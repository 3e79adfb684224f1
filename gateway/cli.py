"""``mcp-gateway`` command line.

``mcp-gateway serve [--host H] [--http-port N] [--grpc-port N] [--state-dir DIR]
[--policy-dir DIR] [--config FILE] [--log-level L] [--dev]`` runs the gateway (design
section 10); port 0 picks a free port; ``--dev`` lets calls without credentials in as the
development principal (loopback binds only). A change to the config file, or SIGHUP,
applies its ``auth`` and ``rate_limits`` sections without a restart. Exit status: 0 after a
clean shutdown, 2 for bad flags or settings, 3 when the gateway cannot start (the message
says what to fix), 4 when a shared task store's owner lock was lost.

``mcp-gateway mcp-stdio [--url URL] [--token T] [--ca-file F] [--client-cert F --client-key F]``
serves MCP on stdin/stdout for agents that launch their servers as subprocesses, forwarding
every request to a running gateway's ``/mcp`` (URL default ``$MCP_GATEWAY_URL``, else
http://127.0.0.1:8080; token default ``$MCP_GATEWAY_TOKEN``): see
:mod:`gateway.edges.mcp_stdio`. Exit status 0 once stdin closes, 2 for bad flags.

``mcp-gateway exec [options] -- CMD ARGS...``, ``mcp-gateway tasks list|get|logs|cancel`` and
``mcp-gateway files get|put|rm``: the gateway from a terminal, on the client library: see
:mod:`gateway.client.cli` (exit statuses of ``exec``: the command's, 124 timed out, 125
gateway error, 126 policy denied, 130 cancelled).

``mcp-gateway mcp tools|approve <server> [--url URL] [--token T] [--yes]``: review and
approve an upstream MCP server's tools on a running gateway: see :mod:`gateway.upstream.cli`.

``mcp-gateway policy eval --input FILE``, ``policy test`` and ``policy check``: see
:mod:`gateway.policy.cli`.

``mcp-gateway audit keygen``, ``audit pubkey`` and ``audit verify [--public-key K] [--json]
FILE...``: see :mod:`gateway.audit.cli`.

Credentials for development and operators (:mod:`gateway.auth.tokens`, :mod:`gateway.auth.apikeys`):

* ``mcp-gateway token keygen [--alg RS256|ES256|EdDSA] --key PATH [--jwks PATH]``: a new
  signing key (default ES256) as PKCS#8 PEM in PATH, mode 0600, and its public JWKS
  ``{"keys": [jwk]}`` (``kid`` = RFC 7638 thumbprint) in the ``--jwks`` file, or on stdout
  without it. Neither file is ever overwritten.
* ``mcp-gateway token jwks --key PATH``: prints the JWKS of an existing private key.
* ``mcp-gateway token issue (--key PATH | --hs256-secret-file PATH) --sub ID --tenant T
  [--role R ...] [--scope S ...] [--issuer ISS] [--audience AUD] [--ttl SECONDS]
  [--not-before SECONDS] [--kid KID]``: prints one signed JWT on one line, for
  ``TOKEN=$(mcp-gateway token issue ...)``. Roles default to ``user``, scopes to every task
  and file scope; ``--issuer`` / ``--audience`` default to ``MCP_GATEWAY_AUTH__JWT__ISSUER`` /
  ``MCP_GATEWAY_AUTH__JWT__AUDIENCE``; ``--ttl`` 3600; ``--not-before`` 0 (seconds from now).
  The HS256 secret file is read as bytes, trailing line breaks dropped.
* ``mcp-gateway apikey create --principal ID --tenant T [--role R ...] [--scope S ...]
  [--name TEXT] [--expires-in SECONDS]``: stdout line 1 is the new key (``mgw_...``; for
  scripts: ``| head -n1``), then a blank line, then the YAML list item to add under
  ``auth.api_keys`` (hash, principal, tenant, roles, scopes, and name / expires_at when
  given). The key is shown only this once (a note on stderr says so).

Exit status of these: 0 done, 2 bad arguments (unknown scope, missing issuer, existing
file, unreadable or unsuitable key, ...), with the reason on stderr.
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
    serve.add_argument("--log-format", choices=("json", "text"),
                       help="json: one JSON object per line (production); text: for a terminal (default)")
    serve.add_argument(
        "--dev", action="store_true", default=None,
        help="development mode: calls without credentials are the 'anonymous' principal (loopback only)",
    )
    stdio = sub.add_parser("mcp-stdio", help="MCP over stdin/stdout, forwarded to a running gateway's /mcp")
    stdio.add_argument("--url", default=os.environ.get("MCP_GATEWAY_URL", "http://127.0.0.1:8080"),
                       help="the gateway's URL, or its MCP endpoint (.../mcp); default $MCP_GATEWAY_URL, else "
                       "http://127.0.0.1:8080")
    stdio.add_argument("--token", default=os.environ.get("MCP_GATEWAY_TOKEN"),
                       help="API key or JWT, sent as a bearer token (default $MCP_GATEWAY_TOKEN)")
    stdio.add_argument("--ca-file", help="PEM CA bundle that verifies the gateway's certificate")
    stdio.add_argument("--client-cert", help="PEM client certificate for mTLS")
    stdio.add_argument("--client-key", help="PEM key of --client-cert")
    stdio.add_argument("--insecure-http", action="store_true",
                       help="send the token over plain http to a host other than this one (never do this)")
    from gateway.client.cli import add_parsers as add_client_parsers
    from gateway.upstream.cli import add_parser as add_mcp_parser

    add_mcp_parser(sub)
    add_client_parsers(sub)
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
    _add_credential_commands(sub)
    from gateway.audit.cli import add_audit_commands

    add_audit_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mcp-gateway`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "mcp-stdio":
        return _mcp_stdio(args)
    if args.command in ("exec", "tasks", "files"):
        from gateway.client.cli import run_client_command

        return run_client_command(args)
    if args.command == "mcp":
        from gateway.upstream.cli import run_mcp_command

        return run_mcp_command(args)
    if args.command == "policy":
        from gateway.policy.cli import run_policy_command

        return run_policy_command(args)
    if args.command in ("token", "apikey"):
        return _credential_command(args)
    if args.command == "audit":
        from gateway.audit.cli import run_audit_command

        return run_audit_command(args)
    return 2  # pragma: no cover - argparse enforces a known sub-command


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import StartupError, serve
    from gateway.config import Settings, load_settings
    from gateway.observability.logs import configure_logging
    from gateway.observability.tracing import configure_tracing

    config = args.config or (Path(os.environ["MCP_GATEWAY_CONFIG"]) if os.environ.get("MCP_GATEWAY_CONFIG") else None)

    def load() -> Settings:
        return load_settings(
            config,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            state_dir=args.state_dir,
            policy_dir=args.policy_dir,
            log_level=args.log_level,
            log_format=args.log_format,
            auth={"dev_mode": True} if args.dev else None,
        )

    try:
        settings = load()
    except (ValidationError, FileNotFoundError) as exc:
        print(f"mcp-gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        configure_tracing()
    except ValueError as exc:
        print(f"mcp-gateway: invalid tracing settings: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, config_file=config, reload_settings=load))
    except StartupError as exc:
        print(f"mcp-gateway: cannot start: {exc}", file=sys.stderr)
        return 3


def _mcp_stdio(args: argparse.Namespace) -> int:
    import logging

    import urllib.parse

    from gateway.config import is_loopback_host
    from gateway.edges.mcp_stdio import BridgeSettings, run_bridge

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="mcp-gateway mcp-stdio: %(message)s")
    if args.client_key and not args.client_cert:
        print("mcp-gateway: --client-key needs --client-cert", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    url = url if url.endswith("/mcp") else url + "/mcp"
    host = urllib.parse.urlsplit(url).hostname or ""
    if url.startswith("http://") and args.token and not is_loopback_host(host) and not args.insecure_http:
        print(f"mcp-gateway: refusing to send the token in clear to {host}: use https (or --insecure-http)",
              file=sys.stderr)
        return 2
    return run_bridge(BridgeSettings(url, args.token, args.ca_file, args.client_cert, args.client_key))


# --- token / apikey: credentials for development and operators -------------------------

_ISSUER_ENV = "MCP_GATEWAY_AUTH__JWT__ISSUER"
_AUDIENCE_ENV = "MCP_GATEWAY_AUTH__JWT__AUDIENCE"
# ApiKeyEntry field -> the flag that sets it, for error messages.
_APIKEY_FLAGS = {
    "principal": "--principal", "tenant": "--tenant", "roles": "--role", "scopes": "--scope",
    "name": "--name", "expires_at": "--expires-in",
}


class _UsageError(Exception):
    """A bad argument: the message goes to stderr and the exit status is 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_credential_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scope_help = "granted scope, repeatable (or several, space-separated); default: every tasks:* and files:* scope"
    token = sub.add_parser("token", help="development JWTs: signing key, JWKS, signed tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    keygen = tsub.add_parser("keygen", help="create a signing key (mode 0600) and its public JWKS")
    keygen.add_argument("--alg", choices=("RS256", "ES256", "EdDSA"), default="ES256",
                        help="RS256 (RSA 2048), ES256 (P-256) or EdDSA (Ed25519); default ES256")
    keygen.add_argument("--key", type=Path, required=True, metavar="PATH",
                        help="private key file to create (PKCS#8 PEM)")
    keygen.add_argument("--jwks", type=Path, metavar="PATH", help="JWKS file to create (default: print the JWKS)")
    jwks = tsub.add_parser("jwks", help="print the public JWKS of a private key")
    jwks.add_argument("--key", type=Path, required=True, metavar="PATH", help="private key PEM")
    issue = tsub.add_parser("issue", help="print a signed JWT on one line")
    source = issue.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", type=Path, metavar="PATH", help="private key PEM; RS256, ES256 or EdDSA by key type")
    source.add_argument("--hs256-secret-file", type=Path, metavar="PATH", help="file with the HS256 shared secret (>= 32 bytes)")
    issue.add_argument("--sub", required=True, help="principal id ('sub')")
    issue.add_argument("--tenant", required=True, help="tenant ('tenant')")
    issue.add_argument("--role", dest="roles", action="append", metavar="ROLE",
                       help="role ('roles'), repeatable; default: user")
    issue.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE", help=scope_help)
    issue.add_argument("--issuer", help=f"'iss' (default: ${_ISSUER_ENV})")
    issue.add_argument("--audience", help=f"'aud' (default: ${_AUDIENCE_ENV})")
    issue.add_argument("--ttl", type=_positive_int, default=3600, metavar="SECONDS",
                       help="lifetime: exp = now + SECONDS (default 3600)")
    issue.add_argument("--not-before", type=int, default=0, metavar="SECONDS",
                       help="nbf = now + SECONDS (default 0)")
    issue.add_argument("--kid", help="header 'kid' (default: the key's RFC 7638 thumbprint; none for HS256)")
    apikey = sub.add_parser("apikey", help="API keys for auth.api_keys")
    asub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = asub.add_parser("create", help="print a new key and its auth.api_keys entry (YAML)")
    create.add_argument("--principal", required=True, help="principal id the key stands for")
    create.add_argument("--tenant", required=True, help="tenant of the principal")
    create.add_argument("--role", dest="roles", action="append", metavar="ROLE", help="role, repeatable; default: user")
    create.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE", help=scope_help)
    create.add_argument("--name", default="", help="free text for operators (who holds the key)")
    create.add_argument("--expires-in", type=_positive_int, metavar="SECONDS",
                        help="refuse the key SECONDS from now (expires_at); default: never")


def _credential_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "apikey":
            return _apikey_create(args)
        if args.token_command == "keygen":
            return _token_keygen(args)
        if args.token_command == "jwks":
            return _token_jwks(args)
        return _token_issue(args)
    except _UsageError as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        return 2


def _scopes(given: list[str] | None) -> list[str]:
    """The scopes of ``--scope`` (each may hold several, space-separated), deduplicated in
    order; the default set when none is given."""
    from gateway.auth.tokens import DEFAULT_SCOPES
    from gateway.models import SCOPES

    scopes = list(dict.fromkeys(s for value in given for s in value.split())) if given else list(DEFAULT_SCOPES)
    if not scopes:
        raise _UsageError("--scope given but empty")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise _UsageError(f"unknown scope(s) {', '.join(unknown)}; known scopes: {' '.join(SCOPES)}")
    return scopes


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file (never replacing one, never through a symlink); ``mode`` 0o600 is
    set exactly, others are subject to the umask."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise _UsageError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise _UsageError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if mode == 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _jwks_text(jwk: dict[str, object]) -> str:
    import json

    return json.dumps({"keys": [jwk]}, indent=2) + "\n"


def _token_keygen(args: argparse.Namespace) -> int:
    from gateway.auth.tokens import generate_signing_key

    key_path: Path = args.key
    jwks_path: Path | None = args.jwks
    if jwks_path is not None and os.path.abspath(jwks_path) == os.path.abspath(key_path):
        raise _UsageError("--key and --jwks name the same file")
    for path in (key_path, jwks_path):  # check both before writing either
        if path is not None and os.path.lexists(path):
            raise _UsageError(f"{path} exists; refusing to overwrite it")
    pem, jwk = generate_signing_key(args.alg)
    _create(key_path, pem, 0o600)
    if jwks_path is None:
        sys.stdout.write(_jwks_text(jwk))
    else:
        try:
            _create(jwks_path, _jwks_text(jwk).encode(), 0o644)
        except BaseException:
            key_path.unlink(missing_ok=True)
            raise
    where = f"JWKS in {jwks_path}" if jwks_path is not None else "JWKS on stdout"
    print(
        f"mcp-gateway: {args.alg} private key in {key_path} (mode 0600, kid {jwk['kid']}), {where}; "
        "give the gateway the JWKS (auth.jwt.jwks_file), never the private key",
        file=sys.stderr,
    )
    return 0


def _token_jwks(args: argparse.Namespace) -> int:
    from gateway.auth.tokens import public_jwk

    try:
        jwk = public_jwk(_read(args.key))
    except ValueError as exc:
        raise _UsageError(f"{args.key}: {exc}") from None
    sys.stdout.write(_jwks_text(jwk))
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    from gateway.auth.tokens import issue_token

    scopes = _scopes(args.scopes)
    issuer = args.issuer or os.environ.get(_ISSUER_ENV)
    audience = args.audience or os.environ.get(_AUDIENCE_ENV)
    missing = [f"--{flag} (or {env})" for flag, env, value in (
        ("issuer", _ISSUER_ENV, issuer), ("audience", _AUDIENCE_ENV, audience)) if not value]
    if missing:
        raise _UsageError(f"token issue needs {' and '.join(missing)}")
    claims = {
        "subject": args.sub, "tenant": args.tenant, "issuer": issuer, "audience": audience,
        "scopes": scopes, "roles": args.roles or ["user"], "ttl_s": args.ttl,
        "not_before_s": args.not_before, "kid": args.kid,
    }
    try:
        if args.key is not None:
            token = issue_token(_read(args.key), **claims)
        else:
            token = issue_token(_read(args.hs256_secret_file).rstrip(b"\r\n"), hs256=True, **claims)
    except ValueError as exc:
        raise _UsageError(f"token issue: {exc}") from None
    print(token)
    return 0


def _apikey_create(args: argparse.Namespace) -> int:
    import time

    import yaml

    from gateway.auth.apikeys import hash_api_key, new_api_key
    from gateway.config import ApiKeyEntry

    key = new_api_key()
    fields: dict[str, object] = {
        "hash": hash_api_key(key), "principal": args.principal, "tenant": args.tenant,
        "scopes": _scopes(args.scopes), "name": args.name,
    }
    if args.roles:
        fields["roles"] = args.roles
    if args.expires_in is not None:
        fields["expires_at"] = int(time.time()) + args.expires_in
    try:
        entry = ApiKeyEntry.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_APIKEY_FLAGS.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else 'entry'}: {err['msg']}"
            for err in exc.errors()
        )
        raise _UsageError(f"apikey create: {problems}") from None
    item: dict[str, object] = {
        "hash": entry.hash, "principal": entry.principal, "tenant": entry.tenant,
        "roles": entry.roles, "scopes": entry.scopes,
    }
    comment = "# add to auth.api_keys"
    if entry.name:
        item["name"] = entry.name
    if entry.expires_at is not None:
        item["expires_at"] = entry.expires_at
        comment += time.strftime("; expires %Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.expires_at))
    snippet = yaml.safe_dump([item], sort_keys=False, default_flow_style=False, allow_unicode=True)
    sys.stdout.write(f"{key}\n\n{comment}\n{snippet}")
    print("mcp-gateway: the key is shown only this once; the gateway keeps only its hash", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
