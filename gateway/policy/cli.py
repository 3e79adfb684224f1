"""``mcp-gateway policy`` sub-commands: the policy bundle from the command line.

* ``eval --input FILE [--policy-dir DIR | --opa-url URL]``: prints the decision as JSON
  (``allow``, ``reasons``, ``rule_ids``, ``sandbox``, plus ``engine``, ``revision``,
  ``decision_id``, ``eval_ms``). Exit 0 allow, 1 deny, 3 engine error (what the gateway
  would answer with 5003), 2 bad input file.
* ``test [--policy-dir DIR] [--opa BIN]``: runs the ``*_test.rego`` tests with the
  embedded engine and, when an ``opa`` binary is found (``--opa`` or on PATH), with
  ``opa test -b DIR`` too. Exit 0 when every run passed, 1 otherwise.
* ``check [--policy-dir DIR]``: loads, validates (``mcp/config.schema.json``) and
  compiles the bundle and makes one decision it must deny, as a reload would. Exit 0
  and the revision, or 1 and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.config import default_policy_dir
from gateway.errors import PolicyEngineError

__all__ = ["run_policy_command"]


def run_policy_command(args: argparse.Namespace) -> int:
    """Run ``mcp-gateway policy <eval|test|check>``; returns the exit status."""
    policy_dir: Path = args.policy_dir or default_policy_dir()
    if args.policy_command == "eval":
        return _eval(args.input, policy_dir, args.opa_url)
    if args.policy_command == "test":
        return _test(policy_dir, args.opa)
    return _check(policy_dir)


def _eval(input_path: Path, policy_dir: Path, opa_url: str | None) -> int:
    try:
        text = sys.stdin.read() if str(input_path) == "-" else input_path.read_text(encoding="utf-8")
        policy_input = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"mcp-gateway policy eval: cannot read input {input_path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(policy_input, dict):
        print("mcp-gateway policy eval: the input must be a JSON object", file=sys.stderr)
        return 2
    engine: Any = None
    try:
        if opa_url:
            from gateway.policy.opa import OpaEngine

            engine = OpaEngine(opa_url, timeout_s=5.0)
        else:
            from gateway.policy.embedded import EmbeddedEngine

            engine = EmbeddedEngine(policy_dir, workers=1, timeout_s=5.0, max_input_bytes=16 << 20)
        decision = engine.evaluate(policy_input)
    except PolicyEngineError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}, indent=2))
        return 3
    finally:
        if engine is not None:
            engine.close()
    body = dataclasses.asdict(decision)
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0 if decision.allow else 1


def _test(policy_dir: Path, opa: str | None) -> int:
    from gateway.policy.rego_tests import run_rego_tests

    failed = 0
    try:
        results = run_rego_tests(policy_dir)
    except PolicyEngineError as exc:
        print(f"embedded: cannot run the tests: {exc.message}")
        return 1
    for result in results:
        if not result.passed:
            failed += 1
            print(f"FAIL {result.name}: {result.error}")
    print(f"embedded (regopy): {len(results) - failed}/{len(results)} passed")
    binary = opa or shutil.which("opa")
    if binary is None:
        print("opa test: skipped (no opa binary on PATH; give one with --opa)")
        return 1 if failed or not results else 0
    run = subprocess.run([binary, "test", "-b", str(policy_dir)], capture_output=True, text=True, timeout=600)
    print(f"opa test ({binary}):")
    print((run.stdout + run.stderr).rstrip())
    return 1 if failed or not results or run.returncode != 0 else 0


def _check(policy_dir: Path) -> int:
    from gateway.policy.active import check_source
    from gateway.policy.bundle import load_policy_dir

    try:
        source = load_policy_dir(policy_dir)
        check_source(source)
    except PolicyEngineError as exc:
        print(f"mcp-gateway policy check: {policy_dir}: {exc.message}", file=sys.stderr)
        return 1
    print(f"ok: {policy_dir} revision {source.revision} ({len(source.modules)} modules)")
    return 0
