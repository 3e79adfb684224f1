"""OpaEngine against a real OPA server (real sockets): decisions, provenance, faults, push mode.

OPA servers are started per module (about 40 ms each) from ``tests/policy/opa_server.py``;
without an ``opa`` binary (and no Go toolchain to build one) the module is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import PolicyEngineError
from gateway.models import Decision
from gateway.policy import EmbeddedEngine, PolicyEngine, load_policy_dir
from gateway.policy.bundle import PolicySource
from gateway.policy.opa import POLICY_ID_PREFIX, OpaEngine
from tests.policy.opa_server import OpaServer, OpaServers, free_port, opa_binary_or_skip
from tests.policy.cases import CASES, POLICY_DIR, make_bundle, policy_input

MANIFEST_REVISION = json.loads((POLICY_DIR / ".manifest").read_text(encoding="utf-8"))["revision"]
LS_CASE = next(c for c in CASES if c["name"] == "ls allowed")
SLOW_DECISION = """package mcp

decision := {"allow": count([x | some x in numbers.range(1, 3000000); x % 7 == 0]) > 0}
"""


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServers]:
    group = OpaServers(opa_binary_or_skip(), tmp_path_factory.mktemp("opa-logs"))
    yield group
    group.close()


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``policies/`` plus the test overlay (tenant/principal layers), as the table needs."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "policies")


@pytest.fixture(scope="module")
def bundle_opa(servers: OpaServers, table_bundle: Path) -> OpaServer:
    """OPA serving the table bundle itself, decision log on (answers carry decision_id)."""
    return servers.start(bundle=table_bundle, decision_logs=True)


@pytest.fixture(scope="module")
def empty_opa(servers: OpaServers) -> OpaServer:
    """OPA with no bundle, for push mode."""
    return servers.start()


@pytest.fixture(scope="module")
def embedded(table_bundle: Path) -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(table_bundle, timeout_s=5.0)
    yield engine
    engine.close()


@pytest.fixture
def engines() -> Iterator[list[OpaEngine]]:
    """Collects engines made in a test and closes them afterwards."""
    made: list[OpaEngine] = []
    yield made
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def bundle_engine(bundle_opa: OpaServer) -> Iterator[OpaEngine]:
    engine = OpaEngine(bundle_opa.url, timeout_s=2.0)
    yield engine
    engine.close()


def write_bundle(root: Path, modules: dict[str, str], manifest: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in modules.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    if manifest is not None:
        (root / ".manifest").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def copy_policies(dest: Path, revision: str) -> Path:
    """A copy of ``policies/`` (tests excluded) with its own manifest revision."""
    shutil.copytree(POLICY_DIR, dest, ignore=shutil.ignore_patterns("*_test.rego"))
    (dest / ".manifest").write_text(json.dumps({"revision": revision, "roots": ["mcp"]}), encoding="utf-8")
    return dest


def same_decision(a: Decision, b: Decision) -> bool:
    return (a.allow, a.rule_ids, a.reasons, a.sandbox) == (b.allow, b.rule_ids, b.reasons, b.sandbox)


def opa_get(server: OpaServer, path: str) -> Any:
    response = httpx.get(server.url + path, timeout=5, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


# ---- bundle mode ------------------------------------------------------------------------


def test_is_a_policy_engine(bundle_engine: OpaEngine) -> None:
    assert isinstance(bundle_engine, PolicyEngine)
    assert bundle_engine.name == "opa"


def test_decisions_equal_the_embedded_engine(bundle_engine: OpaEngine, embedded: EmbeddedEngine) -> None:
    for case in CASES:
        mine, theirs = bundle_engine.evaluate(policy_input(case)), embedded.evaluate(policy_input(case))
        assert same_decision(mine, theirs), (case["name"], mine, theirs)
        assert mine.engine == "opa"
        assert mine.eval_ms > 0


def test_decision_id_and_revision_come_from_opa(bundle_opa: OpaServer, bundle_engine: OpaEngine) -> None:
    # Learned at construction from GET /v1/data/system/bundles, before any decision.
    fresh = OpaEngine(bundle_opa.url)
    fresh.close()
    assert fresh.revision == MANIFEST_REVISION
    first = bundle_engine.evaluate(policy_input(LS_CASE))
    second = bundle_engine.evaluate(policy_input(LS_CASE))
    assert first.revision == second.revision == bundle_engine.revision == MANIFEST_REVISION
    assert first.decision_id != second.decision_id
    assert str(uuid.UUID(first.decision_id)) == first.decision_id
    # OPA's own id: its console decision log names it.
    deadline = time.monotonic() + 5
    while first.decision_id not in bundle_opa.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert f'"decision_id":"{first.decision_id}"' in bundle_opa.log_text()


def test_health(bundle_engine: OpaEngine, engines: list[OpaEngine]) -> None:
    assert bundle_engine.health() == (True, "ok")
    closed = OpaEngine(f"http://127.0.0.1:{free_port()}")
    engines.append(closed)
    ok, reason = closed.health()
    assert not ok
    assert closed.url in reason and "cannot connect" in reason


def test_undefined_decision(servers: OpaServers, tmp_path: Path, engines: list[OpaEngine]) -> None:
    opa = servers.start(bundle=write_bundle(tmp_path / "b", {"other/other.rego": "package other\n\nx := 1\n"}))
    engine = OpaEngine(opa.url, timeout_s=2.0)
    engines.append(engine)
    with pytest.raises(PolicyEngineError, match="data.mcp.decision is undefined"):
        engine.evaluate(policy_input(LS_CASE))


def test_malformed_decision_and_eval_error(servers: OpaServers, tmp_path: Path, engines: list[OpaEngine]) -> None:
    bundle = write_bundle(tmp_path / "b", {"mcp/decision.rego": """package mcp

