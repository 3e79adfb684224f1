"""The installed command lines: ``python -m sandbox run`` and ``mcp-gateway``."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import GATEWAY_BIN


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
