"""Network namespaces made ahead, each handed to exactly one sandbox.

A run with ``NetworkMode.NONE`` as root gets a network namespace of its own (step 5 of
``sandbox.limits``). Making one costs the kernel about 0.35 ms at the median and 3 ms at
the p99 on a 2-core VM (``bench/spawn_steps.py``, step "netns"), on the path from request
to command. ``NetnsPool`` makes them on a thread of its own while the gateway is idle, so a
spawn only enters one (setns(2), microseconds).

A ``restricted`` run gets the same kind of namespace, and then one thing more before its
spawn: ``proxy_listener(netns_fd)``, a TCP socket listening on 127.0.0.1:3128 *inside*
that namespace (with ``lo`` up), made there by the gateway and kept by it. The sandbox's
only way out is to connect to it; the gateway accepts those connections outside the
namespace and decides where they may go (``gateway.egress``). There is no interface but
``lo`` and no route, so anything that ignores the proxy reaches nothing.

``NetnsPool(spare=4)`` starts the thread; ``take() -> int | None`` hands out one namespace
as an O_CLOEXEC fd, which the caller passes to exactly one spawn (``ChildSetup.netns_fd``)
and closes once the child has exec'd; None when none is ready (the child then unshares its
own, as without a pool). ``close()`` stops the thread and closes what was never taken.

Why a namespace made ahead isolates exactly as well as one made at spawn time:

- it is the same object. ``_spawn.new_netns`` runs unshare(CLONE_NEWNET) as root in the
  initial user namespace, as the child's own step would, so it is owned by the same user
  namespace and holds only ``lo``, down, with no address, route, socket or rule
  (network_namespaces(7));
- nothing can change it while it waits. A network namespace is changed from inside (a
  process in it, or a socket made there) or by entering it, which needs its fd and
  CAP_SYS_ADMIN over its owner. Only the pool holds the fd, O_CLOEXEC, in the gateway
  process: no process is in the namespace, no sandbox inherits the fd (the child enters it
  before exec, and close-on-exec drops the fd at exec), and sandboxes cannot reach the
  gateway's fds (their own pid namespace and /proc, another uid, no capabilities);
- it is never reused. ``take`` pops the fd; the caller closes it after the one spawn; the
  kernel frees the namespace when that sandbox's last process exits. Nothing puts a used
  namespace back: a namespace a sandbox has run in is never given to another;
- the thread that makes them is the pool's own. unshare and the setns back change only
  that thread's namespace (setns(2) acts per thread); if the way back ever failed, the
  thread stops at once, so no code of the gateway runs in a sandbox's namespace, and
  ``take`` returns None from then on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PROXY_PORT", "NetnsPool", "fresh_netns", "proxy_listener"]

PROXY_PORT = 3128  # where a restricted sandbox finds its proxy, on its own lo

log = logging.getLogger(__name__)


def fresh_netns() -> int:
    """A new network namespace's fd, made now (when no pool has one ready). Raises OSError."""
    from sandbox import _spawn

    return int(_on_own_thread(_spawn.new_netns))


def proxy_listener(netns_fd: int, port: int = PROXY_PORT) -> socket.socket:
    """A non-blocking socket listening on 127.0.0.1:``port`` inside namespace ``netns_fd``,
    whose ``lo`` is brought up; owned by the caller (close-on-exec, never passed to the
    sandbox). Made by a short-lived thread of its own, so no thread of the caller ever
    runs in the sandbox's namespace even if the way back failed. Raises OSError."""
    from sandbox import _spawn

    listener = socket.socket(fileno=int(_on_own_thread(_spawn.netns_listen, netns_fd, port)))
    listener.setblocking(False)
    return listener


def _on_own_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a new thread that ends with it; its exception is raised here."""
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller, raised there
            outcome.append((False, exc))

    thread = threading.Thread(target=call, name="sandbox-netns-setup", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class NetnsPool:
    """Up to ``spare`` fresh network namespaces, made on a daemon thread (module docstring).

    Root only (CAP_SYS_ADMIN). If making one fails (no privilege, the shim not built), the
    pool logs why once and stays empty: ``take`` then returns None and each spawn makes its
    own namespace, as without a pool. Thread-safe.
    """

    def __init__(self, spare: int = 4) -> None:
        if spare < 1:
            raise ValueError("spare must be at least 1")
        self._spare = spare
        self._ready: list[int] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._fill, name="sandbox-netns", daemon=True)
        self._thread.start()

    def take(self) -> int | None:
        """One fresh namespace's fd, now the caller's to enter once and close; None if none
        is ready."""
        with self._cond:
            if not self._ready:
                return None
            fd = self._ready.pop()
            self._cond.notify()
            return fd

    def close(self) -> None:
        """Stop making namespaces and close the ones never taken."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)
        with self._cond:
            ready, self._ready = self._ready, []
        for fd in ready:
            os.close(fd)

    def _fill(self) -> None:
        try:
            from sandbox import _spawn
        except ImportError as exc:
            log.warning("network namespaces are made at each spawn: %s", exc)
            return
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self._spare:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                fd = _spawn.new_netns()
            except OSError as exc:
                # Also when this thread could not get back to its own namespace: it ends
                # here, having run nothing else.
                log.warning("network namespaces are made at each spawn from now on: %s", exc)
                return
            with self._cond:
                if self._closed:
                    os.close(fd)
                    return
                self._ready.append(fd)
