"""The installed command lines: ``python -m sandbox run`` and ``mcp-gateway`` (serve, policy)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import GATEWAY_BIN, REPO


def sandbox_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", "run", *args],
                          capture_output=True, text=True, timeout=timeout_s)


def test_sandbox_cli_passes_output_through_and_reports_on_stderr() -> None:
    out = sandbox_cli("--timeout", "10", "--", "echo", "hello world")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"
    report = out.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sandbox: exit_code=0 limit=none cpu_ms=\d+ max_rss_kb=\d+ duration_ms=[\d.]+", report
    ), report


def test_sandbox_cli_exit_code_is_the_commands() -> None:
    out = sandbox_cli("--", "sh", "-c", "echo err >&2; exit 3")
    assert out.returncode == 3
    assert out.stderr.startswith("err\n")


def test_sandbox_cli_timeout_reports_the_limit() -> None:
    out = sandbox_cli("--timeout", "1", "--", "sleep", "30")
    assert out.returncode == 137
    assert "limit=wall_timeout" in out.stderr


def test_sandbox_cli_is_sandboxed() -> None:
    out = sandbox_cli("--", "sh", "-c", "cat /etc/shadow; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    assert "No such file or directory" in out.stderr
    assert "CapEff:\t0000000000000000" in out.stdout
    assert "NoNewPrivs:\t1" in out.stdout and "Seccomp:\t2" in out.stdout


def test_gateway_version_and_usage() -> None:
    out = subprocess.run([str(GATEWAY_BIN), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("mcp-gateway ")
    out = subprocess.run([str(GATEWAY_BIN), "serve", "--http-port", "nope"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "invalid int value" in out.stderr


# -- mcp-gateway policy ------------------------------------------------------------------

POLICY_INPUT = {
    "principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []},
    "action": "command.execute",
    "command": {"name": "ls", "args": ["-la"], "cwd": "/workspace", "env_keys": []},
}


def policy_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GATEWAY_BIN), "policy", *args], capture_output=True, text=True, timeout=120,
                          input=stdin)


def test_policy_eval_prints_the_decision_and_exits_by_it(tmp_path: Path) -> None:
    allowed = policy_cli("eval", "--input", "-", stdin=json.dumps(POLICY_INPUT))
    assert allowed.returncode == 0, allowed.stderr
    decision = json.loads(allowed.stdout)
    assert decision["allow"] is True and decision["rule_ids"] == ["command.allowlisted"]
    assert decision["engine"] == "embedded" and decision["sandbox"]["network"] == "none"
    denied_input = {**POLICY_INPUT, "command": {**POLICY_INPUT["command"], "name": "sudo"}}
    (tmp_path / "in.json").write_text(json.dumps(denied_input))
    denied = policy_cli("eval", "--input", str(tmp_path / "in.json"))
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["rule_ids"] == ["command.privileged_tool"]
    bad = policy_cli("eval", "--input", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "cannot read input" in bad.stderr


def test_policy_check_and_test(tmp_path: Path) -> None:
    ok = policy_cli("check")
    assert ok.returncode == 0 and "revision mcp-default-2025.1" in ok.stdout
    tests = policy_cli("test")
    written = sum(len(re.findall(r"^test_\w+", p.read_text(), re.M)) for p in (REPO / "policies").rglob("*_test.rego"))
    assert f"embedded (regopy): {written}/{written} passed" in tests.stdout, tests.stdout
    broken = Path(shutil.copytree(REPO / "policies", tmp_path / "p"))
    (broken / "data.json").write_text((broken / "data.json").read_text().replace('"roles"', '"rolez"', 1))
    failed = policy_cli("check", "--policy-dir", str(broken))
    assert failed.returncode == 1 and "unknown key(s): 'rolez'" in failed.stderr, failed.stderr
