"""Small process helpers shared by the test setup (conftest, the throwaway servers): no
imports from the rest of tests/, so any of them can use these."""

from __future__ import annotations

import socket

__all__ = ["as_user", "free_port"]


def as_user(uid: int, gid: int) -> list[str]:
    """A command prefix that runs the rest as ``uid``/``gid`` with no supplementary groups:
    setpriv(1), exec'd in place (same pid). Not ``Popen(user=...)``: for that, Python forks
    rather than vforks, so the child runs the atfork handlers of the gRPC core this test
    process has loaded, which can abort it (``ev_epoll1_linux.cc ... Check failed``)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
