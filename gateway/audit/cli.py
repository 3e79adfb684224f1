"""``mcp-gateway audit`` sub-commands: the audit trail's key and its verification.

* ``keygen --key PATH [--public-key PATH]``: a new Ed25519 checkpoint signing key as
  PKCS#8 PEM in PATH (mode 0600, never overwriting a file), and its public key
  (SubjectPublicKeyInfo PEM) in ``--public-key`` or on stdout. Give the gateway the
  private key (``audit.signing_key``); keep the public key where whoever verifies the
  trail can read it and the gateway's host cannot change it.
* ``pubkey --key PATH``: prints the public key of a signing key (for the one the gateway
  created at first start in ``<state_dir>/audit-signing.key``).
* ``verify [--public-key K] [--json | --output json] FILE...``: checks the trail in FILE... (oldest first,
  e.g. ``var/audit*.jsonl``; see :mod:`gateway.audit.verify`). Prints a one-line summary,
  or the whole report as JSON with ``--json``.

Exit status: 0 done / intact, 1 broken trail, 2 usage (bad arguments, a file that cannot
be read, an unsuitable key), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["add_audit_commands", "run_audit_command"]


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit keygen|pubkey|verify`` on the top-level sub-parsers."""
    audit = sub.add_parser("audit", help="audit trail: checkpoint signing key, verification")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    keygen = asub.add_parser("keygen", help="create an Ed25519 checkpoint signing key (mode 0600)")
    keygen.add_argument("--key", type=Path, required=True, metavar="PATH", help="private key file to create")
    keygen.add_argument("--public-key", type=Path, metavar="PATH",
                        help="public key file to create (default: print it)")
    pubkey = asub.add_parser("pubkey", help="print the public key of a signing key")
    pubkey.add_argument("--key", type=Path, required=True, metavar="PATH", help="private key PEM")
    verify = asub.add_parser("verify", help="check an audit trail: chain, order, signed checkpoints")
    verify.add_argument("--public-key", type=Path, metavar="K",
                        help="the gateway's public key (PEM or 64 hex digits); without it signatures are not checked")
    verify.add_argument("--json", action="store_true", help="print the whole report as JSON")
    verify.add_argument("--output", choices=("text", "json"), default="text",
                        help="json: the whole report (the same as --json, as every command spells it)")
    verify.add_argument("files", type=Path, nargs="+", metavar="FILE", help="audit files, oldest first")


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``mcp-gateway audit <keygen|pubkey|verify>``; returns the exit status."""
    try:
        if args.audit_command == "keygen":
            return _keygen(args.key, args.public_key)
        if args.audit_command == "pubkey":
            return _pubkey(args.key)
        return _verify(args.files, args.public_key, as_json=args.json or args.output == "json")
    except _UsageError as exc:
        print(f"mcp-gateway audit {args.audit_command}: {exc}", file=sys.stderr)
        return 2


class _UsageError(Exception):
    """A bad argument: the message goes to stderr and the exit status is 2."""


def _keygen(key_path: Path, public_path: Path | None) -> int:
    from gateway.audit.signing import create_signing_key, key_id, public_key_pem

    for path in (key_path, public_path):  # check both before writing either
        if path is not None and os.path.lexists(path):
            raise _UsageError(f"{path} exists; refusing to overwrite it")
    if public_path is not None and os.path.abspath(public_path) == os.path.abspath(key_path):
        raise _UsageError("--key and --public-key name the same file")
    try:
        key = create_signing_key(key_path)
    except OSError as exc:
        raise _UsageError(f"cannot create {key_path}: {exc.strerror or exc}") from None
    pem = public_key_pem(key.public_key())
    if public_path is None:
        sys.stdout.write(pem.decode())
    else:
        try:
            fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        except OSError as exc:
            key_path.unlink(missing_ok=True)
            raise _UsageError(f"cannot create {public_path}: {exc.strerror or exc}") from None
    print(f"mcp-gateway: Ed25519 audit signing key in {key_path} (mode 0600, key id {key_id(key.public_key())}); "
          "give the gateway the key (audit.signing_key) and the verifier the public key", file=sys.stderr)
    return 0


def _pubkey(key_path: Path) -> int:
    from gateway.audit.signing import load_signing_key, public_key_pem

    try:
        key = load_signing_key(key_path)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"{key_path}: {getattr(exc, 'strerror', None) or exc}") from None
    sys.stdout.write(public_key_pem(key.public_key()).decode())
    return 0


def _verify(files: list[Path], public_path: Path | None, *, as_json: bool) -> int:
    from gateway.audit.signing import CheckpointVerifier, load_public_key
    from gateway.audit.verify import verify_files

    verifier = None
    if public_path is not None:
        try:
            verifier = CheckpointVerifier.of(load_public_key(public_path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise _UsageError(f"--public-key {public_path}: {getattr(exc, 'strerror', None) or exc}") from None
    for path in files:
        if not path.is_file():
            raise _UsageError(f"{path} is not a file")
    try:
        report = verify_files(files, verifier)
    except OSError as exc:
        raise _UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    print(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    return 0 if report.intact else 1
