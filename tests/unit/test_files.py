"""Workspace file operations stay beneath the directory fd, whatever the tree holds or does.

Every resolution test runs twice: through openat2(2) and through the openat(O_NOFOLLOW)
walk used where openat2 answers ENOSYS.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import files
from gateway.errors import FileDenied, InternalError, InvalidParameter, NotFound, SandboxLimitExceeded

OUTSIDE = b"outside content\n"


@dataclass
class Tree:
    ws: Path  # the workspace root, open as ``fd``
    outside: Path  # a sibling directory that must never be touched
    fd: int

    def outside_state(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.outside.iterdir())}


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(files, "_openat2_available", None if request.param == "openat2" else False)
    return str(request.param)


def _make_tree(base: Path, resolver: str) -> Iterator[Tree]:
    ws, outside = base / "ws", base / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(OUTSIDE)
    (ws / "link-dir").symlink_to(outside)
    (ws / "link-file").symlink_to(outside / "secret")
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    yield Tree(ws, outside, fd)
    os.close(fd)
    if resolver == "openat2":
        assert files._openat2_available is not False  # kernel 5.6+: never fell back to the walk


@pytest.fixture
def tree(tmp_path: Path, resolver: str) -> Iterator[Tree]:
    yield from _make_tree(tmp_path, resolver)


@pytest.fixture
def race_tree(tmp_path: Path, resolver: str) -> Iterator[Tree]:
    """A tree on tmpfs where there is one: on ext4 each fsync of a write commits the journal,
    which stalls the swapper's renames for milliseconds, so far fewer swaps race our calls."""
    if not os.path.isdir("/dev/shm"):
        yield from _make_tree(tmp_path, resolver)
        return
    base = Path(tempfile.mkdtemp(prefix="files-race-", dir="/dev/shm"))
    try:
        yield from _make_tree(base, resolver)
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize(("path", "rel"), [
    ("/workspace/a/b", "a/b"),
    ("a/b", "a/b"),
    ("/workspace", ""),
    ("/workspace/", ""),
    ("", ""),
    (".", ""),
    ("./a//b/./", "a/b"),
    ("//workspace//a", "a"),
    ("workspace/a", "workspace/a"),  # relative: a directory named workspace
    ("a..b/..c", "a..b/..c"),
])
def test_workspace_relative(path, rel):
    assert files.workspace_relative(path) == rel


@pytest.mark.parametrize(("path", "error"), [
    ("a\0b", InvalidParameter),
    ("a" * 4097, InvalidParameter),
    ("\udcff", InvalidParameter),
    ("/etc/passwd", FileDenied),
    ("/", FileDenied),
    ("/workspacex/a", FileDenied),
    ("..", FileDenied),
    ("a/../../etc", FileDenied),
    ("/workspace/../etc/passwd", FileDenied),
    ("a/..", FileDenied),
])
def test_workspace_relative_refuses(path, error):
    with pytest.raises(error) as info:
        files.workspace_relative(path)
    assert type(info.value) is error


def test_path_of_4096_bytes_is_accepted():
    assert files.workspace_relative("é" * 2048) == "é" * 2048
    with pytest.raises(InvalidParameter) as info:
        files.workspace_relative("é" * 2048 + "a")
    assert info.value.details == {"size": 4097, "max": 4096}


