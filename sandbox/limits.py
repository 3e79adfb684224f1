"""Per-process limits and the privilege drop, applied in the forked child before exec.

``make_preexec(limits, run_as) -> Callable[[], None]`` returns the ``preexec_fn`` for
``subprocess.Popen``. It runs in the child between fork and exec of bwrap, in this order:

1. rlimits (setrlimit(2)): RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0.
   Set while still privileged so soft == hard and the sandbox cannot raise them back
   (raising a hard limit needs CAP_SYS_RESOURCE in the *initial* user namespace, which the
   sandbox never has). They are inherited by bwrap and everything it starts.
   RLIMIT_NPROC only when ``limits.uid_process_cap`` is set: it counts every process of the
   host uid, so concurrent runs sharing a uid share it. It is a host-protection backstop
   against fork bombs until a per-run pids cgroup exists, not a per-run limit. In a user
   namespace it still holds: since Linux 5.14 the count is charged up the ucounts
   hierarchy and the parent level keeps the limit the namespace's creator had.
2. (later issue) join the per-run cgroups: needs root, so before the drop.
3. privilege drop when ``run_as`` is given: setgroups([]) -> setresgid -> setresuid.
   Groups and gid first: after setresuid the process no longer has CAP_SETGID.
   Done here rather than with Popen(user=, group=) because CPython applies those *before*
   preexec_fn, i.e. before step 2 could run as root.
4. PR_SET_PDEATHSIG=SIGKILL, *after* the drop: the kernel clears pdeath_signal on any
   euid/egid change (commit_creds), see prctl(2). The signal fires when the *thread* that
   forked us exits (prctl(2): "the parent thread"), which is why ``run()`` spawns and
   waits in the same thread.

The returned callable uses only pre-computed values and direct syscall wrappers: it runs in
a forked copy of a multi-threaded process, where taking an import lock or calling into a
library that holds a lock in another thread could deadlock.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable

from sandbox.spec import Limits, RunAs

__all__ = ["make_preexec", "rlimits_for"]


def rlimits_for(limits: Limits) -> tuple[tuple[int, int, int], ...]:
    """``((resource, soft, hard), ...)`` for ``limits``.

    RLIMIT_CPU hard is soft + 1: at the soft limit the kernel sends SIGXCPU (reported as
    limit "cpu_time"), and one CPU second later SIGKILL if the process caught SIGXCPU.
    """
    table = [
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if limits.uid_process_cap is not None:
        table.append((resource.RLIMIT_NPROC, limits.uid_process_cap, limits.uid_process_cap))
    return tuple(table)


def make_preexec(limits: Limits, run_as: RunAs | None) -> Callable[[], None]:
    """Build the child-side ``preexec_fn`` (see the module docstring for the order).

    Any exception it raises makes ``Popen`` raise ``subprocess.SubprocessError`` in the
    parent ("Exception occurred in preexec_fn"); the runner maps that to SandboxSetupError.
    """
    rlimits = rlimits_for(limits)
    setrlimit = resource.setrlimit
    pdeathsig = _pdeathsig_setter()
    parent_pid = os.getpid()

    def preexec() -> None:
        for res, soft, hard in rlimits:
            setrlimit(res, (soft, hard))
        if run_as is not None:
            os.setgroups([])
            os.setresgid(run_as.gid, run_as.gid, run_as.gid)
            os.setresuid(run_as.uid, run_as.uid, run_as.uid)
        pdeathsig(signal.SIGKILL)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(127)

    return preexec


def _pdeathsig_setter() -> Callable[[int], None]:
    import prctl  # python-prctl, resolved here in the parent, never in the forked child

    set_pdeathsig: Callable[[int], None] = prctl.set_pdeathsig
    return set_pdeathsig
