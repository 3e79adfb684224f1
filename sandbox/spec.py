"""What to run and under which limits: the frozen value types shared with the gateway.

Every type here is a frozen dataclass (hashable, safe to share between threads). Units are
in the field names (``_s`` seconds, ``_ms`` milliseconds, ``_bytes`` bytes, ``_kb`` KiB).
Validation of a spec happens in ``sandbox.bwrap.build_argv`` (and therefore in ``run``),
not here, so a spec can be built first and checked against the host later.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "EgressAttach",
    "EgressSession",
    "EgressUsage",
    "Limits",
    "NetworkMode",
    "ResourceUsage",
    "RunAs",
    "SandboxResult",
    "SandboxSpec",
]


class NetworkMode(str, enum.Enum):
    """Network view of the sandbox.

    NONE       own network namespace. bwrap 0.8 always brings ``lo`` up in a new netns
               (network.c ``loopback_setup``), so 127.0.0.1 works *inside*, but nothing on
               the host (including host 127.0.0.1) is reachable.
    LOOPBACK   same namespace layout as NONE (own netns with ``lo`` up); kept distinct so
               a later issue can tighten NONE (e.g. seccomp-refuse AF_INET) without
               changing callers that need loopback.
    HOST       ``--share-net``: the host's network, plus a read-only /etc/resolv.conf.
    RESTRICTED own network namespace whose only way out is a proxy the caller runs outside
               it (``run(egress=...)``, ``sandbox.netns``): ``lo`` up with the proxy
               listening on 127.0.0.1:3128, no other interface, no route; the command
               gets HTTP(S)_PROXY/NO_PROXY pointing there. Root only.
    """

    NONE = "none"
    LOOPBACK = "loopback"
    HOST = "host"
    RESTRICTED = "restricted"


@dataclass(frozen=True)
class Limits:
    """Hard limits of one run.

    Enforcement (``sandbox.limits``, ``sandbox.cgroup``, ``sandbox.runner``): rlimits in the
    child before exec of bwrap; memory, pids and CPU quota by the run's cgroup slot when
    ``run`` is given a ``CgroupPool``; the wall clock and output caps by the supervisor.
    A limit that needs a cgroup controller the pool lacks (``pids``, ``cpu_cores``) makes
    ``run`` raise ``SandboxSetupError`` rather than run without it.
    """

    timeout_s: float = 30.0  # wall clock from spawn, seconds; SIGKILL of the whole sandbox
    cpu_seconds: int = 30  # RLIMIT_CPU per process (soft; hard = soft + 1 -> SIGKILL)
    # Memory of the whole run (RSS + page cache + kernel memory), swap excluded, in the
    # cgroup; without a memory cgroup the same number is applied as RLIMIT_AS per process.
    memory_bytes: int = 1 << 30
    # RLIMIT_AS per process when a memory cgroup enforces memory_bytes; None = memory_bytes.
    address_space_bytes: int | None = None
    file_size_bytes: int = 64 << 20  # RLIMIT_FSIZE: largest file a process may write
    open_files: int = 256  # RLIMIT_NOFILE
    pids: int | None = None  # processes + threads of the command (pids cgroup); None = no cap
    cpu_cores: float | None = None  # CPU bandwidth quota in cores (cpu cgroup); None = no cap
    tmp_size_bytes: int = 64 << 20  # size of each of the /tmp and /dev/shm tmpfs
    output_bytes: int = 1 << 20  # kept per stream (stdout, stderr); the rest is drained
    # RLIMIT_NPROC, None = unset. It counts every process of the run_as uid on the host, so
    # it is a per-run limit only when that uid is the run's own (sandbox.identity.UidPool),
    # and a shared host-protection cap otherwise.
    uid_process_cap: int | None = None
    # Nice value of every process of the run (setpriority(2), 0-19; 0 = the gateway's own):
    # under CPU contention the sandboxes yield to the gateway, which keeps answering.
    nice: int = 0


@dataclass(frozen=True)
class RunAs:
    """Host uid/gid the sandbox runs as (the same ids are seen inside: no uid remapping)."""

    uid: int
    gid: int


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class SandboxSpec:
    """One command to run in a fresh sandbox.

    ``argv[0]`` is resolved through PATH *inside* the sandbox (bwrap execvp after
    --clearenv/--setenv). ``env`` is added on top of the base environment
    ``PATH=/usr/local/bin:/usr/bin:/bin HOME=/workspace LANG=C.UTF-8 TMPDIR=/tmp``.
    ``workspace`` is a host directory bound read-write at /workspace; ``ro_paths`` and
    ``rw_paths`` are extra host paths bound at the same path. ``run_as`` is required when
    the caller's euid is 0: bwrap is never executed as root.
    """

    argv: tuple[str, ...]
    workspace: str
    env: Mapping[str, str] = field(default_factory=_empty_env)
    cwd: str = "/workspace"
    network: NetworkMode = NetworkMode.NONE
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()
    limits: Limits = Limits()
    hostname: str = "sandbox"
    profile: str = "default"
    run_as: RunAs | None = None


@dataclass(frozen=True)
class ResourceUsage:
    """Resource use of one run, from ``os.wait4`` rusage (getrusage(2)) and the cgroup.

    cpu_time_ms     ru_utime + ru_stime, milliseconds
    max_memory_kb   peak memory of the whole run from the memory cgroup (memory.peak,
                    memory.max_usage_in_bytes), KiB; without one, ru_maxrss (the largest
                    single process)
    io_read_bytes   ru_inblock * 512 (block-device reads only; page-cache hits are free)
    io_write_bytes  ru_oublock * 512
    egress_bytes_sent, egress_bytes_received
                    RESTRICTED runs: payload bytes the proxy carried from the sandbox to
                    its destinations and back (``EgressUsage``); 0 otherwise
    Covers the command only when the caller is a child subreaper; see ``runner.run``.
    """

    cpu_time_ms: int
    max_memory_kb: int
    io_read_bytes: int
    io_write_bytes: int
    egress_bytes_sent: int = 0
    egress_bytes_received: int = 0


@dataclass(frozen=True)
class EgressUsage:
    """What a RESTRICTED run's proxy session carried: payload bytes each way, connections
    accepted, and whether one of its caps refused traffic (limit reason "egress")."""

    bytes_sent: int = 0
    bytes_received: int = 0
    connections: int = 0
    limit_hit: bool = False


class EgressSession(Protocol):
    """A proxy serving one RESTRICTED run (see ``EgressAttach``)."""

    def close(self) -> EgressUsage:
        """Stop serving: close the listener and every connection of the run; what it
        carried. Called once, when the run's processes are gone."""
        ...


