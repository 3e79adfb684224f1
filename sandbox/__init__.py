"""Standalone sandbox library: spec -> bwrap argv + seccomp BPF + limits -> result.

Never imports ``gateway``. Usable alone: ``python -m sandbox run -- CMD ARGS...``.

One module per concern: ``spec`` (value types), ``bwrap`` (argv recipe), ``seccomp`` (deny
lists -> BPF), ``mounts`` (bind sources by fd), ``cgroup`` (per-run slots), ``netns``
(network namespaces made ahead), ``identity`` (a uid per run), ``limits`` + ``_spawn.c``
(the child's steps before exec), ``runner`` (the run).

    from sandbox import CgroupPool, Limits, SandboxSpec, UidPool, run
    uids, cgroups = UidPool(60000, 60000, 64), CgroupPool.create("my-service")
    run_as = uids.acquire()          # workspace: a 0700 dir owned by run_as, root-only parents
    result = run(SandboxSpec(argv=("echo", "hi"), workspace="/srv/ws/1", run_as=run_as,
                             limits=Limits(memory_bytes=256 << 20, pids=64)), cgroups=cgroups)
    uids.release(run_as)
"""

from sandbox.bwrap import build_argv
from sandbox.cgroup import CgroupPool, CgroupStats
from sandbox.errors import SandboxError, SandboxSetupError, SandboxUnavailable
from sandbox.identity import UidPool, busy_uids
from sandbox.mounts import create_workspace, open_workspace
from sandbox.netns import NetnsPool
from sandbox.runner import OutputListener, ProbeReport, probe, run, set_child_subreaper
from sandbox.seccomp import compile_filter
from sandbox.spec import (
    EgressAttach,
    EgressSession,
    EgressUsage,
    Limits,
    NetworkMode,
    ResourceUsage,
    RunAs,
    SandboxResult,
    SandboxSpec,
)

__all__ = [
    "CgroupPool",
    "CgroupStats",
    "EgressAttach",
    "EgressSession",
    "EgressUsage",
    "Limits",
    "NetnsPool",
    "NetworkMode",
    "OutputListener",
    "ProbeReport",
    "ResourceUsage",
    "RunAs",
    "SandboxError",
    "SandboxResult",
    "SandboxSetupError",
    "SandboxSpec",
    "SandboxUnavailable",
    "UidPool",
    "build_argv",
    "busy_uids",
    "compile_filter",
    "create_workspace",
    "open_workspace",
    "probe",
    "run",
    "set_child_subreaper",
]
