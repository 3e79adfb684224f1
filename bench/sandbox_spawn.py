"""Spawn-to-reap cost of /bin/true: directly, via plain bwrap, via sandbox.run (full profile).

Prints, in one run:
- median and p99 latency (ms) of ``/bin/true`` spawned directly, through plain ``bwrap``
  (namespaces + a minimal root, nothing else), and through ``sandbox.run`` with the full
  profile (seccomp deny list, rlimits, read-only root, generated /etc, fd-bound workspace,
  cgroup slot with memory/pids limits when the host has them, a uid per run from a range,
  a network namespace made ahead by a ``NetnsPool``),
  and the ratios (target: sandbox.run / bwrap <= 1.3);
- on cgroup v1, the full profile again with the child joining its slot by process
  (``cgroup.procs``) instead of by thread (``tasks``, what sandbox.run does): the p99 shows
  what the host-wide threadgroup lock of a process move costs (sandbox/cgroup.py);
- sustained throughput (sandboxes/s) with 4 concurrent spawners for plain bwrap and for
  sandbox.run (target: >= 180/s on a 2-core machine).

Numbers only, no asserts. Run as root (drops to a uid range like the gateway):
    python bench/sandbox_spawn.py [--runs 300] [--concurrency 4] [--seconds 5] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from common import Report, parse_args, throughput
from sandbox import CgroupPool, Limits, NetnsPool, RunAs, SandboxSpec, SandboxUnavailable, UidPool, run, set_child_subreaper
from sandbox.cgroup import CgroupSlot
from sandbox.limits import ChildSetup, spawn
from sandbox.mounts import create_workspace

FIRST_UID = 250_000  # a range nothing else on a test machine uses


def _spawn_and_wait(argv: list[str], run_as: RunAs | None) -> None:
    """The baselines start the same way sandbox.run does (the clone(CLONE_VM|CLONE_VFORK)
    shim, dropping to the same uid), so the ratios measure the profile, not the spawn."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = spawn(argv, (null, null, null), [], ChildSetup(rlimits=(), run_as=run_as))
    finally:
        os.close(null)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"{argv[0]} failed: wait status {status}")


def _latencies(fn: Callable[[], None], runs: int) -> list[float]:
    fn()  # warm-up (imports, filter cache, page cache, first cgroup slot)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return sorted(out)


def _joining_by_process() -> CgroupPool:
    """A pool of its own whose slots the child joins through ``cgroup.procs`` (by process)."""
    pool = CgroupPool.create("sandbox-bench-procs")
    acquire = pool.acquire

    def acquire_by_process() -> CgroupSlot:
        slot = acquire()
        slot.join_files = slot.procs_files
        return slot

    pool.acquire = acquire_by_process  # type: ignore[method-assign]
    return pool


def main() -> None:
    """Print latency medians/p99s, ratios, and 4-way throughput of plain bwrap vs sandbox.run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parse_args(parser, smoke={"runs": 3, "seconds": 0.3})
    set_child_subreaper()
    root = os.geteuid() == 0
    uids = UidPool(FIRST_UID, FIRST_UID, args.concurrency) if root else None
    try:
        cgroups: CgroupPool | None = CgroupPool.create("sandbox-bench")
    except SandboxUnavailable as exc:
        print(f"note: no cgroup slots ({exc}); sandbox.run measured without them")
        cgroups = None
    by_process = _joining_by_process() if cgroups is not None and cgroups.version == 1 else None
    netns = NetnsPool(spare=args.concurrency) if root else None
    bwrap = os.path.abspath(shutil.which("bwrap") or "/usr/bin/bwrap")
    holder = tempfile.mkdtemp(prefix="sandbox-bench-")
    os.chmod(holder, 0o711)
    # One workspace per spawner, owned by that spawner's uid, as the gateway does per task.
    specs = []
    run_as_of = []
    for i in range(args.concurrency):
        run_as = uids.acquire() if uids is not None else None
        ws = create_workspace(holder, f"ws-{i}", run_as)
        limits = Limits(timeout_s=30, pids=64 if cgroups else None)
        specs.append(SandboxSpec(argv=("/bin/true",), workspace=ws, run_as=run_as, limits=limits))
        run_as_of.append(run_as)
    plain = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/bin/true"]

    def direct(i: int = 0) -> None:
        _spawn_and_wait(["/bin/true"], run_as_of[i])

    def plain_bwrap(i: int = 0) -> None:
        _spawn_and_wait(plain, run_as_of[i])

    def full(i: int = 0, pool: CgroupPool | None = cgroups) -> None:
        result = run(specs[i], cgroups=pool, netns=netns)
        if result.exit_code != 0:
            raise SystemExit(f"sandbox run failed: {result}")

    paths: dict[str, Callable[[], None]] = {"direct": direct, "bwrap": plain_bwrap, "sandbox.run": full}
    if by_process is not None:
        paths["sandbox.run, join by process"] = lambda: full(0, by_process)

    try:
        medians = {}
        report = Report()
        for name, fn in paths.items():
            samples = _latencies(fn, args.runs)
            if name != "sandbox.run, join by process":
                report.samples(f"spawn: {name}", samples)
            medians[name] = statistics.median(samples)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"{name:12s} median_ms={medians[name]:.2f} p99_ms={p99:.2f} runs={args.runs}")
        base = medians["direct"]
        print(f"ratio bwrap/direct={medians['bwrap'] / base:.1f} "
              f"sandbox.run/direct={medians['sandbox.run'] / base:.1f} "
              f"sandbox.run/bwrap={medians['sandbox.run'] / medians['bwrap']:.2f} (target <= 1.3)")
        report.figure("sandbox start, /bin/true in the full profile (median)", medians["sandbox.run"], "ms",
                      baseline=medians["bwrap"], baseline_name="plain bwrap", target="<= 1.3 x")
        rates = {}
        for name, fn in (("bwrap", plain_bwrap), ("sandbox.run", full)):
            rates[name] = rate = throughput(fn, args.concurrency, args.seconds)
            print(f"throughput {name:12s} concurrency={args.concurrency} sandboxes_per_s={rate:.0f}"
                  + (" (target >= 200)" if name == "sandbox.run" else ""))
        report.figure(f"sandboxes per second, {args.concurrency} spawners", rates["sandbox.run"], "/s",
                      baseline=rates["bwrap"], baseline_name="plain bwrap", target=">= 200 /s")
        report.write(args)
        print(f"cgroups={'v%d %s' % (cgroups.version, ','.join(sorted(cgroups.controllers))) if cgroups else 'none'} "
              f"uid_per_spawner={root} cpus={os.cpu_count()}")
    finally:
        shutil.rmtree(holder, ignore_errors=True)
        for pool in (cgroups, by_process, netns):
            if pool is not None:
                pool.close()


if __name__ == "__main__":
    main()
