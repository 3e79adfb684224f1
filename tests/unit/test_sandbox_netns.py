"""sandbox.netns: namespaces made ahead are fresh, distinct, handed out once, and closed."""

from __future__ import annotations

import os
import time

import pytest

from sandbox import NetnsPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a network namespace needs CAP_SYS_ADMIN")


def _take(pool: NetnsPool, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (fd := pool.take()) is None:
        assert time.monotonic() < deadline, "the pool made no namespace"
        time.sleep(0.005)
    return fd


def test_each_namespace_is_new_and_handed_out_once():
    pool = NetnsPool(spare=2)
    taken = []
    try:
        taken = [_take(pool) for _ in range(6)]  # more than it keeps: it makes more as they go
        inodes = [os.fstat(fd).st_ino for fd in taken]
        assert len(set(inodes)) == 6
        assert os.stat("/proc/self/ns/net").st_ino not in inodes
        for fd in taken:
            assert os.get_inheritable(fd) is False  # O_CLOEXEC: no child keeps one by accident
    finally:
        for fd in taken:
            os.close(fd)
        pool.close()
    # Every thread of this process is still in the process's own namespace.
    own = os.stat("/proc/self/ns/net").st_ino
    assert {os.stat(f"/proc/self/task/{tid}/ns/net").st_ino for tid in os.listdir("/proc/self/task")} == {own}


def test_close_closes_what_was_never_taken():
    pool = NetnsPool(spare=3)
    fd = _take(pool)
    os.close(fd)
    deadline = time.monotonic() + 5
    while len(pool._ready) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    ready = list(pool._ready)
    assert len(ready) == 3
    pool.close()
    for fd in ready:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert pool.take() is None


def test_a_pool_that_cannot_make_namespaces_stays_empty(monkeypatch):
    from sandbox import _spawn

    def refuse() -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_spawn, "new_netns", refuse)
    pool = NetnsPool(spare=2)
    pool._thread.join(timeout=5)
    assert not pool._thread.is_alive()
    assert pool.take() is None  # each spawn then makes its own namespace
    pool.close()


def test_spare_must_be_positive():
    with pytest.raises(ValueError):
        NetnsPool(spare=0)
