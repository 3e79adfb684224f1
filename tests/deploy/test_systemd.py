"""The single-host unit deploy/systemd/mcp-gateway.service: systemd's own checker accepts it,
and what it sets agrees with the gateway (its variables are settings, its command runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.conftest import REPO

UNIT = REPO / "deploy" / "systemd" / "mcp-gateway.service"
INSTALLED = "/opt/mcp-gateway/.venv/bin/mcp-gateway"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze (package systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's gateway.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(Path(sys.executable).parent / "mcp-gateway")))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_its_environment_is_gateway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in UNIT.read_text().splitlines()
               if line.startswith("Environment="))
    assert env and all(key.startswith("MCP_GATEWAY_") for key in env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.state_dir == Path("/var/lib/mcp-gateway/state")
    assert settings.sandbox.workspace_root == Path("/var/lib/mcp-gateway/workspaces")
    assert f"ExecStart={INSTALLED} serve --config /etc/mcp-gateway/gateway.yaml" in UNIT.read_text()
