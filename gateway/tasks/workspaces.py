"""Per-tenant workspaces: a task's files, kept between the tasks that name the same one.

Layout: ``<root>/t-<sha256(tenant)[:32]>/<workspace_id>``. Tenant ids are arbitrary strings,
so they never become path components; a tenant directory is named by their hash, owned by
the gateway (root), mode 0711 (sandbox uids must traverse it: bwrap resolves the bind source
as the sandbox uid), and holds the tenant id in ``.tenant`` (0600) for :meth:`sweep`'s
report. A workspace is a directory, mode 0700, owned by the uid of the tasks that use it.
Every directory is made and opened through directory fds (``mkdirat``, ``openat`` with
``O_NOFOLLOW``, ``sandbox.create_workspace``), so each ancestor of a workspace is owned by
root and writable by nobody else: the rules ``sandbox.mounts.open_workspace`` re-checks at
every run.

Who owns a workspace. While leased (tasks run in it), the lease's uid from the
``sandbox.UidPool``; concurrent tasks of one workspace share its files, so they share that
uid (a refcount). The first lease of an idle workspace takes a free uid, preferring the one
that already owns it (``UidPool.acquire(prefer=st_uid)``); when it gets another, the tree is
handed over: the root directory is first chowned to the gateway (the mark of a hand-over in
progress: one that fails half-way leaves a workspace whose owner is not a pool uid, so the
next lease walks it again), then every entry below (``_chown_tree``: directories entered
with ``openat(O_DIRECTORY | O_NOFOLLOW)``, everything else chowned with
``fchownat(AT_SYMLINK_NOFOLLOW)``, so a symlink is re-owned itself and never followed, and
another file system is never entered), then the root to the new uid. chown(2) clears the
set-user-ID and set-group-ID bits of the files it re-owns. An idle workspace keeps its last
owner, which may meanwhile run another task's sandbox: that sandbox cannot reach it, since
it sees no host path but its own binds. When the gateway is not root there is no pool:
everything is owned by, and runs as, the gateway's uid (``run_as`` None).

Concurrency. ``_lock`` guards the registry (``_entries``: workspaces with a lease or a caller
in progress) and the creation and removal of tenant directories; each workspace's own lock
serialises its creation, hand-over, files-API access (:meth:`open_dir` holds it for the
whole block, so no hand-over re-owns a tree under a write) and removal. Lock order: a
workspace's lock, then ``_lock``; never the reverse. A hand-over walks one tree holding only
that workspace's lock.

Replicas. Gateways that share a workspace volume (``sandbox.workspace_root`` on one file
system) and a PostgreSQL task store hold a workspace in the store while their tasks run in
it (``TaskStore.lease_workspace``): the first local lease takes the hold, the last gives it
back, and a workspace held by another live replica is refused (its tasks would run under a
uid of another pool). A workspace is swept only by a replica that could hold it. The files
API serves a workspace held elsewhere as it does one leased here: it never re-owns a tree.

Retention: the workspace directory's mtime is its last use, stamped by :meth:`release` and
on leaving :meth:`open_dir` (commands cannot move it later: they run only while leased).
:meth:`sweep` removes unleased workspaces unused for longer than asked, through
``gateway.files.delete_path`` (fd walk, ``O_NOFOLLOW``), and empty tenant directories.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sandbox
from gateway import files
from gateway.errors import GatewayError, InternalError, NotFound
from gateway.tasks.store import TaskStore

__all__ = ["WORKSPACE_ID_PATTERN", "WorkspaceDir", "WorkspaceLease", "WorkspaceManager"]

log = logging.getLogger(__name__)

#: A workspace id: one path component, never "." or "..", at most 64 characters; a task id
#: (``task-`` + 32 hex) is one. ``\Z``, not ``$``: "$" would also accept a trailing newline.
WORKSPACE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

_TENANT_DIR = re.compile(r"t-[0-9a-f]{32}")
_TENANT_FILE = ".tenant"  # not a valid workspace id, so never confused with one
_TENANT_FILE_MAX_BYTES = 65536
_TENANT_MODE = 0o711
_WORKSPACE_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_Key = tuple[str, str]  # (tenant directory name, workspace id)


@dataclass(frozen=True)
class WorkspaceLease:
    """A workspace in use by one running task, from :meth:`WorkspaceManager.acquire`.

    Attributes:
        tenant: the tenant id, as given.
        workspace_id: the workspace id, as given.
        path: absolute host path of the workspace directory (the sandbox's ``workspace``).
        run_as: who owns the workspace and runs the task while leased; None when the
            gateway is not root (everything is then the gateway's uid).
        lease_id: identifies this lease to :meth:`WorkspaceManager.release`.
    """

    tenant: str
    workspace_id: str
    path: Path
    run_as: sandbox.RunAs | None
    lease_id: int = field(default=0, repr=False)


@dataclass(frozen=True)
class WorkspaceDir:
    """A workspace opened for the files API; valid inside ``open_dir``'s block only.

    Attributes:
        fd: ``O_DIRECTORY | O_NOFOLLOW`` fd of the workspace root (``gateway.files``'s
            ``dir_fd``); closed when the block ends.
        owner: (uid, gid) that new files and directories must be given, None when the
            gateway is not root (leave them as made).
    """

    fd: int
    owner: tuple[int, int] | None


@dataclass(eq=False)
class _Entry:
    """Registry state of one workspace. ``pins`` is guarded by ``WorkspaceManager._lock``;
    ``leases`` and ``run_as`` by ``lock``, taken only while pinned."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pins: int = 0  # callers between _pin and _unpin
    leases: set[int] = field(default_factory=set)  # outstanding lease ids
    run_as: sandbox.RunAs | None = None  # the owner while leased


class WorkspaceManager:
    """The tenants' workspaces under ``root``; thread-safe.

    Args:
        root: the directory holding the tenant directories; it and its ancestors must be
            owned by root (or the gateway) and writable by no one else (checked at startup
            by ``gateway.app``). Made absolute; not touched by the constructor.
        uids: the sandbox uid pool when the gateway is root, else None.
        shared: where replicas hold workspaces (the task store), with ``owner``, this
            process's id there; None when no other process can use ``root``.
    """

    def __init__(self, root: Path, uids: sandbox.UidPool | None, shared: TaskStore | None = None,
                 owner: str = "") -> None:
        self.root = Path(os.path.abspath(root))
        self._uids = uids
        self._shared = shared
        self._replica = owner
        self._unreleased: set[tuple[str, str]] = set()  # holds a failed release left in the store
        self._lock = threading.Lock()
        self._entries: dict[_Key, _Entry] = {}
        self._leased = 0
        self._next_lease_id = 0

    @property
    def leased(self) -> int:
        """How many workspaces running tasks use now."""
        with self._lock:
            return self._leased

    def acquire(self, tenant: str, workspace_id: str) -> WorkspaceLease:
        """Lease the tenant's workspace ``workspace_id`` for one task, creating it when
        missing. A workspace already leased gives a lease with the same ``run_as``;
        otherwise a free pool uid is taken (the current owner's when free) and, when it is
        not the current owner, the tree is handed over to it (see the module docstring).
        Every lease must be given back with :meth:`release` once its run is over.

        Raises:
            ValueError: ``workspace_id`` does not match :data:`WORKSPACE_ID_PATTERN`.
            sandbox.SandboxSetupError: no uid is free, the workspace cannot be made,
                opened or handed over (the message names the workspace id, with the errno),
                or another replica's tasks hold it (or the store cannot say).
        """
        _check_id(workspace_id)
        try:
            key, entry = self._pin(tenant, workspace_id, create_tenant=True)
        except OSError as exc:
            raise _setup_error(workspace_id, "create the tenant directory of", exc) from exc
        try:
            with entry.lock:
                if entry.leases:
                    run_as = entry.run_as
                else:
                    self._hold(tenant, workspace_id)
                    try:
                        run_as = self._take(key)
                    except BaseException:
                        self._let_go(tenant, workspace_id)
                        raise
                    entry.run_as = run_as
                    with self._lock:
                        self._leased += 1
                with self._lock:
                    self._next_lease_id += 1
                    lease_id = self._next_lease_id
                entry.leases.add(lease_id)
        finally:
            self._unpin(key, entry)
        return WorkspaceLease(tenant, workspace_id, self._path(key), run_as, lease_id)

    def release(self, lease: WorkspaceLease) -> None:
        """Give back a lease from :meth:`acquire`, once every process of its run is gone.
        The last lease of a workspace returns its uid to the pool and stamps its last use.
        Raises ``ValueError`` for a lease that is not outstanding (released twice)."""
        key, entry = self._pin(lease.tenant, lease.workspace_id, create_tenant=False)
        try:
            with entry.lock:
                if lease.lease_id not in entry.leases:
                    raise ValueError(f"lease of workspace {lease.workspace_id!r} is not outstanding")
                entry.leases.discard(lease.lease_id)
                if entry.leases:
                    return
                run_as, entry.run_as = entry.run_as, None
                with self._lock:
                    self._leased -= 1
                if self._uids is not None and run_as is not None:
                    self._uids.release(run_as)
                self._let_go(lease.tenant, lease.workspace_id)
                # The command may have opened up its /workspace (chmod 777): idle
                # workspaces are 0700 again, closed to every other local user.
                self._stamp(key, reset_mode=True)
        finally:
            self._unpin(key, entry)

    @contextlib.contextmanager
    def open_dir(self, tenant: str, workspace_id: str, *, create: bool) -> Iterator[WorkspaceDir]:
        """The tenant's workspace opened for the files API (``with ... as wdir``). A missing
        workspace is made when ``create`` (owned by a pool uid that is free now, so the
        next lease keeps it; by the gateway when every uid is busy, and the next lease then
        hands it over). Holds the workspace's lock for the block (no hand-over or removal
        meanwhile) and stamps its last use on leaving.

        Raises:
            ValueError: ``workspace_id`` does not match :data:`WORKSPACE_ID_PATTERN`.
            NotFound (6001): no such workspace in this tenant and not ``create``.
            InternalError (5001): the workspace cannot be made or opened (errno name only).
        """
        _check_id(workspace_id)
        try:
            key, entry = self._pin(tenant, workspace_id, create_tenant=create)
        except OSError as exc:
            raise _internal_error(workspace_id, exc) from exc
        try:
            with entry.lock:
                try:
                    fd = self._open(key)
                    if fd is None and create:
                        self._create_idle(key)
                        fd = self._open(key)
                except OSError as exc:
                    raise _internal_error(workspace_id, exc) from exc
                if fd is None:
                    raise NotFound(f"no workspace {workspace_id!r}", details={"workspace": workspace_id})
                try:
                    try:
                        owner = self._owner(entry, fd)
                    except OSError as exc:
                        raise _internal_error(workspace_id, exc) from exc
                    yield WorkspaceDir(fd, owner)
                finally:
                    with contextlib.suppress(OSError):
                        os.utime(fd)
                    os.close(fd)
        finally:
            self._unpin(key, entry)

    def held_elsewhere(self, tenant: str, workspace_id: str) -> str | None:
        """The replica whose tasks hold the tenant's workspace now, when it is not this
        one; None otherwise (and always without replicas).

        Raises:
            GatewayError: the store cannot say (StorageError, 5002).
        """
        if self._shared is None:
            return None
        holder = self._shared.workspace_holder(tenant, workspace_id)
        return holder if holder is not None and holder != self._replica else None

    def _hold(self, tenant: str, workspace_id: str) -> None:
        """Take the store's hold on a workspace for this replica's tasks."""
        if self._shared is None:
            return
        try:
            holder = self._shared.lease_workspace(tenant, workspace_id, self._replica)
        except GatewayError as exc:
            raise sandbox.SandboxSetupError(f"workspace {workspace_id!r}: cannot hold it in the store: {exc}") from exc
        if holder is not None:
            raise sandbox.SandboxSetupError(
                f"workspace {workspace_id!r} is in use by tasks on another replica ({holder})")
        self._unreleased.discard((tenant, workspace_id))

    def _let_go(self, tenant: str, workspace_id: str) -> None:
        """Give the store's hold back; when the store fails, :meth:`sweep` tries again
        (until then other replicas are refused the workspace)."""
        if self._shared is None:
            return
        try:
            self._shared.release_workspace(tenant, workspace_id, self._replica)
        except GatewayError as exc:
            log.error("workspace %s stays held in the store until the next sweep: %s", workspace_id, exc)
            self._unreleased.add((tenant, workspace_id))

    def sweep(self, unused_for_s: float, now: float | None = None) -> list[tuple[str, str]]:
        """Remove every workspace that is not leased and was last used more than
        ``unused_for_s`` seconds before ``now`` (Unix time, default the current time), then
        every tenant directory left empty; returns the (tenant, workspace_id) removed. A
        workspace that cannot be removed is logged and left for the next sweep. The tenant
        is read from ``.tenant``; the tenant directory's name stands in when that is
        missing."""
        cutoff = (time.time() if now is None else now) - unused_for_s
        removed: list[tuple[str, str]] = []
        for tenant, workspace_id in list(self._unreleased):
            self._retry_release(tenant, workspace_id)
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            return removed
        try:
            for tdir in sorted(os.listdir(root_fd)):
                if not _TENANT_DIR.fullmatch(tdir):
                    continue
                try:
                    tenant_fd = os.open(tdir, _DIR_FLAGS, dir_fd=root_fd)
                except OSError:
                    continue
                try:
                    tenant = _read_tenant(tenant_fd)
                    if tenant is None:
                        tenant = tdir
                    for name in sorted(os.listdir(tenant_fd)):
                        if self._remove_if_unused(tenant_fd, tenant, (tdir, name), cutoff):
                            removed.append((tenant, name))
                    self._remove_tenant_if_empty(root_fd, tenant_fd, tdir)
                finally:
                    os.close(tenant_fd)
        finally:
            os.close(root_fd)
        return removed

    # -- registry -------------------------------------------------------------------

    def _pin(self, tenant: str, workspace_id: str, *, create_tenant: bool) -> tuple[_Key, _Entry]:
        """Register a caller of the workspace (it is then neither swept nor forgotten) and,
        with ``create_tenant``, make the tenant directory. Raises OSError."""
        tdir = _tenant_dir(tenant)
        key = (tdir, workspace_id)
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            entry.pins += 1
            if create_tenant:
                try:
                    self._ensure_tenant(tdir, tenant)
                except BaseException:
                    self._unpin_locked(key, entry)
                    raise
        return key, entry

    def _unpin(self, key: _Key, entry: _Entry) -> None:
        with self._lock:
            self._unpin_locked(key, entry)

    def _unpin_locked(self, key: _Key, entry: _Entry) -> None:
        # With no pin left nobody can touch entry.leases (that needs a pin), so reading it
        # under _lock alone is safe here.
        entry.pins -= 1
        if entry.pins == 0 and not entry.leases:
            del self._entries[key]

    # -- file system ----------------------------------------------------------------

    def _path(self, key: _Key) -> Path:
        return self.root / key[0] / key[1]

    def _ensure_tenant(self, tdir: str, tenant: str) -> None:
        """Make ``<root>/<tdir>`` (0711, this process's, with ``.tenant``) unless it exists.
        Called under ``_lock``, which :meth:`sweep` also holds to remove one."""
        root_fd = os.open(self.root, _DIR_FLAGS)
        try:
            try:
                os.mkdir(tdir, _TENANT_MODE, dir_fd=root_fd)
            except FileExistsError:
                return
            fd = os.open(tdir, _DIR_FLAGS, dir_fd=root_fd)
            try:
                os.fchmod(fd, _TENANT_MODE)  # mkdir's mode is filtered by the umask
                name_fd = os.open(
                    _TENANT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                    dir_fd=fd,
                )
                try:
                    view = memoryview(tenant.encode("utf-8", "surrogatepass"))
                    while view:
                        view = view[os.write(name_fd, view):]
                finally:
                    os.close(name_fd)
            finally:
                os.close(fd)
        finally:
            os.close(root_fd)

    def _open(self, key: _Key) -> int | None:
        """``O_DIRECTORY | O_NOFOLLOW`` fd of the workspace, None when it (or its tenant
        directory) does not exist. Raises OSError (ELOOP: a symlink, ENOTDIR: not a
        directory)."""
        root_fd = os.open(self.root, _DIR_FLAGS)
        try:
            tenant_fd = os.open(key[0], _DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            return None
        finally:
            os.close(root_fd)
        try:
            return os.open(key[1], _DIR_FLAGS, dir_fd=tenant_fd)
        except FileNotFoundError:
            return None
        finally:
            os.close(tenant_fd)

    def _stamp(self, key: _Key, *, reset_mode: bool = False) -> None:
        """Set the workspace's mtime (its last use) to now, and with ``reset_mode`` its
        mode to 0700; a failure is only logged."""
        try:
            fd = self._open(key)
            if fd is not None:
                try:
                    if reset_mode:
                        os.fchmod(fd, 0o700)
                    os.utime(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            log.warning("cannot stamp the last use of workspace %s/%s: %s", key[0], key[1], exc)

    def _take(self, key: _Key) -> sandbox.RunAs | None:
        """The owner for the first lease of an idle workspace (caller holds its lock):
        creates the workspace, or hands an existing one over to the uid obtained."""
        workspace_id = key[1]
        try:
            fd = self._open(key)
        except OSError as exc:
            raise _setup_error(workspace_id, "open", exc) from exc
        if fd is None:
            run_as = self._uids.acquire() if self._uids is not None else None
            try:
                sandbox.create_workspace(str(self.root / key[0]), workspace_id, run_as)
            except OSError as exc:
                self._give_back(run_as)
                raise _setup_error(workspace_id, "create", exc) from exc
            except BaseException:
                self._give_back(run_as)
                raise
            return run_as
        run_as = None
        try:
            st = os.fstat(fd)
            if self._uids is not None:
                run_as = self._uids.acquire(prefer=st.st_uid)
                if (st.st_uid, st.st_gid) != (run_as.uid, run_as.gid):
                    _hand_over(fd, run_as)
            # A command may have opened up its own workspace root (it owns it); close it again.
            os.fchmod(fd, _WORKSPACE_MODE)
        except OSError as exc:
            self._give_back(run_as)
            raise _setup_error(workspace_id, "hand over", exc) from exc
        except BaseException:
            self._give_back(run_as)
            raise
        finally:
            os.close(fd)
        return run_as

    def _give_back(self, run_as: sandbox.RunAs | None) -> None:
        if self._uids is not None and run_as is not None:
            self._uids.release(run_as)

    def _create_idle(self, key: _Key) -> None:
        """Make a workspace no task leases (caller holds its lock), owned by the gateway:
        the first lease hands it to its uid. (Taking a pool uid here, even for a moment,
        could leave a task starting at that instant without one.) Raises OSError."""
        sandbox.create_workspace(str(self.root / key[0]), key[1], None)

    def _owner(self, entry: _Entry, fd: int) -> tuple[int, int] | None:
        """Whom files made through the files API belong to (caller holds the lock)."""
        if self._uids is None:
            return None
        if entry.leases and entry.run_as is not None:
            return entry.run_as.uid, entry.run_as.gid
        st = os.fstat(fd)
        return st.st_uid, st.st_gid

    def _retry_release(self, tenant: str, workspace_id: str) -> None:
        """Give back a hold a failed release left, unless a lease here took it again."""
        key = (_tenant_dir(tenant), workspace_id)
        with self._lock:
            if key in self._entries:
                return
        self._unreleased.discard((tenant, workspace_id))
        self._let_go(tenant, workspace_id)

    def _remove_if_unused(self, tenant_fd: int, tenant: str, key: _Key, cutoff: float) -> bool:
        """Remove workspace ``key`` (of ``tenant``) if unleased here and on every replica,
        unpinned and last used at or before ``cutoff``; True when removed."""
        name = key[1]
        if not WORKSPACE_ID_PATTERN.match(name) or not _is_old_dir(tenant_fd, name, cutoff):
            return False
        with self._lock:
            if key in self._entries:  # leased, or a caller is at work in it
                return False
            entry = self._entries[key] = _Entry(pins=1)
        try:
            with entry.lock:
                # An acquire may have leased it, or open_dir used it, since the check above.
                if entry.leases or not _is_old_dir(tenant_fd, name, cutoff):
                    return False
                # Held while removed, so no replica starts a task in it meanwhile.
                try:
                    self._hold(tenant, name)
                except sandbox.SandboxSetupError:
                    return False
                try:
                    files.delete_path(tenant_fd, name, recursive=True)
                finally:
                    self._let_go(tenant, name)
                return True
        except (GatewayError, OSError) as exc:
            log.warning("cannot remove unused workspace %s/%s: %s", key[0], name, exc)
            return False
        finally:
            self._unpin(key, entry)

    def _remove_tenant_if_empty(self, root_fd: int, tenant_fd: int, tdir: str) -> None:
        """Remove a tenant directory holding no workspace. Under ``_lock``, which every
        user of the tenant directory held while pinning, so none is about to use it."""
        with self._lock:
            if any(key[0] == tdir for key in self._entries):
                return
            try:
                if set(os.listdir(tenant_fd)) - {_TENANT_FILE}:
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_TENANT_FILE, dir_fd=tenant_fd)
                os.rmdir(tdir, dir_fd=root_fd)
            except OSError as exc:
                log.warning("cannot remove empty tenant directory %s: %s", tdir, exc)


# -- helpers --------------------------------------------------------------------------


def _check_id(workspace_id: str) -> None:
    if not isinstance(workspace_id, str) or not WORKSPACE_ID_PATTERN.match(workspace_id):
        raise ValueError(f"workspace id {workspace_id!r} does not match {WORKSPACE_ID_PATTERN.pattern}")


def _tenant_dir(tenant: str) -> str:
    """The tenant's directory name: never the tenant id itself, which may be any string."""
    return "t-" + hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _read_tenant(tenant_fd: int) -> str | None:
    try:
        fd = os.open(_TENANT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=tenant_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _TENANT_FILE_MAX_BYTES).decode("utf-8", "surrogatepass")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _is_old_dir(tenant_fd: int, name: str, cutoff: float) -> bool:
    try:
        st = os.stat(name, dir_fd=tenant_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_mtime <= cutoff


def _hand_over(fd: int, run_as: sandbox.RunAs) -> None:
    """Re-own the workspace open at ``fd`` and everything in it to ``run_as``: the root to
    the gateway first (a hand-over in progress), then the tree, then the root."""
    os.fchown(fd, os.geteuid(), os.getegid())
    _chown_tree(fd, run_as.uid, run_as.gid)
    os.fchown(fd, run_as.uid, run_as.gid)


def _chown_tree(top_fd: int, uid: int, gid: int) -> None:
    """chown every entry below directory ``top_fd`` (not ``top_fd`` itself), iteratively.

    Directories: entered with ``openat(O_DIRECTORY | O_NOFOLLOW)`` relative to their
    parent's fd, then ``fchown``'ed through that fd, so the inode re-owned is the one
    entered; one on another file system is skipped. Others: ``fchownat(AT_SYMLINK_NOFOLLOW)``
    by name (a symlink is re-owned itself, its target never). Raises OSError."""
    dev = os.fstat(top_fd).st_dev
    stack: list[tuple[int, list[str]]] = [(top_fd, _chown_entries(top_fd, uid, gid))]
    try:
        while stack:
            fd, subdirs = stack[-1]
            if not subdirs:
                stack.pop()
                if fd != top_fd:
                    os.close(fd)
                continue
            name = subdirs.pop()
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    continue  # not a directory (any more): nothing to enter
                raise
            if os.fstat(sub).st_dev != dev:
                os.close(sub)
                continue
            stack.append((sub, []))
            os.fchown(sub, uid, gid)
            stack[-1] = (sub, _chown_entries(sub, uid, gid))
    finally:
        for fd, _ in stack:
            if fd != top_fd:
                os.close(fd)


def _chown_entries(fd: int, uid: int, gid: int) -> list[str]:
    """chown the entries of directory ``fd`` that are not directories; returns the names
    of those that are."""
    with os.scandir(fd) as it:
        entries = list(it)
    subdirs = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
                continue
            os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
    return subdirs


def _setup_error(workspace_id: str, action: str, exc: OSError) -> sandbox.SandboxSetupError:
    name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
    return sandbox.SandboxSetupError(f"cannot {action} workspace {workspace_id!r}: {name} ({exc.strerror})")


def _internal_error(workspace_id: str, exc: OSError) -> InternalError:
    name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
    return InternalError(
        f"workspace {workspace_id!r} cannot be opened: {name}", details={"workspace": workspace_id, "errno": name}
    )
