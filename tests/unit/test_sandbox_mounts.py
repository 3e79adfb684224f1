"""Workspace and bind sources are opened by fd, symlink-free, with StrictModes ancestors."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from sandbox import SandboxSetupError
from sandbox.mounts import open_bind_source, open_workspace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown test directories")
OTHER = 250_123  # a uid that owns nothing on this machine


@pytest.fixture
def root_dir() -> Iterator[str]:
    """A root-owned 0711 directory in /tmp (sticky /tmp, root-owned entry: a safe parent)."""
    path = tempfile.mkdtemp(prefix="mounts-test-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _workspace(parent: str, owner: int = OTHER, mode: int = 0o700) -> str:
    path = os.path.join(parent, "ws")
    os.mkdir(path)
    os.chmod(path, mode)
    os.chown(path, owner, owner)
    return path


def test_safe_workspace_opens_to_the_same_inode(root_dir):
    ws = _workspace(root_dir)
    fd = open_workspace(ws, OTHER)
    try:
        assert (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (os.stat(ws).st_ino, os.stat(ws).st_dev)
    finally:
        os.close(fd)


def test_symlink_in_the_path_is_refused(root_dir):
    ws = _workspace(root_dir)
    link = os.path.join(root_dir, "link")
    os.symlink(ws, link)
    with pytest.raises(SandboxSetupError, match="symlink"):
        open_workspace(link, OTHER)
    with pytest.raises(SandboxSetupError, match="symlink"):
        open_bind_source(link, "ro_paths")


def test_ancestor_writable_by_others_is_refused(root_dir):
    os.chmod(root_dir, 0o777)
    ws = _workspace(root_dir)
    with pytest.raises(SandboxSetupError, match="writable by group or others"):
        open_workspace(ws, OTHER)


def test_sticky_ancestor_needs_a_trusted_entry(root_dir):
    # /tmp-like parent: another user could rename an entry it owns, not one root owns.
    os.chmod(root_dir, 0o1777)
    ws = _workspace(root_dir)
    with pytest.raises(SandboxSetupError, match="writable by group or others"):
        open_workspace(ws, OTHER)
    inner = tempfile.mkdtemp(dir=root_dir)
    os.chmod(inner, 0o711)
    fd = open_workspace(_workspace(inner), OTHER)
    os.close(fd)


def test_ancestor_owned_by_another_user_is_refused(root_dir):
    sub = os.path.join(root_dir, "sub")
    os.mkdir(sub, 0o755)
    os.chown(sub, OTHER, OTHER)
    ws = _workspace(sub)
    with pytest.raises(SandboxSetupError, match=f"owned by uid {OTHER}"):
        open_workspace(ws, OTHER)


@pytest.mark.parametrize(("owner", "mode", "message"), [
    (OTHER + 1, 0o700, "not the sandbox uid"),
    (OTHER, 0o770, "writable by group or others"),
])
def test_workspace_owner_and_mode(root_dir, owner, mode, message):
    ws = _workspace(root_dir, owner=owner, mode=mode)
    with pytest.raises(SandboxSetupError, match=message):
        open_workspace(ws, OTHER)


def test_missing_path_and_files(root_dir):
    with pytest.raises(SandboxSetupError, match="cannot open"):
        open_workspace(os.path.join(root_dir, "nope"), OTHER)
    path = os.path.join(root_dir, "file")
    open(path, "w").close()
    with pytest.raises(SandboxSetupError, match="not a directory"):
        open_workspace(path, 0)
    fd = open_bind_source(path, "ro_paths")  # a file is a valid extra bind source
    os.close(fd)
