"""Extra paths policy grants are bound read-only, but never the gateway's own state."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, GatewayProcess, start_gateway, wait_final


@pytest.fixture(scope="module")
def setup(state_root: Path) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    base = Path(tempfile.mkdtemp(dir=state_root))
    # Not under /tmp: the sandbox has its own /tmp there, so a bind there is refused.
    shared = Path(tempfile.mkdtemp(prefix="mcp-gw-shared-", dir="/var/tmp"))
    shared.chmod(0o755)
    (shared / "data.txt").write_text("shared data\n")
    (shared / "data.txt").chmod(0o644)
    policy = base / "policy"
    shutil.copytree(REPO / "policies", policy)
    data = json.loads((policy / "data.json").read_text())
    # Grants a harmless directory and, wrongly, the directory holding the gateway's state.
    data["mcp"]["config"]["sandbox"]["ro_paths"] = {str(shared): True, str(base / "var"): True}
    (policy / "data.json").write_text(json.dumps(data))
    gw = start_gateway(base / "var", "--policy-dir", str(policy))
    yield gw, shared, base / "var"
    assert gw.stop() == 0
    shutil.rmtree(shared)


def test_a_granted_path_is_bound_read_only(setup) -> None:
    gw, shared, _ = setup
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        body = {"command": "sh", "args": ["-c", f"cat {shared}/data.txt; touch {shared}/x"],
                "sandbox_config": {"ro_paths": [str(shared)]}}
        response = http.post("/v1/execute", json=body)
        assert response.status_code == 202, response.text
        final = wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), response.json()["task_id"])
    assert final["result"]["stdout"] == "shared data\n", final["result"]
    assert "Read-only file system" in final["result"]["stderr"]


@pytest.mark.parametrize("ask", ["state dir", "workspace of other tasks", "whole grant"])
def test_the_gateway_state_is_never_bound(setup, ask: str) -> None:
    gw, _, state = setup
    paths = {"state dir": [str(state)], "workspace of other tasks": [str(state / "workspaces")],
             "whole grant": []}[ask]  # an empty request takes the whole grant, state included
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        response = http.post("/v1/execute", json={"command": "ls", "sandbox_config": {"ro_paths": paths}})
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == 3003 and "gateway's own state" in error["message"]
