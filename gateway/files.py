"""File operations beneath a workspace's directory fd: read, atomic write, delete.

``workspace_relative(path) -> rel`` turns a caller's path (``/workspace/a/b`` or ``a/b``) into
a workspace-relative one (``a/b``); ``read_file``, ``write_file`` and ``delete_path`` then
act on ``rel`` beneath ``dir_fd`` (the workspace root from ``WorkspaceManager.open_dir``)
and nowhere else. Commands see the same files at ``/workspace`` (``sandbox.bwrap``).

Resolution. A path is never handed to the kernel as a host path string; it is resolved
relative to ``dir_fd``. ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`` fails (EXDEV, ELOOP) rather than leave ``dir_fd``,
follow any symlink, or cross a mount point. Where openat2 answers ENOSYS (a kernel before
5.6, or a container's seccomp filter; EPERM from older container runtimes' filters too),
the same is done one component at a time with ``openat(O_DIRECTORY | O_NOFOLLOW)``, each
relative to the fd of the one before, checking ``st_dev`` for mount crossings (this
fallback cannot see a bind mount of the same file system; the gateway's mount namespace
has none inside workspaces, since sandboxes mount in their own). ``..`` is refused before
any lookup, so resolution only ever goes down. The last component is acted on by an
``*at`` call relative to its parent's fd: ``openat`` with ``O_NOFOLLOW``, ``mkdirat``,
``unlinkat``, ``renameat``.

Why a concurrent task cannot make this escape: a directory fd names an inode, not a path.
Once a parent is open, a task that renames it, or swaps it (or anything above it) for a
symlink, changes what the *name* means, not the directory the next ``*at`` call works in;
a symlink swapped in at the very moment of a lookup is refused by that lookup (ELOOP from
``O_NOFOLLOW``, open(2), or ``RESOLVE_NO_SYMLINKS``, openat2(2)). And a directory a task can
rename stays inside its workspace: the task sees the workspace only as its own bind mount,
and rename(2) and link(2) fail with EXDEV across mount points, so it can neither move a
directory out nor link an outside file in. The worst a race yields is an error below.

Errors (gateway/errors.py; messages name the path as ``/workspace/...``, never a host path):

    missing file or parent ................................................ NotFound (6001)
    a symlink on the way or as the read/write target, ``..``, an absolute path outside
    /workspace, leaving ``dir_fd`` or crossing a mount, EACCES/EPERM ...... FileDenied (3003)
    NUL, not UTF-8, over 4096 bytes, a directory where a file is wanted or a file where a
    directory is, a non-empty directory without ``recursive``, the workspace root as a
    target, over ``max_bytes``, a mode beyond 0o777 ................ InvalidParameter (2001)
    ENOSPC, EDQUOT, EFBIG ...................................... SandboxLimitExceeded (4003)
    any other OSError (errno name in message and details) ............ InternalError (5001)

Delete is the exception for symlinks: deleting one removes the link itself, as rm(1) does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mimetypes
import os
import secrets
import stat
from dataclasses import dataclass, field

from gateway.errors import (
    FileDenied,
    GatewayError,
    InternalError,
    InvalidParameter,
    NotFound,
    SandboxLimitExceeded,
)

__all__ = [
    "DEFAULT_MODE",
    "MAX_PATH_BYTES",
    "WORKSPACE_MOUNT",
    "delete_path",
    "guess_mime_type",
    "read_file",
    "workspace_relative",
    "write_file",
]

WORKSPACE_MOUNT = "/workspace"  # where commands see the workspace (sandbox.bwrap.WORKSPACE)
MAX_PATH_BYTES = 4096  # PATH_MAX (limits.h), UTF-8 bytes
DEFAULT_MODE = 0o644  # of a written file when the request says mode 0
_DIR_MODE = 0o755  # of directories made by create_dirs (the workspace root itself is 0700)
_TMP_PREFIX = ".mcp-tmp-"
_CHUNK_BYTES = 1 << 20
_MAX_RETRIES = 1000  # delete: re-scans of directories a running command keeps refilling

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then refuses it).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): the syscall number is the same on every architecture (asm-generic/unistd.h,
# Linux 5.6); the RESOLVE_* bits come from linux/openat2.h.
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_EAGAIN_RETRIES = 16  # openat2 answers EAGAIN when a concurrent rename might allow an escape

#: None until the first call tells whether openat2 exists; False: use the openat walk.
_openat2_available: bool | None = None


class _OpenHow(ctypes.Structure):
    """``struct open_how`` (linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def workspace_relative(path: str) -> str:
    """The workspace-relative form of a caller's path: ``"/workspace/a/b"`` and ``"a/b"``
    give ``"a/b"``; ``"/workspace"``, ``""`` and ``"."`` give ``""`` (the root). Empty and
    ``.`` segments are dropped.

    Raises:
        InvalidParameter (2001): a NUL byte, not encodable as UTF-8, over 4096 bytes.
        FileDenied (3003): an absolute path outside /workspace, or any ``..`` segment.
    """
    return "/".join(_components(path, absolute_ok=True))


def read_file(dir_fd: int, rel: str, *, max_bytes: int) -> bytes:
    """The content of the regular file ``rel`` beneath ``dir_fd``, at most ``max_bytes``.

    The size is checked by fstat before reading, and at most ``max_bytes + 1`` bytes are
    read, so a file growing meanwhile is refused too, never returned cut short.

    Raises:
        InvalidParameter (2001): ``rel`` is the root, a directory or not a regular file, or
            the file is larger than ``max_bytes`` (details ``{"size": ..., "max": ...}``).
        others: see the module docstring.
    """
    parts = _components(rel)
    if not parts:
        raise InvalidParameter(f"{WORKSPACE_MOUNT} is a directory", details={"path": WORKSPACE_MOUNT})
    try:
        fd = _open_beneath(dir_fd, parts, _READ_FLAGS)
    except OSError as exc:
        raise _translate(exc, parts, "read") from exc
    try:
        st = os.fstat(fd)
        _require_regular(st, parts)
        if st.st_size > max_bytes:
            raise _too_large(parts, st.st_size, max_bytes)
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _too_large(parts, max(len(data), os.fstat(fd).st_size), max_bytes)
        return data
    except OSError as exc:
        raise _translate(exc, parts, "read") from exc
    finally:
        os.close(fd)


def write_file(
    dir_fd: int, rel: str, content: bytes, *, mode: int, create_dirs: bool, owner: tuple[int, int] | None
) -> int:
    """Atomically replace (or create) the file ``rel`` beneath ``dir_fd`` with ``content``;
    returns the number of bytes written.

    ``mode``: permission bits within 0o777 (0 means 0o644). ``create_dirs``: make missing
    parents (0o755). ``owner``: (uid, gid) given to new files and directories, None to keep
    this process's. The content goes to a new ``.mcp-tmp-<random>`` file in the target's
    directory (``O_CREAT | O_EXCL | O_NOFOLLOW``: never an existing file or a symlink's
    target), is fsync'ed, then renamed over the target (rename(2) is atomic: readers see
    the old or the new content, never a mix); the temporary file is unlinked on failure.

    Raises:
        InvalidParameter (2001): a bad mode, ``rel`` is the root or a directory, a parent is
            not a directory.
        NotFound (6001): a parent is missing and ``create_dirs`` is false.
        FileDenied (3003): the target or a parent is a symlink.
        SandboxLimitExceeded (4003): no space or quota left, file too large.
        others: see the module docstring.
    """
    if not 0 <= mode <= 0o777:
        raise InvalidParameter(f"mode {mode:#o} is not permission bits within 0o777", details={"mode": mode})
    parts = _components(rel)
    if not parts:
        raise InvalidParameter(f"{WORKSPACE_MOUNT} is a directory", details={"path": WORKSPACE_MOUNT})
    parent, name = parts[:-1], parts[-1]
    try:
        parent_fd = _make_dirs(dir_fd, parent, owner) if create_dirs else _open_beneath(dir_fd, parent, _DIR_FLAGS)
    except OSError as exc:
        raise _translate(exc, parent, "write") from exc
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _symlink(parts)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise InvalidParameter(f"{_shown(parts)} is a directory", details={"path": _shown(parts)})
        # A symlink or directory swapped in after this check is replaced (renameat acts on
        # the name, never follows it) or refused (EISDIR): still nothing outside.
        _replace(parent_fd, name, content, mode or DEFAULT_MODE, owner)
    except OSError as exc:
        raise _translate(exc, parts, "write") from exc
    finally:
        os.close(parent_fd)
    return len(content)


def delete_path(dir_fd: int, rel: str, *, recursive: bool) -> None:
    """Delete ``rel`` beneath ``dir_fd``: a file, a symlink (the link itself; its target is
    never touched), an empty directory, or with ``recursive`` a whole tree (walked through
    directory fds opened with ``O_NOFOLLOW``, so a symlink inside is unlinked, not followed,
    even when swapped in during the walk).

    Raises:
        InvalidParameter (2001): ``rel`` is the root, a non-empty directory without
            ``recursive``, or a tree that kept being refilled while it was deleted.
        NotFound (6001): nothing at ``rel``.
        FileDenied (3003): a symlink on the way to ``rel``.
        others: see the module docstring.
    """
    parts = _components(rel)
    if not parts:
        raise InvalidParameter(f"{WORKSPACE_MOUNT} itself cannot be deleted", details={"path": WORKSPACE_MOUNT})
    parent, name = parts[:-1], parts[-1]
    try:
        parent_fd = _open_beneath(dir_fd, parent, _DIR_FLAGS)
    except OSError as exc:
        raise _translate(exc, parent, "delete") from exc
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
        elif recursive:
            _remove_tree(parent_fd, name)
        else:
            os.rmdir(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY and recursive:
            raise InvalidParameter(
                f"{_shown(parts)} kept changing while it was deleted", details={"path": _shown(parts)}
            ) from exc
        raise _translate(exc, parts, "delete") from exc
    finally:
        os.close(parent_fd)


def guess_mime_type(rel: str) -> str:
    """The MIME type of a file by its name (``mimetypes``), else ``application/octet-stream``."""
    # A leading "/" keeps a name like "data:x" from being parsed as a URL scheme.
    return mimetypes.guess_type("/" + rel)[0] or "application/octet-stream"


# -- resolution ---------------------------------------------------------------------


def _components(path: str, *, absolute_ok: bool = False) -> list[str]:
    """Path segments of ``path`` without empty and ``.`` ones; an absolute ``/workspace/...``
    path only when ``absolute_ok``. Errors as :func:`workspace_relative`."""
    if "\0" in path:
        raise InvalidParameter("the path contains a NUL byte")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidParameter("the path is not valid UTF-8") from exc
    if size > MAX_PATH_BYTES:
        raise InvalidParameter(
            f"the path is longer than {MAX_PATH_BYTES} bytes", details={"size": size, "max": MAX_PATH_BYTES}
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileDenied(f"{path!r}: '..' is not allowed in workspace paths", details={"path": path})
    if path.startswith("/"):
        if not absolute_ok or not parts or parts[0] != WORKSPACE_MOUNT.lstrip("/"):
            raise FileDenied(f"{path!r} is outside {WORKSPACE_MOUNT}", details={"path": path})
        parts = parts[1:]
    return parts


def _open_beneath(dir_fd: int, parts: list[str], flags: int) -> int:
    """A new fd for ``parts`` beneath ``dir_fd`` (``dir_fd`` itself, reopened, when empty),
    opened with ``flags`` (which hold ``O_NOFOLLOW | O_CLOEXEC``). No component may be a
    symlink (ELOOP) or a mount point (EXDEV). Raises OSError."""
    if _openat2_available is None:
        _probe_openat2(dir_fd)
    if not _openat2_available:
        return _walk(dir_fd, parts, flags)
    try:
        return _openat2(dir_fd, "/".join(parts) or ".", flags)
    except NotADirectoryError:
        # A file or a symlink where a directory is wanted (under O_DIRECTORY a final
        # symlink is ENOTDIR too): the walk, as safe, tells which one.
        return _walk(dir_fd, parts, flags)


def _probe_openat2(dir_fd: int) -> None:
    """Find out once whether openat2 can be used: ENOSYS from a kernel before 5.6 or a
    seccomp filter that does not know it, EPERM from container runtimes whose filters
    answered that for unknown syscalls (Docker before 20.10) mean the walk."""
    global _openat2_available
    try:
        os.close(_openat2(dir_fd, ".", os.O_PATH | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            _openat2_available = False
        return  # anything else: the call itself will tell
    _openat2_available = True


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE)
    raw = os.fsencode(path)
    for _ in range(_EAGAIN_RETRIES):
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(raw),
            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def _walk(dir_fd: int, parts: list[str], flags: int) -> int:
    """The openat2 fallback: one ``openat(O_NOFOLLOW)`` per component, each relative to the
    fd of the directory before it, refusing a change of ``st_dev``."""
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    dev = os.fstat(dir_fd).st_dev
    fd = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for i, part in enumerate(parts):
            child = _openat(fd, part, flags if i == len(parts) - 1 else _DIR_FLAGS)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _openat(dir_fd: int, name: str, flags: int) -> int:
    """openat(2) of one component; a symlink raises ELOOP also under ``O_DIRECTORY``
    (where the kernel reports ENOTDIR for it, as for a file)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except NotADirectoryError:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
        raise


def _make_dirs(dir_fd: int, parts: list[str], owner: tuple[int, int] | None) -> int:
    """fd of the directory ``parts`` beneath ``dir_fd``, making missing ones (mkdirat 0o755,
    then fchown/fchmod through an ``O_NOFOLLOW`` fd of what was made). Raises OSError."""
    dev = os.fstat(dir_fd).st_dev
    fd = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for part in parts:
            made = False
            try:
                child = _openat(fd, part, _DIR_FLAGS)
            except FileNotFoundError:
                try:
                    os.mkdir(part, _DIR_MODE, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass  # made meanwhile by someone else: open it like any other
                child = _openat(fd, part, _DIR_FLAGS)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            if made:
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, _DIR_MODE)  # mkdir's mode is filtered by the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- write and delete ---------------------------------------------------------------


def _replace(parent_fd: int, name: str, content: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    tmp = _TMP_PREFIX + secrets.token_hex(8)
    fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=parent_fd)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view[:_CHUNK_BYTES]):]
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after fchown, which may clear mode bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent_fd)
        raise


@dataclass
class _Frame:
    """A directory being emptied: its fd, its name in the parent frame's directory, the
    subdirectories still to empty."""

    fd: int
    name: str
    pending: list[str] = field(default_factory=list)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` of ``parent_fd`` and everything in it, bottom up,
    without recursion (depth costs one open fd per level, not a Python stack frame).

    Directories are entered only with ``openat(O_DIRECTORY | O_NOFOLLOW)`` relative to the
    parent's fd; anything that is not a directory, symlinks included, is ``unlinkat``'ed by
    name. ``shutil.rmtree`` is not used: it enters directories with a plain ``open(O_RDONLY)``
    and compares inodes after the fact (CPython 3.11 ``_rmtree_safe_fd``), so a symlink to a
    FIFO or a device swapped in by a running command would be opened (and could block, or
    trigger the device) before being refused. Raises OSError (ENOTEMPTY when the tree keeps
    being refilled, EXDEV at a mount point)."""
    dev = os.fstat(parent_fd).st_dev
    retries = _MAX_RETRIES
    stack = [_Frame(parent_fd, "", [name])]  # the caller's directory: never closed nor removed
    try:
        while True:
            frame = stack[-1]
            if frame.pending:
                sub_name = frame.pending.pop()
                sub = _open_subdir(frame.fd, sub_name, dev)
                if sub is not None:
                    stack.append(_Frame(sub, sub_name))
                    stack[-1].pending = _empty_files(sub)
                elif not _unlink_quiet(frame.fd, sub_name):  # a directory again meanwhile
                    retries = _spend(retries)
                    frame.pending.append(sub_name)
                continue
            if len(stack) == 1:
                return
            stack.pop()
            os.close(frame.fd)
            try:
                os.rmdir(frame.name, dir_fd=stack[-1].fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                retries = _spend(retries)  # refilled meanwhile: empty it again
                stack[-1].pending.append(frame.name)
    finally:
        for frame in stack[1:]:
            os.close(frame.fd)


def _spend(retries: int) -> int:
    if retries <= 0:
        raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
    return retries - 1


def _open_subdir(parent_fd: int, name: str, dev: int) -> int | None:
    """fd of directory ``name`` of ``parent_fd`` (``O_NOFOLLOW``), None when it is not a
    directory (a symlink included) or gone. Raises OSError (EXDEV at a mount point)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None
        raise
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    return fd


def _empty_files(fd: int) -> list[str]:
    """Unlink every entry of directory ``fd`` that is not a directory; returns the names of
    the subdirectories. Listed first, then acted on (readdir(3) leaves unspecified what a
    listing shows of entries removed while it runs)."""
    with os.scandir(fd) as it:
        entries = list(it)
    subdirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir or not _unlink_quiet(fd, entry.name):
            subdirs.append(entry.name)
    return subdirs


def _unlink_quiet(dir_fd: int, name: str) -> bool:
    """Unlink ``name`` (never following it); True when it is gone, False when it is a
    directory."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        return False
    return True


# -- errors -------------------------------------------------------------------------


def _shown(parts: list[str]) -> str:
    return "/".join([WORKSPACE_MOUNT, *parts])


def _symlink(parts: list[str]) -> FileDenied:
    return FileDenied(f"{_shown(parts)}: symbolic links are not followed", details={"path": _shown(parts)})


def _too_large(parts: list[str], size: int, max_bytes: int) -> InvalidParameter:
    return InvalidParameter(
        f"{_shown(parts)} is larger than {max_bytes} bytes", details={"size": size, "max": max_bytes}
    )


def _require_regular(st: os.stat_result, parts: list[str]) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise InvalidParameter(f"{_shown(parts)} is a directory", details={"path": _shown(parts)})
    if not stat.S_ISREG(st.st_mode):
        raise InvalidParameter(f"{_shown(parts)} is not a regular file", details={"path": _shown(parts)})


def _translate(exc: OSError, parts: list[str], action: str) -> GatewayError:
    """The project error for ``exc`` raised while acting on ``parts`` (this module's one
    OSError adapter)."""
    shown = _shown(parts)
    details = {"path": shown}
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"{shown} does not exist", details=details)
    if code == errno.ELOOP:
        return _symlink(parts)
    if code == errno.EXDEV:
        return FileDenied(f"{shown} leaves the workspace or crosses a mount point", details=details)
    if code in (errno.EACCES, errno.EPERM):
        return FileDenied(f"cannot {action} {shown}: permission denied", details=details)
    if code == errno.ENOTDIR:
        return InvalidParameter(f"{shown}: a path component is not a directory", details=details)
    if code == errno.EISDIR:
        return InvalidParameter(f"{shown} is a directory", details=details)
    if code == errno.ENOTEMPTY:
        return InvalidParameter(f"{shown} is a directory that is not empty (delete it recursively)",
                                details=details)
    if code == errno.ENAMETOOLONG:
        return InvalidParameter(f"{shown}: a name is too long", details=details)
    name = errno.errorcode.get(code or 0, "EUNKNOWN")
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return SandboxLimitExceeded(f"cannot {action} {shown}: {name}", details={**details, "errno": name})
    return InternalError(f"cannot {action} {shown}: {name}", details={**details, "errno": name})
