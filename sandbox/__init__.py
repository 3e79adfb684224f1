"""Standalone sandbox library: spec -> bwrap argv + seccomp BPF + limits -> result.

Never imports ``gateway``. Usable alone: ``python -m sandbox run -- CMD ARGS...``.

    from sandbox import SandboxSpec, RunAs, run
    result = run(SandboxSpec(argv=("echo", "hi"), workspace="/srv/ws", run_as=RunAs(65534, 65534)))
"""

from sandbox.bwrap import build_argv
from sandbox.cgroup import CgroupPool, CgroupStats
from sandbox.errors import SandboxError, SandboxSetupError, SandboxUnavailable
from sandbox.identity import UidPool, busy_uids
from sandbox.runner import ProbeReport, probe, run, set_child_subreaper
from sandbox.seccomp import compile_filter
from sandbox.spec import (
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
    "Limits",
    "NetworkMode",
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
    "probe",
    "run",
    "set_child_subreaper",
]
