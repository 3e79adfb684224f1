"""What the sandbox can see and touch: files, /proc, pids, other tasks, the network, its
own identity. Exact errno for every refusal, through the real sandbox."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from sandbox import NetworkMode, UidPool, busy_uids
from tests.conftest import as_user

# -- files --------------------------------------------------------------------------------

READ_ONLY = {
    "root": "/x",
    "usr": "/usr/x",
    "usr_bin_python3": "/usr/bin/python3",  # O_TRUNC of an existing binary
    "etc_new_file": "/etc/x",
    "etc_passwd": "/etc/passwd",
    "bin_via_symlink": "/bin/x",
}


@pytest.mark.parametrize("name", sorted(READ_ONLY))
def test_write_to_read_only_mount_is_erofs(probe, name):
    assert probe("write", READ_ONLY[name]).pair == (-1, errno.EROFS)


PROC_SYS = ["/proc/sys/kernel/hostname", "/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
            "/proc/sys/net/ipv4/ip_forward", "/proc/sys/user/max_user_namespaces"]


@pytest.mark.parametrize("network", [NetworkMode.NONE, NetworkMode.LOOPBACK])
@pytest.mark.parametrize("path", PROC_SYS)
def test_write_to_proc_sys_is_eacces(probe, path, network):
    # Not EROFS: bwrap covers /proc/sys read-only only when the sandbox user could write it
    # (bubblewrap.c cover_proc_dirs: access(W_OK) fails with EACCES, so it is left as is).
    # The files belong to the host's root (or, for bwrap's own netns, to the namespace
    # root) and sysctl permissions are checked against the global root: EACCES.
    assert probe("write", path, network=network).pair == (-1, errno.EACCES)


def test_write_to_sysrq_trigger_is_refused(probe):
    # This kernel has no /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ off): ENOENT. Where it
    # exists it is root's, mode 0200, and not covered by bwrap (see above): EACCES.
    expected = errno.EACCES if os.path.exists("/proc/sysrq-trigger") else errno.ENOENT
    assert probe("write", "/proc/sysrq-trigger").pair == (-1, expected)


KERNEL_AND_HOST_FILES = {
    # name: (path, open mode, errno); each path exists on the host (checked first)
    "dev_tty_without_controlling_terminal": ("/dev/tty", "rw", errno.ENXIO),
    "proc_kmsg": ("/proc/kmsg", "r", errno.EACCES),
    "dev_kmsg": ("/dev/kmsg", "r", errno.ENOENT),
    "host_block_device": ("/dev/vda", "r", errno.ENOENT),
    "sys_fs_cgroup": ("/sys/fs/cgroup", "dir", errno.ENOENT),
    "etc_shadow": ("/etc/shadow", "r", errno.ENOENT),
    "root_home": ("/root", "dir", errno.ENOENT),
    "var": ("/var", "dir", errno.ENOENT),
}


@pytest.mark.parametrize("name", sorted(KERNEL_AND_HOST_FILES))
def test_kernel_and_host_files_are_out_of_reach(probe, name):
    path, mode, expected = KERNEL_AND_HOST_FILES[name]
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this host: the case would prove nothing")
    assert probe("open", path, mode).pair == (-1, expected)


# -- pids -----------------------------------------------------------------------------------


def test_only_sandbox_pids_are_visible(probe):
    out = probe.raw("pids")
    assert out.stdout == b"pids=1,2\n"  # bwrap's pid 1 and the probe; nothing of the host


def test_host_process_of_the_same_uid_cannot_be_signalled(probe, run_as):
    # The strongest case: a host process with the sandbox's own uid (permission to signal
    # it would exist if it were visible). It is not: ESRCH, and kill(-1) reaches nobody.
    host = subprocess.Popen([*as_user(run_as.uid, run_as.gid), "sleep", "30"])
    try:
        assert probe("kill", host.pid, 9).pair == (-1, errno.ESRCH)
        assert probe("kill", -1, 9).pair == (-1, errno.ESRCH)
        assert probe("kill", os.getpid(), 0).pair == (-1, errno.ESRCH)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_pid1_is_as_confined_as_the_command(sbx):
    # The command can open /proc/1/mem read-write (same uid, same user namespace, no Yama
    # here), so pid 1 (bwrap's init) must hold nothing the command lacks.
    r = sbx("sh", "-c", "grep -E '^(Uid|CapPrm|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; "
                        "readlink /proc/1/ns/user /proc/self/ns/user")
    lines = r.stdout.decode().splitlines()
    fields = dict(line.split(":", 1) for line in lines[:6])
    assert {k: v.split() for k, v in fields.items() if k != "Uid"} == {
        "CapPrm": ["0000000000000000"], "CapEff": ["0000000000000000"], "CapBnd": ["0000000000000000"],
        "NoNewPrivs": ["1"], "Seccomp": ["2"]}
    assert lines[6] == lines[7]


# -- other tasks ----------------------------------------------------------------------------


@pytest.fixture
def second_uid(uid_pool: UidPool):
    ids = uid_pool.acquire()
    yield ids
    uid_pool.release(ids)


def test_another_tasks_workspace_is_invisible_and_unreadable(sbx, probe, run_as, second_uid, new_workspace,
                                                            bind_root):
    # Task A (its own uid) keeps a secret in its workspace, outside /tmp so it can be bound.
    ws_a = new_workspace(second_uid, root=bind_root)
    r = sbx("sh", "-c", "echo secret > /workspace/secret; chmod 600 /workspace/secret",
            run_as=second_uid, workspace=ws_a)
    assert r.exit_code == 0
    assert probe("open", "/workspace/secret", "r", run_as=second_uid, workspace=ws_a).pair == (3, 0)
    # Task B, another uid: the path does not exist in its mount namespace ...
    assert probe("open", f"{ws_a}/secret", "r").pair == (-1, errno.ENOENT)
    # ... and even bound in read-only, A's 0700 workspace is closed to B's uid.
    assert probe("open", ws_a, "dir", ro_paths=(ws_a,)).pair == (-1, errno.EACCES)
    assert probe("open", f"{ws_a}/secret", "r", ro_paths=(ws_a,)).pair == (-1, errno.EACCES)
    assert run_as.uid != second_uid.uid


def test_concurrent_runs_have_distinct_uids(sbx, run_as, second_uid, new_workspace):
    results = {}
    ws_b = new_workspace(second_uid)

    def go(name, **kw):
        results[name] = sbx("sh", "-c", "id -u; sleep 0.3", **kw)

    threads = [threading.Thread(target=go, args=("a",)),
               threading.Thread(target=go, args=("b",), kwargs={"run_as": second_uid, "workspace": ws_b})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (results["a"].stdout, results["b"].stdout) == (f"{run_as.uid}\n".encode(),
                                                          f"{second_uid.uid}\n".encode())


# -- network --------------------------------------------------------------------------------


@pytest.fixture
def tcp_listener():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(3)
        yield srv


@pytest.fixture
def abstract_listener():
    name = f"sandbox-tests-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind("\0" + name)
        srv.listen(8)
        srv.settimeout(3)
        yield srv, name


@pytest.mark.parametrize(("network", "expected"), [
    (NetworkMode.NONE, (-1, errno.ENETUNREACH)),  # a fresh netns, lo down
    (NetworkMode.LOOPBACK, (-1, errno.ECONNREFUSED)),  # the sandbox's own lo
])
def test_host_loopback_port_is_unreachable(probe, tcp_listener, network, expected):
    assert probe("connect-inet", tcp_listener.getsockname()[1], network=network).pair == expected


def test_host_network_reaches_host_loopback_port(probe, tcp_listener):
    assert probe("connect-inet", tcp_listener.getsockname()[1], network=NetworkMode.HOST).pair == (0, 0)
    conn, _ = tcp_listener.accept()  # the connection really arrived here
    conn.close()


@pytest.mark.parametrize("network", [NetworkMode.NONE, NetworkMode.LOOPBACK])
def test_host_abstract_unix_socket_is_unreachable(probe, abstract_listener, network):
    # Abstract unix sockets belong to the network namespace: the host's name is not there.
    _, name = abstract_listener
    assert probe("connect-abstract", name, network=network).pair == (-1, errno.ECONNREFUSED)


def test_host_network_reaches_host_abstract_unix_socket(probe, abstract_listener):
    # Expected with --share-net, and worth knowing: HOST also opens every abstract socket
    # of the host (D-Bus, X11, container runtimes), not only TCP/IP.
    srv, name = abstract_listener
    assert probe("connect-abstract", name, network=NetworkMode.HOST).pair == (0, 0)
    conn, _ = srv.accept()
    conn.close()


NET_PRIVILEGES = r"""
import errno, fcntl, socket, struct
def attempt(name, fn):
    try:
        fn()
        print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