def test_write_read_delete(tree):
    assert files.write_file(tree.fd, "a/b/c.txt", b"hello", mode=0, create_dirs=True, owner=None) == 5
    assert (tree.ws / "a/b/c.txt").read_bytes() == b"hello"
    assert stat.S_IMODE((tree.ws / "a/b/c.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree.ws / "a/b").stat().st_mode) == 0o755
    assert files.read_file(tree.fd, "a/b/c.txt", max_bytes=5) == b"hello"
    assert files.write_file(tree.fd, "a/b/c.txt", b"", mode=0o600, create_dirs=False, owner=None) == 0
    assert files.read_file(tree.fd, "a/b/c.txt", max_bytes=5) == b""
    assert stat.S_IMODE((tree.ws / "a/b/c.txt").stat().st_mode) == 0o600
    files.delete_path(tree.fd, "a/b/c.txt", recursive=False)
    files.delete_path(tree.fd, "a/b", recursive=False)  # empty directory
    assert os.listdir(tree.ws / "a") == []
    assert not [n for n in os.listdir(tree.ws) if n.startswith(".mcp-tmp-")]


def test_recursive_delete_and_its_absence(tree):
    files.write_file(tree.fd, "d/e/f/g", b"x", mode=0, create_dirs=True, owner=None)
    files.write_file(tree.fd, "d/h", b"x", mode=0, create_dirs=False, owner=None)
    with pytest.raises(InvalidParameter, match="not empty"):
        files.delete_path(tree.fd, "d", recursive=False)
    files.delete_path(tree.fd, "d", recursive=True)
    assert not (tree.ws / "d").exists()
    with pytest.raises(NotFound):
        files.delete_path(tree.fd, "d", recursive=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_new_files_and_directories_get_the_owner(tree):
    (tree.ws / "old").mkdir()
    files.write_file(tree.fd, "old/new/f", b"x", mode=0o640, create_dirs=True, owner=(300_010, 300_011))
    assert (tree.ws / "old").stat().st_uid == 0  # existing directories are left as they are
    for p in (tree.ws / "old/new", tree.ws / "old/new/f"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (300_010, 300_011)
    assert stat.S_IMODE((tree.ws / "old/new/f").stat().st_mode) == 0o640


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, 0o2644])
def test_mode_beyond_permission_bits(tree, mode):
    with pytest.raises(InvalidParameter, match="mode"):
        files.write_file(tree.fd, "f", b"x", mode=mode, create_dirs=False, owner=None)
    assert not (tree.ws / "f").exists()


def test_the_root_is_not_a_target(tree):
    for rel in ("", "."):
        with pytest.raises(InvalidParameter, match="directory"):
            files.read_file(tree.fd, rel, max_bytes=10)
        with pytest.raises(InvalidParameter, match="directory"):
            files.write_file(tree.fd, rel, b"x", mode=0, create_dirs=True, owner=None)
        with pytest.raises(InvalidParameter, match="cannot be deleted"):
            files.delete_path(tree.fd, rel, recursive=True)


@pytest.mark.parametrize("rel", ["../outside/secret", "a/../../outside/secret", "/workspace/x",
                                 str(Path("/tmp")), "/etc/passwd"])
def test_dotdot_and_absolute_are_refused(tree, rel):
    with pytest.raises(FileDenied):
        files.read_file(tree.fd, rel, max_bytes=100)
    with pytest.raises(FileDenied):
        files.write_file(tree.fd, rel, b"x", mode=0, create_dirs=True, owner=None)
    with pytest.raises(FileDenied):
        files.delete_path(tree.fd, rel, recursive=True)
    assert tree.outside_state() == {"secret": OUTSIDE}


def test_nul_is_invalid(tree):
    with pytest.raises(InvalidParameter, match="NUL"):
        files.read_file(tree.fd, "a\0b", max_bytes=10)


def test_symlink_as_target(tree):
    for rel in ("link-file", "link-dir"):
        with pytest.raises(FileDenied, match="symbolic links are not followed"):
            files.read_file(tree.fd, rel, max_bytes=100)
        with pytest.raises(FileDenied, match="symbolic links are not followed"):
            files.write_file(tree.fd, rel, b"pwned", mode=0, create_dirs=True, owner=None)
    # Delete removes the link itself, never its target.
    files.delete_path(tree.fd, "link-file", recursive=False)
    files.delete_path(tree.fd, "link-dir", recursive=True)
    assert sorted(os.listdir(tree.ws)) == []
    assert tree.outside_state() == {"secret": OUTSIDE}


def test_symlink_inside_the_workspace_is_not_followed_either(tree):
    files.write_file(tree.fd, "real/f", b"inside", mode=0, create_dirs=True, owner=None)
    (tree.ws / "alias").symlink_to("real")
    with pytest.raises(FileDenied):
        files.read_file(tree.fd, "alias/f", max_bytes=100)


@pytest.mark.parametrize("create_dirs", [False, True])
def test_symlink_as_intermediate_directory(tree, create_dirs):
    with pytest.raises(FileDenied, match="symbolic links are not followed"):
        files.read_file(tree.fd, "link-dir/secret", max_bytes=100)
    for rel in ("link-dir/secret", "link-dir/new", "link-dir/sub/new"):
        with pytest.raises(FileDenied, match="symbolic links are not followed"):
            files.write_file(tree.fd, rel, b"pwned", mode=0, create_dirs=create_dirs, owner=None)
        with pytest.raises(FileDenied, match="symbolic links are not followed"):
            files.delete_path(tree.fd, rel, recursive=True)
    assert tree.outside_state() == {"secret": OUTSIDE}


def test_missing_and_not_a_directory(tree):
    files.write_file(tree.fd, "file", b"x", mode=0, create_dirs=False, owner=None)
    with pytest.raises(NotFound) as info:
        files.read_file(tree.fd, "nope", max_bytes=10)
    assert info.value.details == {"path": "/workspace/nope"}
    with pytest.raises(NotFound, match="/workspace/no/such does not exist"):
        files.write_file(tree.fd, "no/such/f", b"x", mode=0, create_dirs=False, owner=None)
    for rel in ("file/x", "file/x/y"):
        with pytest.raises(InvalidParameter, match="not a directory"):
            files.read_file(tree.fd, rel, max_bytes=10)
        with pytest.raises(InvalidParameter, match="not a directory"):
            files.write_file(tree.fd, rel, b"x", mode=0, create_dirs=True, owner=None)
        with pytest.raises(InvalidParameter, match="not a directory"):
            files.delete_path(tree.fd, rel, recursive=True)
    (tree.ws / "dir").mkdir()
    with pytest.raises(InvalidParameter, match="is a directory"):
        files.read_file(tree.fd, "dir", max_bytes=10)
    with pytest.raises(InvalidParameter, match="is a directory"):
        files.write_file(tree.fd, "dir", b"x", mode=0, create_dirs=False, owner=None)


def test_fifo_is_not_read_and_does_not_block(tree):
    os.mkfifo(tree.ws / "fifo")
    with pytest.raises(InvalidParameter, match="not a regular file"):
        files.read_file(tree.fd, "fifo", max_bytes=10)


def test_size_limit(tree):
    (tree.ws / "f").write_bytes(b"0123456789")
    assert files.read_file(tree.fd, "f", max_bytes=10) == b"0123456789"
    with pytest.raises(InvalidParameter) as info:
        files.read_file(tree.fd, "f", max_bytes=9)
    assert info.value.details == {"size": 10, "max": 9}


def test_file_growing_past_the_limit_while_read(tree, monkeypatch):
    (tree.ws / "f").write_bytes(b"x" * 100)
    real_fstat = os.fstat
    calls = []

    def stale_fstat(fd):  # the first fstat sees the file before it grew
        st = real_fstat(fd)
        calls.append(fd)
        if len(calls) == 1:
            return os.stat_result((*st[:6], 5, *st[7:]))
        return st

    monkeypatch.setattr(files.os, "fstat", stale_fstat)
    with pytest.raises(InvalidParameter) as info:
        files.read_file(tree.fd, "f", max_bytes=10)
    assert info.value.details == {"size": 100, "max": 10}


def test_write_is_atomic(tree):
    old, new = b"o" * (1 << 18), b"n" * (1 << 18)
    files.write_file(tree.fd, "f", old, mode=0, create_dirs=False, owner=None)
    stop = threading.Event()
    seen: set[bytes] = set()
    torn: list[int] = []

    def read_loop():
        while not stop.is_set():
            data = files.read_file(tree.fd, "f", max_bytes=1 << 20)
            if data not in (old, new):
                torn.append(len(data))
            seen.add(data[:1])

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(100):
            files.write_file(tree.fd, "f", new if i % 2 == 0 else old, mode=0, create_dirs=False, owner=None)
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert seen <= {b"o", b"n"}
    assert not [n for n in os.listdir(tree.ws) if n.startswith(".mcp-tmp-")]


@pytest.mark.parametrize(("code", "error"), [
    (errno.ENOSPC, SandboxLimitExceeded),
    (errno.EDQUOT, SandboxLimitExceeded),
    (errno.EFBIG, SandboxLimitExceeded),
    (errno.EIO, InternalError),
])
def test_failed_write_leaves_the_target_and_no_temporary_file(tree, monkeypatch, code, error):
    files.write_file(tree.fd, "f", b"old", mode=0, create_dirs=False, owner=None)

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(error) as info:
        files.write_file(tree.fd, "f", b"new", mode=0, create_dirs=False, owner=None)
    assert info.value.details["errno"] == errno.errorcode[code]
    assert str(tree.ws) not in info.value.message  # never the host path
    assert (tree.ws / "f").read_bytes() == b"old"
    assert not [n for n in os.listdir(tree.ws) if n.startswith(".mcp-tmp-")]


def test_recursive_delete_does_not_follow_symlinks(tree):
    files.write_file(tree.fd, "d/sub/f", b"x", mode=0, create_dirs=True, owner=None)
    (tree.ws / "d/sub/to-outside").symlink_to(tree.outside)
    (tree.ws / "d/to-secret").symlink_to(tree.outside / "secret")
    (tree.ws / "d/dangling").symlink_to("/nonexistent")
    os.mkfifo(tree.ws / "d/fifo")
    files.delete_path(tree.fd, "d", recursive=True)
    assert not (tree.ws / "d").exists()
    assert tree.outside_state() == {"secret": OUTSIDE}


def test_deep_tree_is_deleted_without_recursion(tree):
    depth = 1500  # beyond Python's default recursion limit
    fd = os.dup(tree.fd)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    files.delete_path(tree.fd, "d", recursive=True)
    assert not (tree.ws / "d").exists()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EPERM])
