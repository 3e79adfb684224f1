"""Fixtures for the real-sandbox containment tests (real bwrap, run as root here).

Every test runs its sandboxes as a uid of its own from a dedicated range (``SANDBOX_UIDS``,
never 65534 or any uid the host uses), charged to a slot of a session ``CgroupPool`` so the
memory, pids and CPU limits are the real cgroup ones; ``sbx(..., cgroups=False)`` runs
without the pool for the RLIMIT fallback. Runs without network take their namespace from a
session ``NetnsPool``, made ahead, as the gateway's do. ``probe`` runs tests/security/probe.c (raw
syscalls, one ``ret=<r> errno=<n>`` line) inside the sandbox.

After every test the autouse ``_nothing_left_behind`` fixture fails the test (an error at
teardown naming what was found) when any of these holds, and then cleans up so the next
test starts clean:

* a host process runs with a uid of the sandbox range (real, effective or saved uid);
* the pytest process has an unreaped sandbox child: a zombie ``bwrap`` (a run's monitor or
  pid 1; every other process of a run lives in its pid namespace and is reaped there);
* a cgroup slot of the pool still holds a process;
* a workspace root still holds an entry once the test's own workspaces are removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import (
    CgroupPool,
    Limits,
    NetnsPool,
    RunAs,
    SandboxResult,
    SandboxSpec,
    SandboxUnavailable,
    UidPool,
    busy_uids,
    run,
    set_child_subreaper,
)

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "probe.c"
SANDBOX_UIDS = (190000, 190000, 64)  # first uid, first gid, count: reserved for these tests
CGROUP_POOL_NAME = "sbx-security-tests"
PROBE = "/workspace/probe"


@pytest.fixture(scope="session", autouse=True)
def _host_can_sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if os.geteuid() != 0:
        pytest.skip("containment tests run sandboxes as uids of a reserved range and need root")
    set_child_subreaper()  # lets run() report the command's own rusage


@pytest.fixture(scope="session")
def uid_pool(_host_can_sandbox: None) -> UidPool:
    pool = UidPool(*SANDBOX_UIDS)
    busy = busy_uids(pool, settle_s=2)
    if busy:
        pytest.fail(f"the test uid range {SANDBOX_UIDS} is in use on this host: {busy}", pytrace=False)
    return pool


@pytest.fixture(scope="session")
def cgroup_pool(_host_can_sandbox: None) -> Iterator[CgroupPool | None]:
    """The session's cgroup pool, or None (printed) where the host has no usable cgroups."""
    try:
        pool = CgroupPool.create(CGROUP_POOL_NAME)
    except SandboxUnavailable as exc:
        print(f"\n[no cgroup pool: {exc}; cgroup-limit tests are skipped]", file=sys.stderr)
        yield None
        return
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def netns_pool(_host_can_sandbox: None) -> Iterator[NetnsPool]:
    """The session's network namespaces made ahead (sandbox.netns)."""
    pool = NetnsPool(spare=4)
    yield pool
    pool.close()


@pytest.fixture
def pool(cgroup_pool: CgroupPool | None) -> CgroupPool:
    """The cgroup pool, for tests that need real cgroup limits (skipped without one)."""
    if cgroup_pool is None:
        pytest.skip("no usable memory/pids cgroup controllers on this host")
    return cgroup_pool


def _private_root(parent: str, prefix: str) -> Iterator[str]:
    # Not pytest's tmp_path (its parents are 0700 root and bwrap runs as the sandbox uid):
    # a workspace's parent must be root-owned, searchable, and writable by root only.
    root = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def workspace_root() -> Iterator[str]:
    """Parent of the tests' workspaces, under /tmp."""
    yield from _private_root("/tmp", "sandbox-tests-")


@pytest.fixture(scope="session")
def bind_root() -> Iterator[str]:
    """A second workspace parent outside /tmp (bind sources may not be under /tmp, which
    the sandbox owns), for workspaces another run binds in with ro_paths."""
    yield from _private_root("/var/tmp", "sandbox-tests-bind-")


