"""Where spawn time goes: fork + preexec_fn versus the clone(CLONE_VM|CLONE_VFORK) shim in a
process the size of the gateway, and the latency of the child's costly steps.

Prints, for ``/bin/true``:
- median wall time and parent system time per spawn with ``subprocess`` + ``preexec_fn``
  (fork: page tables of the whole process are copied) and with ``sandbox.limits.spawn``;
- median / p99 / max of a shim spawn with no step, with ``unshare(CLONE_NEWNET)``, and with a
  cgroup join per hierarchy, through ``cgroup.procs`` and (v1) ``tasks``: a ``cgroup.procs``
  write takes cgroup_threadgroup_rwsem for writing, a single thread's move does not.

Numbers only, no asserts. Run as root: ``python bench/spawn_steps.py [--runs 300] [--smoke]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable

from common import parse_args

import gateway.app  # noqa: F401  (the gateway's imports: the parent is as large as the gateway)
from sandbox import CgroupPool, RunAs, SandboxUnavailable
from sandbox.limits import ChildSetup, spawn

RUN_AS = RunAs(250_900, 250_900)


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median_ms={statistics.median(ordered):.2f} p99_ms={p99:.2f} max_ms={ordered[-1]:.2f}"


def _timed(fn: Callable[[], None], runs: int) -> tuple[list[float], float]:
    """Wall times (ms) of ``runs`` calls and the parent's system time per call (ms)."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples, (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / runs * 1000.0


def main() -> None:
    """Print fork-versus-shim costs and per-step spawn latencies."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    runs = parse_args(parser, smoke={"runs": 3}).runs
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def shim(setup: ChildSetup) -> Callable[[], None]:
        def go() -> None:
            os.waitpid(spawn(["/bin/true"], (null, null, null), [], setup), 0)
        return go

    def forked() -> None:
        subprocess.run(["/bin/true"], preexec_fn=lambda: None, check=True)

    rss = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
    print(f"parent VmRSS_kb={rss}")
    for name, fn in (("fork+preexec_fn", forked), ("shim", shim(ChildSetup(rlimits=())))):
        samples, sys_ms = _timed(fn, runs)
        print(f"{name:16s} {_stats(samples)} parent_sys_ms={sys_ms:.2f}")

    steps = {"no step": ChildSetup(rlimits=(), run_as=RUN_AS),
             "netns": ChildSetup(rlimits=(), new_netns=True, run_as=RUN_AS)}
    pool = None
    try:
        pool = CgroupPool.create("spawn-steps")
    except SandboxUnavailable as exc:
        print(f"note: no cgroups ({exc})")
    slot = pool.acquire() if pool is not None else None
    try:
        if slot is not None:
            slot.prepare(memory_bytes=1 << 30, pids=None, cpu_cores=None)
            # By process (cgroup.procs) and, on v1, by thread (tasks: what sandbox.run uses).
            for path in sorted({*slot.procs_files, *slot.join_files}):
                name = f"join {path.split('/')[4]} {os.path.basename(path)}"
                steps[name] = ChildSetup(rlimits=(), cgroup_join=(path,), run_as=RUN_AS)
            steps["join all cgroup.procs"] = ChildSetup(rlimits=(), cgroup_join=slot.procs_files, run_as=RUN_AS)
            steps["join all (sandbox.run)"] = ChildSetup(rlimits=(), cgroup_join=slot.join_files, run_as=RUN_AS)
        for name, setup in steps.items():
            samples, _ = _timed(shim(setup), runs)
            print(f"step {name:26s} {_stats(samples)}")
    finally:
        if pool is not None and slot is not None:
            pool.release(slot)
            pool.close()
        os.close(null)


if __name__ == "__main__":
    main()
