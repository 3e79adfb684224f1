"""A uid/gid pair per running sandbox, and the check that nothing else uses the range."""

from __future__ import annotations

import os
import subprocess

import pytest

from sandbox import RunAs, SandboxSetupError, UidPool, busy_uids
from tests.conftest import wait_until
from tests.procs import as_user


def test_pairs_are_distinct_until_exhausted():
    pool = UidPool(300_000, 310_000, 3)
    got = [pool.acquire() for _ in range(3)]
    assert got == [RunAs(300_000, 310_000), RunAs(300_001, 310_001), RunAs(300_002, 310_002)]
    with pytest.raises(SandboxSetupError, match="all 3 sandbox uids are in use"):
        pool.acquire()


def test_release_reuses_the_longest_idle_pair_first():
    pool = UidPool(300_000, 300_000, 3)
    a, b, c = (pool.acquire() for _ in range(3))
    pool.release(b)
    pool.release(a)
    assert pool.acquire() == b
    assert pool.acquire() == a
    with pytest.raises(ValueError, match="not from this pool"):
        pool.release(RunAs(1, 1))
    assert c in [RunAs(300_002, 300_002)]


@pytest.mark.parametrize(("first_uid", "first_gid", "count", "message"), [
    (0, 100, 10, "must not include 0"),
    (100, 0, 10, "must not include 0"),
    (100, 100, 0, "at least one uid"),
])
def test_bad_ranges(first_uid, first_gid, count, message):
    with pytest.raises(SandboxSetupError, match=message):
        UidPool(first_uid, first_gid, count)


def test_range_must_not_hold_our_own_uid():
    me = os.geteuid()
    if me == 0:
        pytest.skip("uid 0 is refused by the 'includes 0' rule first")
    with pytest.raises(SandboxSetupError, match="this process's uid"):
        UidPool(me, me, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
def test_busy_uids_finds_a_live_process_of_the_range():
    pool = UidPool(300_500, 300_500, 4)
    assert busy_uids(pool, settle_s=0) == {}
    proc = subprocess.Popen([*as_user(300_502, 300_502), "sleep", "30"])
    try:
        # setpriv switches uids after the fork: wait for the exec'd sleep
        wait_until(lambda: busy_uids(pool, settle_s=0) == {proc.pid: 300_502}, what="the process as uid 300502")
    finally:
        proc.kill()
        proc.wait()
    assert busy_uids(pool, settle_s=0) == {}


def test_acquire_prefers_a_free_uid_of_the_pool():
    pool = UidPool(300_000, 310_000, 3)
    assert pool.acquire(prefer=300_002) == RunAs(300_002, 310_002)
    # Busy, outside the pool, or None: the longest-idle free pair, as without a preference.
    assert pool.acquire(prefer=300_002) == RunAs(300_000, 310_000)
    assert pool.acquire(prefer=12) == RunAs(300_001, 310_001)
    with pytest.raises(SandboxSetupError, match="all 3 sandbox uids are in use"):
        pool.acquire(prefer=300_000)
    pool.release(RunAs(300_001, 310_001))
    pool.release(RunAs(300_000, 310_000))
    assert pool.acquire(prefer=300_000) == RunAs(300_000, 310_000)  # jumps the FIFO queue
    assert pool.acquire(prefer=None) == RunAs(300_001, 310_001)
