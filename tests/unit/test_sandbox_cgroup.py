"""Cgroup slot file protocol (names and formats from cgroup-v2.rst and cgroup-v1 docs).

The real v1 hierarchy is exercised by the containment suite on this host; v2 is checked
here against a directory laid out like a v2 leaf, which fixes the file names, the values
written and how counters are read, since this host's controllers live on v1.
"""

from __future__ import annotations

from pathlib import Path

from sandbox.cgroup import CgroupSlot


def _leaf(tmp_path: Path, files: dict[str, str]) -> Path:
    # Written files start empty: cgroupfs ignores the offset, a regular file does not truncate.
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    return tmp_path


def test_v2_prepare_writes_limits_and_collect_reads_deltas(tmp_path):
    leaf = _leaf(tmp_path, {
        "memory.max": "", "memory.swap.max": "", "memory.oom.group": "",
        "memory.peak": "", "pids.max": "", "cpu.max": "",
        "memory.events": "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n", "pids.events": "max 5\n",
        "cgroup.procs": "",
    })
    slot = CgroupSlot(2, {"unified": str(leaf)}, frozenset({"memory", "swap", "pids", "cpu"}))
    assert slot.procs_files == slot.join_files == (str(leaf / "cgroup.procs"),)
    slot.prepare(memory_bytes=64 << 20, pids=10, cpu_cores=0.5)
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "pids.max").read_text() == "12"  # + bwrap's monitor and pid 1
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    # The run: one more OOM kill, two refused forks, a peak the kernel reports via the fd.
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 3\noom_kill 3\n")
    (leaf / "pids.events").write_text("max 7\n")
    (leaf / "memory.peak").write_text(str(5 << 20) + "\n")
    stats = slot.collect()
    assert (stats.oom_kills, stats.pids_max_hits, stats.memory_peak_bytes) == (1, 2, 5 << 20)
    assert slot.drain() is True  # cgroup.procs is empty


def test_v2_without_limits_writes_max(tmp_path):
    leaf = _leaf(tmp_path, {"pids.max": "", "cpu.max": "", "pids.events": "max 0\n", "cgroup.procs": ""})
    slot = CgroupSlot(2, {"unified": str(leaf)}, frozenset({"pids", "cpu"}))
    slot.prepare(memory_bytes=1 << 30, pids=None, cpu_cores=None)
    assert (leaf / "pids.max").read_text() == "max"
    assert (leaf / "cpu.max").read_text() == "max 100000"
    assert slot.collect().memory_peak_bytes is None


def test_v1_prepare_orders_memsw_and_reads_oom_control(tmp_path):
    mem, pids = tmp_path / "memory", tmp_path / "pids"
    mem.mkdir()
    pids.mkdir()
    _leaf(mem, {"memory.limit_in_bytes": "", "memory.memsw.limit_in_bytes": "",
                "memory.memsw.max_usage_in_bytes": "", "memory.max_usage_in_bytes": "",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n", "cgroup.procs": ""})
    _leaf(pids, {"pids.max": "", "pids.events": "max 1\n", "cgroup.procs": ""})
    slot = CgroupSlot(1, {"memory": str(mem), "pids": str(pids)}, frozenset({"memory", "swap", "pids"}))
    # The child joins by thread (it is one): no host-wide threadgroup lock (module docstring).
    assert slot.join_files == (str(mem / "tasks"), str(pids / "tasks"))
    slot.prepare(memory_bytes=1 << 20, pids=3, cpu_cores=None)
    assert (mem / "memory.limit_in_bytes").read_text() == str(1 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(1 << 20)
    assert (mem / "memory.max_usage_in_bytes").read_text() == "0"  # peak reset
    assert (pids / "pids.max").read_text() == "5"
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    (mem / "memory.max_usage_in_bytes").write_text(str(3 << 20))
    stats = slot.collect()
    assert (stats.oom_kills, stats.pids_max_hits, stats.memory_peak_bytes) == (1, 0, 3 << 20)
