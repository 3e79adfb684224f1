"""What the child does between clone and exec of bwrap: rlimits, cgroups, netns, privilege drop.

``spawn(argv, stdio, keep_fds, setup) -> pid`` starts bwrap through the C shim
``sandbox._spawn`` (clone(CLONE_VM | CLONE_VFORK), as posix_spawn does): a forked copy of
the gateway would cost 1-3 ms of page-table copying per sandbox and re-run CPython's
after-fork hooks, and subprocess's ``preexec_fn`` forces a fork. The child runs these steps
in this order (the order is the argument; ``sandbox/_spawn.c`` implements them with raw
system calls only):

1. all signal handlers reset to default, empty signal mask (no Python handler may run in the
   borrowed address space; SIGXFSZ and SIGPIPE are default again, so RLIMIT_FSIZE kills).
2. stdio onto fds 0-2; every other fd close-on-exec except ``keep_fds`` (close_range(2)).
3. join the run's cgroup slot: write "0" (this process) to each path of
   ``CgroupSlot.join_files`` (v1: ``tasks``, v2: ``cgroup.procs``; see ``sandbox.cgroup``).
   Needs root (or a delegated hierarchy), so before the drop; everything bwrap starts
   inherits the cgroups, and no process of the run ever exists outside them. Before the
   rlimits: until exec the child holds a copy of the gateway's fd table (close-on-exec,
   but open), so under a low RLIMIT_NOFILE this open(2) could find no free fd (EMFILE).
4. rlimits (setrlimit(2)): RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0.
   Set while still privileged so soft == hard and the sandbox cannot raise them back
   (raising a hard limit needs CAP_SYS_RESOURCE in the *initial* user namespace, which the
   sandbox never has). They are inherited by bwrap and everything it starts. RLIMIT_AS is
   ``limits.memory_bytes`` unless a memory cgroup enforces that (then the looser
   ``limits.address_space_bytes``: runtimes such as Go, Java and Node reserve far more
   address space than they use). RLIMIT_NPROC only when ``limits.uid_process_cap`` is set:
   it counts every process of the host uid, which is a per-run limit only when the run has
   a uid of its own (``sandbox.identity``). In a user namespace it still holds: since Linux
   5.14 the count is charged up the ucounts hierarchy. Then the nice value
   (setpriority(2), ``limits.nice``) when above 0, so the run's processes yield the CPU to
   the gateway that admits, audits and answers for them (nsjail's ``--nice_level`` does the
   same); lowering it back needs CAP_SYS_NICE (or RLIMIT_NICE), which the sandbox lacks.
5. ``new_netns``: into a fresh network namespace whose ``lo`` is down (network_namespaces(7)):
   setns(2) into ``netns_fd``, one ``sandbox.netns.NetnsPool`` made ahead for this spawn
   alone, or unshare(CLONE_NEWNET) without one. bwrap then keeps it (``--share-net``).
   Needs CAP_SYS_ADMIN.
6. privilege drop when ``run_as`` is given: setgroups(0) -> setresgid -> setresuid, as raw
   system calls (glibc's wrappers would make every thread of the gateway change ids).
   Groups and gid first: after setresuid the process no longer has CAP_SETGID.
7. PR_SET_PDEATHSIG=SIGKILL, *after* the drop: the kernel clears pdeath_signal on any
   euid/egid change (commit_creds), see prctl(2). The signal fires when the *thread* that
   cloned us exits (prctl(2): "the parent thread"), which is why ``run()`` spawns and waits
   in the same thread. Then: if the parent already died, exit.
8. execve(bwrap) with an empty environment.

A failed step raises ``OSError(errno, "sandbox spawn failed at <step>")`` in the parent,
with the child already reaped.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from sandbox.errors import SandboxUnavailable
from sandbox.spec import Limits, RunAs

__all__ = ["ChildSetup", "rlimits_for", "spawn"]


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
        # No way back to a higher priority than the nice value set next (setpriority(2)).
        (resource.RLIMIT_NICE, 0, 0),
    ]
    if limits.uid_process_cap is not None:
        table.append((resource.RLIMIT_NPROC, limits.uid_process_cap, limits.uid_process_cap))
    return tuple(table)


@dataclass(frozen=True)
class ChildSetup:
    """The child's steps 3-6 for one spawn (see the module docstring)."""

    rlimits: tuple[tuple[int, int, int], ...]
    cgroup_join: tuple[str, ...] = ()  # files to write "0" into: CgroupSlot.join_files
    nice: int = 0
    new_netns: bool = False
    netns_fd: int | None = None  # with new_netns: the namespace to enter (NetnsPool.take)
    run_as: RunAs | None = None


def spawn(argv: list[str], stdio: tuple[int, int, int], keep_fds: list[int], setup: ChildSetup) -> int:
    """Start ``argv`` (``argv[0]`` absolute) as described in the module docstring; returns
    its pid once it has exec'd. ``stdio``: fds for the child's 0, 1, 2; ``keep_fds``: fds
    the child inherits at the same numbers (all others are closed on exec). Raises
    ``OSError`` naming the failed step, or ``SandboxUnavailable`` when the shim is not built.
    """
    try:
        from sandbox import _spawn
    except ImportError as exc:
        raise SandboxUnavailable(
            "the sandbox spawn shim (sandbox/_spawn.c) is not built: reinstall the package "
            "with gcc and python3-dev present (scripts/setup.sh)"
        ) from exc
    low = [fd for fd in (*stdio, *keep_fds) if fd < 3]
    if low:  # dup2 onto 0-2 would clobber them; the gateway never has stdio closed
        raise ValueError(f"fds {low} would collide with the child's stdio")
    uid, gid = (setup.run_as.uid, setup.run_as.gid) if setup.run_as is not None else (-1, -1)
    return int(_spawn.spawn(
        [os.fsencode(a) for a in argv],
        stdio,
        keep_fds,
        setup.rlimits,
        setup.nice,
        [os.fsencode(p) for p in setup.cgroup_join],
        setup.new_netns,
        -1 if setup.netns_fd is None else setup.netns_fd,
        uid,
        gid,
        os.getpid(),
    ))
