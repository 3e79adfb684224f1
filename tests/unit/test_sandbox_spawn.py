"""The C spawn shim: each child step happens, and a failing step is reported by name."""

from __future__ import annotations

import os
from pathlib import Path
import resource
import signal

import pytest

from sandbox import RunAs
from sandbox.limits import ChildSetup, spawn


def _run(argv: list[str], setup: ChildSetup, keep: list[int] | None = None) -> tuple[int, str]:
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawn(argv, (null, w, w), keep or [], setup)
    finally:
        os.close(w)
        os.close(null)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_only_stdio_and_kept_fds_cross_and_signals_are_default():
    keep_r, keep_w = os.pipe()
    other_r, other_w = os.pipe()
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python ignores SIGPIPE anyway
    try:
        code, out = _run(["/bin/sh", "-c", "ls /proc/self/fd; echo --; grep -E '^Sig(Ign|Blk)' /proc/self/status"],
                         ChildSetup(rlimits=()), keep=[keep_w])
    finally:
        signal.signal(signal.SIGPIPE, previous)
        for fd in (keep_r, keep_w, other_r, other_w):
            os.close(fd)
    fd_part, status_part = out.split("--\n")
    fds = {int(x) for x in fd_part.split()}
    assert code == 0
    # 0-2, the kept fd, and the one ls opened on /proc/self/fd itself; nothing else.
    ls_dir_fd = min(set(range(3, 1024)) - {keep_w})  # the lowest free fd in the child
    assert fds == {0, 1, 2, keep_w, ls_dir_fd}
    assert status_part == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


def test_rlimits_are_set_before_exec():
    setup = ChildSetup(rlimits=((resource.RLIMIT_NOFILE, 77, 77), (resource.RLIMIT_CORE, 0, 0)))
    assert _run(["/bin/sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"], setup) == (0, "77\n77\n0\n")


def test_the_cgroup_join_finds_a_free_fd_under_a_low_open_files_limit(tmp_path: Path):
    """The child holds a copy of the parent's fd table until exec: with the parent's low fds
    all taken (a busy gateway) and RLIMIT_NOFILE below the first free one, the cgroup join
    must already be done when the limit is set (it once failed with EMFILE, 1 task in 2,000
    at 16 concurrent tasks)."""
    procs = tmp_path / "cgroup.procs"  # any writable file stands in: the step opens and writes "0"
    procs.write_text("")
    held = []
    while not held or held[-1] < 80:  # every fd below 80 taken in the parent
        held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    try:
        setup = ChildSetup(rlimits=((resource.RLIMIT_NOFILE, 64, 64),), cgroup_join=(str(procs),))
        assert _run(["/bin/sh", "-c", "ulimit -n"], setup) == (0, "64\n")
    finally:
        for fd in held:
            os.close(fd)
    assert procs.read_text() == "0"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_privileges_are_dropped_with_no_supplementary_groups():
    code, out = _run(["/usr/bin/id"], ChildSetup(rlimits=(), run_as=RunAs(250_321, 250_322)))
    assert (code, out) == (0, "uid=250321 gid=250322 groups=250322\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a network namespace needs CAP_SYS_ADMIN")
def test_the_child_enters_the_namespace_made_ahead_and_does_not_keep_its_fd():
    from sandbox import _spawn

    fd = _spawn.new_netns()
    try:
        made = os.fstat(fd).st_ino
        assert made != os.stat("/proc/self/ns/net").st_ino  # this process never left its own
        code, out = _run(["/bin/sh", "-c", "readlink /proc/self/ns/net; ls /proc/self/fd"],
                         ChildSetup(rlimits=(), new_netns=True, netns_fd=fd))
    finally:
        os.close(fd)
    first, *fds = out.split()
    assert (code, first) == (0, f"net:[{made}]")
    assert {int(x) for x in fds} <= {0, 1, 2, 3}  # stdio and ls's own directory fd only
    code, out = _run(["/bin/readlink", "/proc/self/ns/net"], ChildSetup(rlimits=(), new_netns=True))
    assert code == 0 and out.strip() not in (f"net:[{made}]", f"net:[{os.stat('/proc/self/ns/net').st_ino}]")


@pytest.mark.parametrize(("argv", "setup", "step"), [
    (["/nonexistent/bwrap"], ChildSetup(rlimits=()), "execve"),
    (["/bin/true"], ChildSetup(rlimits=(), cgroup_join=("/nonexistent/cgroup.procs",)), "cgroup join"),
    (["/bin/true"], ChildSetup(rlimits=((resource.RLIMIT_NOFILE, 10, 5),)), "setrlimit"),
    (["/bin/true"], ChildSetup(rlimits=(), new_netns=True, netns_fd=os.open("/", os.O_RDONLY)), "network namespace"),
])
def test_a_failing_step_is_named_and_the_child_reaped(argv, setup, step):
    before = _children()
    with pytest.raises(OSError, match=f"sandbox spawn failed at {step}") as info:
        _run(argv, setup)
    assert info.value.errno in (2, 22)  # ENOENT, EINVAL
    assert _children() == before  # reaped: no new child, not even a zombie


def _children() -> set[int]:
    """This process's children (session fixtures may have some, e.g. a PostgreSQL server)."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        found.update(int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split())
    return found


def test_fds_below_3_are_refused():
    with pytest.raises(ValueError, match="collide"):
        spawn(["/bin/true"], (0, 1, 2), [], ChildSetup(rlimits=()))