@pytest.fixture
def run_as(uid_pool: UidPool) -> Iterator[RunAs]:
    """This test's own sandbox uid/gid."""
    ids = uid_pool.acquire()
    yield ids
    uid_pool.release(ids)


@pytest.fixture
def new_workspace(workspace_root: str) -> Iterator[Callable[..., str]]:
    """``new_workspace(run_as, root=workspace_root) -> path``: a fresh 0700 workspace owned
    by ``run_as``; every one is removed when the test ends."""
    made: list[str] = []

    def make(owner: RunAs, root: str | None = None) -> str:
        ws = tempfile.mkdtemp(prefix="ws-", dir=root or workspace_root)
        os.chown(ws, owner.uid, owner.gid)
        made.append(ws)
        return ws

    yield make
    for ws in made:
        shutil.rmtree(ws, ignore_errors=True)


@pytest.fixture
def workspace(new_workspace: Callable[..., str], run_as: RunAs) -> str:
    return new_workspace(run_as)


@pytest.fixture
def sbx(workspace: str, run_as: RunAs, cgroup_pool: CgroupPool | None,
        netns_pool: NetnsPool) -> Callable[..., SandboxResult]:
    """``sbx(*argv, timeout_s=10, cgroups=True, egress=None, **limit_and_spec_fields)`` runs
    argv in the real sandbox as this test's uid, in its workspace, charged to the cgroup pool
    (unless ``cgroups=False``: the RLIMIT fallback). ``run_as=``/``workspace=`` override
    those; ``egress`` serves a ``NetworkMode.RESTRICTED`` run; ``stdin``, ``on_output`` and
    ``keep_output`` go to ``sandbox.run`` as they are."""

    def _run(*argv: str, cancel: Any = None, cgroups: bool = True, egress: Any = None, stdin: int | None = None,
             on_output: Any = None, keep_output: bool = True, **kw: Any) -> SandboxResult:
        limit_fields = {k: kw.pop(k) for k in list(kw) if k in Limits.__dataclass_fields__}
        limit_fields.setdefault("timeout_s", 10.0)
        kw.setdefault("run_as", run_as)
        kw.setdefault("workspace", workspace)
        spec = SandboxSpec(argv=argv, limits=Limits(**limit_fields), **kw)
        return run(spec, cancel=cancel, cgroups=cgroup_pool if cgroups else None, netns=netns_pool, egress=egress,
                   stdin=stdin, on_output=on_output, keep_output=keep_output)

    return _run


# -- the probe ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def probe_binary() -> Iterator[str]:
    """tests/security/probe.c compiled (static if possible) into a root-owned directory."""
    gcc = shutil.which("gcc")
    if gcc is None:
        print("\n[gcc is not installed: the probe-based attack cases are skipped]", file=sys.stderr)
        pytest.skip("gcc is not installed: cannot build tests/security/probe.c")
    out_dir = tempfile.mkdtemp(prefix="sandbox-probe-")
    os.chmod(out_dir, 0o755)
    binary = os.path.join(out_dir, "probe")
    errors = []
    for extra in (["-static"], []):
        build = subprocess.run([gcc, "-O2", "-Wall", *extra, "-o", binary, str(PROBE_SOURCE)],
                               capture_output=True, text=True, timeout=120)
        if build.returncode == 0:
            if extra == []:
                print(f"\n[static link failed, the probe is dynamic: {errors[-1][-300:]}]", file=sys.stderr)
            break
        errors.append(build.stderr)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        pytest.fail(f"cannot compile {PROBE_SOURCE}:\n{errors[-1]}")
    yield binary
    shutil.rmtree(out_dir, ignore_errors=True)


@dataclass(frozen=True)
class Outcome:
    """What one probe run ended with: ``ret``/``errno`` from its line, or the signal that
    killed it (then ret and errno are None)."""

    ret: int | None
    errno: int | None
    signal: int | None
    result: SandboxResult

    @property
    def pair(self) -> tuple[int | None, int | None]:
        return (self.ret, self.errno)


