"""Per-tenant workspaces on the real file system: layout, leases and uids, hand-over, sweep."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest

import sandbox
from gateway import files
from gateway.errors import InternalError, NotFound, StorageError
from gateway.tasks.workspaces import WORKSPACE_ID_PATTERN, WorkspaceLease, WorkspaceManager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own workspaces by pool uids")

FIRST = 300_000
COUNT = 16
STRANGER = 250_123  # owns the outside file; in no pool
OUTSIDE = b"outside\n"


@pytest.fixture
def pool() -> sandbox.UidPool:
    return sandbox.UidPool(FIRST, FIRST, COUNT)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "workspaces"
    path.mkdir(mode=0o711)
    return path


@pytest.fixture
def manager(root: Path, pool: sandbox.UidPool) -> WorkspaceManager:
    return WorkspaceManager(root, pool)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(OUTSIDE)
    os.chown(path / "secret", STRANGER, STRANGER)
    os.chown(path, STRANGER, STRANGER)
    return path


def _tenant_dir(tenant: str) -> str:
    return "t-" + hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _owners(top: Path) -> set[tuple[int, int]]:
    """(uid, gid) of ``top`` and everything below it, symlinks themselves (lstat)."""
    found = {(top.lstat().st_uid, top.lstat().st_gid)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_uid, st.st_gid))
    return found


@pytest.mark.parametrize(("workspace_id", "ok"), [
    ("task-" + "0" * 32, True),
    ("a", True),
    ("A.b_c-9", True),
    ("x" * 64, True),
    ("x" * 65, False),
    ("", False),
    (".", False),
    ("..", False),
    (".hidden", False),
    ("-a", False),
    ("a/b", False),
    ("abc\n", False),
    ("é", False),
])
def test_workspace_id_pattern(manager, workspace_id, ok):
    assert bool(WORKSPACE_ID_PATTERN.match(workspace_id)) is ok
    if not ok:
        with pytest.raises(ValueError, match="does not match"):
            manager.acquire("tenant", workspace_id)
        with pytest.raises(ValueError, match="does not match"):
            with manager.open_dir("tenant", workspace_id, create=True):
                pass


def test_acquire_creates_the_layout(manager, root, pool):
    lease = manager.acquire("acme", "ws1")
    tdir = root / _tenant_dir("acme")
    assert lease.path == tdir / "ws1"
    assert lease.path.is_absolute()
    assert lease.run_as is not None and lease.run_as.uid in pool
    st = tdir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    assert (tdir / ".tenant").read_bytes() == b"acme"
    st = lease.path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (lease.run_as.uid, lease.run_as.gid, 0o700)
    os.close(sandbox.open_workspace(str(lease.path), lease.run_as.uid))  # what every run checks
    assert manager.leased == 1
    manager.release(lease)
    assert manager.leased == 0


def test_tenant_ids_never_become_path_components(manager, root):
    for tenant in ("../../etc", "a/b", "", "\udcff", "x" * 10_000):
        lease = manager.acquire(tenant, "ws")
        assert lease.path.parent == root / _tenant_dir(tenant)
        assert lease.path.parent.parent == root
        manager.release(lease)


def test_tenants_are_isolated(manager):
    a = manager.acquire("tenant-a", "shared-name")
    b = manager.acquire("tenant-b", "shared-name")
    assert a.path != b.path
    assert a.run_as != b.run_as  # both leased: two running tasks never share a uid
    (a.path / "only-in-a").write_bytes(b"a")
    manager.release(a)
    manager.release(b)
    with manager.open_dir("tenant-b", "shared-name", create=False) as wdir:
        with pytest.raises(NotFound):
            files.read_file(wdir.fd, "only-in-a", max_bytes=10)
    with pytest.raises(NotFound, match="no workspace 'only-a'"):
        with manager.open_dir("tenant-b", "only-a", create=False):
            pass
    with manager.open_dir("tenant-a", "shared-name", create=False) as wdir:
        assert files.read_file(wdir.fd, "only-in-a", max_bytes=10) == b"a"


def test_concurrent_leases_share_the_uid_and_refcount(manager, pool):
    first = manager.acquire("t", "ws")
    second = manager.acquire("t", "ws")
    assert first.run_as == second.run_as
    assert first.lease_id != second.lease_id
    assert manager.leased == 1
    assert first.run_as is not None
    manager.release(first)
    # Still leased: its uid is not free for another workspace.
    other = manager.acquire("t", "other")
    assert other.run_as != second.run_as
    manager.release(second)
    assert manager.leased == 1
    with pytest.raises(ValueError, match="not outstanding"):
        manager.release(second)
    with pytest.raises(ValueError, match="not outstanding"):
        manager.release(WorkspaceLease("t", "ws", second.path, second.run_as))
    manager.release(other)
    # Both uids are back in the pool.
    assert {pool.acquire(prefer=first.run_as.uid).uid, pool.acquire(prefer=other.run_as.uid).uid} == {
        first.run_as.uid, other.run_as.uid}


def test_reuse_keeps_files_and_prefers_the_owner_uid(manager, pool):
    lease = manager.acquire("t", "ws")
    uid = lease.run_as.uid
    (lease.path / "kept").write_bytes(b"x")
    manager.release(lease)
    # FIFO alone would hand out other uids first; these leases take a few of them.
    others = [manager.acquire("t", f"other{i}") for i in range(3)]
    again = manager.acquire("t", "ws")
    assert again.run_as.uid == uid
    assert (again.path / "kept").read_bytes() == b"x"
    for held in (*others, again):
        manager.release(held)


def test_hand_over_reowns_the_tree_and_never_follows_symlinks(manager, pool, outside):
    lease = manager.acquire("t", "ws")
    old = lease.run_as
    with manager.open_dir("t", "ws", create=False) as wdir:
        assert wdir.owner == (old.uid, old.gid)  # leased: the lease's uid
        files.write_file(wdir.fd, "a/b/c", b"x", mode=0o755, create_dirs=True, owner=wdir.owner)
    ws = lease.path
    (ws / "a" / "to-outside-dir").symlink_to(outside)
    (ws / "to-secret").symlink_to(outside / "secret")
    (ws / "setuid").write_bytes(b"#!/bin/sh\n")
    for p in (ws / "a" / "to-outside-dir", ws / "to-secret", ws / "setuid"):
        os.chown(p, old.uid, old.gid, follow_symlinks=False)
    os.chmod(ws / "setuid", 0o4755)
    manager.release(lease)
    assert _owners(ws) == {(old.uid, old.gid)}

    busy = pool.acquire(prefer=old.uid)  # another task runs as the old owner now
    assert busy == old
    lease = manager.acquire("t", "ws")
    new = lease.run_as
    assert new != old
    assert _owners(ws) == {(new.uid, new.gid)}
    assert stat.S_IMODE((ws / "setuid").stat().st_mode) == 0o755  # chown(2) cleared set-user-ID
    for p in (outside, outside / "secret"):
        assert (p.stat().st_uid, p.stat().st_gid) == (STRANGER, STRANGER)
    assert (outside / "secret").read_bytes() == OUTSIDE
    os.close(sandbox.open_workspace(str(ws), new.uid))
    manager.release(lease)
    pool.release(busy)


def test_interrupted_hand_over_is_redone(manager, root):
    """A hand-over chowns the root to the gateway first; one interrupted there leaves a
    workspace owned by no pool uid, and the next lease walks the whole tree again."""
    lease = manager.acquire("t", "ws")
    (lease.path / "d").mkdir()
    (lease.path / "d" / "f").write_bytes(b"x")
    manager.release(lease)
    os.chown(lease.path, 0, 0)
    os.chown(lease.path / "d" / "f", FIRST + 7, FIRST + 7)
    lease = manager.acquire("t", "ws")
    assert _owners(lease.path) == {(lease.run_as.uid, lease.run_as.gid)}
    manager.release(lease)


def test_workspace_root_opened_up_by_a_command_is_closed_again(manager):
    lease = manager.acquire("t", "ws")
    os.chmod(lease.path, 0o777)
    manager.release(lease)
    lease = manager.acquire("t", "ws")
    assert stat.S_IMODE(lease.path.stat().st_mode) == 0o700
    manager.release(lease)


def test_open_dir_create_owns_the_new_workspace_by_the_gateway_until_leased(manager, pool, root):
    # Taking a pool uid for an idle workspace, even for a moment, could starve a task
    # starting at that instant; the first lease hands the tree to its own uid instead.
    running = manager.acquire("t", "running")
    with manager.open_dir("t", "fresh", create=True) as wdir:
        assert wdir.owner == (os.geteuid(), os.getegid())
        files.write_file(wdir.fd, "f", b"x", mode=0, create_dirs=False, owner=wdir.owner)
    path = root / _tenant_dir("t") / "fresh"
    assert _owners(path) == {wdir.owner}
    lease = manager.acquire("t", "fresh")
    assert lease.run_as.uid in pool and lease.run_as != running.run_as
    assert _owners(path) == {(lease.run_as.uid, lease.run_as.gid)}
    manager.release(lease)
    manager.release(running)


def test_open_dir_create_when_every_uid_is_busy(root):
    pool = sandbox.UidPool(FIRST, FIRST, 1)
    manager = WorkspaceManager(root, pool)
    busy = pool.acquire()
    with manager.open_dir("t", "ws", create=True) as wdir:
        assert wdir.owner == (0, 0)  # the gateway's until a lease hands it over
        files.write_file(wdir.fd, "f", b"x", mode=0, create_dirs=False, owner=wdir.owner)
    with pytest.raises(sandbox.SandboxSetupError, match="in use"):
        manager.acquire("t", "ws")
    assert manager.leased == 0
    pool.release(busy)
    lease = manager.acquire("t", "ws")
    assert _owners(lease.path) == {(FIRST, FIRST)}
    manager.release(lease)


def test_open_dir_missing_names_the_workspace_not_the_host_path(manager, root):
    with pytest.raises(NotFound) as info:
        with manager.open_dir("nobody", "ws", create=False):
            pass
    assert info.value.code == 6001
    assert "ws" in info.value.message and str(root) not in info.value.message
    assert not (root / _tenant_dir("nobody")).exists()  # a failed lookup makes nothing


def test_open_dir_stamps_the_last_use(manager):
    lease = manager.acquire("t", "ws")
    manager.release(lease)
    os.utime(lease.path, (1_000_000, 1_000_000))
    with manager.open_dir("t", "ws", create=False) as wdir:
        assert wdir.owner == (lease.run_as.uid, lease.run_as.gid)  # idle: the dir's owner
    assert lease.path.stat().st_mtime > time.time() - 60


def test_symlinked_workspace_is_refused(manager, outside):
    lease = manager.acquire("t", "ws")
    manager.release(lease)
    os.rmdir(lease.path)
    lease.path.symlink_to(outside)
    with pytest.raises(InternalError, match="ELOOP|ENOTDIR"):  # O_DIRECTORY | O_NOFOLLOW
        with manager.open_dir("t", "ws", create=True):
            pass
    with pytest.raises(sandbox.SandboxSetupError, match="ELOOP|ENOTDIR"):
        manager.acquire("t", "ws")
    assert manager.leased == 0
    assert (outside.stat().st_uid, (outside / "secret").stat().st_uid) == (STRANGER, STRANGER)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_sweep_removes_only_unleased_old_workspaces(manager, root, outside):
    now = time.time()
    leased_old = manager.acquire("t1", "leased-old")
    idle_old = manager.acquire("t1", "idle-old")
    idle_new = manager.acquire("t1", "idle-new")
    lonely = manager.acquire("t2", "lonely")
    (idle_old.path / "d").mkdir()
    (idle_old.path / "d" / "to-outside").symlink_to(outside)
    for lease in (idle_old, idle_new, lonely):
        manager.release(lease)
    for lease in (leased_old, idle_old, lonely):
        os.utime(lease.path, (now - 7200, now - 7200))
    removed = manager.sweep(3600, now=now)
    assert sorted(removed) == [("t1", "idle-old"), ("t2", "lonely")]
    assert leased_old.path.is_dir() and idle_new.path.is_dir()
    assert not idle_old.path.exists()
    assert not (root / _tenant_dir("t2")).exists()  # empty tenant directory removed too
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_bytes() == OUTSIDE
    # A leased workspace is never removed, however old.
    assert manager.sweep(0, now=now + 10**6) == [("t1", "idle-new")]
    assert leased_old.path.is_dir()
    manager.release(leased_old)
    assert manager.sweep(0, now=time.time() + 1) == [("t1", "leased-old")]
    assert os.listdir(root) == []


def test_sweep_skips_a_workspace_in_use_by_the_files_api(manager):
    with manager.open_dir("t", "ws", create=True):
        assert manager.sweep(0, now=time.time() + 10**6) == []
    assert manager.sweep(0, now=time.time() + 10**6) == [("t", "ws")]


def test_sweep_after_a_restart_reports_the_tenant(root, pool):
    first = WorkspaceManager(root, pool)
    for tenant in ("acme", "", "lost"):
        with first.open_dir(tenant, "ws", create=True):
            pass
    os.unlink(root / _tenant_dir("lost") / ".tenant")
    (root / "not-a-tenant-dir").mkdir()  # foreign entries are left alone
    second = WorkspaceManager(root, pool)
    assert sorted(second.sweep(0, now=time.time() + 1)) == sorted(
        [("acme", "ws"), ("", "ws"), (_tenant_dir("lost"), "ws")])
    assert os.listdir(root) == ["not-a-tenant-dir"]


def test_without_a_pool_everything_is_the_gateways(root):
    manager = WorkspaceManager(root, None)
    lease = manager.acquire("t", "ws")
    assert lease.run_as is None
    assert lease.path.stat().st_uid == os.geteuid()
    with manager.open_dir("t", "ws", create=False) as wdir:
        assert wdir.owner is None
    manager.release(lease)
    assert manager.leased == 0


def test_concurrent_acquire_and_release(manager):
    """Threads lease a few workspaces at random: leases of one workspace always share a
    uid, and two workspaces leased at the same time never do."""
    lock = threading.Lock()
    holders: dict[str, list[WorkspaceLease]] = {}
    errors: list[str] = []

    def check() -> None:
        uid_of = {}
        for ws, leases in holders.items():
            uids = {lease.run_as for lease in leases}
            if len(uids) > 1:
                errors.append(f"{ws} leased with several uids {uids}")
            if leases:
                uid_of[ws] = leases[0].run_as
        if len(set(uid_of.values())) != len(uid_of):
            errors.append(f"uid shared by workspaces: {uid_of}")

    def worker(seed: int) -> None:
        for i in range(60):
            ws = f"ws{(seed * 7 + i) % 5}"
            lease = manager.acquire("t", ws)
            with lock:
                holders.setdefault(ws, []).append(lease)
                check()
            if i % 3 == 0:
                with manager.open_dir("t", ws, create=False) as wdir:
                    files.write_file(wdir.fd, f"f{seed}", b"x", mode=0, create_dirs=False, owner=wdir.owner)
            with lock:
                holders[ws].remove(lease)
            manager.release(lease)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert manager.leased == 0
    assert manager._entries == {}  # nothing pinned or leased is left behind


class Holds:
    """The store's holds on workspaces, in a dict; ``failing`` makes every call fail."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], str] = {}
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise StorageError("the store is down")

    def lease_workspace(self, tenant: str, workspace: str, owner: str) -> str | None:
        self._check()
        holder = self.held.setdefault((tenant, workspace), owner)
        return None if holder == owner else holder

    def release_workspace(self, tenant: str, workspace: str, owner: str) -> None:
        self._check()
        if self.held.get((tenant, workspace)) == owner:
            del self.held[(tenant, workspace)]

    def workspace_holder(self, tenant: str, workspace: str) -> str | None:
        self._check()
        return self.held.get((tenant, workspace))