def test_without_openat2_the_walk_is_used(tree, monkeypatch, code):
    monkeypatch.setattr(files, "_openat2_available", None)

    def no_openat2(dir_fd, path, flags):
        raise OSError(code, "no openat2")

    monkeypatch.setattr(files, "_openat2", no_openat2)
    files.write_file(tree.fd, "a/f", b"walk", mode=0, create_dirs=True, owner=None)
    assert files.read_file(tree.fd, "a/f", max_bytes=10) == b"walk"
    assert files._openat2_available is False
    with pytest.raises(FileDenied):
        files.read_file(tree.fd, "link-dir/secret", max_bytes=100)
    monkeypatch.setattr(files, "_openat2_available", True)  # for the fixture's check


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2  # linux/fs.h


def _swap_loop(ws: Path, outside: Path, stop_file: Path) -> None:
    """What a hostile command does: swap ``ws/d`` between a real directory and a symlink to
    ``outside``, atomically (renameat2(2) RENAME_EXCHANGE, so ``d`` always exists and flips
    every few microseconds), until ``stop_file`` exists."""
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.symlink(outside, "spare", dir_fd=fd)
        (stop_file.parent / "swapping").touch()
        while not stop_file.exists():
            for _ in range(100):
                if _libc.renameat2(fd, b"d", fd, b"spare", _RENAME_EXCHANGE) != 0:
                    raise OSError(ctypes.get_errno(), "renameat2")
    finally:
        os.close(fd)


