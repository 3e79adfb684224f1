"""Containment through the whole gateway: commands that policy lets through (python3 is an
allow-listed build tool) try to escape; each is refused inside the sandbox with the exact
errno, or contained by a limit, and the gateway keeps serving."""

from __future__ import annotations

import textwrap
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayProcess, wait_final

# Each probe prints one line "RESULT <errno-name or OK>" so the outcome is exact.
PROBE_PRELUDE = textwrap.dedent("""
    import ctypes, errno, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def report(fn):
        try:
            rc = fn()
        except OSError as exc:
            print("RESULT", errno.errorcode.get(exc.errno, exc.errno)); return
        if isinstance(rc, int) and rc == -1:
            print("RESULT", errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())); return
        print("RESULT OK", rc)
""")

PROBES: dict[str, tuple[str, set[str]]] = {
    # name: (python body calling report(...), acceptable results)
    "read /etc/shadow": ("report(lambda: open('/etc/shadow').read())", {"ENOENT", "EACCES"}),
    "list the caller's home": ("report(lambda: os.listdir(os.path.expanduser('~root')))", {"ENOENT", "EACCES"}),
    "list host /home": ("report(lambda: os.listdir('/home'))", {"ENOENT"}),
    "write to /usr": ("report(lambda: open('/usr/pwned', 'w'))", {"EROFS"}),
    "unshare a user namespace": ("report(lambda: libc.unshare(0x10000000))", {"EPERM"}),
    "ptrace": ("report(lambda: libc.ptrace(0, 0, 0, 0))", {"EPERM"}),
    "mount tmpfs": ("report(lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))", {"EPERM"}),
    "TIOCSTI keystroke": ("report(lambda: libc.ioctl(0, 0x5412, ctypes.c_char_p(b'x')))", {"EPERM"}),
    "TIOCSTI high bits": ("report(lambda: libc.ioctl(0, ctypes.c_ulong(0x100005412), ctypes.c_char_p(b'x')))",
                          {"EPERM"}),
}


def run_task(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/execute", json=body)
    assert response.status_code == 202, response.text
    return wait_final(lambda t: http.get(f"/v1/tasks/{t}").json(), response.json()["task_id"])


def result_word(final: dict[str, Any]) -> str:
    lines = [line for line in final["result"]["stdout"].splitlines() if line.startswith("RESULT")]
    assert lines, final
    return lines[-1].split()[1]


@pytest.mark.parametrize("name", sorted(PROBES))
def test_escape_attempt_is_refused(http: httpx.Client, name: str) -> None:
    body, expected = PROBES[name]
    final = run_task(http, {"command": "python3", "args": ["-c", PROBE_PRELUDE + body], "timeout": 30})
    assert final["task_info"]["status"] == "COMPLETED", final
    assert result_word(final) in expected, final["result"]


def test_gateway_port_is_unreachable(gateway: GatewayProcess, http: httpx.Client) -> None:
    host, port = gateway.http_url.removeprefix("http://").rsplit(":", 1)
    body = f"report(lambda: socket.create_connection(('{host}', {port}), timeout=3))"
    final = run_task(http, {"command": "python3", "args": ["-c", PROBE_PRELUDE + body], "timeout": 30})
    assert result_word(final) in {"ECONNREFUSED", "ENETUNREACH"}, final["result"]


def test_fork_bomb_is_contained_and_gateway_keeps_serving(http: httpx.Client) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    final = run_task(http, {"command": "python3", "args": ["-c", bomb], "timeout": 3})
    assert final["task_info"]["status"] == "TIMED_OUT", final
    assert final["result"]["limit_reason"] == "wall_timeout"
    assert http.get("/health").json()["status"] == "SERVING"
    after = run_task(http, {"command": "echo", "args": ["still here"]})
    assert after["result"]["stdout"] == "still here\n"