attempt("bring_lo_up", lambda: fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH14x", b"lo", 1)))
attempt("raw_icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))
attempt("af_packet", lambda: socket.socket(17, socket.SOCK_RAW, 0))
attempt("ping_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 1))
"""


@pytest.mark.parametrize("network", [NetworkMode.NONE, NetworkMode.LOOPBACK, NetworkMode.HOST])
def test_no_network_privileges_in_any_mode(sbx, network):
    # SIOCSIFFLAGS, raw and packet sockets need CAP_NET_ADMIN / CAP_NET_RAW over the netns
    # (none: bwrap drops every capability); ping sockets need a gid in ping_group_range.
    r = sbx("python3", "-c", NET_PRIVILEGES, network=network)
    assert r.stdout.decode().splitlines() == [
        "bring_lo_up EPERM", "raw_icmp EPERM", "af_packet EPERM", "ping_socket EACCES"]


# -- identity -------------------------------------------------------------------------------


def test_identity_status(sbx, run_as):
    r = sbx("grep", "-E", "^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):",
            "/proc/self/status")
    fields = {k: v.split() for k, v in (line.split(":", 1) for line in r.stdout.decode().splitlines())}
    zero = ["0000000000000000"]
    assert fields == {
        "Uid": [str(run_as.uid)] * 4, "Gid": [str(run_as.gid)] * 4, "Groups": [],
        "CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero,
        "NoNewPrivs": ["1"], "Seccomp": ["2"],
    }


def test_id_maps_map_only_the_sandbox_uid(sbx, run_as):
    # Inside, field 2 is the id in the *parent* user namespace, which is bwrap's
    # intermediate one (--disable-userns nests a second namespace): its 0 is the sandbox
    # uid on the host (see test_id_maps_seen_from_the_host). Uid 0 is mapped nowhere inside.
    r = sbx("cat", "/proc/self/uid_map", "/proc/self/gid_map", "/proc/self/setgroups")
    assert [line.split() for line in r.stdout.decode().splitlines()] == [
        [str(run_as.uid), "0", "1"], [str(run_as.gid), "0", "1"], ["deny"]]


def test_id_maps_seen_from_the_host(sbx, run_as, uid_pool):
    # From the initial namespace the command's one mapped id is the sandbox uid itself.
    found = {}

    def look() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not found:
            for pid in busy_uids(UidPool(run_as.uid, run_as.gid, 1), settle_s=0):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if fh.read().split(b"\0")[0] != b"sleep":
                            continue
                    with open(f"/proc/{pid}/uid_map") as fh:
                        found["uid_map"] = fh.read().split()
                    with open(f"/proc/{pid}/gid_map") as fh:
                        found["gid_map"] = fh.read().split()
                except OSError:
                    continue
            time.sleep(0.02)

    watcher = threading.Thread(target=look)
    watcher.start()
    sbx("sleep", "1")
    watcher.join()
    assert found == {"uid_map": [str(run_as.uid), str(run_as.uid), "1"],
                     "gid_map": [str(run_as.gid), str(run_as.gid), "1"]}


def test_only_fds_0_1_2_are_open(probe):
    assert probe.raw("fds").stdout == b"fds=0,1,2\n"


def test_environment_is_exactly_the_base(sbx):
    r = sbx("env", env={"FOO": "bar"})
    assert sorted(r.stdout.decode().splitlines()) == [
        "FOO=bar", "HOME=/workspace", "LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin", "PWD=/workspace",
        "TMPDIR=/tmp"]


def test_hostname_and_passwd_are_the_sandboxs(sbx, run_as):
    r = sbx("sh", "-c", "hostname; cat /etc/passwd /etc/group")
    assert r.stdout.decode().splitlines() == [
        "sandbox",
        f"sandbox:x:{run_as.uid}:{run_as.gid}:sandbox:/workspace:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
        f"sandbox:x:{run_as.gid}:",
        "nogroup:x:65534:",
    ]


def test_nested_user_namespace_via_unshare_binary_is_refused(sbx):
    for argv in (("unshare", "-U", "true"), ("unshare", "-Ur", "id")):
        r = sbx(*argv)
        assert (r.exit_code, r.stderr) == (1, b"unshare: unshare failed: Operation not permitted\n")
