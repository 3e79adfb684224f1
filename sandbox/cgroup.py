"""Per-run cgroups: memory (swap included), pids and CPU limits in reusable slots.

``CgroupPool.create(name) -> CgroupPool`` finds this process's own cgroup and makes a
directory ``<name>-<pid>`` below it (on cgroup v2 when v2 has the memory and pids
controllers, else on the v1 hierarchies this host mounts). ``pool.acquire() -> CgroupSlot``
hands out a slot, a leaf cgroup that is created once and reused, so a run pays a few small
writes instead of mkdir/rmdir; ``pool.release(slot)`` takes it back once it is empty.

One run, in this order (``sandbox.runner.run``):

1. ``slot.prepare(memory_bytes=, pids=, cpu_cores=)`` writes the limits, resets the peak
   counters and remembers the event counters (they only ever grow).
2. The forked child, still root, writes ``0`` ("this process") to every path in
   ``slot.join_files`` before it drops privileges and execs bwrap (cgroups(7): a child
   inherits its parent's cgroups, so bwrap and everything in the sandbox are charged here).
   On v1 that is each hierarchy's ``tasks`` file, which moves the calling thread only: the
   child is a single thread (clone without CLONE_THREAD), so that is the whole process,
   and since Linux 6.0 a single-thread move skips the global cgroup_threadgroup_rwsem that
   a ``cgroup.procs`` write takes for writing. Taking it waits for an RCU grace period and
   stalls every fork and exit on the host meanwhile: on this 2-core VM, 23 ms at the p99
   of a spawn, against 2 ms through ``tasks`` (bench/spawn_steps.py). cgroup v2 has no
   per-thread file for a domain cgroup, so there it is ``cgroup.procs``.
3. ``slot.collect() -> CgroupStats`` after the run: OOM kills, times pids.max refused a
   fork, peak memory.
4. ``slot.drain()`` SIGKILLs anything still in the slot and waits until it is empty.

The limits (cgroup v2: Documentation/admin-guide/cgroup-v2.rst; v1: cgroup-v1/memory.rst,
pids.rst, sched-bwc.rst):

memory   v2 ``memory.max`` with ``memory.swap.max = 0`` and ``memory.oom.group = 1`` (an
         OOM kill takes the whole sandbox); v1 ``memory.limit_in_bytes`` with
         ``memory.memsw.limit_in_bytes`` equal to it (memory + swap, i.e. no swap).
         Controller "swap" is reported only when the swap file exists.
pids     ``pids.max`` = the run's pids + 2 (bwrap's monitor and its pid 1 live in the slot).
cpu      v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``: cores as a quota.

Errors: ``SandboxUnavailable`` from ``create`` (with the reason: no controller, not
writable); ``SandboxSetupError`` from ``prepare`` when a limit cannot be written.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.errors import SandboxSetupError, SandboxUnavailable

__all__ = ["CgroupPool", "CgroupSlot", "CgroupStats"]

_PERIOD_US = 100_000  # CFS period for the cpu quota, microseconds
_BWRAP_PIDS = 2  # bwrap's monitor and the sandbox's pid 1 are in the slot too
_DRAIN_WAIT_S = 5.0
_V1_HIERARCHIES = ("memory", "pids", "cpu", "cpuacct")


@dataclass(frozen=True)
class CgroupStats:
    """What the slot saw during one run.

    oom_kills            processes the kernel OOM-killed because of memory.max / limit
    pids_max_hits        forks refused because pids.max was reached
    memory_peak_bytes    peak memory (RSS + page cache + kernel memory) of the whole run,
                         None when the kernel cannot reset the peak per run
    """

    oom_kills: int
    pids_max_hits: int
    memory_peak_bytes: int | None


class CgroupSlot:
    """One reusable leaf cgroup (one directory per v1 hierarchy, or one v2 directory)."""

    def __init__(self, version: int, dirs: dict[str, str], controllers: frozenset[str]) -> None:
        self.version = version
        self._dirs = dirs  # controller ("unified" on v2) -> directory
        self._controllers = controllers
        self._oom_before = 0
        self._pids_before = 0
        self._peak_fd: int | None = None
        self.procs_files: tuple[str, ...] = tuple(
            sorted({os.path.join(d, "cgroup.procs") for d in dirs.values()})
        )
        # What the spawned child writes "0" into (module docstring, step 2).
        self.join_files: tuple[str, ...] = tuple(
            sorted({os.path.join(d, "tasks" if version == 1 else "cgroup.procs") for d in dirs.values()})
        )

    # -- one run ----------------------------------------------------------------------

    def prepare(self, *, memory_bytes: int, pids: int | None, cpu_cores: float | None) -> None:
        """Write this run's limits (``None``: no cap) and reset the peak.
        Raises ``SandboxSetupError``."""
        try:
            if self.version == 2:
                self._prepare_v2(memory_bytes, pids, cpu_cores)
            else:
                self._prepare_v1(memory_bytes, pids, cpu_cores)
        except OSError as exc:
            raise SandboxSetupError(f"cannot set cgroup limits in {self._dirs}: {exc}") from exc
        self._oom_before = self._oom_kills()
        self._pids_before = self._pids_max_hits()

    def collect(self) -> CgroupStats:
        """Counters of the run since ``prepare`` (call after the run, before ``drain``)."""
        return CgroupStats(
            oom_kills=self._oom_kills() - self._oom_before,
            pids_max_hits=self._pids_max_hits() - self._pids_before,
            memory_peak_bytes=self._memory_peak(),
        )

    def drain(self) -> bool:
        """SIGKILL whatever is left in the slot and wait (up to 5 s) until it is empty.
        Returns True when empty; a False slot must not be reused."""
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        deadline = time.monotonic() + _DRAIN_WAIT_S
        while True:
            pids = self.pids()
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            # cgroup.kill (v2, Linux 5.14) kills the whole slot at once; else one by one.
            if not (self.version == 2 and _write_ok(self._path("unified", "cgroup.kill"), "1")):
                for pid in pids:
                    _kill_if_member(pid, self.procs_files)
            time.sleep(0.01)

    def pids(self) -> set[int]:
        """Processes in the slot now (all hierarchies)."""
        return set().union(*(_pids_in(path) for path in self.procs_files))

    def remove(self) -> None:
        """rmdir the slot (it must be empty); errors are ignored (a later sweep retries)."""
        for d in sorted(set(self._dirs.values())):
            try:
                os.rmdir(d)
            except OSError:
                pass

    # -- v2 ---------------------------------------------------------------------------

    def _prepare_v2(self, memory_bytes: int, pids: int | None, cpu_cores: float | None) -> None:
        if "memory" in self._controllers:
            _write(self._path("unified", "memory.max"), str(memory_bytes))
            if "swap" in self._controllers:
                _write(self._path("unified", "memory.swap.max"), "0")
            _write_ok(self._path("unified", "memory.oom.group"), "1")
            # memory.peak is reset per open file (Linux 6.12): keep the fd for collect().
            fd = os.open(self._path("unified", "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
            try:
                os.write(fd, b"reset\n")
                self._peak_fd = fd
            except OSError:
                os.close(fd)
        if "pids" in self._controllers:
            _write(self._path("unified", "pids.max"), _pids_max(pids))
        if "cpu" in self._controllers:
            quota = "max" if cpu_cores is None else str(max(1000, int(cpu_cores * _PERIOD_US)))
            _write(self._path("unified", "cpu.max"), f"{quota} {_PERIOD_US}")

    # -- v1 ---------------------------------------------------------------------------

    def _prepare_v1(self, memory_bytes: int, pids: int | None, cpu_cores: float | None) -> None:
        if "memory" in self._controllers:
            limit = self._path("memory", "memory.limit_in_bytes")
            memsw = self._path("memory", "memory.memsw.limit_in_bytes")
            if "swap" not in self._controllers:
                _write(limit, str(memory_bytes))
            else:
                # memsw >= limit at every moment: raise memsw first when growing.
                try:
                    _write(limit, str(memory_bytes))
                    _write(memsw, str(memory_bytes))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    _write(memsw, str(memory_bytes))
                    _write(limit, str(memory_bytes))
                _write(self._path("memory", "memory.memsw.max_usage_in_bytes"), "0")
            _write(self._path("memory", "memory.max_usage_in_bytes"), "0")
        if "pids" in self._controllers:
            _write(self._path("pids", "pids.max"), _pids_max(pids))
        if "cpu" in self._controllers:
            quota = -1 if cpu_cores is None else max(1000, int(cpu_cores * _PERIOD_US))
            _write(self._path("cpu", "cpu.cfs_period_us"), str(_PERIOD_US))
            _write(self._path("cpu", "cpu.cfs_quota_us"), str(quota))

    # -- counters ---------------------------------------------------------------------

    def _oom_kills(self) -> int:
        if "memory" not in self._controllers:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(self._path("unified" if self.version == 2 else "memory", name), "oom_kill")

    def _pids_max_hits(self) -> int:
        if "pids" not in self._controllers:
            return 0
        return _keyed(self._path("unified" if self.version == 2 else "pids", "pids.events"), "max")

    def _memory_peak(self) -> int | None:
        if "memory" not in self._controllers:
            return None
        if self.version == 2:
            if self._peak_fd is None:
                return None
            os.lseek(self._peak_fd, 0, os.SEEK_SET)
            return int(os.read(self._peak_fd, 64).strip() or 0)
        with open(self._path("memory", "memory.max_usage_in_bytes")) as fh:
            return int(fh.read().strip())

    def _path(self, controller: str, name: str) -> str:
        return os.path.join(self._dirs[controller], name)


class CgroupPool:
    """Reusable cgroup slots under ``<own cgroup>/<name>-<pid>`` (see the module docstring).

    ``version`` is 1 or 2; ``controllers`` the limits this host enforces, a subset of
    {"memory", "swap", "pids", "cpu"}. Thread-safe.
    """

    def __init__(self, version: int, parents: dict[str, str], controllers: frozenset[str]) -> None:
        self.version = version
        self.controllers = controllers
        self._parents = parents
        self._lock = threading.Lock()
        self._free: list[CgroupSlot] = []
        self._next = 0

    @classmethod
    def create(cls, name: str = "mcp-sandbox") -> CgroupPool:
        """Find the cgroup hierarchy, sweep leftovers of dead processes, make our parent.

        Raises ``SandboxUnavailable`` saying why there is no usable memory or pids
        controller (e.g. not root and no delegation, or the controllers not mounted).
        """
        mounts = _cgroup_mounts()
        own = _own_cgroups()
        v2 = _v2_parent(mounts, own, name)
        if v2 is not None:
            return v2
        return _v1_parent(mounts, own, name)

    def acquire(self) -> CgroupSlot:
        """A free slot, made on first use (mkdir once, then reused)."""
        with self._lock:
            if self._free:
                return self._free.pop()
            index = self._next
            self._next += 1
        dirs = {}
        for controller, parent in self._parents.items():
            path = os.path.join(parent, f"slot-{index}")
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise SandboxSetupError(f"cannot create cgroup {path}: {exc}") from exc
            dirs[controller] = path
        return CgroupSlot(self.version, dirs, self.controllers)

    def release(self, slot: CgroupSlot) -> None:
        """Give a slot back; it is drained first, and dropped (rmdir tried) if that fails."""
        if slot.drain():
            with self._lock:
                self._free.append(slot)
        else:
            slot.remove()

    def close(self) -> None:
        """Drain and remove every free slot and our parent directories."""
        with self._lock:
            slots, self._free = self._free, []
        for slot in slots:
            slot.drain()
            slot.remove()
        for parent in set(self._parents.values()):
            _remove_tree(parent)


# ---------------------------------------------------------------- discovery


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """``[(fstype, mount point, mount root, super options), ...]`` from mountinfo(5)."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            point = fields[4].replace("\\040", " ")
            out.append((rfields[0], point, fields[3], set(rfields[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """``{controller: path}`` from /proc/self/cgroup; the v2 entry is keyed "unified"."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                out["unified"] = path
            for c in controllers.split(","):
                if c:
                    out[c] = path
    return out


def _under(point: str, root: str, path: str) -> str:
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(point, rel.lstrip("/"))


def _v2_parent(mounts, own: dict[str, str], name: str) -> CgroupPool | None:  # type: ignore[no-untyped-def]
    v2 = [(p, r) for fstype, p, r, _ in mounts if fstype == "cgroup2"]
    if not v2 or "unified" not in own:
        return None
    point, root = v2[0]
    base = _under(point, root, own["unified"])
    available = set(_read(os.path.join(base, "cgroup.controllers")).split())
    if not {"memory", "pids"} <= available:
        return None  # hybrid host: the controllers live on v1
    wanted = [c for c in ("memory", "pids", "cpu") if c in available]
    enable = " ".join(f"+{c}" for c in wanted)
    try:
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # "No internal processes" (cgroup-v2.rst): a non-root cgroup with processes
            # cannot give controllers to children. Move ourselves (never anyone else) into
            # a leaf first, as runc and systemd do; a cgroup shared with other processes is
            # not ours to rearrange.
            others = {int(p) for p in _read(os.path.join(base, "cgroup.procs")).split()} - {os.getpid()}
            if others:
                raise SandboxUnavailable(
                    f"cgroup v2 {base} holds other processes ({len(others)}); give the gateway a "
                    "cgroup of its own (systemd: Delegate=yes)"
                ) from exc
            leaf = os.path.join(base, "supervisor")
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
        _sweep(base, name)
        parent = os.path.join(base, f"{name}-{os.getpid()}")
        os.makedirs(parent, exist_ok=True)
        _write(os.path.join(parent, "cgroup.subtree_control"), enable)
    except OSError as exc:
        raise SandboxUnavailable(f"cgroup v2 at {base} is not delegated to this process: {exc}") from exc
    controllers = set(wanted)
    if os.path.exists(os.path.join(parent, "memory.swap.max")) or _probe_child_file(parent, "memory.swap.max"):
        controllers.add("swap")
    return CgroupPool(2, {"unified": parent}, frozenset(controllers))


def _v1_parent(mounts, own: dict[str, str], name: str) -> CgroupPool:  # type: ignore[no-untyped-def]
    parents: dict[str, str] = {}
    for controller in _V1_HIERARCHIES:
        match = [(p, r) for fstype, p, r, opts in mounts if fstype == "cgroup" and controller in opts]
        if not match or controller not in own:
            continue
        point, root = match[0]
        base = _under(point, root, own[controller])
        try:
            _sweep(base, name)
            parent = os.path.join(base, f"{name}-{os.getpid()}")
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            if controller in ("memory", "pids"):
                raise SandboxUnavailable(f"cannot create cgroups under {base}: {exc}") from exc
            continue
        parents[controller] = parent
    missing = {"memory", "pids"} - set(parents)
    if missing:
        for parent in parents.values():
            _remove_tree(parent)
        raise SandboxUnavailable(
            f"no usable cgroup controller for {', '.join(sorted(missing))} (neither cgroup v2 "
            "with them enabled nor a v1 hierarchy is mounted)"
        )
    controllers = {"memory", "pids"}
    if os.path.exists(os.path.join(parents["memory"], "memory.memsw.limit_in_bytes")):
        controllers.add("swap")
    if "cpu" in parents:
        controllers.add("cpu")
    return CgroupPool(1, parents, frozenset(controllers))


def _probe_child_file(parent: str, name: str) -> bool:
    path = os.path.join(parent, "slot-probe")
    try:
        os.makedirs(path, exist_ok=True)
        return os.path.exists(os.path.join(path, name))
    finally:
        try:
            os.rmdir(path)
        except OSError:
            pass


_OWNER = re.compile(r"-(\d+)$")


def _sweep(base: str, name: str) -> None:
    """Remove ``<name>-<pid>`` directories left by gateways that died without cleaning up."""
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.startswith(name + "-"):
            continue
        match = _OWNER.search(entry)
        if match is None or _alive(int(match.group(1))):
            continue
        _remove_tree(os.path.join(base, entry))


def _remove_tree(parent: str) -> None:
    """Drain and rmdir ``parent``'s slots (any hierarchy, either version), then ``parent``."""
    try:
        children = [os.path.join(parent, e) for e in os.listdir(parent)
                    if os.path.isdir(os.path.join(parent, e))]
    except FileNotFoundError:
        return
    for child in children:
        # As a v1 slot: kill what cgroup.procs lists, which both versions have.
        slot = CgroupSlot(1, {"slot": child}, frozenset())
        slot.drain()
        slot.remove()
    try:
        os.rmdir(parent)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_if_member(pid: int, procs_files: Iterable[str]) -> None:
    """SIGKILL ``pid`` only if, pinned by a pidfd, it is still in one of our cgroups (a pid
    read from cgroup.procs may have exited and been reused by then)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if any(pid in _pids_in(path) for path in procs_files):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _pids_in(procs_file: str) -> set[int]:
    return {int(p) for p in _read(procs_file).split()}


def _pids_max(pids: int | None) -> str:
    return "max" if pids is None else str(pids + _BWRAP_PIDS)


def _keyed(path: str, key: str) -> int:
    """Value of ``key N`` in a flat-keyed cgroup file (memory.events, pids.events, ...)."""
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_ok(path: str, value: str) -> bool:
    try:
        _write(path, value)
    except OSError:
        return False
    return True
