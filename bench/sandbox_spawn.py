"""Spawn-to-reap cost of /bin/true: directly, via plain bwrap, via sandbox.run (full profile).

Prints median and p99 in ms for each, and the ratios to the direct spawn. Numbers only, no
asserts. Run as root (drops to uid 65534 like the gateway) or as an unprivileged user:
    python bench/sandbox_spawn.py [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from sandbox import RunAs, SandboxSpec, run, set_child_subreaper

NOBODY = RunAs(65534, 65534)


def _drop() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY.gid, NOBODY.gid, NOBODY.gid)
        os.setresuid(NOBODY.uid, NOBODY.uid, NOBODY.uid)


def _time(fn, runs: int) -> list[float]:
    fn()  # warm-up (imports, filter cache, page cache)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main() -> None:
    """Time /bin/true directly, via plain bwrap and via sandbox.run; print medians, p99s, ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    set_child_subreaper()
    bwrap = shutil.which("bwrap") or "bwrap"
    ws = tempfile.mkdtemp(prefix="sandbox-bench-")
    run_as = NOBODY if os.geteuid() == 0 else None
    if run_as:
        os.chown(ws, run_as.uid, run_as.gid)
    plain = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/bin/true"]
    spec = SandboxSpec(argv=("/bin/true",), workspace=ws, run_as=run_as)
    try:
        cases = {
            "direct": lambda: subprocess.run(["/bin/true"], preexec_fn=_drop, check=True),
            "bwrap": lambda: subprocess.run(plain, preexec_fn=_drop, check=True, env={}),
            "sandbox.run": lambda: _check(run(spec)),
        }
        medians = {}
        for name, fn in cases.items():
            samples = sorted(_time(fn, runs))
            medians[name] = statistics.median(samples)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"{name:12s} median_ms={medians[name]:.2f} p99_ms={p99:.2f} runs={runs}")
        base = medians["direct"]
        print(f"ratio bwrap/direct={medians['bwrap'] / base:.1f} "
              f"sandbox.run/direct={medians['sandbox.run'] / base:.1f} "
              f"sandbox.run/bwrap={medians['sandbox.run'] / medians['bwrap']:.2f}")
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def _check(result) -> None:
    if result.exit_code != 0:
        raise SystemExit(f"sandbox run failed: {result}")


if __name__ == "__main__":
    main()
