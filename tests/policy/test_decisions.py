"""Input -> decision table for the shipped policy (policies/), run on the embedded engine.

The cases are data in ``decision_cases.json``: each names the principal's roles, the
action and its command or file, and the expected ``allow`` and first ``rule_id`` (whose
category picks the error code 3001-3004).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import EmbeddedEngine, run_rego_tests

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("decision_cases.json")).read_text(encoding="utf-8")
)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine(POLICY_DIR)


def policy_input(case: dict[str, Any]) -> dict[str, Any]:
    """The service's input shape (design section 6) for one table row."""
    resources = {"timeout_s": 0, "memory_bytes": 0, "pids": 0, "cpu": 0, **case.get("resources", {})}
    return {
        "principal": {"id": "alice", "tenant": "t1", "roles": case["roles"], "scopes": []},
        "action": case["action"],
        "command": case.get("command", {"name": "", "args": [], "cwd": "", "env_keys": []}),
        "file": case.get("file", {"path": "", "mode": ""}),
        "network": {"access": case.get("network", "none"), "hosts": []},
        "resources": resources,
        "context": {"transport": "grpc", "client_addr": "127.0.0.1:1", "request_id": "r", "time_ns": 1},
    }


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decision(engine: EmbeddedEngine, case: dict[str, Any]) -> None:
    decision = engine.evaluate(policy_input(case))
    assert decision.allow is case["allow"], decision.reasons
    assert decision.rule_ids[0] == case["rule"], (decision.rule_ids, decision.reasons)
    if decision.allow:
        assert decision.reasons == ()
        assert decision.sandbox is not None
        assert decision.sandbox.network == case.get("network", "none")
    else:
        assert decision.sandbox is None
        assert list(decision.rule_ids) == sorted(set(decision.rule_ids))
        assert len(decision.reasons) >= len(decision.rule_ids)
        assert all(r and not r.startswith("%") for r in decision.reasons)


def test_user_grant_is_the_role_grant(engine: EmbeddedEngine) -> None:
    decision = engine.evaluate(policy_input(CASES[0]))
    assert decision.sandbox is not None
    assert (decision.sandbox.timeout_s, decision.sandbox.memory_bytes) == (300, 1 << 30)
    assert (decision.sandbox.pids, decision.sandbox.cpu_seconds) == (128, 300)


def test_deny_reason_names_the_offending_item(engine: EmbeddedEngine) -> None:
    case = next(c for c in CASES if c["name"] == "--out=/etc/x")
    decision = engine.evaluate(policy_input(case))
    assert "/etc/x" in decision.reasons[0]


def test_every_rego_unit_test_passes() -> None:
    results = run_rego_tests(POLICY_DIR)
    assert len(results) >= 20
    failed = [(r.name, r.error) for r in results if not r.passed]
    assert failed == []
