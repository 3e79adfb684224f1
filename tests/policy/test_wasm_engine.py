"""The wasm engine (``gateway.policy.wasm``): the bundle compiled by the real ``opa build -t
wasm`` and evaluated by wasmtime decides the whole fixture table exactly as a real OPA server
does, and fails closed on every way an evaluation can go wrong: the deadline, the memory
cap, a built-in the host does not provide, a bundle that does not compile, no opa CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import PolicyEngineError
from gateway.policy import PolicyEngine, load_policy_dir
from gateway.policy.active import ActivePolicy, check_bundle
from gateway.policy.opa import OpaEngine
from gateway.policy.wasm import TICK_S, WasmEngine
from tests.policy.cases import CASES, make_bundle, policy_input
from tests.policy.opa_server import OpaServer, opa_binary_or_skip
from tests.policy.test_opa_engine import same_decision

#: A policy whose decision is defined and well formed, with ``extra`` rules appended.
MINIMAL = '''package mcp

decision := {"allow": false, "reasons": [reason], "rule_ids": ["command.test"],
             "sandbox": {"network": "none", "timeout_s": 0, "memory_bytes": 0, "pids": 0, "cpu_seconds": 0,
                         "allowed_hosts": [], "ro_paths": [], "rw_paths": []}}
'''


@pytest.fixture(scope="module")
def opa() -> str:
    return opa_binary_or_skip()


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def engine(opa: str, table_bundle: Path) -> Iterator[WasmEngine]:
    made = WasmEngine(load_policy_dir(table_bundle), opa_binary=opa, max_input_bytes=1 << 20, timeout_s=2.0)
    yield made
    made.close()


def policy(tmp_path: Path, rules: str) -> Path:
    """A bundle directory with :data:`MINIMAL` whose reason is given by ``rules``."""
    (tmp_path / "mcp").mkdir(parents=True, exist_ok=True)
    (tmp_path / "mcp" / "decision.rego").write_text(MINIMAL + rules)
    return tmp_path


def test_decides_the_table_as_a_real_opa_server_does(opa: str, engine: WasmEngine, table_bundle: Path,
                                                       tmp_path: Path) -> None:
    assert isinstance(engine, PolicyEngine) and engine.name == "wasm"
    with OpaServer(opa, tmp_path, bundle=table_bundle) as server:
        reference = OpaEngine(server.url, timeout_s=5.0, max_input_bytes=1 << 20)
        try:
            for case in CASES:
                mine, theirs = engine.evaluate(policy_input(case)), reference.evaluate(policy_input(case))
                assert same_decision(mine, theirs), (case["name"], mine, theirs)
                assert mine.allow is case["allow"] and mine.rule_ids[0] == case["rule"], case["name"]
                assert mine.engine == "wasm" and mine.revision == engine.revision
        finally:
            reference.close()


def test_evaluations_run_at_once_from_many_threads(engine: WasmEngine) -> None:
    expected = {case["name"]: engine.evaluate(policy_input(case)) for case in CASES[:20]}
    wrong: list[str] = []

    def decide() -> None:
        for case in CASES[:20]:
            if not same_decision(engine.evaluate(policy_input(case)), expected[case["name"]]):
                wrong.append(case["name"])

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_an_evaluation_past_its_deadline_is_interrupted_and_the_engine_goes_on(opa: str, tmp_path: Path) -> None:
    # ~10^9 iterations: far past 100 ms, and no memory to speak of
    slow = policy(tmp_path, 'reason := "slow" if { not input.fast\n'
                            '    count([x | some x in numbers.range(1, 1000000000); x < 0]) == 0 }\n'
                            'reason := "fast" if input.fast\n')
    made = WasmEngine(load_policy_dir(slow), opa_binary=opa, timeout_s=0.1, instances=1)
    try:
        start = time.monotonic()
        with pytest.raises(PolicyEngineError, match="timed out after 100 ms"):
            made.evaluate({"fast": False})
        assert time.monotonic() - start < 0.1 + 10 * TICK_S + 1.0  # the deadline, not the work
        assert made.restarts == 1
        assert made.evaluate({"fast": True}).reasons == ("fast",)  # a fresh instance decides
    finally:
        made.close()


def test_an_evaluation_over_its_memory_is_a_deny(opa: str, tmp_path: Path) -> None:
    hungry = policy(tmp_path, 'reason := concat("", [s | some x in numbers.range(1, 50000000); s := "aaaa"])\n')
    made = WasmEngine(load_policy_dir(hungry), opa_binary=opa, timeout_s=5.0, memory_bytes=8 << 20, instances=1)
    try:
        with pytest.raises(PolicyEngineError, match="policy evaluation failed"):
            made.evaluate({})
        assert made.restarts == 1
    finally:
        made.close()


def test_an_input_over_the_cap_is_refused_before_evaluation(engine: WasmEngine) -> None:
    with pytest.raises(PolicyEngineError, match="above the"):
        engine.evaluate({**policy_input(CASES[0]), "padding": "x" * (1 << 20)})


@pytest.mark.parametrize(("rule", "builtin"), [
    ('reason := sprintf("%d", [input.n])', "sprintf"),
    ('reason := concat(",", regex.split("a", "bab"))', "regex.split"),
])
def test_a_bundle_needing_a_host_builtin_is_refused_naming_it(opa: str, tmp_path: Path, rule: str,
                                                              builtin: str) -> None:
    with pytest.raises(PolicyEngineError, match=f"cannot evaluate the built-ins {builtin}"):
        WasmEngine(load_policy_dir(policy(tmp_path, rule + "\n")), opa_binary=opa)


def test_a_bundle_that_does_not_compile_names_opas_error(opa: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyEngineError, match=r"does not compile to wasm: .*mcp/decision.rego:\d+"):
        WasmEngine(load_policy_dir(policy(tmp_path, "reason := undefined_function(1)\n")), opa_binary=opa)


def test_without_the_opa_cli_the_engine_says_what_to_set(table_bundle: Path) -> None:
    with pytest.raises(PolicyEngineError, match="policy.opa_binary"):
        WasmEngine(load_policy_dir(table_bundle), opa_binary="/nonexistent/opa")


def test_closed_engine_refuses(opa: str, table_bundle: Path) -> None:
    made = WasmEngine(load_policy_dir(table_bundle), opa_binary=opa)
    made.close()
    assert made.health() == (False, "engine closed")
    with pytest.raises(PolicyEngineError, match="closed"):
        made.evaluate(policy_input(CASES[0]))


def test_reload_builds_a_new_engine_and_keeps_the_old_on_failure(opa: str, tmp_path: Path) -> None:
    bundle = policy(tmp_path / "b", 'reason := "first"\n')

    def build(source: object) -> WasmEngine:
        return WasmEngine(source, opa_binary=opa)  # type: ignore[arg-type]

    source = load_policy_dir(bundle)
    active = ActivePolicy(build(source), bundle, source=source, build=build)
    try:
        check_bundle(active)
        assert active.evaluate({}).reasons == ("first",)
        (bundle / "mcp" / "decision.rego").write_text(MINIMAL + 'reason := "second"\n')
        active.reload()
        assert active.evaluate({}).reasons == ("second",)
        (bundle / "mcp" / "decision.rego").write_text(MINIMAL + 'reason := sprintf("%d", [1])\n')
        with pytest.raises(PolicyEngineError, match="sprintf"):
            active.reload()
        assert active.evaluate({}).reasons == ("second",)
    finally:
        active.close()
