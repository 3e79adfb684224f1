"""What the forked child does before it execs bwrap: rlimits, cgroups, netns, privilege drop.

``make_preexec(limits, run_as, *, cgroup_procs, new_netns, memory_in_cgroup)`` returns the
``preexec_fn`` for ``subprocess.Popen``. It runs in the child between fork and exec of
bwrap, in this order (the order is the argument):

1. rlimits (setrlimit(2)): RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0.
   Set while still privileged so soft == hard and the sandbox cannot raise them back
   (raising a hard limit needs CAP_SYS_RESOURCE in the *initial* user namespace, which the
   sandbox never has). They are inherited by bwrap and everything it starts. RLIMIT_AS is
   ``limits.memory_bytes`` unless a memory cgroup enforces that (then the looser
   ``limits.address_space_bytes``: runtimes such as Go, Java and Node reserve far more
   address space than they use). RLIMIT_NPROC only when ``limits.uid_process_cap`` is set:
   it counts every process of the host uid, which is a per-run limit only when the run has
   a uid of its own (``sandbox.identity``). In a user namespace it still holds: since Linux
   5.14 the count is charged up the ucounts hierarchy.
2. join the run's cgroup slot: write "0" (this process) to each ``cgroup.procs`` path.
   Needs root (or a delegated hierarchy), so before the drop; everything bwrap starts
   inherits the cgroups, and no process of the run ever exists outside them.
3. ``new_netns``: unshare(CLONE_NEWNET) into a fresh network namespace whose ``lo`` is down
   (network_namespaces(7)); bwrap then keeps it (``--share-net``). Needs CAP_SYS_ADMIN.
4. privilege drop when ``run_as`` is given: setgroups([]) -> setresgid -> setresuid.
   Groups and gid first: after setresuid the process no longer has CAP_SETGID.
   Done here rather than with Popen(user=, group=) because CPython applies those *before*
   preexec_fn, i.e. before steps 2 and 3 could run as root.
5. PR_SET_PDEATHSIG=SIGKILL, *after* the drop: the kernel clears pdeath_signal on any
   euid/egid change (commit_creds), see prctl(2). The signal fires when the *thread* that
   forked us exits (prctl(2): "the parent thread"), which is why ``run()`` spawns and
   waits in the same thread.

The returned callable uses only pre-computed values and direct syscall wrappers: it runs in
a forked copy of a multi-threaded process, where taking an import lock or calling into a
library that holds a lock in another thread could deadlock.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Callable

from sandbox.spec import Limits, RunAs

__all__ = ["make_preexec", "rlimits_for"]


_CLONE_NEWNET = 0x40000000  # linux/sched.h


def rlimits_for(limits: Limits, *, memory_in_cgroup: bool = False) -> tuple[tuple[int, int, int], ...]:
    """``((resource, soft, hard), ...)`` for ``limits``.

    RLIMIT_CPU hard is soft + 1: at the soft limit the kernel sends SIGXCPU (reported as
    limit "cpu_time"), and one CPU second later SIGKILL if the process caught SIGXCPU.
    RLIMIT_AS: see step 1 of the module docstring.
    """
    address_space = limits.memory_bytes
    if memory_in_cgroup and limits.address_space_bytes is not None:
        address_space = limits.address_space_bytes
    table = [
        (resource.RLIMIT_AS, address_space, address_space),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if limits.uid_process_cap is not None:
        table.append((resource.RLIMIT_NPROC, limits.uid_process_cap, limits.uid_process_cap))
    return tuple(table)


def make_preexec(
    limits: Limits,
    run_as: RunAs | None,
    *,
    cgroup_procs: tuple[str, ...] = (),
    new_netns: bool = False,
    memory_in_cgroup: bool = False,
) -> Callable[[], None]:
    """Build the child-side ``preexec_fn`` (see the module docstring for the order).

    Any exception it raises makes ``Popen`` raise ``subprocess.SubprocessError`` in the
    parent ("Exception occurred in preexec_fn"); the runner maps that to a setup failure.
    """
    rlimits = rlimits_for(limits, memory_in_cgroup=memory_in_cgroup)
    setrlimit = resource.setrlimit
    pdeathsig = _pdeathsig_setter()
    unshare = _unshare() if new_netns else None
    parent_pid = os.getpid()

    def preexec() -> None:
        for res, soft, hard in rlimits:
            setrlimit(res, (soft, hard))
        for path in cgroup_procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if unshare is not None and unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        if run_as is not None:
            os.setgroups([])
            os.setresgid(run_as.gid, run_as.gid, run_as.gid)
            os.setresuid(run_as.uid, run_as.uid, run_as.uid)
        pdeathsig(signal.SIGKILL)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(127)

    return preexec


def _unshare() -> Callable[[int], int]:
    # os.unshare exists only from Python 3.12; Debian 12 ships 3.11.
    fn: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).unshare
    return fn


def _pdeathsig_setter() -> Callable[[int], None]:
    import prctl  # python-prctl, resolved here in the parent, never in the forked child

    set_pdeathsig: Callable[[int], None] = prctl.set_pdeathsig
    return set_pdeathsig