def parse_outcome(result: SandboxResult) -> Outcome:
    assert result.setup_error is None, result
    if result.signal is not None:
        assert result.stdout == b"", result
        return Outcome(None, None, result.signal, result)
    lines = result.stdout.decode().splitlines()
    assert result.exit_code == 0 and len(lines) == 1 and lines[0].startswith("ret="), result
    fields = dict(part.split("=", 1) for part in lines[0].split())
    return Outcome(int(fields["ret"]), int(fields["errno"]), None, result)


@pytest.fixture
def probe(sbx: Callable[..., SandboxResult], probe_binary: str, workspace: str) -> Callable[..., Outcome]:
    """``probe(case, *args, **sbx_kw) -> Outcome``: run the probe in the sandbox (copied
    into the workspace at /workspace/probe, mode 0755; a ``workspace=`` override gets its
    own copy). ``probe.raw(...)`` returns the SandboxResult unparsed; ``probe.install()``
    only copies it (for commands that call /workspace/probe themselves)."""

    def install(ws: str = workspace) -> None:
        target = os.path.join(ws, "probe")
        if not os.path.exists(target):
            shutil.copyfile(probe_binary, target)
            os.chmod(target, 0o755)

    def raw(*args: Any, **kw: Any) -> SandboxResult:
        install(kw.get("workspace", workspace))
        return sbx(PROBE, *(str(a) for a in args), **kw)

    def _probe(*args: Any, **kw: Any) -> Outcome:
        return parse_outcome(raw(*args, **kw))

    _probe.raw = raw  # type: ignore[attr-defined]
    _probe.install = install  # type: ignore[attr-defined]
    return _probe


# -- nothing left behind ----------------------------------------------------------------


def proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """``(pid, content of /proc/PID/<name>)`` for every process; vanished ones are skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/{name}", "rb") as fh:
                yield int(entry), fh.read()
        except OSError:
            continue


def zombie_children(parent: int, comm: bytes | None = None) -> list[int]:
    """Pids of zombie processes whose parent is ``parent`` (and whose command name is
    ``comm``, when given), from /proc/PID/stat, proc(5)."""
    found = []
    for pid, data in proc_files("stat"):
        fields = data[data.rindex(b")") + 2:].split()  # after "(comm) ": state ppid ...
        name = data[data.index(b"(") + 1:data.rindex(b")")]
        if fields[0] == b"Z" and int(fields[1]) == parent and comm in (None, name):
            found.append(pid)
    return found


def host_pids_with(marker: str) -> list[int]:
    """Pids of host processes whose command line contains ``marker``."""
    return [pid for pid, cmdline in proc_files("cmdline") if marker.encode() in cmdline]


def uid_process_count(uid: int) -> int:
    """How many host processes run with real uid ``uid``."""
    return sum(
        any(line.startswith(b"Uid:") and int(line.split()[1]) == uid for line in status.splitlines())
        for _, status in proc_files("status")
    )


def sample_while(sample: Callable[[], Any], fn: Callable[[], Any], interval_s: float = 0.005) -> tuple[Any, list[Any]]:
    """Run ``fn()`` while a thread calls ``sample()`` every ``interval_s``; ``(result, samples)``."""
    samples: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append(sample())
            time.sleep(interval_s)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, samples


def cgroup_dirs(pid: int, name: str) -> list[str]:
    """The ``<name>-<owner pid>`` directories a ``CgroupPool.create(name)`` made by process
    ``pid`` lives in, on every cgroup hierarchy ``pid`` is in (mountinfo(5), cgroups(7))."""
    own: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                own[c] = path
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            point, root = fields[4], fields[3]
            keys = ["unified"] if rfields[0] == "cgroup2" else rfields[2].split(",")
            for key in keys:
                if key in own:
                    rel = own[key][len(root):] if root != "/" and own[key].startswith(root) else own[key]
                    path = os.path.join(point, rel.lstrip("/"), f"{name}-{pid}")
                    if os.path.isdir(path) and path not in found:
                        found.append(path)
    return found


def busy_slots(parents: list[str]) -> dict[str, list[int]]:
    """``{slot cgroup.procs path: [pids]}`` for every non-empty slot under ``parents``."""
    busy = {}
    for parent in parents:
        for entry in sorted(os.listdir(parent)):
            procs = os.path.join(parent, entry, "cgroup.procs")
            if not entry.startswith("slot-") or not os.path.exists(procs):
                continue
            with open(procs) as fh:
                pids = [int(p) for p in fh.read().split()]
            if pids:
                busy[procs] = pids
    return busy


def leftovers(uids: UidPool, slot_parents: list[str], roots: list[str], *, settle_s: float = 2) -> list[str]:
    """Everything a finished test must not leave behind, as human-readable lines. A busy
    uid is re-checked for up to ``settle_s`` (a sandbox of a just-killed run may need an
    instant to die)."""
    problems = []
    busy = busy_uids(uids, settle_s=settle_s)
    if busy:
        problems.append(f"processes still run with sandbox uids: {_describe(busy)}")
    zombies = _settled(lambda: zombie_children(os.getpid(), b"bwrap"), settle_s)
    if zombies:
        problems.append(f"unreaped bwrap children of the test process: {zombies}")
    slots = busy_slots(slot_parents)
    if slots:
        problems.append(f"cgroup slots not empty: {slots}")
    for root in roots:
        entries = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if entries:
            problems.append(f"workspace root {root} still holds {entries}")
    return problems


def _settled(check: Callable[[], list[int]], settle_s: float) -> list[int]:
    """``check()`` re-run for up to ``settle_s`` while it finds something: a zombie that a
    reaper thread collects an instant later is not a leak; one nobody reaps stays."""
    deadline = time.monotonic() + settle_s
    while (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def clean_up(uids: UidPool, slot_parents: list[str], roots: list[str]) -> None:
    """Remove what ``leftovers`` found, so one failure does not cascade into later tests."""
    for pid in busy_uids(uids, settle_s=0):
        _kill(pid)
    for pids in busy_slots(slot_parents).values():
        for pid in pids:
            _kill(pid)
    for pid in zombie_children(os.getpid(), b"bwrap"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    for root in roots:
        for entry in os.listdir(root) if os.path.isdir(root) else []:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    deadline = time.monotonic() + 5
    while (busy_uids(uids, settle_s=0) or busy_slots(slot_parents)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe(pids: dict[int, int]) -> str:
    parts = []
    for pid, uid in sorted(pids.items()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        parts.append(f"pid {pid} uid {uid} ({cmd[:80]})")
    return "; ".join(parts)


@pytest.fixture
def leftover_scope(uid_pool: UidPool, cgroup_pool: CgroupPool | None, workspace_root: str,
                   bind_root: str) -> Callable[[], tuple[UidPool, list[str], list[str]]]:
    """What ``_nothing_left_behind`` inspects, as a callable (the pool's slot directories
    appear on first use): () -> (uid range, the pool's slot parents, workspace roots)."""

    def scope() -> tuple[UidPool, list[str], list[str]]:
        parents = cgroup_dirs(os.getpid(), CGROUP_POOL_NAME) if cgroup_pool is not None else []
        return uid_pool, parents, [workspace_root, bind_root]

    return scope


@pytest.fixture(autouse=True)
def _nothing_left_behind(leftover_scope: Callable[[], tuple[UidPool, list[str], list[str]]]) -> Iterator[None]:
    yield
    # Torn down after the test's own fixtures: its workspaces are removed, its uid released.
    scope = leftover_scope()
    problems = leftovers(*scope)
    if problems:
        clean_up(*scope)
        pytest.fail("the test left something behind:\n  " + "\n  ".join(problems), pytrace=False)