EgressAttach = Callable[[socket.socket, int], EgressSession]
"""``attach(listener, notes_fd) -> EgressSession``: start serving a RESTRICTED run's proxy
listener (a non-blocking socket listening inside the run's namespace; the session owns
it). ``notes_fd``: the write end of a pipe whose lines the run's stderr shows (why a
connection was refused); the session must not block on it, and must not close it. Raises
OSError when it cannot serve (the run is then not started)."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    exit_code     the command's exit status; 128+N if it was killed by signal N (also when
                  we killed it: wall timeout and cancel give 137); -1 if it never started
    signal        N when exit_code is 128+N (1..64), else None. bwrap reports a signal
                  death as 128+N, so a command that itself exits 129..192 reads as signaled
    limit_reason  the limit that ended the run, first applicable in this order:
                  "cancelled", "wall_timeout", "oom" (the memory cgroup OOM-killed a
                  process), "cpu_time" (RLIMIT_CPU), "file_size" (RLIMIT_FSIZE), "pids"
                  (pids.max refused a fork), "egress" (a cap of the run's egress proxy
                  refused traffic), "output_truncated"; None if none applied
    duration_ms   spawn to reap, wall clock
    setup_error   set (and exit_code -1) when bwrap or the exec of argv[0] failed before
                  the command ran; bwrap's own "bwrap: ..." message when available
    """

    exit_code: int
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    limit_reason: str | None
    usage: ResourceUsage
    duration_ms: float
    setup_error: str | None
