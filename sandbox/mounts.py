"""Bind sources opened by file descriptor, walked without following symlinks.

``create_workspace(parent, name, owner) -> path`` makes a workspace the way these rules want
it: ``mkdirat`` + ``fchown`` through a directory fd of ``parent`` opened without following
symlinks, mode 0700, owned by the sandbox uid.

``open_workspace(path, owner_uid) -> fd`` and ``open_bind_source(path, kind) -> fd`` return
``O_PATH`` descriptors that the runner hands to bwrap as ``--bind-fd`` / ``--ro-bind-fd``.
Both walk the path from ``/`` one component at a time with ``openat(O_PATH | O_NOFOLLOW)``
and refuse any symlink on the way, so what gets bound is the directory that was checked,
not whatever a name points to at mount time.

bubblewrap 0.8 turns ``/proc/self/fd/N`` back into a path (``realpath``) before it mounts,
so an fd alone does not close the race: a process that can rename an ancestor could still
swap the tree between our check and bwrap's mount. ``open_workspace`` therefore also applies
OpenSSH's StrictModes rule to every ancestor: owned by root or by us, and writable by no one
else, unless it is sticky (like /tmp) and the entry below it is owned by root or by us
(sticky directories only let an entry's owner rename it; path_resolution(7), inode(7)).
The workspace itself must be a directory owned by the sandbox uid that no group or other
user can write. With those rules nobody but root and the caller can redirect the bind,
least of all an earlier task (whose uid owned only its own, since removed, workspace).

Errors: ``SandboxSetupError`` naming the path and the rule it breaks.
"""

from __future__ import annotations

import os
import stat

from sandbox.errors import SandboxSetupError
from sandbox.spec import RunAs

__all__ = ["create_workspace", "open_bind_source", "open_workspace"]

_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def create_workspace(parent: str, name: str, owner: RunAs | None) -> str:
    """Make ``parent/name`` (mode 0700, owned by ``owner``, or this process when None) and
    return its path. ``name`` is one path component; ``parent`` must be a directory whose
    last component is not a symlink. Raises ``OSError`` (``FileExistsError`` if it exists).
    """
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            if owner is not None:
                os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, 0o700)  # mkdir's mode is filtered by the umask
        finally:
            os.close(fd)
    finally:
        os.close(parent_fd)
    return os.path.join(parent, name)


def open_workspace(path: str, owner_uid: int) -> int:
    """``O_PATH`` fd of the workspace directory ``path`` (absolute, no ``..``).

    Checks: no symlink in any component; every ancestor owned by root or this process's
    euid and not writable by group/other (sticky ancestors allowed when the next
    component is owned by root or the euid); the workspace a directory owned by
    ``owner_uid``, not group/other-writable. The caller closes the fd.
    """
    trusted = {0, os.geteuid()}

    def check(parent: os.stat_result, child: os.stat_result, shown: str) -> None:
        if parent.st_uid not in trusted:
            raise SandboxSetupError(
                f"workspace {path!r}: ancestor {shown!r} is owned by uid {parent.st_uid}, "
                "not by root or the gateway; another user could redirect the bind"
            )
        writable = parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_safe = parent.st_mode & stat.S_ISVTX and child.st_uid in trusted
        if writable and not sticky_safe:
            raise SandboxSetupError(
                f"workspace {path!r}: ancestor {shown!r} is writable by group or others "
                f"(mode {stat.S_IMODE(parent.st_mode):o}); another user could redirect the bind"
            )

    fd = _walk(path, "workspace", check)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise SandboxSetupError(f"workspace {path!r} is not a directory")
        if st.st_uid != owner_uid:
            raise SandboxSetupError(
                f"workspace {path!r} is owned by uid {st.st_uid}, not the sandbox uid {owner_uid}"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SandboxSetupError(
                f"workspace {path!r} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o})"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_bind_source(path: str, kind: str) -> int:
    """``O_PATH`` fd of ``path`` (a file or directory) for an extra ro/rw bind; ``kind``
    names the spec field in errors. Refuses a symlink in any component (grant the
    resolved path instead). The caller closes the fd."""
    return _walk(path, kind, None)


def _walk(path: str, kind: str, check) -> int:  # type: ignore[no-untyped-def]
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
    shown = "/"
    try:
        parent = os.fstat(fd)
        for part in parts:
            try:
                child_fd = os.open(part, _OPEN_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise SandboxSetupError(f"{kind}: cannot open {path!r}: {exc.strerror}") from exc
            os.close(fd)
            fd = child_fd
            child = os.fstat(fd)
            if stat.S_ISLNK(child.st_mode):
                raise SandboxSetupError(
                    f"{kind}: {path!r} goes through the symlink {os.path.join(shown, part)!r}; "
                    "give the resolved path"
                )
            if check is not None:
                check(parent, child, shown)
            shown = os.path.join(shown, part)
            parent = child
    except BaseException:
        os.close(fd)
        raise
    return fd
