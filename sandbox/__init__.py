"""Standalone sandbox library: spec -> bwrap argv + seccomp BPF + limits -> result.

Never imports ``gateway``. Usable alone: ``python -m sandbox run -- CMD ARGS...``.

    from sandbox import SandboxSpec, RunAs, run
    result = run(SandboxSpec(argv=("echo", "hi"), workspace="/srv/ws", run_as=RunAs(65534, 65534)))
"""

from sandbox.bwrap import build_argv
from sandbox.errors import SandboxError, SandboxSetupError, SandboxUnavailable
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
    "build_argv",
    "compile_filter",
    "probe",
    "run",
    "set_child_subreaper",
]
