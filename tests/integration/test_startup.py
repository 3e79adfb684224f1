"""Start-up and shut-down of a real ``mcp-gateway serve`` process: refusals with clear
messages, the listening line, clean SIGTERM, and recovery of tasks a dead process left."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import GATEWAY_BIN, as_user, start_gateway, wait_final


def run_serve(*args: str, timeout_s: float = 60, env: dict[str, str] | None = None,
              dev: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(GATEWAY_BIN), "serve", "--http-port", "0", "--grpc-port", "0", *(["--dev"] if dev else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **(env or {})})


_API_KEY_YAML = """auth:
  api_keys:
    - hash: "sha256:{digest}"
      principal: ci
      tenant: acme
      scopes: [tasks:read]
""".format(digest="0" * 64)


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only a root gateway runs sandboxes on a uid range")


def test_refuses_non_loopback_bind(tmp_path: Path) -> None:
    out = run_serve("--host", "0.0.0.0", "--state-dir", str(tmp_path), dev=False)
    assert out.returncode == 2
    assert "refusing to bind '0.0.0.0'" in out.stderr and "without authentication configured" in out.stderr


def test_dev_mode_is_refused_on_a_non_loopback_bind(tmp_path: Path) -> None:
    out = run_serve("--host", "0.0.0.0", "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert "refusing to bind '0.0.0.0' in dev mode" in out.stderr and "loopback" in out.stderr


def test_credentials_on_the_network_need_tls(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(_API_KEY_YAML)
    out = run_serve("--host", "0.0.0.0", "--config", str(config), "--state-dir", str(tmp_path), dev=False)
    assert out.returncode == 2
    assert "refusing to bind '0.0.0.0' without TLS" in out.stderr


def test_without_credentials_configured_nor_dev_mode_the_gateway_does_not_start(tmp_path: Path) -> None:
    out = run_serve("--state-dir", str(tmp_path / "var"), dev=False)
    assert out.returncode == 3, out.stderr
    assert "no authentication configured" in out.stderr and "--dev" in out.stderr


def test_dev_mode_says_so_loudly_at_start(state_root: Path) -> None:
    gw = start_gateway(Path(tempfile.mkdtemp(dir=state_root)) / "var")
    try:
        stderr = gw.stderr_path.read_text()
    finally:
        gw.stop()
    assert "WARNING: DEV MODE" in stderr and "anonymous" in stderr


def test_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("sandbox:\n  bwrap_path: /nonexistent/bwrap\n")
    out = run_serve("--config", str(config), "--state-dir", str(tmp_path / "var"))
    assert out.returncode == 3, out.stderr
    assert "cannot sandbox commands" in out.stderr and "apt-get install bubblewrap" in out.stderr


def test_refuses_to_start_with_a_broken_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    (policy / "mcp").mkdir(parents=True)
    (policy / "mcp" / "decision.rego").write_text("package mcp\n\ndecision := {{{ broken\n")
    out = run_serve("--policy-dir", str(policy), "--state-dir", str(tmp_path / "var"))
    assert out.returncode == 3, out.stderr
    assert "cannot load policy" in out.stderr


def test_environment_and_config_file_settings(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("host: 10.0.0.1\n")
    out = run_serve("--config", str(config), "--state-dir", str(tmp_path / "var"), dev=False)
    assert out.returncode == 2 and "refusing to bind '10.0.0.1'" in out.stderr
    env_out = subprocess.run([str(GATEWAY_BIN), "serve", "--state-dir", str(tmp_path / "var")],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MCP_GATEWAY_HOST": "192.0.2.1"})
    assert env_out.returncode == 2 and "refusing to bind '192.0.2.1'" in env_out.stderr


def test_refuses_unreachable_workspace_root(tmp_path: Path) -> None:
    # pytest's tmp_path sits under a 0700 directory owned by root.
    if os.geteuid() != 0:
        pytest.skip("only a root gateway drops to a separate sandbox uid that must traverse the path")
    out = run_serve("--state-dir", str(tmp_path / "var"))
    assert out.returncode == 3, out.stderr
    assert "cannot reach workspaces" in out.stderr and "is not searchable" in out.stderr


@root_only
def test_refuses_a_sandbox_uid_range_already_in_use(state_root: Path) -> None:
    squatter = subprocess.Popen([*as_user(320_007, 320_007), "sleep", "60"])
    try:
        out = run_serve("--state-dir", str(Path(tempfile.mkdtemp(dir=state_root)) / "var"),
                        env={"MCP_GATEWAY_SANDBOX__UID": "320000", "MCP_GATEWAY_SANDBOX__GID": "320000"})
    finally:
        squatter.kill()
        squatter.wait()
    assert out.returncode == 3, out.stderr
    assert f"pid {squatter.pid} (uid 320007)" in out.stderr and "reserved for sandboxes" in out.stderr


def _slots_of(gateway_pid: int) -> list[str]:
    """The cgroup slot directories (every hierarchy) of the gateway process ``gateway_pid``."""
    return [p for p in glob.glob(f"/sys/fs/cgroup/**/mcp-gateway-{gateway_pid}/slot-*", recursive=True)
            if os.path.isdir(p)]


@root_only
def test_a_restart_reclaims_a_sandbox_a_killed_gateway_left_behind(state_root: Path) -> None:
    """bwrap's inner process can miss the death of an outer bwrap killed with the gateway
    (it sets its parent-death signal after clone(2)) and live on in the dead gateway's
    cgroup slot as a sandbox uid. The next start sweeps that slot first, so the orphan is
    killed and the uid range is free, rather than the start being refused."""
    state = Path(tempfile.mkdtemp(dir=state_root)) / "var"
    env = {"MCP_GATEWAY_SANDBOX__UID": "321000", "MCP_GATEWAY_SANDBOX__GID": "321000"}
    gw = start_gateway(state, env=env)
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        task = client.post("/v1/execute", json={"command": "true"}).json()["task_id"]
        wait_final(lambda t: client.get(f"/v1/tasks/{t}").json(), task)
    slots = _slots_of(gw.proc.pid)
    if not slots:
        gw.stop()
        pytest.skip("this host gives the gateway no cgroup slots (sandbox.cgroups auto found none)")
    gw.stop(signal.SIGKILL)
    orphan = subprocess.Popen([*as_user(321_005, 321_005), "sleep", "60"])
    try:
        for slot in slots:  # where the orphan of a real crash stays: the dead gateway's slot
            Path(slot, "cgroup.procs").write_text(str(orphan.pid))
        restarted = start_gateway(state, env=env)
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert restarted.stop() == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


@root_only
def test_refuses_a_uid_range_smaller_than_the_worker_pool(state_root: Path) -> None:
    out = run_serve("--state-dir", str(Path(tempfile.mkdtemp(dir=state_root)) / "var"),
                    env={"MCP_GATEWAY_SANDBOX__UID_COUNT": "2", "MCP_GATEWAY_TASKS__MAX_CONCURRENT": "4"})
    assert out.returncode == 3, out.stderr
    assert "sandbox.uid_count (2) must be at least tasks.max_concurrent (4)" in out.stderr


def test_refuses_a_workspace_root_others_could_swap(state_root: Path) -> None:
    shared = Path(tempfile.mkdtemp(dir=state_root))
    shared.chmod(0o777)  # world-writable, not sticky: anyone could rename var/ away
    out = run_serve("--state-dir", str(shared / "var"))
    assert out.returncode == 3, out.stderr
    assert "unsafe workspace root" in out.stderr and "writable by group or others" in out.stderr


def _cgroup_dirs_of(pid: int) -> list[str]:
    """Cgroup directories a gateway process made (``mcp-gateway-<pid>``), on any hierarchy."""
    return glob.glob(f"/sys/fs/cgroup/**/mcp-gateway-{pid}", recursive=True)


def test_tasks_left_running_by_a_dead_gateway_are_failed_on_restart(state_root: Path) -> None:
    state = Path(tempfile.mkdtemp(dir=state_root)) / "var"
    gw = start_gateway(state)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            task_id = http.post("/v1/execute", json={"command": "sleep", "args": ["37.5"], "timeout": 60}).json()["task_id"]
            deadline = time.monotonic() + 20
            while http.get(f"/v1/tasks/{task_id}").json()["task_info"]["status"] != "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # RUNNING is stored before the spawn: wait for the command itself (bwrap's pid 1
            # has armed --die-with-parent by the time it starts the command). A kill inside
            # bwrap's own setup can leave its pid 1 behind (gateway.app._isolation); the
            # restart's sweep below is what ends those.
            while subprocess.run(["pgrep", "-f", "^sleep 37.5"], capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, "the sandboxed sleep never started"
                time.sleep(0.05)
            if http.get("/health/ready").json()["sandbox"]["cgroup_version"] is not None:
                assert _cgroup_dirs_of(gw.proc.pid), "the gateway runs tasks in cgroups it made"
    finally:
        gw.stop(signal.SIGKILL)
    # --die-with-parent: the sandbox does not outlive the gateway that started it.
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "sleep 37.5"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "sandboxed sleep survived its gateway"
        time.sleep(0.1)
    gw2 = start_gateway(state)
    try:
        # The dead gateway's cgroups are swept by the next one.
        assert _cgroup_dirs_of(gw.proc.pid) == []
        with httpx.Client(base_url=gw2.http_url, timeout=30) as http:
            final = wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), task_id)
            assert final["task_info"]["status"] == "FAILED"
            assert final["result"]["error"] == "gateway_restart"
            assert http.post("/v1/execute", json={"command": "true"}).status_code == 202
    finally:
        assert gw2.stop() == 0
    # A clean stop removes its own.
    assert _cgroup_dirs_of(gw2.proc.pid) == []
