"""Resource bombs against the real limits: memory and pids cgroups, CPU quota, rlimits,
the /tmp tmpfs, the output caps. Every bomb uses small limits and ends within ~1 s; each
asserts the exact ``limit_reason`` / signal / errno, and that the host kept working."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.security.conftest import (
    CGROUP_POOL_NAME,
    cgroup_dirs,
    host_pids_with,
    sample_while,
    uid_process_count,
)

MiB = 1 << 20


def test_memory_bomb_is_oom_killed_by_the_cgroup(sbx, pool):
    # RLIMIT_AS far above the cgroup limit, so the cgroup is what stops it.
    r = sbx("python3", "-c", "x = bytearray(256 << 20)", memory_bytes=64 * MiB, address_space_bytes=1 << 30)
    assert (r.exit_code, r.signal, r.limit_reason, r.setup_error) == (137, 9, "oom", None)
    assert 32 * 1024 <= r.usage.max_memory_kb <= 64 * 1024  # the run's peak, capped at the limit


def test_memory_bomb_touching_pages_is_oom_killed(sbx, pool):
    code = "x = bytearray(256 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1"
    r = sbx("python3", "-c", code, memory_bytes=64 * MiB, address_space_bytes=1 << 30)
    assert (r.exit_code, r.signal, r.limit_reason) == (137, 9, "oom")


def test_memory_bomb_without_cgroup_hits_rlimit_as(sbx):
    r = sbx("python3", "-c", "x = bytearray(256 << 20)", memory_bytes=64 * MiB, cgroups=False)
    assert (r.exit_code, r.signal, r.limit_reason) == (1, None, None)
    assert r.stderr.endswith(b"MemoryError\n")


# Every process forks until 0.7 s after the start (the same instant for all: children inherit
# ``start``), then sleeps until 1.0 s and exits: the run ends by itself, so the pids limit
# (not the wall clock) is what it reports, and no fork races an exit while the host counts.
FORK_BOMB = (
    "import os, time\nstart = time.monotonic()\n"
    "while time.monotonic() < start + 0.7:\n"
    "    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    "time.sleep(max(0.0, start + 1.0 - time.monotonic()))\n"
)


def test_fork_bomb_is_held_at_the_pids_limit(sbx, run_as, pool):
    t0 = time.monotonic()
    r, counts = sample_while(lambda: uid_process_count(run_as.uid),
                             lambda: sbx("python3", "-c", FORK_BOMB, pids=16, timeout_s=10))
    peak = max(counts, default=0)
    assert (r.exit_code, r.limit_reason, r.setup_error) == (0, "pids", None)
    assert 0 < peak <= 16 + 2  # the command's 16 + bwrap's monitor and pid 1, seen from the host
    assert time.monotonic() - t0 < 5
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    assert sbx("echo", "ok").stdout == b"ok\n"  # and start the next sandbox


def test_shell_fork_bomb_is_held_at_the_pids_limit(sbx, pool):
    # The bomb runs in a subshell: dash exits 2 when one of its own forks fails, and whether
    # the outer shell's would is a race; the outer shell forks once, before the limit bites.
    r = sbx("sh", "-c", "(b() { b | b & }; b; wait); exit 0", pids=16, timeout_s=10)
    assert (r.exit_code, r.limit_reason) == (0, "pids")
    assert b"Cannot fork" in r.stderr


def test_thread_bomb_counts_against_the_pids_limit(sbx, pool):
    code = ("import threading, time\nn = 0\n"
            "while True:\n"
            "    try:\n        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
            "    except RuntimeError:\n        break\n"
            "    n += 1\nprint(n)\n")
    r = sbx("python3", "-c", code, pids=8, timeout_s=10)
    # pids.max = 8 + 2; bwrap's monitor, pid 1 and python's main thread use 3 of them.
    assert (r.stdout, r.limit_reason) == (b"7\n", "pids")


def test_every_process_and_thread_of_a_run_is_in_its_slot_on_every_hierarchy(sbx, run_as, pool):
    # The spawned child joins by thread on cgroup v1 (sandbox.cgroup): what it starts after
    # that, processes and their threads, must all be charged to the slot everywhere.
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\ntime.sleep(30)\n"
    cancel = threading.Event()
    with ThreadPoolExecutor(1) as pool_thread:
        running = pool_thread.submit(sbx, "sh", "-c", f"sleep 30 & python3 -c '{code}'", cancel=cancel, timeout_s=20)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                threads = _threads_of_uid(run_as.uid)  # the host's view: tid -> pid
                if len(set(threads.values())) >= 5 and len(threads) >= 6:
                    break  # bwrap's monitor and pid 1, sh, sleep, python and its thread
                time.sleep(0.02)
            else:
                pytest.fail(f"the run never got its processes going: {threads}")
            listed = {}
            for parent in cgroup_dirs(os.getpid(), CGROUP_POOL_NAME):
                for slot in sorted(os.listdir(parent)):
                    name = "tasks" if os.path.exists(os.path.join(parent, slot, "tasks")) else "cgroup.threads"
                    path = os.path.join(parent, slot, name)
                    if slot.startswith("slot-") and os.path.exists(path):
                        with open(path) as fh:
                            tids = {int(t) for t in fh.read().split()}
                        if tids & set(threads):
                            listed[parent] = tids
            assert sorted(listed) == sorted(cgroup_dirs(os.getpid(), CGROUP_POOL_NAME))
            for parent, tids in listed.items():
                assert set(threads) <= tids, f"{parent}: {sorted(set(threads) - tids)} not in the slot"
        finally:
            cancel.set()
        assert running.result(timeout=10).limit_reason == "cancelled"


def _threads_of_uid(uid: int) -> dict[int, int]:
    """``{tid: pid}`` of every thread on the host whose process runs as ``uid``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            found.update({int(tid): int(pid) for tid in os.listdir(f"/proc/{pid}/task")})
        except OSError:
            continue  # exited meanwhile
    return found