decision := {"allow": "yes"} if not input.conflict

# Two complete definitions with different values: OPA answers 500 eval_conflict_error.
decision := 1 if input.conflict

decision := 2 if input.conflict
"""}, {"revision": "broken-1", "roots": ["mcp"]})
    opa = servers.start(bundle=bundle)
    engine = OpaEngine(opa.url, timeout_s=2.0)
    engines.append(engine)
    assert engine.revision == "broken-1"
    with pytest.raises(PolicyEngineError, match="malformed decision"):
        engine.evaluate(policy_input(LS_CASE))
    with pytest.raises(PolicyEngineError, match=r"answered 500: .*conflict") as err:
        engine.evaluate({"conflict": True})
    assert opa.url in err.value.message


def test_unreachable_fails_fast(engines: list[OpaEngine]) -> None:
    engine = OpaEngine(f"http://127.0.0.1:{free_port()}")
    engines.append(engine)
    assert engine.revision == ""
    start = time.monotonic()
    with pytest.raises(PolicyEngineError, match=r"OPA at http://127\.0\.0\.1:\d+: cannot connect") as err:
        engine.evaluate(policy_input(LS_CASE))
    assert time.monotonic() - start < 0.5
    assert err.value.code == 5003


def test_slow_decision_times_out(servers: OpaServers, tmp_path: Path, engines: list[OpaEngine]) -> None:
    opa = servers.start(bundle=write_bundle(tmp_path / "b", {"mcp/decision.rego": SLOW_DECISION}))
    engine = OpaEngine(opa.url, timeout_s=0.05)
    engines.append(engine)
    start = time.monotonic()
    with pytest.raises(PolicyEngineError, match=re.escape(f"OPA at {opa.url}: timed out after 50 ms")):
        engine.evaluate(policy_input(LS_CASE))
    assert time.monotonic() - start < 1.0


def test_input_checked_before_any_request(engines: list[OpaEngine]) -> None:
    # A closed port: these must fail on the input, never by trying to connect.
    engine = OpaEngine(f"http://127.0.0.1:{free_port()}", max_input_bytes=1024)
    engines.append(engine)
    with pytest.raises(PolicyEngineError, match="above the 1024 byte cap"):
        engine.evaluate({**policy_input(LS_CASE), "pad": "x" * 2000})
    with pytest.raises(PolicyEngineError, match="not JSON-encodable"):
        engine.evaluate({"x": float("nan")})
    with pytest.raises(PolicyEngineError, match="not JSON-encodable"):
        engine.evaluate({"x": object()})


def test_bad_url_and_closed_client(bundle_opa: OpaServer) -> None:
    with pytest.raises(PolicyEngineError, match="not an http"):
        OpaEngine("127.0.0.1:8181")
    engine = OpaEngine(bundle_opa.url)
    engine.close()
    with pytest.raises(PolicyEngineError, match="OPA at"):
        engine.evaluate(policy_input(LS_CASE))


def test_opa_killed_and_restarted_on_the_same_port(servers: OpaServers, engines: list[OpaEngine]) -> None:
    opa = servers.start(bundle=POLICY_DIR)
    engine = OpaEngine(opa.url, timeout_s=2.0)
    engines.append(engine)
    for _ in range(3):  # pooled keep-alive connections now point at this process
        assert engine.evaluate(policy_input(LS_CASE)).allow
    opa.stop()
    with pytest.raises(PolicyEngineError, match=re.escape(f"OPA at {opa.url}: ")):
        engine.evaluate(policy_input(LS_CASE))
    assert engine.health()[0] is False
    opa.start()
    assert opa.url == f"http://127.0.0.1:{opa.port}"
    decision = engine.evaluate(policy_input(LS_CASE))  # the first call after the restart works
    assert decision.allow and decision.revision == MANIFEST_REVISION
    assert engine.health() == (True, "ok")


# ---- push mode --------------------------------------------------------------------------


def policy_ids(server: OpaServer) -> set[str]:
    return {p["id"] for p in opa_get(server, "/v1/policies")["result"]}


def test_push_mode_matches_embedded(empty_opa: OpaServer, embedded: EmbeddedEngine, table_bundle: Path,
                                    engines: list[OpaEngine]) -> None:
    engine = OpaEngine(empty_opa.url, timeout_s=2.0, source=load_policy_dir(table_bundle))
    engines.append(engine)
    assert engine.revision == MANIFEST_REVISION
    assert engine.health() == (True, "ok")
    assert f"{POLICY_ID_PREFIX}mcp" in policy_ids(empty_opa)
    for case in CASES:
        mine, theirs = engine.evaluate(policy_input(case)), embedded.evaluate(policy_input(case))
        assert same_decision(mine, theirs), (case["name"], mine, theirs)
        assert mine.revision == MANIFEST_REVISION


def test_push_mode_pushes_again_after_opa_restarts(servers: OpaServers, table_bundle: Path,
                                                  engines: list[OpaEngine]) -> None:
    opa = servers.start()
    engine = OpaEngine(opa.url, timeout_s=2.0, source=load_policy_dir(table_bundle))
    engines.append(engine)
    assert engine.evaluate(policy_input(LS_CASE)).allow
    opa.stop()
    with pytest.raises(PolicyEngineError, match=re.escape(f"OPA at {opa.url}: ")):
        engine.evaluate(policy_input(LS_CASE))
    opa.start()  # same port, no policy: OPA keeps pushed policy in memory only
    assert policy_ids(opa) == set()
    decision = engine.evaluate(policy_input(LS_CASE))
    assert decision.allow and decision.revision == MANIFEST_REVISION
    assert f"{POLICY_ID_PREFIX}mcp" in policy_ids(opa)


def test_push_changes_decisions_and_removes_modules(empty_opa: OpaServer, tmp_path: Path,
                                                    engines: list[OpaEngine]) -> None:
    # Revision A: the shipped policy plus an extra module in package mcp and an extra package.
    a_dir = copy_policies(tmp_path / "a", "rev-a")
    (a_dir / "mcp" / "extra.rego").write_text("package mcp\n\npushed_marker := true\n", encoding="utf-8")
    (a_dir / "mcp" / "extra_pkg.rego").write_text("package mcp.extra\n\nflag := true\n", encoding="utf-8")
    engine = OpaEngine(empty_opa.url, timeout_s=2.0, source=load_policy_dir(a_dir))
    engines.append(engine)
    assert engine.revision == "rev-a"
    assert engine.evaluate(policy_input(LS_CASE)).allow
    assert opa_get(empty_opa, "/v1/data/mcp/pushed_marker")["result"] is True
    assert {f"{POLICY_ID_PREFIX}mcp", f"{POLICY_ID_PREFIX}mcp/extra"} <= policy_ids(empty_opa)

    # Revision B: "ls" no longer allowed, both extra modules gone.
    b_dir = copy_policies(tmp_path / "b", "rev-b")
    data = json.loads((b_dir / "data.json").read_text(encoding="utf-8"))
    del data["mcp"]["config"]["commands"]["allowed"]["ls"]
    (b_dir / "data.json").write_text(json.dumps(data), encoding="utf-8")
    engine.push(load_policy_dir(b_dir))
    assert engine.revision == "rev-b"
    denied = engine.evaluate(policy_input(LS_CASE))
    assert not denied.allow and denied.rule_ids[0].startswith("command.")
    assert denied.revision == "rev-b"
    assert "result" not in opa_get(empty_opa, "/v1/data/mcp/pushed_marker")
    ids = policy_ids(empty_opa)
    assert f"{POLICY_ID_PREFIX}mcp/extra" not in ids and f"{POLICY_ID_PREFIX}mcp" in ids

    # Back to the shipped policy.
    engine.push(load_policy_dir(POLICY_DIR))
    assert engine.evaluate(policy_input(LS_CASE)).allow


def test_failed_push_names_the_file_and_fails_closed(empty_opa: OpaServer, tmp_path: Path,
                                                     engines: list[OpaEngine]) -> None:
    good = load_policy_dir(POLICY_DIR)
    engine = OpaEngine(empty_opa.url, timeout_s=2.0, source=good)
    engines.append(engine)
    rel, text = next((r, t) for r, t in good.modules if r == "mcp/paths.rego")
    broken_line = len(text.splitlines()) + 1
    broken = PolicySource(
        modules=tuple((r, t + "bogus_rule := no_such_rule_anywhere\n" if r == rel else t) for r, t in good.modules),
        data=good.data,
        revision="broken",
    )
    with pytest.raises(PolicyEngineError, match=rf"{re.escape(rel)}:{broken_line}: .*no_such_rule_anywhere"):
        engine.push(broken)
    assert engine.revision == good.revision
    with pytest.raises(PolicyEngineError, match="no decision until a policy push succeeds"):
        engine.evaluate(policy_input(LS_CASE))
    assert engine.health()[0] is False
    engine.push(good)
    assert engine.evaluate(policy_input(LS_CASE)).allow
    assert engine.health() == (True, "ok")


def test_push_to_unreachable_opa_raises() -> None:
    with pytest.raises(PolicyEngineError, match="cannot connect"):
        OpaEngine(f"http://127.0.0.1:{free_port()}", source=load_policy_dir(POLICY_DIR))


def test_push_refused_by_an_opa_serving_its_own_bundle(bundle_opa: OpaServer) -> None:
    with pytest.raises(PolicyEngineError, match="PUT /v1/data answered 400: .*bundle roots"):
        OpaEngine(bundle_opa.url, source=load_policy_dir(POLICY_DIR))


def test_no_decision_sees_half_a_push(empty_opa: OpaServer, tmp_path: Path, engines: list[OpaEngine]) -> None:
    """Evaluations racing pushes: each decision matches the revision it is labelled with."""
    allow_src = load_policy_dir(copy_policies(tmp_path / "a", "allows-ls"))
    deny_dir = copy_policies(tmp_path / "d", "denies-ls")
    data = json.loads((deny_dir / "data.json").read_text(encoding="utf-8"))
    del data["mcp"]["config"]["commands"]["allowed"]["ls"]
    (deny_dir / "data.json").write_text(json.dumps(data), encoding="utf-8")
    deny_src = load_policy_dir(deny_dir)
    engine = OpaEngine(empty_opa.url, timeout_s=2.0, source=allow_src)
    engines.append(engine)

    stop = threading.Event()
    seen: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                decision = engine.evaluate(policy_input(LS_CASE))
            except BaseException as exc:  # reported below
                errors.append(exc)
                return
            seen.append((decision.revision, decision.allow))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            engine.push(deny_src if i % 2 == 0 else allow_src)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert {rev for rev, _ in seen} == {"allows-ls", "denies-ls"}
    wrong = [(rev, allow) for rev, allow in seen if allow != (rev == "allows-ls")]
    assert not wrong, f"{len(wrong)} of {len(seen)} decisions disagree with their revision"
