"""The decision fixture table (``decision_cases.json``) and the bundle it runs against.

Each case names the principal's roles (and optionally ``tenant``/``principal``), the
action and its command or file, network mode and hosts, requested resources, and the
expected ``allow`` and first ``rule_id`` (whose category picks the error code 3001-3004).
The bundle is the shipped ``policies/`` plus ``overlay/`` (tenant and principal
overrides), so the layered-data cases have something to override.

Shared by the embedded table test, the embedded-vs-OPA parity test and ``bench/policy.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["CASES", "POLICY_DIR", "make_bundle", "policy_input"]

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "policies"
OVERLAY_DIR = Path(__file__).with_name("overlay")
CASES: list[dict[str, Any]] = json.loads(Path(__file__).with_name("decision_cases.json").read_text(encoding="utf-8"))


def make_bundle(target: Path) -> Path:
    """Write the shipped bundle plus the test overlay to ``target``; returns ``target``."""
    shutil.copytree(POLICY_DIR, target, dirs_exist_ok=True)
    shutil.copytree(OVERLAY_DIR, target, dirs_exist_ok=True)
    return target


def policy_input(case: dict[str, Any]) -> dict[str, Any]:
    """The service's input shape (design section 6) for one table row."""
    resources = {"timeout_s": 0, "memory_bytes": 0, "pids": 0, "cpu": 0, **case.get("resources", {})}
    return {
        "principal": {
            "id": case.get("principal", "alice"),
            "tenant": case.get("tenant", "t1"),
            "roles": case["roles"],
            "scopes": [],
        },
        "action": case["action"],
        "command": case.get("command", {"name": "", "args": [], "cwd": "", "env_keys": []}),
        "file": case.get("file", {"path": "", "mode": ""}),
        "network": {"access": case.get("network", "none"), "hosts": case.get("hosts", [])},
        "resources": resources,
        "context": {"transport": "grpc", "client_addr": "127.0.0.1:1", "request_id": "r", "time_ns": 1},
        **({"tool": case["tool"]} if "tool" in case else {}),
    }
