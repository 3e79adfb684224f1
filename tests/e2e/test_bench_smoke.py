"""Every benchmark still runs: ``python bench/<name>.py --smoke`` exits 0 and prints its table.

The scripts are found, not listed: every ``bench/*.py`` with a ``__main__`` block, so a new
one is smoke-tested from the day it lands. Smoke mode is the one switch ``bench/common.py``
declares (a handful of iterations, the same code path); the numbers it prints are not
checked, only that the script ran and printed its table: the lines in :data:`TABLES`, or at
least two lines, one with a number, for a script not listed there yet.

The policy bench's error count is checked for meaning in-process: a deadline (callers
queued behind slow evaluations on a saturated engine) is told apart from other engine errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"
SMOKE_TIMEOUT_S = 120  # each script takes 1-15 s in smoke mode on a 2-core machine (load.py: 30 s of load)
_MAIN_BLOCK = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)

#: Lines each script's output must contain (regular expressions, matched per line).
TABLES: dict[str, tuple[str, ...]] = {
    "audit.py": (r"^fsync +\| p50 ms \| p99 ms", r"^interval +\| +[\d.]+ \| +[\d.]+ \|",
                 r"^audit step per request \(interval, median\): [\d.]+ ms"),
    "auth.py": (r"^path +\| median µs \| +p99 µs", r"^gRPC +\| JWT RS256 +\| +[\d.]+ \|",
                r"^summary: \d+/\d+ targets met"),
    "gateway_vs_sandbox.py": (r"^path +\| median ms \| +p99 ms \| x library \| CPU ms/task \| CPU beyond library",
                              r"^library +\| +[\d.]+ \| +[\d.]+ \| +1\.00 \| +[\d.]+ \|",
                              r"^gRPC wait +\| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +-?[\d.]+$",
                              r"^REST wait +\| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +-?[\d.]+$"),
    "egress.py": (r"^what +\| network +\| median ms \| +MB/s", r"^download +\| restricted \| +[\d.]+ \|",
                  r"^download through the proxy / host network: [\d.]+", r"^small HTTPS request: the proxy adds"),
    "load.py": (r"^type +request +\| requests \| failures \| p50 ms \| p95 ms \| p99 ms",
                r"^REST +execute +\| +\d+ \| +\d+ \| +[\d.]+ \|", r"^gRPC +status +\| +\d+ \| +\d+ \| +[\d.]+ \|",
                r"^gateway VmRSS: start [\d.]+ MB, after a fifth of the run [\d.]+ MB, end [\d.]+ MB",
                r"^audit: \d+ decision events for \d+ execute requests"),
    "observability.py": (r"^variant +\| wait +\| median ms \| p99 ms \| median vs off \| gateway CPU ms/task",
                         r"^tracing on, sampling 1\.0 +\| stream \| +[\d.]+ \| +[\d.]+ \| +[\d.]+x \| +[\d.]+",
                         r"^spans received: [1-9]\d*", r"^added at sampling 1\.0 \(poll\): [+-][\d.]+ %"),
    "overload.py": (r"offered",),  # its author's table; kept loose while it settles
    "policy.py": (r"^engine +median ms +p99 ms", r"^embedded +[\d.]+ +[\d.]+",
                  r"^wasm( +[\d.]+ +[\d.]+| +skipped: )", r"^(gateway step \(wasm\) +[\d.]+ +[\d.]+|wasm +skipped: )",
                  r"^opa( server +[\d.]+| +skipped: )"),
    "report.py": (r"^figure +\| +value \| +baseline \| +ratio \| +target \| verdict",
                  r"^/bin/true to final result, gRPC wait \(median\) +\| +[\d.e+-]+ ms \|",
                  r"^policy decision, (wasm|embedded) engine \(median, normal inputs\) +\|", r"^plot: .*latency\.png$"),
    "replicas.py": (r"^replicas \| limits \| requests/s \| p50 ms \| p99 ms \| cost per call",
                    r"^ +2 \| shared \| +\d+ \| +[\d.]+ \| +[\d.]+ \| [+-][\d.]+ ms"),
    "mcp_upstream.py": (r"^direct stdio +\| +[\d.]+ \| +[\d.]+ \| +1\.00", r"^gateway /mcp +\| +[\d.]+ \| +[\d.]+ \|"),
    "sandbox_spawn.py": (r"^sandbox\.run +median_ms=[\d.]+ p99_ms=[\d.]+",
                         r"^throughput sandbox\.run +concurrency=\d+ sandboxes_per_s=\d+"),
    "spawn_steps.py": (r"^shim +median_ms=[\d.]+", r"^step netns +median_ms=[\d.]+"),
    "throughput.py": (r"^concurrency \| library tasks/s \| gateway tasks/s", r"^ +4 \| +[\d.]+ \| +[\d.]+ \|",
                      r"^memory phase: \d+ tasks"),
}


def bench_scripts() -> list[Path]:
    """The entry scripts in ``bench/`` (helpers such as ``common.py`` have no ``__main__``)."""
    return sorted(p for p in BENCH.glob("*.py") if _MAIN_BLOCK.search(p.read_text(encoding="utf-8")))


@pytest.mark.parametrize("script", bench_scripts(), ids=lambda p: p.name)
def test_bench_script_runs_in_smoke_mode_and_prints_its_table(script: Path) -> None:
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True,
                         timeout=SMOKE_TIMEOUT_S, cwd=str(REPO))
    took_s = time.monotonic() - start
    report = f"{script.name} --smoke: exit {out.returncode} in {took_s:.1f} s\n{out.stdout}\n{out.stderr[-3000:]}"
    assert out.returncode == 0, report
    lines = out.stdout.splitlines()
    expected = TABLES.get(script.name)
    if expected is None:  # a new script: it printed something with numbers in it
        assert len([line for line in lines if line.strip()]) >= 2, report
        assert any(re.search(r"\d", line) for line in lines), report
        return
    missing = [pattern for pattern in expected if not any(re.search(pattern, line) for line in lines)]
    assert not missing, f"no line matches {missing}\n{report}"


def test_discovery_finds_the_known_scripts_and_skips_helpers() -> None:
    names = {p.name for p in bench_scripts()}
    assert set(TABLES) - {"overload.py"} <= names  # overload.py may still be on its way
    assert "common.py" not in names


# -- the smoke switch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return _load("common")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    return parser


def test_smoke_switch_sets_defaults_from_the_flag_or_the_environment(
        common: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(common.SMOKE_ENV, raising=False)
    full = common.parse_args(_parser(), smoke={"runs": 3}, argv=[])
    assert (full.runs, full.smoke) == (200, False)
    flag = common.parse_args(_parser(), smoke={"runs": 3}, argv=["--smoke"])
    assert (flag.runs, flag.smoke) == (3, True)
    explicit = common.parse_args(_parser(), smoke={"runs": 3}, argv=["--smoke", "--runs", "7"])
    assert explicit.runs == 7  # a flag given explicitly wins
    monkeypatch.setenv(common.SMOKE_ENV, "1")
    env = common.parse_args(_parser(), smoke={"runs": 3}, argv=[])
    assert (env.runs, env.smoke) == (3, True)
    with pytest.raises(ValueError, match="rounds"):
        common.parse_args(_parser(), smoke={"rounds": 1}, argv=[])  # a typo must not pass silently


# -- what the policy bench counts as an error ----------------------------------------------

# Runs until the worker is killed at the deadline: rego-cpp's regex backtracks (~2**40 steps).
_SLOW_POLICY = (
    'decision := {"allow": false, "reasons": ["r"], "rule_ids": ["command.r"], "sandbox": '
    '{"network": "none", "allowed_hosts": [], "timeout_s": 1, "memory_bytes": 1, "pids": 1, '
    '"cpu_seconds": 1, "ro_paths": [], "rw_paths": []}} if not regex.match(`^(a+)+$`, input.s)'
)


def _write_policy(directory: Path, body: str) -> Path:
    (directory / "mcp").mkdir(parents=True)
    (directory / "mcp" / "decision.rego").write_text(f"package mcp\n\nimport rego.v1\n\n{body}\n")
    return directory


def test_policy_bench_tells_deadlines_from_other_engine_errors(tmp_path: Path) -> None:
    """Two callers on one worker whose every evaluation overruns the deadline: each error is
    a deadline (the worker killed at it, or no worker free within it while it is replaced);
    an undefined decision is an error that is not."""
    policy = _load("policy")
    from gateway.policy import EmbeddedEngine

    slow = EmbeddedEngine(_write_policy(tmp_path / "slow", _SLOW_POLICY), workers=1, timeout_s=0.1)
    undefined = EmbeddedEngine(_write_policy(tmp_path / "undefined", "decision := 1 if false"), workers=1)
    try:
        timed_out = policy.measure(slow.evaluate, [{"s": "a" * 40 + "b"}], rounds=1, threads=2, seconds=0.2)
        failed = policy.measure(undefined.evaluate, [{"s": "x"}], rounds=1, threads=2, seconds=0.1)
    finally:
        slow.close(drain_timeout_s=0)
        undefined.close(drain_timeout_s=0)
    assert timed_out["errors"] >= 2 and timed_out["deadline_errors"] == timed_out["errors"], timed_out
    assert timed_out["first_error"].startswith("warm-up: 5003 after "), timed_out
    assert "timed out" in timed_out["first_error"]
    assert failed["errors"] >= 2 and failed["deadline_errors"] == 0, failed
    assert "undefined" in failed["first_error"]


def _load(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module, with ``bench/`` on ``sys.path`` only while it loads
    (for its ``from common import ...``, as when run as a script)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("common", None)
    return module
