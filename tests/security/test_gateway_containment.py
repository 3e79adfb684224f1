"""Containment through the whole gateway: commands that policy lets through (python3 is an
allow-listed build tool) try to escape; each is refused inside the sandbox with the exact
errno, or contained by a limit, and the gateway keeps serving.

After every test (module fixture ``_gateway_left_nothing``): no process runs with a uid of
the gateway's sandbox range, its cgroup slots are empty, and every workspace is closed (0700).
"""

from __future__ import annotations

import stat
import textwrap
import threading
from typing import Any

import httpx
import pytest

from sandbox import UidPool, busy_uids
from tests.conftest import _UID_BASES, GatewayProcess, wait_final
from tests.security.conftest import busy_slots, cgroup_dirs

GATEWAY_UID_COUNT = 256  # gateway.config SandboxSettings.uid_count default


@pytest.fixture(autouse=True)
def _gateway_left_nothing(gateway: GatewayProcess):
    yield
    base = _UID_BASES[gateway.state_dir.resolve()]
    uids = UidPool(base, base, GATEWAY_UID_COUNT)
    problems = []
    busy = busy_uids(uids, settle_s=2)
    if busy:
        problems.append(f"processes run with the gateway's sandbox uids: {busy}")
    slots = busy_slots(cgroup_dirs(gateway.proc.pid, "mcp-gateway"))
    if slots:
        problems.append(f"the gateway's cgroup slots are not empty: {slots}")
    # Workspaces outlive their tasks (until retention) but are closed again: a tenant dir
    # per tenant (root's, 0711), and in it workspaces of mode 0700, whatever the command did.
    workspaces = gateway.state_dir / "workspaces"
    for tenant in workspaces.iterdir() if workspaces.is_dir() else ():
        st = tenant.lstat()
        if not tenant.name.startswith("t-") or st.st_uid != 0 or st.st_mode & 0o7777 != 0o711:
            problems.append(f"unexpected entry in {workspaces}: {tenant.name} {oct(st.st_mode)} uid {st.st_uid}")
            continue
        for ws in tenant.iterdir():
            mode = ws.lstat().st_mode
            if ws.name != ".tenant" and (not stat.S_ISDIR(mode) or mode & 0o7777 != 0o700):
                problems.append(f"workspace {ws} is {oct(mode)}, not a 0700 directory")
    assert gateway.proc.poll() is None, "the gateway died"
    if problems:
        pytest.fail("the gateway left something behind:\n  " + "\n  ".join(problems), pytrace=False)

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


# -- limits through the gateway: the task result carries the sandbox's limit_reason --------

FORK_BOMB = (
    "import os, time\nstart = time.monotonic()\n"
    "while time.monotonic() < start + 0.7:\n"
    "    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    "time.sleep(max(0.0, start + 1.0 - time.monotonic()))\n"
)


def test_memory_bomb_ends_oom(gateway: GatewayProcess, http: httpx.Client) -> None:
    assert cgroup_dirs(gateway.proc.pid, "mcp-gateway"), "the gateway runs without a cgroup pool"
    final = run_task(http, {"command": "python3", "args": ["-c", "x = bytearray(512 << 20)"], "timeout": 30,
                            "sandbox_config": {"resource_limits": {"memory_limit": 64 << 20}}})
    assert final["task_info"]["status"] == "COMPLETED", final
    assert (final["result"]["exit_code"], final["result"]["limit_reason"]) == (137, "oom"), final["result"]
    assert final["result"]["resource_usage"]["max_memory_kb"] <= 64 * 1024


def test_pids_limited_fork_bomb_ends_pids(http: httpx.Client) -> None:
    final = run_task(http, {"command": "python3", "args": ["-c", FORK_BOMB], "timeout": 30,
                            "sandbox_config": {"resource_limits": {"pids_limit": 16}}})
    assert final["task_info"]["status"] == "COMPLETED", final
    assert (final["result"]["exit_code"], final["result"]["limit_reason"]) == (0, "pids"), final["result"]
    assert http.get("/health").json()["status"] == "SERVING"


def test_concurrent_tasks_run_as_distinct_uids_of_the_range(gateway: GatewayProcess, http: httpx.Client) -> None:
    finals: list[dict[str, Any]] = []

    def one() -> None:
        with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
            finals.append(run_task(client, {"command": "sh", "args": ["-c", "id -u; sleep 0.5"]}))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    uids = sorted(int(f["result"]["stdout"]) for f in finals)
    base = _UID_BASES[gateway.state_dir.resolve()]
    assert len(set(uids)) == 2 and all(base <= u < base + GATEWAY_UID_COUNT for u in uids), uids


@pytest.mark.parametrize(("network", "expected"), [("NETWORK_NONE", "ENETUNREACH"),
                                                   ("NETWORK_LOOPBACK", "ECONNREFUSED")])
@pytest.mark.parametrize("port", ["http", "grpc"])
def test_gateway_ports_are_unreachable(gateway: GatewayProcess, http: httpx.Client, port: str, network: str,
                                       expected: str) -> None:
    address = gateway.http_url.removeprefix("http://") if port == "http" else gateway.grpc_addr
    host, number = address.rsplit(":", 1)
    body = f"report(lambda: socket.create_connection(('{host}', {number}), timeout=3))"
    final = run_task(http, {"command": "python3", "args": ["-c", PROBE_PRELUDE + body], "timeout": 30,
                            "sandbox_config": {"network_access": network}})
    assert final["task_info"]["status"] == "COMPLETED", final
    assert result_word(final) == expected, final["result"]


def test_tmpfs_fill_past_memory_limit_ends_oom(http: httpx.Client) -> None:
    final = run_task(http, {"command": "sh", "args": ["-c", "head -c 209715200 /dev/zero > /tmp/f"],
                            "timeout": 30, "sandbox_config": {"resource_limits": {"memory_limit": 32 << 20}}})
    assert (final["task_info"]["status"], final["result"]["limit_reason"]) == ("COMPLETED", "oom"), final
