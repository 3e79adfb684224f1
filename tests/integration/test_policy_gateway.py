"""Policy in a running gateway: hot reload of the bundle, and the OPA server engine with
its failure mode (OPA killed mid-run: 5003, nothing runs, service resumes)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayProcess, start_gateway, wait_until
from tests.policy.cases import POLICY_DIR
from tests.policy.opa_server import OpaServer, opa_binary_or_skip


def _until(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _execute(http: httpx.Client, command: str, *args: str) -> httpx.Response:
    return http.post("/v1/execute", json={"command": command, "args": list(args), "timeout": 30})


def _set_revision(bundle: Path, revision: str) -> None:
    (bundle / ".manifest").write_text(json.dumps({"revision": revision, "roots": ["mcp"]}))


def _disallow(bundle: Path, program: str, revision: str) -> dict[str, Any]:
    """Take ``program`` off the global allow-list and set the revision; returns the data."""
    data = json.loads((bundle / "data.json").read_text())
    data["mcp"]["config"]["commands"]["allowed"][program] = False
    (bundle / "data.json").write_text(json.dumps(data))
    _set_revision(bundle, revision)
    return data


def _metric(http: httpx.Client, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", http.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture()
def workdir(state_root: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="policy-", dir=state_root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def bundle(workdir: Path) -> Path:
    return Path(shutil.copytree(POLICY_DIR, workdir / "policies"))


def _stop(gw: GatewayProcess) -> None:
    assert gw.stop() == 0, gw.stderr_path.read_text()


@pytest.mark.parametrize("engine", ["embedded", "wasm"])
def test_hot_reload_applies_a_good_bundle_and_keeps_the_old_one_on_a_bad(workdir: Path, bundle: Path,
                                                                         engine: str) -> None:
    env = {"MCP_GATEWAY_POLICY__ENGINE": engine}
    if engine == "wasm":  # compiled by the real opa CLI at start and at every reload
        env["MCP_GATEWAY_POLICY__OPA_BINARY"] = opa_binary_or_skip()
    gw = start_gateway(workdir / "var", "--policy-dir", str(bundle), env=env)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            ready = http.get("/health/ready").json()
            assert ready["policy"]["revision"] == "mcp-default-2025.1" and ready["policy"]["engine"] == engine
            assert _execute(http, "ls").status_code == 202
            assert f'mcp_policy_bundle_info{{engine="{engine}",revision="mcp-default-2025.1"}} 1.0' in http.get(
                "/metrics").text

            # A good edit: ls leaves the allow-list, with a new revision.
            data = _disallow(bundle, "ls", "r2")
            _until(lambda: http.get("/health/ready").json()["policy"]["revision"] == "r2", what="reload to r2")
            denied = _execute(http, "ls")
            assert (denied.status_code, denied.json()["error"]["code"]) == (403, 3001)
            assert _execute(http, "cat", "/dev/null").status_code == 202
            last_decision = [e for e in gw.audit_events() if e["event_type"] == "decision"][-1]
            assert (last_decision["decision"], last_decision["policy_revision"]) == ("allow", "r2")
            assert last_decision["policy_engine"] == engine
            assert f'mcp_policy_bundle_info{{engine="{engine}",revision="r2"}} 1.0' in http.get("/metrics").text
            assert 'revision="mcp-default-2025.1"' not in http.get("/metrics").text

            # Bad edits: a syntax error, then an unknown data key. Both are rejected and
            # r2 keeps deciding.
            rejected = _metric(http, "mcp_policy_reloads_total", 'result="rejected"')
            broken = bundle / "mcp" / "broken.rego"
            broken.write_text("package mcp\n\nimport rego.v1\n\nthis is not rego {\n")
            _set_revision(bundle, "r3-broken")
            _until(lambda: _metric(http, "mcp_policy_reloads_total", 'result="rejected"') > rejected,
                   what="the broken bundle to be rejected")
            broken.unlink()
            data["mcp"]["config"]["commands"]["alowed"] = {"curl": True}
            (bundle / "data.json").write_text(json.dumps(data))
            _until(lambda: _metric(http, "mcp_policy_reloads_total", 'result="rejected"') > rejected + 1,
                   what="the bundle with an unknown key to be rejected")
            assert http.get("/health/ready").json()["policy"]["revision"] == "r2"
            assert _execute(http, "ls").json()["error"]["code"] == 3001
            assert _execute(http, "cat", "/dev/null").status_code == 202
    finally:
        _stop(gw)
    log = gw.stderr_path.read_text()
    assert "policy reload rejected, keeping revision r2" in log
    assert "alowed" in log


def test_a_bundle_that_allows_everything_is_rejected(workdir: Path, bundle: Path) -> None:
    gw = start_gateway(workdir / "var", "--policy-dir", str(bundle))
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            decision = bundle / "mcp" / "decision.rego"
            decision.write_text(decision.read_text().replace("allow if count(deny) == 0", "allow := true"))
            _set_revision(bundle, "allow-all")
            _until(lambda: _metric(http, "mcp_policy_reloads_total", 'result="rejected"') >= 1,
                   what="rejection")
            assert http.get("/health/ready").json()["policy"]["revision"] == "mcp-default-2025.1"
    finally:
        _stop(gw)
    assert "allows a request with no principal and no action" in gw.stderr_path.read_text()


@pytest.fixture()
def opa(workdir: Path, bundle: Path) -> Iterator[OpaServer]:
    server = OpaServer(opa_binary_or_skip(), workdir, bundle=bundle)
    server.start()
    yield server
    server.stop()


def test_opa_killed_mid_run_denies_with_5003_and_resumes(workdir: Path, opa: OpaServer) -> None:
    gw = start_gateway(workdir / "var", env={"MCP_GATEWAY_POLICY__ENGINE": "opa",
                                            "MCP_GATEWAY_POLICY__OPA_URL": opa.url})
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            ready = http.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["policy"]["engine"] == "opa"
            assert ready.json()["policy"]["revision"] == "mcp-default-2025.1"
            assert _execute(http, "echo", "before").status_code == 202
            tasks_before = len([e for e in gw.audit_events() if e["event_type"] == "decision" and e.get("task_id")])

            opa.stop()
            for _ in range(3):
                down = _execute(http, "echo", "while down")
                assert (down.status_code, down.json()["error"]["code"]) == (503, 5003), down.text
            # Probes read a readiness snapshot refreshed every 0.5 s (never waiting on OPA).
            wait_until(lambda: http.get("/health/ready").status_code == 503, 3.0, "readiness 503 with OPA down")
            errors = [e for e in gw.audit_events() if e["event_type"] == "decision" and e["decision"] == "error"]
            assert len(errors) == 3 and all(e.get("task_id") is None for e in errors)
            assert all(e["error_code"] == 5003 for e in errors)
            assert len([e for e in gw.audit_events() if e["event_type"] == "decision" and e.get("task_id")]) \
                == tasks_before  # nothing ran
            assert _metric(http, "mcp_policy_decisions_total", 'engine="opa",outcome="error"') == 3

            opa.start()  # same port
            _until(lambda: http.get("/health/ready").status_code == 200, what="OPA back")
            assert _execute(http, "echo", "after").status_code == 202
    finally:
        _stop(gw)


def test_opa_push_mode_uploads_the_bundle(workdir: Path, bundle: Path) -> None:
    server = OpaServer(opa_binary_or_skip(), workdir, bundle=None)
    server.start()
    gw = None
    try:
        gw = start_gateway(workdir / "var", "--policy-dir", str(bundle),
                           env={"MCP_GATEWAY_POLICY__ENGINE": "opa", "MCP_GATEWAY_POLICY__OPA_URL": server.url,
                                "MCP_GATEWAY_POLICY__OPA_PUSH": "true"})
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            assert _execute(http, "echo", "pushed").status_code == 202
            assert _execute(http, "sudo", "id").json()["error"]["code"] == 3001
            _disallow(bundle, "echo", "pushed-2")
            _until(lambda: http.get("/health/ready").json()["policy"]["revision"] == "pushed-2", what="re-push")
            assert _execute(http, "echo", "x").json()["error"]["code"] == 3001
    finally:
        if gw is not None:
            _stop(gw)
        server.stop()
