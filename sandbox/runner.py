"""Run one command in a fresh sandbox and report what happened; probe the host.

``run(spec, *, cancel=None, bwrap_path="bwrap") -> SandboxResult`` is the whole supervisor
side of a run, one straight sequence (see the comment in ``run``). ``probe()`` checks once,
at startup, that this host can sandbox at all. ``set_child_subreaper()`` makes this process
the reaper of the sandbox's pid 1, which is what lets ``run`` account the command's CPU and
memory (see "Resource usage" below).

Setup failure vs. a command that exited 1 (no message parsing): bwrap is started with
``--json-status-fd``. Its monitor writes ``{"child-pid": N, ...namespace ids}`` right after
clone(2), and ``{"exit-code": N}`` only when the sandboxed child wrote exactly one byte to
bwrap's internal setup-finished pipe, i.e. setup completed, seccomp was loaded *and*
execvp(argv[0]) succeeded (bubblewrap.c: the child writes one byte before execvp and a
second one if execvp fails; report_child_exit_status stays silent unless it read exactly 1).
So: bwrap exited on its own without an "exit-code" line -> ``setup_error`` (exit_code -1);
with one -> the command ran and that is its status. bwrap's stderr lines prefixed
``"bwrap: "`` (e.g. ``bwrap: execvp nosuchcmd: No such file or directory``) only supply the
human-readable ``setup_error`` text, never the decision.

Killing: on wall timeout or cancel we SIGKILL the sandbox's pid 1 through a pidfd (the
kernel then SIGKILLs every process in that pid namespace, zap_pid_ns_processes, including
setsid double-forked daemons) and the outer bwrap. Pid 1's host pid comes from the
"child-pid" line, and the pidfd is opened while bwrap (its parent) is alive.

Resource usage: ``os.wait4`` on bwrap only covers bwrap's monitor, because the monitor exits
as soon as pid 1 reports the command's status over an eventfd and never reaps pid 1 (where
the command's rusage accumulates). When the calling process is a child subreaper
(``set_child_subreaper()``; prctl(2) PR_SET_CHILD_SUBREAPER), the orphaned pid 1 is
re-parented to us and ``run`` reaps it with wait4 as well, so ``usage`` covers the command
and every process it waited for. Without a subreaper, usage covers bwrap's monitor only.
A process-wide reaper in the caller must not ``waitpid(-1)`` or it steals these reaps.

Thread safety: ``run`` keeps all state local and may be called from many threads at once.
PR_SET_PDEATHSIG (set on bwrap by the spawn shim, and by ``--die-with-parent`` inside)
fires when the *thread* that cloned bwrap exits, not the process: ``run`` spawns and waits
in the calling thread, so a pool thread cannot exit while its sandbox lives. Do not hand the
spawn to one thread and the wait to another.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import selectors
import shutil
import stat
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any

from sandbox.bwrap import SpawnFds, build_argv, env_args, etc_files, validate
from sandbox.cgroup import CgroupPool, CgroupSlot, CgroupStats
from sandbox.errors import SandboxSetupError, SandboxUnavailable
from sandbox.limits import ChildSetup, rlimits_for, spawn
from sandbox.mounts import create_workspace, open_bind_source, open_workspace
from sandbox.netns import PROXY_PORT, NetnsPool, fresh_netns, proxy_listener
from sandbox.seccomp import compile_filter
from sandbox.spec import (
    EgressAttach,
    EgressSession,
    EgressUsage,
    NetworkMode,
    ResourceUsage,
    RunAs,
    SandboxResult,
    SandboxSpec,
)

__all__ = ["OutputListener", "ProbeReport", "probe", "run", "set_child_subreaper"]

#: ``on_output(stream, data, truncated)``: ``stream`` is 1 (stdout) or 2 (stderr); ``data``
#: the bytes just read that fit within ``limits.output_bytes`` for that stream (possibly
#: empty); ``truncated`` is True exactly once per stream, on the read where output beyond
#: the cap starts being dropped. The concatenated ``data`` of a stream equals the result's
#: ``stdout`` / ``stderr``.
OutputListener = Callable[[int, bytes, bool], None]

_POLL_S = 0.05  # cancel latency bound: the collect loop wakes at least this often
_DRAIN_GRACE_S = 0.5  # after bwrap exits, how long its pipes may stay open (ns teardown)
_CHUNK = 65536
# How long run() waits for the sandbox's pid 1 to be reapable. Reaping pid 1 is the proof that
# the kernel has killed and reaped every process of the namespace, so run() returns (and a
# task is reported final) only when nothing of the sandbox is left: after a fork bomb that
# takes ~0.5 s, and reporting earlier let the dying processes starve the next run.
_REAP_WAIT_S = 10.0
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def run(
    spec: SandboxSpec,
    *,
    cancel: threading.Event | None = None,
    bwrap_path: str = "bwrap",
    cgroups: CgroupPool | None = None,
    on_output: OutputListener | None = None,
    netns: NetnsPool | None = None,
    egress: EgressAttach | None = None,
    stdin: int | None = None,
    keep_output: bool = True,
) -> SandboxResult:
    """Run ``spec.argv`` in a new bwrap + seccomp sandbox and wait for it (blocking).

    ``cancel``: another thread may set it; the sandbox is then killed within ~50 ms and the
    result has ``limit_reason="cancelled"``. ``on_output``: called in the calling thread as
    output is read, see :data:`OutputListener`; it must be quick and must not raise (the
    sandbox's pipes are not drained while it runs). ``cgroups``: the pool whose slot the run is
    charged to (memory, pids, CPU quota); without one, memory is enforced as RLIMIT_AS and
    ``limits.pids`` / ``limits.cpu_cores`` cannot be. ``netns``: where a run that needs a
    network namespace of its own (``NetworkMode.NONE`` as root) takes one made ahead
    (``sandbox.netns``); without one, or when none is ready, the child makes it.
    ``egress``: required for ``NetworkMode.RESTRICTED`` (root only): the proxy that serves
    the listener made inside the run's namespace (see ``EgressAttach``); its refusal notes
    join the run's stderr, what it carried its usage, a cap it hit limit reason "egress".
    ``stdin``: a pipe or socket fd (the caller keeps its own copy) that becomes the
    command's standard input instead of /dev/null: a long-lived server the caller talks to
    (an MCP server over stdio); anything else (a terminal, a file) is refused.
    ``keep_output=False`` (with ``on_output``): every byte the command writes goes to
    ``on_output`` and none is kept, so ``limits.output_bytes`` does not apply and the
    result's ``stdout`` / ``stderr`` are empty: output that runs for as long as the command.
    Returns a ``SandboxResult`` for every run that was spawned (setup failures too:
    ``setup_error``, ``exit_code == -1``), and only once every process of the run has been
    reaped. Raises ``SandboxSetupError`` for an
    invalid spec or a limit this host cannot enforce (nothing spawned), and
    ``SandboxUnavailable`` when bwrap cannot be executed at all.
    """
    # The order is the security argument:
    # 1. validate: an invalid spec, root without run_as, or a limit nothing here can
    #    enforce never reaches a fork.
    # 2. open the workspace and extra bind sources by fd, walking without symlinks and
    #    checking who could have swapped them (sandbox.mounts).
    # 3. take a cgroup slot and write this run's limits into it.
    # 4. compile the seccomp filter (cached) into a fresh sealed memfd for this spawn, and
    #    the generated /etc into sealed memfds: nothing shared between runs is writable.
    # 5. build bwrap's argv (pure) and resolve bwrap to an absolute path; bwrap itself gets
    #    an empty environment, so the caller's LD_PRELOAD & co never reach it.
    # 6. spawn through the C shim (sandbox.limits, clone(CLONE_VM|CLONE_VFORK), no fork of
    #    the gateway). In the child, before exec: default signals, only 0-2 and our fds
    #    kept, rlimits, join the cgroup slot, a fresh netns for NONE (made ahead by the
    #    NetnsPool and used by this run alone, or unshared there), drop to run_as,
    #    PDEATHSIG. bwrap then builds the namespaces and mounts, drops all caps,
    #    sets NO_NEW_PRIVS, loads seccomp, execs.
    #    RESTRICTED: before the spawn, the namespace gets lo up and the proxy listener on
    #    127.0.0.1:3128, served by ``egress`` outside it; nothing else leads out.
    # 7. collect stdout/stderr up to the caps (draining the rest), watch the wall clock and
    #    cancel; on either, SIGKILL the sandbox's pid 1 (pid-namespace teardown) and bwrap.
    # 8. reap bwrap and the sandbox's pid 1 with wait4 (rusage); read the slot's counters;
    #    drain the slot (kill anything left) before it is reused.
    # 9. classify: setup failure / exit / signal / which limit.
    validate(spec)
    if stdin is not None:
        _check_stdin(stdin)
    if not keep_output and on_output is None:
        raise SandboxSetupError("keep_output=False needs on_output: the output would go nowhere")
    root = os.geteuid() == 0
    if root and spec.run_as is None:
        raise SandboxSetupError("run_as is required when running as root: bwrap is never run as root")
    if spec.run_as is not None and spec.run_as.uid == 0:
        raise SandboxSetupError("run_as.uid must not be 0: bwrap is never run as root")
    if spec.network is NetworkMode.RESTRICTED and (not root or egress is None):
        raise SandboxSetupError(
            "restricted network needs root (a network namespace made by the supervisor) and an "
            "egress proxy (run(egress=...)); refusing to run without them"
        )
    controllers = cgroups.controllers if cgroups is not None else frozenset()
    for name, needs in (("pids", "pids"), ("cpu_cores", "cpu")):
        if getattr(spec.limits, name) is not None and needs not in controllers:
            raise SandboxSetupError(
                f"limits.{name} needs the {needs} cgroup controller, which this host does not "
                "provide; refusing to run without it"
            )
    bwrap = _resolve_bwrap(bwrap_path)

    fds: list[int] = []
    slot: CgroupSlot | None = None
    proxy: _Egress | None = None
    try:
        owner = spec.run_as.uid if spec.run_as is not None else os.geteuid()
        workspace_fd = open_workspace(spec.workspace, owner)
        fds.append(workspace_fd)
        ro_fds = tuple(open_bind_source(p, "ro_paths") for p in spec.ro_paths)
        fds += ro_fds
        rw_fds = tuple(open_bind_source(p, "rw_paths") for p in spec.rw_paths)
        fds += rw_fds
        if cgroups is not None:
            slot = cgroups.acquire()
            slot.prepare(
                memory_bytes=spec.limits.memory_bytes,
                pids=spec.limits.pids,
                cpu_cores=spec.limits.cpu_cores,
            )
        seccomp_fd = _sealed_memfd("sandbox-seccomp", compile_filter(spec.profile))
        fds.append(seccomp_fd)
        etc_fds = {}
        for path, data in etc_files(spec).items():
            etc_fds[path] = _sealed_memfd("sandbox-etc", data)
            fds.append(etc_fds[path])
        status_r, status_w = os.pipe()
        fds += [status_r, status_w]
        proxy_port = PROXY_PORT if spec.network is NetworkMode.RESTRICTED else None
        env_fd = _sealed_memfd("sandbox-env", env_args(spec, proxy_port))  # not in bwrap's cmdline
        fds.append(env_fd)
        spawn_fds = SpawnFds(
            seccomp=seccomp_fd, status=status_w, etc=etc_fds, workspace=workspace_fd,
            ro_paths=ro_fds, rw_paths=rw_fds, env=env_fd,
        )
        new_netns = root and spec.network in (NetworkMode.NONE, NetworkMode.RESTRICTED)
        netns_fd = netns.take() if new_netns and netns is not None else None
        if netns_fd is None and spec.network is NetworkMode.RESTRICTED:
            netns_fd = _setup(fresh_netns, "cannot make the network namespace")
        if netns_fd is not None:
            fds.append(netns_fd)
        if spec.network is NetworkMode.RESTRICTED:
            assert egress is not None and netns_fd is not None
            proxy = _Egress.start(egress, netns_fd)
            fds.append(proxy.notes_r)
        argv = build_argv(spec, fds=spawn_fds, netns_ready=new_netns, bwrap_path=bwrap, validated=True,
                          proxy_port=PROXY_PORT if proxy is not None else None)
        run_as = spec.run_as
        child = ChildSetup(
            rlimits=rlimits_for(spec.limits, memory_in_cgroup="memory" in controllers),
            cgroup_join=slot.join_files if slot is not None else (),
            new_netns=new_netns,
            netns_fd=netns_fd,
            run_as=run_as,
            nice=spec.limits.nice,
        )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if run_as is not None:
            # Let the command reopen its own stdout/stderr (/dev/stdout is /proc/self/fd/1,
            # and reopening a pipe checks the pipe inode's owner): scripts `tee /dev/stderr`.
            for fd in (out_w, err_w):
                os.fchown(fd, run_as.uid, run_as.gid)
        # The command's stdin: /dev/null, or a copy of the caller's pipe (closed here once
        # the child holds its own, like every fd handed over).
        stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if stdin is None else \
            fcntl.fcntl(stdin, fcntl.F_DUPFD_CLOEXEC, 3)
        fds += [out_r, out_w, err_r, err_w, stdin_fd]
        passed = [workspace_fd, *ro_fds, *rw_fds, seccomp_fd, env_fd, *etc_fds.values(), status_w]
        started = time.monotonic()
        try:
            pid = spawn(argv, (stdin_fd, out_w, err_w), passed, child)
        except OSError as exc:  # a step of the child failed (e.g. setresuid, cgroup join)
            return _setup_failed(f"{exc.strerror}: {os.strerror(exc.errno or 0)}", started)
        finally:
            # The child holds its own copies now (or never started): ours close at once,
            # so the status pipe and the output pipes see EOF when the sandbox ends.
            for fd in (*passed, out_w, err_w, stdin_fd, *([] if netns_fd is None else [netns_fd])):
                fds.remove(fd)
                os.close(fd)
        fds.remove(out_r)
        fds.remove(err_r)
        result = _supervise(pid, out_r, err_r, spec, status_r, cancel, started, on_output, proxy, keep_output)
        if proxy is not None:
            result = _with_egress(result, proxy.finish())
        if slot is None:
            return result
        return _with_cgroup_stats(result, slot.collect())
    finally:
        if proxy is not None:
            proxy.finish()
        for fd in fds:
            os.close(fd)
        if slot is not None and cgroups is not None:
            cgroups.release(slot)


def set_child_subreaper() -> None:
    """Make this process a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER, process-wide):
    orphaned descendants, including each sandbox's pid 1, are re-parented here, so ``run``
    can reap them and report the command's rusage. Call once at startup."""
    import prctl

    prctl.set_child_subreaper(True)