@pytest.mark.parametrize("swapper", ["thread", "process"])
def test_swapping_a_directory_for_a_symlink_never_escapes(race_tree, tmp_path, swapper):
    """While ``d`` is swapped between a real directory and a symlink to outside, write and
    read ``d/f`` 500 times each: every call acts inside or fails, none reaches outside. The
    thread shares our GIL (switch interval cut so it interleaves); the forked process runs
    truly in parallel, like a command in a sandbox. (A check-then-open implementation fails
    this test; one that follows symlinks fails it at once.)"""
    tree = race_tree
    (tree.ws / "d").mkdir()
    (tree.ws / "d" / "f").write_bytes(b"inside")
    (tree.outside / "f").write_bytes(OUTSIDE)
    before = tree.outside_state()
    stop_file = tmp_path / "stop"
    args = (tree.ws, tree.outside, stop_file)
    interval = sys.getswitchinterval()
    if swapper == "thread":
        sys.setswitchinterval(1e-6)
        runner: threading.Thread | multiprocessing.process.BaseProcess = threading.Thread(target=_swap_loop, args=args)
    else:
        runner = multiprocessing.get_context("fork").Process(target=_swap_loop, args=args)
    runner.start()
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + 20
    try:
        while not (tmp_path / "swapping").exists():
            assert time.monotonic() < deadline, "the swapper did not start"
            time.sleep(0.001)
        i = 0
        busy_until = time.monotonic() + 0.25
        # 500 rounds and 0.25 s at least; more (up to the deadline) until both sides of the
        # race were hit, since failed calls are quick and a burst of them fits in one state.
        while (i < 500 or time.monotonic() < busy_until
               or (not (outcomes.get("ok") and outcomes.get("FileDenied")) and time.monotonic() < deadline)):
            i += 1
            for op in ("write", "read"):
                try:
                    if op == "write":
                        files.write_file(tree.fd, "d/f", b"inside-%d" % i, mode=0, create_dirs=False, owner=None)
                    else:
                        assert files.read_file(tree.fd, "d/f", max_bytes=100).startswith(b"inside")
                    outcome = "ok"
                except (FileDenied, NotFound, InvalidParameter) as exc:
                    outcome = type(exc).__name__
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        stop_file.touch()
        runner.join(timeout=30)
        sys.setswitchinterval(interval)
    if isinstance(runner, multiprocessing.process.BaseProcess):
        assert runner.exitcode == 0
    assert tree.outside_state() == before, outcomes
    # Both sides of the race were hit: calls that acted inside, calls the swap made fail.
    assert outcomes.get("ok", 0) > 0 and outcomes.get("FileDenied", 0) > 0, outcomes


def test_mime_type():
    assert files.guess_mime_type("a/b.txt") == "text/plain"
    assert files.guess_mime_type("data:x.json") == "application/json"  # not a data: URL
    assert files.guess_mime_type("noext") == "application/octet-stream"