def test_cpu_bomb_is_stopped_by_rlimit_cpu(probe):
    out = probe.raw("spin", 5000, cpu_seconds=1)
    assert (out.exit_code, out.signal, out.limit_reason) == (128 + 24, 24, "cpu_time")  # SIGXCPU
    assert 900 <= out.usage.cpu_time_ms < 2500


def test_cpu_quota_holds_a_spinning_process_to_its_share(probe, pool):
    # 0.2 cores for ~1 s of wall clock: ~200 ms of CPU; unthrottled it would be ~1000 ms.
    t0 = time.monotonic()
    out = probe.raw("spin", 1000, cpu_cores=0.2)
    assert (out.exit_code, out.limit_reason) == (0, None)
    cpu_ms = int(out.stdout.decode().removeprefix("cpu_ms=").strip())
    assert 20 <= cpu_ms <= 450, cpu_ms
    assert out.usage.cpu_time_ms <= 500
    assert time.monotonic() - t0 >= 1.0


def test_file_size_bomb_is_stopped_by_rlimit_fsize(probe):
    out = probe.raw("fill", "/workspace/big", 65536, file_size_bytes=MiB)
    assert (out.exit_code, out.signal, out.limit_reason) == (128 + 25, 25, "file_size")  # SIGXFSZ


def test_fd_bomb_gets_emfile_at_open_files(probe):
    # fds 0-2 are open, so 32 - 3 more succeed.
    assert probe("fdbomb", open_files=32).pair == (29, errno.EMFILE)


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
@pytest.mark.parametrize("path", ["/tmp/f", "/dev/shm/f"])
def test_tmpfs_fills_up_at_tmp_size(probe, path, cgroups):
    out = probe("fill", path, 65536, cgroups=cgroups, tmp_size_bytes=MiB, file_size_bytes=8 * MiB)
    assert out.pair == (MiB, errno.ENOSPC)


def test_tmpfs_filling_the_memory_cgroup_is_reported_as_oom(probe, pool):
    # tmpfs pages are charged to the run but owned by no process: the OOM killer then picks
    # bwrap itself; the run still reads as ended by the memory limit, not a setup failure.
    out = probe.raw("fill", "/tmp/f", 65536, memory_bytes=32 * MiB, tmp_size_bytes=256 * MiB)
    assert (out.setup_error, out.exit_code, out.limit_reason) == (None, 137, "oom")
    assert out.usage.max_memory_kb <= 32 * 1024


def test_dev_is_read_only(probe):
    # bwrap's /dev is a tmpfs sized at half of host RAM; it is remounted read-only, so only
    # /dev/shm (sized like /tmp) takes files.
    out = probe("fill", "/dev/f", 65536, cgroups=False, tmp_size_bytes=MiB, file_size_bytes=4 * MiB)
    assert (out.ret, out.errno) == (-1, errno.EROFS)


def test_output_flood_is_truncated_and_returns_promptly(sbx):
    t0 = time.monotonic()
    r = sbx("yes", output_bytes=64 * 1024, timeout_s=1.0)
    assert time.monotonic() - t0 < 3.0
    assert (r.exit_code, r.limit_reason) == (137, "wall_timeout")  # the wall clock wins
    assert (len(r.stdout), r.stdout_truncated, r.stderr_truncated) == (64 * 1024, True, False)
    assert r.stdout == b"y\n" * (32 * 1024)


def test_daemonizing_sleeper_is_killed_with_the_run(sbx, probe):
    probe.install()
    marker = f"daemon-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    # The double-forked, setsid, stdio-closed grandchild sleeps 30 s while the command waits
    # 0.5 s: the host must see it during the run and nothing of it once run() has returned.
    r, samples = sample_while(lambda: host_pids_with(marker),
                              lambda: sbx("sh", "-c", f"/workspace/probe daemon 30000 {marker}; sleep 0.5"),
                              interval_s=0.02)
    seen = [pid for pids in samples for pid in pids]
    assert seen, "the daemon never ran: the test would prove nothing"
    assert (r.exit_code, r.limit_reason) == (0, None)
    assert r.stdout.startswith(b"ret=") and r.stdout.endswith(b" errno=0\n")
    assert time.monotonic() - t0 < 5.0
    assert host_pids_with(marker) == []


# resource(2) numbers on x86_64 -> a value above what the run was given
RAISE_HARD_LIMIT = {
    "RLIMIT_CPU": (0, 1 << 40),
    "RLIMIT_FSIZE": (1, 1 << 40),
    "RLIMIT_CORE": (4, 1 << 30),
    "RLIMIT_NPROC": (6, 100_000),
    "RLIMIT_NOFILE": (7, 4096),
    "RLIMIT_AS": (9, 1 << 40),
}


@pytest.mark.parametrize("name", sorted(RAISE_HARD_LIMIT))
def test_raising_a_hard_limit_is_eperm(probe, name):
    # Set while still root, soft == hard; raising a hard limit needs CAP_SYS_RESOURCE in the
    # initial user namespace.
    resource, value = RAISE_HARD_LIMIT[name]
    assert probe("setrlimit", resource, value, uid_process_cap=64).pair == (-1, errno.EPERM)


def test_lowering_a_limit_is_allowed(probe):
    assert probe("setrlimit", 7, 16).pair == (0, 0)
