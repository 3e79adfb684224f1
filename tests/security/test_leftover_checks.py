"""The after-every-test check (conftest ``_nothing_left_behind``) can fail: each of its four
conditions is provoked here on purpose, seen, and cleaned up again."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from tests.conftest import as_user
from tests.security.conftest import clean_up, cgroup_dirs, CGROUP_POOL_NAME, leftovers, zombie_children


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_every_leftover_kind_is_detected_and_cleaned(uid_pool, pool, leftover_scope, sbx):
    sbx("true")  # the pool has made at least one slot
    uids, parents, _ = leftover_scope()
    assert parents == cgroup_dirs(os.getpid(), CGROUP_POOL_NAME) and parents, "no slot parents found"
    # A root of its own: the shared ones hold this test's workspace until it ends.
    root = tempfile.mkdtemp(prefix="sandbox-tests-leftovers-")
    roots = [root]
    assert leftovers(uids, parents, roots) == []

    stray_uid = uid_pool.acquire()
    in_range = subprocess.Popen([*as_user(stray_uid.uid, stray_uid.gid), "sleep", "30"])
    zombie = subprocess.Popen(["bwrap", "--version"], stdout=subprocess.DEVNULL)  # exits at once, unreaped
    in_slot = subprocess.Popen(["sleep", "30"])
    slot = pool.acquire()
    stray_dir = os.path.join(root, "stray-workspace")
    try:
        for procs in slot.procs_files:
            with open(procs, "w") as fh:
                fh.write(str(in_slot.pid))
        os.mkdir(stray_dir)
        _wait_for(lambda: zombie.pid in zombie_children(os.getpid(), b"bwrap"))

        problems = leftovers(uids, parents, roots, settle_s=0)
        assert [p.split(":")[0] for p in problems] == [
            "processes still run with sandbox uids",
            "unreaped bwrap children of the test process",
            "cgroup slots not empty",
            f"workspace root {root} still holds ['stray-workspace']",
        ], problems
        assert f"pid {in_range.pid} uid {stray_uid.uid} (sleep 30)" in problems[0]
        assert str(zombie.pid) in problems[1] and str(in_slot.pid) in problems[2]

        clean_up(uids, parents, roots)
        assert leftovers(uids, parents, roots, settle_s=0) == []
        assert not os.path.exists(stray_dir)
    finally:
        for proc in (in_range, zombie, in_slot):
            proc.kill()
            proc.wait()
        pool.release(slot)
        uid_pool.release(stray_uid)
        if os.path.isdir(stray_dir):
            os.rmdir(stray_dir)
        os.rmdir(root)
