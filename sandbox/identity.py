"""One host uid/gid per running sandbox, from a range reserved for sandboxes (as isolate does).

``UidPool(first_uid, first_gid, count)``: ``acquire(prefer=None) -> RunAs`` hands out the
pair ``(first_uid + i, first_gid + i)`` of a free index ``i`` (that of uid ``prefer`` when it
is free, so a reused workspace can keep its owner); ``release(run_as)`` returns it
once the run is over (the runner returns only after every process of the run is reaped, so
a released uid owns no process). Two concurrent runs never share a uid, which matters for
more than file permissions: the owner uid of a user namespace holds every capability
inside it when acting from the parent namespace (user_namespaces(7)), so any other process
running as a sandbox's uid could ptrace or setns into that sandbox. For the same reason
``busy_uids(pool)`` lists host processes already running with a uid of the range: a
gateway must refuse to start on a range something else uses.

RLIMIT_NPROC is per real uid, so with a uid of its own a run's process cap is its own too.
"""

from __future__ import annotations

import os
import threading
import time

from sandbox.errors import SandboxSetupError
from sandbox.spec import RunAs

__all__ = ["UidPool", "busy_uids"]


class UidPool:
    """Dedicated uid/gid pairs ``[first, first + count)``; thread-safe.

    Raises ``SandboxSetupError`` from the constructor for a range that includes uid/gid 0
    or this process's own uid, and from ``acquire`` when every pair is in use.
    """

    def __init__(self, first_uid: int, first_gid: int, count: int) -> None:
        if count < 1:
            raise SandboxSetupError("the sandbox uid range must hold at least one uid")
        if first_uid < 1 or first_gid < 1:
            raise SandboxSetupError("the sandbox uid/gid range must not include 0 (root)")
        if first_uid <= os.geteuid() < first_uid + count:
            raise SandboxSetupError(f"the sandbox uid range includes this process's uid {os.geteuid()}")
        self.first_uid = first_uid
        self.first_gid = first_gid
        self.count = count
        self._lock = threading.Lock()
        # FIFO: the longest-idle pair is reused first.
        self._free = list(range(count))

    def acquire(self, prefer: int | None = None) -> RunAs:
        """A pair no running sandbox has: the pair of uid ``prefer`` when that uid is in
        the pool and free (a reused workspace already owned by it then needs no chown),
        else the longest-idle free pair. Raises ``SandboxSetupError`` when none is free."""
        with self._lock:
            if not self._free:
                raise SandboxSetupError(f"all {self.count} sandbox uids are in use")
            if prefer is not None and prefer in self and prefer - self.first_uid in self._free:
                index = prefer - self.first_uid
                self._free.remove(index)
            else:
                index = self._free.pop(0)
        return RunAs(self.first_uid + index, self.first_gid + index)

    def release(self, run_as: RunAs) -> None:
        """Return a pair from ``acquire``."""
        index = run_as.uid - self.first_uid
        if not 0 <= index < self.count or run_as.gid != self.first_gid + index:
            raise ValueError(f"{run_as} is not from this pool")
        with self._lock:
            if index not in self._free:
                self._free.append(index)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first_uid <= uid < self.first_uid + self.count


def busy_uids(pool: UidPool, *, settle_s: float = 3.0) -> dict[int, int]:
    """``{pid: uid}`` of live host processes whose real, effective or saved uid is in
    ``pool`` (from /proc/PID/status, proc(5)); zombies and processes that vanish while
    reading are skipped. Sandboxes of a gateway that was just killed die by PDEATHSIG an
    instant later, so a non-empty answer is re-checked for up to ``settle_s`` seconds."""
    deadline = time.monotonic() + settle_s
    while True:
        found = _busy_now(pool)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def _busy_now(pool: UidPool) -> dict[int, int]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").strip().startswith("Z"):
            continue
        try:
            uids = [int(v) for v in fields.get("Uid", "").split()[:3]]
        except ValueError:
            continue
        hit = [u for u in uids if u in pool]
        if hit:
            found[int(entry)] = hit[0]
    return found