@dataclass(frozen=True)
class ProbeReport:
    """What ``probe`` found: the bwrap used, that a real sandbox ran as ``run_as``, and which
    limits this host enforces per run.

    enforced      subset of {"memory", "swap", "pids", "cpu"} the cgroup pool enforces
                  (empty without a pool: memory then falls back to RLIMIT_AS)
    network_none  "no-interfaces" (root: a fresh netns with lo down) or "loopback-only"
                  (non-root: bwrap's netns, whose lo is up)
    notes         one human-readable line per weaker guarantee, for the startup log
    """

    bwrap_path: str
    bwrap_version: str
    userns: bool
    seccomp: bool
    run_as: RunAs | None
    subreaper: bool  # whether run() can account the command's own rusage
    spawn_ms: float  # duration of the probe's /bin/true sandbox
    cgroup_version: int | None = None
    enforced: frozenset[str] = frozenset()
    network_none: str = "loopback-only"
    notes: tuple[str, ...] = ()


def probe(
    bwrap_path: str = "bwrap",
    *,
    run_as: RunAs | None = None,
    cgroups: CgroupPool | None = None,
) -> ProbeReport:
    """Check that this host can sandbox, by running ``true`` in a real sandbox with the
    default profile as ``run_as`` (charged to a slot of ``cgroups`` when given, which
    proves the slot is joined). Returns a ``ProbeReport``; raises ``SandboxUnavailable``
    whose message says what to install or enable (bwrap missing, user namespaces off,
    seccomp missing, cgroup slot not joined), or ``SandboxSetupError`` for a bad
    ``run_as``."""
    bwrap = _resolve_bwrap(bwrap_path)
    try:
        out = subprocess.run(
            [bwrap, "--version"], capture_output=True, check=True, timeout=10, env={}
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"{bwrap} --version failed ({exc}): apt-get install bubblewrap") from exc
    version = out.stdout.decode(errors="replace").strip()
    _check_userns_sysctls()
    if _proc_status_field("Seccomp") is None:
        raise SandboxUnavailable("kernel has no seccomp (CONFIG_SECCOMP_FILTER); use a kernel with it")
    compile_filter("default")

    # The workspace needs a parent only root can write (sandbox.mounts), so not /tmp itself.
    holder = tempfile.mkdtemp(prefix="sandbox-probe-")
    try:
        os.chmod(holder, 0o711)
        workspace = create_workspace(holder, "workspace", run_as)
        spec = SandboxSpec(argv=("true",), workspace=workspace, run_as=run_as)
        result = run(spec, bwrap_path=bwrap, cgroups=cgroups)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    if result.setup_error is not None or result.exit_code != 0:
        raise SandboxUnavailable(_explain_probe_failure(result))
    if cgroups is not None and "memory" in cgroups.controllers and result.usage.max_memory_kb <= 0:
        raise SandboxUnavailable("the probe sandbox was not charged to its cgroup slot")
    enforced = cgroups.controllers if cgroups is not None else frozenset()
    root = os.geteuid() == 0
    notes = []
    if "memory" not in enforced:
        notes.append("no memory cgroup: the memory limit is enforced per process as RLIMIT_AS")
    if "swap" not in enforced and "memory" in enforced:
        notes.append("no swap accounting: the memory limit does not cover swap")
    for limit, controller in (("pids", "pids"), ("cpu_cores", "cpu")):
        if controller not in enforced:
            notes.append(f"no {controller} cgroup: runs asking for {limit} are refused")
    if not root:
        notes.append("not root: network 'none' is loopback-only (bwrap brings lo up)")
    return ProbeReport(
        bwrap_path=bwrap,
        bwrap_version=version,
        userns=True,
        seccomp=True,
        run_as=run_as,
        subreaper=_is_subreaper(),
        spawn_ms=result.duration_ms,
        cgroup_version=cgroups.version if cgroups is not None else None,
        enforced=enforced,
        network_none="no-interfaces" if root else "loopback-only",
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- supervisor internals


class _Collector:
    """Output of one stream: the first ``cap`` bytes, and whether more arrived; with
    ``keep`` False, nothing is kept and every read passes through whole."""

    def __init__(self, cap: int, keep: bool = True) -> None:
        self.cap = cap
        self.keep = keep
        self.parts: list[bytes] = []
        self.kept = 0
        self.truncated = False

    def add(self, data: bytes) -> tuple[bytes, bool]:
        """Keep what fits; returns (the bytes kept, or with ``keep`` False all of them;
        True when this read started the truncation)."""
        if not self.keep:
            return data, False
        room = self.cap - self.kept
        started_truncating = False
        if len(data) > room:
            started_truncating = not self.truncated
            self.truncated = True
            data = data[:room]
        if data:
            self.parts.append(data)
            self.kept += len(data)
        return data, started_truncating

    def value(self) -> bytes:
        return b"".join(self.parts)


def _supervise(
    pid: int,
    out_fd: int,
    err_fd: int,
    spec: SandboxSpec,
    status_r: int,
    cancel: threading.Event | None,
    started: float,
    on_output: OutputListener | None,
    proxy: _Egress | None = None,
    keep_output: bool = True,
) -> SandboxResult:
    cap = spec.limits.output_bytes
    out, err = _Collector(cap, keep_output), _Collector(cap, keep_output)
    status = bytearray()
    init_pid: int | None = None
    init_pidfd: int | None = None
    killed_by: str | None = None
    monitor_pidfd = os.pidfd_open(pid)
    reaped = False
    sel = selectors.DefaultSelector()
    try:
        streams = {out_fd: out, err_fd: err}
        if proxy is not None:
            streams[proxy.notes_r] = err  # the proxy's refusal notes are the run's stderr
        for fd in (*streams, status_r, monitor_pidfd):
            sel.register(fd, selectors.EVENT_READ)
        deadline = started + spec.limits.timeout_s
        exited_at: float | None = None
        open_fds = {*streams, status_r}
        while open_fds or exited_at is None:
            now = time.monotonic()
            if killed_by is None and (cancel is not None and cancel.is_set()):
                killed_by = "cancelled"
            elif killed_by is None and now >= deadline:
                killed_by = "wall_timeout"
            if killed_by is not None and exited_at is None:
                init_pidfd = _ensure_init_pidfd(init_pidfd, init_pid)
                _kill(init_pidfd, pid)
            if exited_at is not None and now - exited_at > _DRAIN_GRACE_S:
                break  # bwrap is gone; anything still holding a pipe is not ours to wait for
            timeout = _POLL_S if killed_by is not None else max(0.0, min(_POLL_S, deadline - now))
            for key, _ in sel.select(timeout):
                fd = int(key.fd)
                if fd == monitor_pidfd:
                    sel.unregister(fd)
                    exited_at = time.monotonic()
                    # The command's status is in (pid 1 reaped it before telling bwrap);
                    # whatever it left running (daemons, a fork bomb) dies with pid 1
                    # now, which also closes the pipes those processes still hold.
                    if init_pid is None:
                        status += _read_rest(status_r)
                        init_pid = _status_value(status, "child-pid")
                    init_pidfd = _ensure_init_pidfd(init_pidfd, init_pid)
                    _kill(init_pidfd, None)
                    if proxy is not None:
                        proxy.finish()  # no process left to serve; its notes pipe ends
                    continue
                data = _read(fd)
                if data is None:
                    continue
                if not data:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                elif fd == status_r:
                    status += data
                    if init_pid is None:
                        init_pid = _status_value(status, "child-pid")
                        init_pidfd = _ensure_init_pidfd(init_pidfd, init_pid)
                else:
                    kept, started_truncating = streams[fd].add(data)
                    if on_output is not None and (kept or started_truncating):
                        on_output(1 if fd == out_fd else 2, kept, started_truncating)
        _, wait_status, monitor_ru = os.wait4(pid, 0)
        reaped = True
        duration_ms = (time.monotonic() - started) * 1000.0
        status += _read_rest(status_r)
        if init_pid is None:
            init_pid = _status_value(status, "child-pid")
            init_pidfd = _ensure_init_pidfd(init_pidfd, init_pid)
        # bwrap is gone; its pid 1 either already exited or is about to (PDEATHSIG).
        # Killing it makes sure, and tears down anything the command left running.
        _kill(init_pidfd, None)
        usages = [monitor_ru]
        if init_pid is not None and _is_subreaper():
            usages += _reap(init_pid, init_pidfd)
    finally:
        sel.close()
        os.close(monitor_pidfd)
        if init_pidfd is not None:
            os.close(init_pidfd)
        os.close(out_fd)
        os.close(err_fd)
        if not reaped:  # an exception escaped the loop: leave nothing behind
            _kill(None, pid)
            os.waitpid(pid, 0)
    usage = _usage(usages)
    return _classify(
        spec, wait_status, _status_value(status, "exit-code"), killed_by, out, err, usage, duration_ms
    )


class _Egress:
    """A RESTRICTED run's proxy: the session serving its listener and the pipe of notes the
    session writes into the run's stderr."""

    def __init__(self, session: EgressSession, notes_r: int, notes_w: int) -> None:
        self.notes_r = notes_r
        self._notes_w: int | None = notes_w
        self._session = session
        self._usage: EgressUsage | None = None

    @classmethod
    def start(cls, attach: EgressAttach, netns_fd: int) -> _Egress:
        """Make the listener inside ``netns_fd`` and hand it to ``attach``. Raises
        SandboxSetupError (nothing started)."""
        listener = _setup(lambda: proxy_listener(netns_fd, PROXY_PORT), "cannot make the proxy listener")
        notes_r, notes_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(notes_w, False)
        try:
            session = attach(listener, notes_w)
        except BaseException as exc:
            listener.close()
            os.close(notes_r)
            os.close(notes_w)
            if isinstance(exc, OSError):
                raise SandboxSetupError(f"the egress proxy cannot serve this run: {exc}") from exc
            raise
        return cls(session, notes_r, notes_w)

    def finish(self) -> EgressUsage:
        """Close the session (once) and the notes pipe's write end; what it carried. The
        read end is the supervisor's, closed with the run's other pipes."""
        if self._usage is None:
            try:
                self._usage = self._session.close()
            finally:
                if self._notes_w is not None:
                    os.close(self._notes_w)
                    self._notes_w = None
        return self._usage


def _check_stdin(fd: int) -> None:
    """SandboxSetupError unless ``fd`` is an open pipe or socket: the only stdin a sandbox
    gets besides /dev/null. A terminal would hand the command the caller's session (job
    control, and on kernels without the TIOCSTI restriction, input injection past seccomp's
    own refusal); a file or device is no conversation."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SandboxSetupError(f"stdin: fd {fd} is not open ({exc.strerror})") from exc
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise SandboxSetupError(f"stdin: fd {fd} must be a pipe or a socket")


def _setup(make: Callable[[], Any], what: str) -> Any:
    """``make()``, its OSError as SandboxSetupError(``what``: error)."""
    try:
        return make()
    except OSError as exc:
        raise SandboxSetupError(f"{what}: {exc}") from exc


def _with_egress(result: SandboxResult, usage: EgressUsage) -> SandboxResult:
    """The proxy's byte counts in the usage; "egress" as the limit reason when one of its
    caps refused traffic and no earlier limit ended the run (the order of SandboxResult)."""
    fields: dict[str, Any] = {"usage": replace(result.usage, egress_bytes_sent=usage.bytes_sent,
                                               egress_bytes_received=usage.bytes_received)}
    if usage.limit_hit and result.limit_reason in (None, "output_truncated"):
        fields["limit_reason"] = "egress"
    return replace(result, **fields)


def _with_cgroup_stats(result: SandboxResult, stats: CgroupStats) -> SandboxResult:
    """Fold the slot's counters into the result: the "oom" and "pids" limit reasons (in
    their order of precedence, see SandboxResult) and the run's peak memory."""
    usage = result.usage
    if stats.memory_peak_bytes is not None:
        usage = replace(usage, max_memory_kb=stats.memory_peak_bytes // 1024)
    result = replace(result, usage=usage)
    if result.limit_reason in ("cancelled", "wall_timeout"):
        return result
    if stats.oom_kills > 0:
        # Memory the command filled without owning it (tmpfs pages in /tmp or /dev/shm)
        # makes the OOM killer pick bwrap itself, the largest process left in the slot;
        # bwrap then never reports an exit code, which would read as a setup failure. Any
        # OOM kill in the slot means the memory limit ended the run.
        return replace(result, limit_reason="oom", setup_error=None, exit_code=128 + signal.SIGKILL,
                       signal=signal.SIGKILL)
    if stats.pids_max_hits > 0 and result.setup_error is None and result.limit_reason in (None, "output_truncated"):
        return replace(result, limit_reason="pids")
    return result


def _classify(
    spec: SandboxSpec,
    wait_status: int,
    reported_exit: int | None,
    killed_by: str | None,
    out: _Collector,
    err: _Collector,
    usage: ResourceUsage,
    duration_ms: float,
) -> SandboxResult:
    setup_error: str | None = None
    limit: str | None = None
    if killed_by is not None and (reported_exit is None or reported_exit == 128 + signal.SIGKILL):
        # We killed it. Whether setup had finished is unknowable here (bwrap reports
        # exec success only at exit), so this reads as "killed by SIGKILL".
        exit_code, limit = 128 + signal.SIGKILL, killed_by
    elif reported_exit is not None:
        # The command was exec'd (bwrap wrote exit-code); a kill that raced with its own
        # exit lost the race, so the command's status stands.
        exit_code = reported_exit
    else:
        exit_code = -1
        setup_error = _setup_message(err.value(), wait_status)
    sig = exit_code - 128 if 128 < exit_code <= 128 + 64 else None
    if limit is None and setup_error is None:
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and usage.cpu_time_ms >= spec.limits.cpu_seconds * 1000
        ):
            limit = "cpu_time"  # RLIMIT_CPU: SIGXCPU at soft, SIGKILL at hard (setrlimit(2))
        elif sig == signal.SIGXFSZ:
            limit = "file_size"  # RLIMIT_FSIZE: SIGXFSZ on the write past the limit
        elif out.truncated or err.truncated:
            limit = "output_truncated"
    return SandboxResult(
        exit_code=exit_code,
        signal=sig,
        stdout=out.value(),
        stderr=err.value(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        limit_reason=limit,
        usage=usage,
        duration_ms=duration_ms,
        setup_error=setup_error,
    )


def _setup_message(stderr: bytes, wait_status: int) -> str:
    # Text only: the decision was made from the missing "exit-code" status line.
    lines = [
        line for line in stderr.decode(errors="replace").splitlines() if line.startswith("bwrap: ")
    ]
    if lines:
        return "; ".join(lines)
    if os.WIFSIGNALED(wait_status):
        return f"bwrap terminated by signal {os.WTERMSIG(wait_status)} before the command ran"
    return f"sandbox setup failed (bwrap exit status {os.waitstatus_to_exitcode(wait_status)})"


def _setup_failed(message: str, started: float) -> SandboxResult:
    return SandboxResult(
        exit_code=-1,
        signal=None,
        stdout=b"",
        stderr=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        limit_reason=None,
        usage=ResourceUsage(0, 0, 0, 0),
        duration_ms=(time.monotonic() - started) * 1000.0,
        setup_error=message,
    )


def _usage(rusages: list[Any]) -> ResourceUsage:
    """Sum CPU and I/O of bwrap's monitor and (when reaped) the sandbox's pid 1. Max RSS
    comes from pid 1 when available: the monitor's ru_maxrss includes the RSS of the forked
    Python image before exec (~10 MB), which says nothing about the command."""
    rss_source = rusages[1:] or rusages
    return ResourceUsage(
        cpu_time_ms=int(sum(ru.ru_utime + ru.ru_stime for ru in rusages) * 1000),
        max_memory_kb=max(ru.ru_maxrss for ru in rss_source),
        io_read_bytes=sum(ru.ru_inblock for ru in rusages) * 512,
        io_write_bytes=sum(ru.ru_oublock for ru in rusages) * 512,
    )


def _reap(pid: int, pidfd: int | None) -> list[Any]:
    """wait4 the sandbox's pid 1 (our child only because we are a subreaper) for rusage.

    Its exit can take long after a fork bomb: pid 1 becomes reapable only once the kernel
    has killed and reaped every process of its pid namespace (zap_pid_ns_processes). We
    wait up to _REAP_WAIT_S for that; only if the kernel is slower still is the reap handed
    to a daemon thread (so no zombie is left) and usage reported without pid 1.
    """
    deadline = time.monotonic() + _REAP_WAIT_S
    while True:
        try:
            got, _, ru = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by bwrap (setup failure path) or not re-parented
            return []
        if got == pid:
            return [ru]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if pidfd is not None:
            # A pidfd polls readable once the process has exited (pidfd_open(2)).
            select.select([pidfd], [], [], min(remaining, _POLL_S))
        else:
            time.sleep(min(remaining, 0.005))
    threading.Thread(target=_reap_blocking, args=(pid,), name="sandbox-reap", daemon=True).start()
    return []


def _reap_blocking(pid: int) -> None:
    try:
        os.wait4(pid, 0)
    except ChildProcessError:
        pass


def _kill(init_pidfd: int | None, monitor_pid: int | None) -> None:
    # pid 1 first: its death makes the kernel SIGKILL the whole pid namespace.
    if init_pidfd is not None:
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if monitor_pid is not None:
        # Safe by pid: bwrap is our unreaped child, its pid cannot be reused yet.
        try:
            os.kill(monitor_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ensure_init_pidfd(pidfd: int | None, pid: int | None) -> int | None:
    """Pin the sandbox's pid 1 with a pidfd, so a later kill cannot hit a reused pid."""
    if pidfd is not None or pid is None:
        return pidfd
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _status_value(status: bytes | bytearray, key: str) -> int | None:
    """Value of ``key`` in bwrap's --json-status-fd output (one JSON object per line)."""
    for line in bytes(status).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # an incomplete last line; read again later
        if isinstance(obj, dict) and isinstance(obj.get(key), int):
            return int(obj[key])
    return None


def _read(fd: int) -> bytes | None:
    """One read of a pipe that select() reported readable; b"" = EOF, None = no data yet
    (only possible on the status pipe, which ``_read_rest`` made non-blocking)."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None


def _read_rest(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def _sealed_memfd(name: str, data: bytes) -> int:
    """A memfd holding ``data``, sealed against any change (fcntl(2) F_ADD_SEALS) and
    rewound: bwrap reads --seccomp / --file fds from the current offset to EOF."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.lru_cache(maxsize=8)
def _resolve_bwrap(bwrap_path: str) -> str:
    # Cached: a PATH lookup per run costs ~0.2 ms, and bwrap does not move under a service.
    found = shutil.which(bwrap_path)
    if found is None:
        raise SandboxUnavailable(
            f"bubblewrap ({bwrap_path!r}) not found: apt-get install bubblewrap "
            "(or dnf install bubblewrap), or configure the bwrap path"
        )
    return os.path.abspath(found)


def _is_subreaper() -> bool:
    import prctl

    return bool(prctl.get_child_subreaper())


def _proc_status_field(name: str) -> str | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _check_userns_sysctls() -> None:
    if not os.path.exists("/proc/self/ns/user"):
        raise SandboxUnavailable("kernel has no user namespaces (CONFIG_USER_NS); use a kernel with it")
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        raise SandboxUnavailable(
            "unprivileged user namespaces are disabled: sysctl kernel.unprivileged_userns_clone=1"
        )
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        raise SandboxUnavailable(
            "user namespaces are disabled: sysctl user.max_user_namespaces=15000"
        )
    if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        raise SandboxUnavailable(
            "AppArmor restricts unprivileged user namespaces: "
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0 or add an AppArmor profile for bwrap"
        )


def _explain_probe_failure(result: SandboxResult) -> str:
    detail = result.setup_error or f"exit code {result.exit_code}"
    stderr = result.stderr.decode(errors="replace").strip()
    hint = "check that the run_as user can use bwrap"
    if "Can't mount proc" in stderr:
        hint = (
            "/proc is masked, as in a container by default: run with an unmasked /proc (Kubernetes "
            "securityContext procMount: Unmasked with hostUsers: false; podman --security-opt unmask=/proc/*)"
        )
    elif "Can't set hostname" in stderr or "Operation not permitted" in stderr and "mount" in stderr:
        hint = (
            "the container's seccomp profile or AppArmor refuses what bwrap needs without capabilities "
            "(sethostname, setns, mount, unshare): run with the seccomp profile deploy/seccomp/mcp-gateway.json "
            "(or Unconfined) and AppArmor unconfined"
        )
    elif "namespace" in stderr or "uid map" in stderr:
        hint = (
            "user namespaces are not usable: sysctl kernel.unprivileged_userns_clone=1 "
            "and user.max_user_namespaces>0"
        )
    elif "seccomp" in stderr.lower():
        hint = "seccomp is not usable: use a kernel with CONFIG_SECCOMP_FILTER"
    return f"sandbox probe failed: {detail}; {hint}. stderr: {stderr[:500]}"