def test_replicas_hold_a_workspace_one_at_a_time(root: Path, pool: sandbox.UidPool) -> None:
    holds = Holds()
    here = WorkspaceManager(root, pool, shared=holds, owner="gw-a")
    first, second = here.acquire("acme", "ws"), here.acquire("acme", "ws")  # local leases share the hold
    assert holds.held == {("acme", "ws"): "gw-a"} and here.held_elsewhere("acme", "ws") is None
    holds.held[("acme", "other")] = "gw-b"
    assert here.held_elsewhere("acme", "other") == "gw-b"
    with pytest.raises(sandbox.SandboxSetupError, match="in use by tasks on another replica"):
        here.acquire("acme", "other")
    assert here.leased == 1  # the refused lease took nothing
    here.release(first)
    assert holds.held[("acme", "ws")] == "gw-a"
    here.release(second)
    assert ("acme", "ws") not in holds.held


def test_a_hold_the_store_could_not_release_is_released_by_the_next_sweep(root: Path, pool: sandbox.UidPool) -> None:
    holds = Holds()
    here = WorkspaceManager(root, pool, shared=holds, owner="gw-a")
    lease = here.acquire("acme", "ws")
    holds.failing = True
    here.release(lease)  # logged, kept for later
    holds.failing = False
    assert holds.held == {("acme", "ws"): "gw-a"}
    here.sweep(unused_for_s=3600)
    assert holds.held == {}


def test_a_sweep_leaves_a_workspace_another_replica_holds(root: Path, pool: sandbox.UidPool) -> None:
    holds = Holds()
    here = WorkspaceManager(root, pool, shared=holds, owner="gw-a")
    here.release(here.acquire("acme", "busy"))
    here.release(here.acquire("acme", "idle"))
    holds.held[("acme", "busy")] = "gw-b"
    removed = here.sweep(unused_for_s=0, now=time.time() + 10)
    assert removed == [("acme", "idle")] and holds.held == {("acme", "busy"): "gw-b"}
