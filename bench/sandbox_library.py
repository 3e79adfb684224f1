"""The sandbox library run the way the gateway runs it: the baseline of the benches that
compare the gateway with the library (``throughput.py``, ``gateway_vs_sandbox.py``).

Import it from a bench script (``bench/`` is on ``sys.path`` there): ``from sandbox_library
import Library``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sandbox  # noqa: E402
from gateway.auth import DEV_PRINCIPAL  # noqa: E402
from gateway.config import Settings  # noqa: E402

__all__ = ["Library"]


class Library:
    """``sandbox.run`` of ``argv`` as the gateway's task manager runs a task of the
    development principal: the spec ``TaskManager._spec`` builds from the ``user`` role's
    grant and the default settings, a uid of its own per run from ``concurrency`` uids
    starting at ``first_uid`` (when root), a fresh workspace per run (removed after), a
    cgroup slot when the host has them and a network namespace made ahead (when root). Thread-safe: up to ``concurrency`` callers."""

    def __init__(self, argv: tuple[str, ...], first_uid: int, concurrency: int) -> None:
        self._argv = argv
        self._settings = Settings().sandbox
        root = os.geteuid() == 0
        self._uids = sandbox.UidPool(first_uid, first_uid, concurrency) if root else None
        try:
            self.cgroups: sandbox.CgroupPool | None = sandbox.CgroupPool.create(f"bench-{os.getpid()}")
        except sandbox.SandboxUnavailable as exc:
            print(f"note: no cgroup slots ({exc}); the gateway will not have them either")
            self.cgroups = None
        # As gateway.app._isolation: as many spare namespaces as runs at once, up to 8.
        self.netns = sandbox.NetnsPool(spare=min(concurrency, 8)) if root else None
        sandbox.set_child_subreaper()  # as the gateway does
        self._root = tempfile.mkdtemp(prefix="bench-library-")
        os.chmod(self._root, 0o711)
        self._shared_uid_cap = self._settings.max_pids * concurrency  # TaskManager's, max_concurrent = top
        self._count = 0
        self._lock = threading.Lock()
        # The plan GatewayService._plan makes for the development principal's role grant.
        data = json.loads((REPO / "policies" / "data.json").read_text())
        grant = data["mcp"]["config"]["roles"][DEV_PRINCIPAL.roles[0]]["grant"]
        s = self._settings
        self._timeout_s = min(30, grant["timeout_s"], s.max_timeout_s)
        self._memory_bytes = min(grant["memory_bytes"], s.max_memory_bytes)
        self._pids = min(grant["pids"], s.max_pids)
        self._cpu_seconds = max(1, min(grant["cpu_seconds"], s.max_cpu_seconds))

    def _spec(self, workspace: str, run_as: sandbox.RunAs | None, argv: tuple[str, ...],
              network: sandbox.NetworkMode, env: dict[str, str]) -> sandbox.SandboxSpec:
        """As ``TaskManager._spec`` (gateway/tasks/manager.py)."""
        s = self._settings
        pids_cgroup = self.cgroups is not None and "pids" in self.cgroups.controllers
        if pids_cgroup:
            uid_process_cap = None
        elif run_as is not None:
            uid_process_cap = self._pids + 2
        else:
            uid_process_cap = self._shared_uid_cap
        limits = sandbox.Limits(
            timeout_s=float(self._timeout_s), cpu_seconds=self._cpu_seconds, memory_bytes=self._memory_bytes,
            address_space_bytes=max(s.address_space_bytes, self._memory_bytes), file_size_bytes=s.file_size_bytes,
            open_files=s.open_files, pids=self._pids if pids_cgroup else None, cpu_cores=None,
            tmp_size_bytes=s.tmp_size_bytes, output_bytes=s.output_bytes, uid_process_cap=uid_process_cap,
        )
        return sandbox.SandboxSpec(argv=argv, workspace=workspace, env=env, cwd="/workspace",
                                   network=network, limits=limits, profile=s.profile, run_as=run_as)

    def run(self, argv: tuple[str, ...], network: sandbox.NetworkMode = sandbox.NetworkMode.NONE,
            env: dict[str, str] | None = None, egress: sandbox.EgressAttach | None = None) -> sandbox.SandboxResult:
        """One run of ``argv``, as ``TaskManager._execute``: uid, workspace, run, remove,
        release. Raises ``sandbox.SandboxError``."""
        with self._lock:
            self._count += 1
            name = f"task-{self._count}"
        run_as = self._uids.acquire() if self._uids is not None else None
        try:
            workspace = sandbox.create_workspace(self._root, name, run_as)
            try:
                return sandbox.run(self._spec(workspace, run_as, argv, network, env or {}),
                                   bwrap_path=self._settings.bwrap_path, cgroups=self.cgroups, netns=self.netns,
                                   egress=egress)
            finally:
                shutil.rmtree(workspace, ignore_errors=True)
        finally:
            if run_as is not None and self._uids is not None:
                self._uids.release(run_as)

    def task(self) -> str | None:
        """One run of the constructor's ``argv``; returns an error text, or None when the
        command ran and exited 0."""
        try:
            result = self.run(self._argv)
        except sandbox.SandboxError as exc:
            return f"library: {exc}"
        if result.setup_error or result.limit_reason or result.exit_code != 0:
            return f"library: exit {result.exit_code} {result.limit_reason or ''} {result.setup_error or ''}"
        return None

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
        if self.cgroups is not None:
            self.cgroups.close()
        if self.netns is not None:
            self.netns.close()
