"""Input -> decision table for the shipped policy (plus tenant overrides), on the embedded
engine; tests/policy/test_opa_engine.py and test_wasm_engine.py run the same table on OPA and
on the wasm engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import EmbeddedEngine, run_rego_tests
from tests.policy.cases import CASES, POLICY_DIR, make_bundle, policy_input


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(make_bundle(tmp_path_factory.mktemp("bundle")), timeout_s=5.0)
    yield engine
    engine.close()


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c["name"] for c in CASES}) == len(CASES)
    assert sum(c["allow"] for c in CASES) >= 20 and sum(not c["allow"] for c in CASES) >= 20
    assert sum("tenant" in c for c in CASES) >= 10


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


def test_overrides_reach_the_grant(engine: EmbeddedEngine) -> None:
    by_name = {c["name"]: c for c in CASES}
    tenant = engine.evaluate(policy_input(by_name["tenant longer timeout"])).sandbox
    principal = engine.evaluate(policy_input(by_name["principal memory grant"])).sandbox
    hosts = engine.evaluate(policy_input(by_name["restricted allowed host"])).sandbox
    globex = engine.evaluate(policy_input(by_name["tenant arg root"])).sandbox
    assert tenant is not None and principal is not None and hosts is not None and globex is not None
    assert (tenant.timeout_s, tenant.memory_bytes) == (900, 1 << 30)  # tenant layer, rest global
    assert (principal.timeout_s, principal.memory_bytes) == (900, 2 << 30)  # principal over tenant
    assert hosts.network == "restricted" and hosts.allowed_hosts == ("*.crates.io", "pypi.org")
    assert globex.ro_paths == ("/opt/data",)


def test_deny_reason_names_the_offending_item(engine: EmbeddedEngine) -> None:
    case = next(c for c in CASES if c["name"] == "--out=/etc/x")
    decision = engine.evaluate(policy_input(case))
    assert "/etc/x" in decision.reasons[0]


def test_every_rego_unit_test_passes() -> None:
    results = run_rego_tests(POLICY_DIR)
    assert len(results) >= 30
    failed = [(r.name, r.error) for r in results if not r.passed]
    assert failed == []


def test_rego_unit_tests_report_failures(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    (bundle / "mcp" / "broken_test.rego").write_text(
        'package mcp\n\nimport rego.v1\n\n'
        'test_driven_fails if {\n\tallow with input as {"action": "command.execute"}\n}\n\n'
        'test_compiled_fails if {\n\tbasename("/a/b") == "a"\n}\n'
    )
    results = {r.name: r for r in run_rego_tests(bundle)}
    assert results["data.mcp.test_driven_fails"].passed is False
    assert "got false" in (results["data.mcp.test_driven_fails"].error or "")
    assert results["data.mcp.test_compiled_fails"].passed is False
