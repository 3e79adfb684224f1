"""Containment of the real sandbox (bwrap 0.8 + seccomp + rlimits + cgroups), exact outcomes.

The first suite: Python/ctypes probes through libc wrappers, limits, timeouts, cancel and
setup failures. The raw-syscall attack tables are in test_syscall_filter.py, resource bombs
in test_resource_limits.py, isolation (files, /proc, pids, network, identity, other tasks)
in test_isolation.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from tests.security.conftest import host_pids_with, sample_while, uid_process_count

from sandbox import NetworkMode, RunAs, SandboxSetupError, SandboxSpec, run

PY = "python3"


def py(sbx, code: str, **kw):
    return sbx(PY, "-c", code, **kw)


def _errno_of(code: str) -> str:
    """Python snippet printing the errno of a libc call expression using ``libc``."""
    return (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = {code}\n"
        "print(r, ctypes.get_errno())\n"
    )


def test_hello_world(sbx):
    r = sbx("echo", "hello world")
    assert (r.exit_code, r.stdout, r.stderr, r.setup_error, r.limit_reason) == (
        0, b"hello world\n", b"", None, None)
    assert r.signal is None and r.duration_ms > 0


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_passthrough(sbx, code):
    r = sbx("sh", "-c", f"exit {code}")
    assert (r.exit_code, r.signal, r.setup_error) == (code, None, None)


def test_killed_by_signal_reports_128_plus_n(sbx):
    r = sbx("sh", "-c", "kill -TERM $$")
    assert (r.exit_code, r.signal, r.limit_reason) == (143, 15, None)


def test_env_is_exactly_base_plus_given(sbx):
    r = py(sbx, "import os; print(sorted(os.environ.items()))", env={"FOO": "bar"})
    env = dict(eval(r.stdout))
    env.pop("LC_CTYPE", None)  # python3 may coerce the C locale itself
    # PWD is set by bwrap --chdir (bubblewrap.c: xsetenv ("PWD", new_cwd)).
    assert env == {"FOO": "bar", "PWD": "/workspace", "HOME": "/workspace", "LANG": "C.UTF-8",
                   "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": "/tmp"}


def test_only_fds_0_1_2(sbx):
    code = ("import os\nopen_fds=[]\nfor fd in range(3, 1024):\n"
            "    try: os.fstat(fd)\n    except OSError: continue\n    open_fds.append(fd)\n"
            "print(open_fds, os.readlink('/proc/self/fd/0'))")
    r = py(sbx, code)
    assert r.stdout == b"[] /dev/null\n", r.stderr


def test_no_caps_no_new_privs_seccomp_filter(sbx):
    r = sbx("grep", "-E", "^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):", "/proc/self/status")
    assert r.stdout.decode().split() == [
        "CapPrm:", "0000000000000000", "CapEff:", "0000000000000000",
        "CapBnd:", "0000000000000000", "NoNewPrivs:", "1", "Seccomp:", "2"]


def test_runs_as_unprivileged_host_uid(sbx, run_as):
    r = sbx("sh", "-c", "id -u; id -g; id -un; grep -E '^Uid|^Gid' /proc/self/status")
    lines = r.stdout.decode().split("\n")
    assert lines[:3] == [str(run_as.uid), str(run_as.gid), "sandbox"]
    assert f"Uid:\t{run_as.uid}\t{run_as.uid}\t{run_as.uid}\t{run_as.uid}" in lines
    assert f"Gid:\t{run_as.gid}\t{run_as.gid}\t{run_as.gid}\t{run_as.gid}" in lines


def test_host_secrets_absent(sbx):
    r = sbx("sh", "-c", "cat /etc/shadow; ls /root; ls /home; ls /etc")
    err = r.stderr.decode()
    assert "/etc/shadow: No such file or directory" in err
    assert "/root': No such file or directory" in err
    assert "/home': No such file or directory" in err
    assert r.stdout.split() == [b"group", b"hosts", b"nsswitch.conf", b"passwd"]


@pytest.mark.parametrize("path", ["/usr/x", "/etc/x", "/x", "/bin/x"])
def test_read_only_filesystem(sbx, path):
    r = py(sbx, f"import errno\ntry: open({path!r}, 'w')\nexcept OSError as e: print(errno.errorcode[e.errno])")
    assert r.stdout == b"EROFS\n"


def test_workspace_and_tmp_writable(sbx, workspace):
    r = sbx("sh", "-c", "echo a > /workspace/f && echo b > /tmp/g && cat /workspace/f /tmp/g")
    assert (r.exit_code, r.stdout) == (0, b"a\nb\n")
    with open(os.path.join(workspace, "f")) as fh:
        assert fh.read() == "a\n"


SYSCALL_EPERM = {
    "unshare": "libc.unshare(0x10000000)",
    "setns": "libc.setns(0, 0)",
    "mount": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "umount2": "libc.umount2(b'/tmp', 0)",
    "ptrace": "libc.ptrace(16, 1, 0, 0)",  # PTRACE_ATTACH to pid 1
    "clone_newuser": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
    "clone_newnet": "libc.syscall(56, 0x40000000 | 17, 0, 0, 0, 0)",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "bpf": "libc.syscall(321, 0, 0, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "io_uring_setup": "libc.syscall(425, 1, 0)",
    "fsopen": "libc.syscall(430, b'tmpfs', 0)",
    "open_tree": "libc.syscall(428, -100, b'/tmp', 0)",
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "process_vm_readv": "libc.syscall(310, 1, 0, 0, 0, 0, 0)",
    "personality_no_aslr": "libc.personality(0x0040000)",
    "tiocsti": "libc.ioctl(0, 0x5412, ctypes.c_char_p(b'x'))",
    "tiocsti_high_bits": "libc.syscall(16, 0, 0x100005412, ctypes.c_char_p(b'x'))",
    "tioclinux": "libc.ioctl(0, 0x541C, ctypes.c_char_p(b'x'))",
    "af_alg": "libc.socket(38, 5, 0)",
    "af_alg_high_bits": "libc.syscall(41, 0x100000026, 5, 0)",
    "af_vsock": "libc.socket(40, 1, 0)",
}


@pytest.mark.parametrize("name", sorted(SYSCALL_EPERM))
def test_refused_syscalls_fail_with_eperm(sbx, name):
    r = py(sbx, _errno_of(SYSCALL_EPERM[name]))
    assert r.stdout == b"-1 1\n", (r.stdout, r.stderr)  # EPERM == 1


def test_personality_query_allowed(sbx):
    r = py(sbx, _errno_of("libc.personality(0xffffffff)"))
    assert r.stdout == b"0 0\n"


def test_clone3_is_enosys_and_fork_still_works(sbx):
    r = py(sbx, _errno_of("libc.syscall(435, 0, 0)") + "import subprocess; print(subprocess.run(['true']).returncode)")
    assert r.stdout == b"-1 38\n0\n"  # ENOSYS == 38, glibc falls back to clone(2)


def test_unshare_and_mount_binaries_refused(sbx):
    r = sbx("sh", "-c", "unshare -U true; echo rc=$?; mount -t tmpfs none /tmp; echo rc=$?")
    assert b"Operation not permitted" in r.stderr
    assert r.stdout.count(b"rc=0") == 0


def test_x32_abi_is_killed(sbx):
    # getpid with the x32 bit: non-native ABI -> SECCOMP_RET_KILL_PROCESS (SIGSYS, 31).
    r = py(sbx, "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); print('alive')")
    assert (r.exit_code, r.signal, r.stdout) == (128 + 31, 31, b"")


def test_i386_int80_is_killed(sbx):
    code = (
        "import ctypes, mmap\n"
        "buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "buf.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')  # mov eax,20(getpid); int 0x80; ret\n"
        "addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n"
        "ctypes.CFUNCTYPE(ctypes.c_int)(addr)()\n"
        "print('alive')\n"
    )
    r = py(sbx, code)
    assert (r.signal, r.stdout) == (31, b""), r.stderr


def test_wall_timeout_kills_sleep(sbx):
    t0 = time.monotonic()
    r = sbx("sleep", "600", timeout_s=1.0)
    assert (r.exit_code, r.signal, r.limit_reason, r.setup_error) == (137, 9, "wall_timeout", None)
    assert 1.0 <= time.monotonic() - t0 < 3.0


def _daemon(marker: str) -> str:
    # setsid + background subshell = double fork: the daemon leaves the session and is
    # re-parented to the sandbox's pid 1. The marker is in its argv (sys.argv[1]).
    return f"(setsid python3 -c 'import time; time.sleep(600)' {marker} &)"


def _run_watching(marker: str, run) -> tuple[object, bool]:
    """Run ``run()`` while watching the host for a process carrying ``marker``."""
    result, samples = sample_while(lambda: bool(host_pids_with(marker)), run, interval_s=0.05)
    return result, any(samples)


def test_wall_timeout_kills_double_forked_setsid_daemon(sbx):
    marker = f"sandbox-marker-{uuid.uuid4().hex}"
    r, seen = _run_watching(marker, lambda: sbx("sh", "-c", f"{_daemon(marker)}; sleep 600", timeout_s=1.5))
    assert seen, "the daemon never started: the test would prove nothing"
    assert r.limit_reason == "wall_timeout"
    time.sleep(0.2)
    assert host_pids_with(marker) == []


def test_daemon_left_behind_by_a_finished_command_is_killed(sbx):
    marker = f"sandbox-marker-{uuid.uuid4().hex}"
    r, seen = _run_watching(marker, lambda: sbx("sh", "-c", f"{_daemon(marker)}; sleep 0.5; echo done"))
    assert seen
    assert (r.exit_code, r.stdout, r.limit_reason) == (0, b"done\n", None)
    time.sleep(0.2)
    assert host_pids_with(marker) == []


def test_cpu_limit(sbx):
    r = sbx("sh", "-c", "while :; do :; done", cpu_seconds=1, timeout_s=10.0)
    assert (r.exit_code, r.signal, r.limit_reason) == (152, 24, "cpu_time")  # SIGXCPU
    assert r.usage.cpu_time_ms >= 900


def test_file_size_limit(sbx):
    r = sbx("sh", "-c", "head -c 2000000 /dev/zero > /workspace/big", file_size_bytes=1 << 20)
    assert (r.exit_code, r.signal, r.limit_reason) == (153, 25, "file_size")  # SIGXFSZ


def test_memory_limit(sbx):
    # Without a cgroup pool memory_bytes is RLIMIT_AS: the allocation fails in-process.
    r = py(sbx, "x = bytearray(256 << 20)", memory_bytes=128 << 20, cgroups=False)
    assert r.exit_code == 1 and b"MemoryError" in r.stderr


def test_output_flood_truncated_and_prompt(sbx):
    t0 = time.monotonic()
    r = sbx("sh", "-c", "head -c 50000000 /dev/zero; head -c 3000000 /dev/zero >&2; echo ok >&2",
            output_bytes=1 << 20)
    assert time.monotonic() - t0 < 5.0
    assert (r.exit_code, r.limit_reason) == (0, "output_truncated")
    assert (len(r.stdout), r.stdout_truncated) == (1 << 20, True)
    assert (len(r.stderr), r.stderr_truncated) == (1 << 20, True)


def test_fork_bomb_contained(sbx, run_as):
    t0 = time.monotonic()
    # Without a pids cgroup (cgroups=False): the uid process backstop (RLIMIT_NPROC on the
    # run's own uid, as the gateway sets it), the wall timeout and RLIMIT_AS bound it. The
    # pids-cgroup bomb is in test_resource_limits.py.
    # The bomb in a subshell: dash forks each member of `b | b &` itself, so its second fork
    # races the first child's bomb to the cap, and a failed fork makes dash exit 2.
    r = sbx("sh", "-c", "(b() { b | b & }; b); exec sleep 600",
            timeout_s=1.0, memory_bytes=64 << 20, uid_process_cap=256, cgroups=False)
    assert (r.exit_code, r.limit_reason) == (137, "wall_timeout")
    # run() returns only once the kernel has torn the pid namespace down: nothing is left.
    assert uid_process_count(run_as.uid) == 0
    assert time.monotonic() - t0 < 6.0  # slack for a starved 2-core host
    assert subprocess.run(["true"]).returncode == 0  # the host can still spawn


@pytest.mark.parametrize(
    ("network", "outcome"),
    [(NetworkMode.NONE, b"101\n"),  # ENETUNREACH: lo is down in the fresh netns
     (NetworkMode.LOOPBACK, b"111\n")],  # ECONNREFUSED: the sandbox's own lo, not the host's
)
def test_private_network_cannot_reach_host_loopback(sbx, network, outcome):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
                f"try: s.connect(('127.0.0.1', {port})); print('connected')\n"
                "except OSError as e: print(e.errno)")
        r = py(sbx, code, network=network)
        assert r.stdout == outcome, r.stderr
        r = sbx("cat", "/proc/net/dev", network=network)
        assert [ln.split(":")[0].strip() for ln in r.stdout.decode().splitlines()[2:]] == ["lo"]


def test_each_run_without_network_has_a_namespace_of_its_own_made_ahead(sbx, netns_pool):
    # The pool's namespaces (sandbox.netns): each run enters the one taken for it.
    handed: list[int] = []
    take = netns_pool.take

    def recording_take() -> int | None:
        fd = take()
        if fd is not None:
            handed.append(os.fstat(fd).st_ino)
        return fd

    netns_pool.take = recording_take  # type: ignore[method-assign]
    try:
        seen = []
        for _ in range(4):
            time.sleep(0.05)  # let the pool make the next one
            seen.append(sbx("readlink", "/proc/self/ns/net").stdout.decode().strip())
    finally:
        del netns_pool.take
    # (Freed namespaces give their inode numbers back, so only the pairing says "once".)
    assert f"net:[{os.stat('/proc/self/ns/net').st_ino}]" not in seen
    assert seen == [f"net:[{ino}]" for ino in handed]


def test_network_none_has_no_interface_up_and_loopback_has_lo(sbx):
    # IFF_UP is bit 0 of the interface flags (netdevice(7), SIOCGIFFLAGS = 0x8913).
    probe = ("import fcntl, socket, struct\ns = socket.socket()\n"
             "r = fcntl.ioctl(s, 0x8913, struct.pack('16sH14x', b'lo', 0))\n"
             "print(struct.unpack('16sH14x', r)[1] & 1)")
    assert py(sbx, probe).stdout == b"0\n"
    assert py(sbx, probe, network=NetworkMode.LOOPBACK).stdout == b"1\n"


def test_host_network_sees_host_loopback(sbx):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), 2); print('connected')"
        r = py(sbx, code, network=NetworkMode.HOST)
        assert r.stdout == b"connected\n", r.stderr


def test_cancel_kills_promptly(sbx):
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    t0 = time.monotonic()
    r = sbx("sleep", "600", cancel=cancel, timeout_s=30.0)
    elapsed = time.monotonic() - t0
    assert (r.exit_code, r.limit_reason) == (137, "cancelled")
    assert 0.5 <= elapsed < 1.0


def test_setup_failure_nonexistent_command(sbx):
    r = sbx("no-such-command-xyz")
    assert (r.exit_code, r.signal, r.limit_reason) == (-1, None, None)
    assert r.setup_error == "bwrap: execvp no-such-command-xyz: No such file or directory"


def test_command_exit_1_is_not_a_setup_error(sbx):
    r = sbx("sh", "-c", "echo 'bwrap: execvp fake: No such file or directory' >&2; exit 1")
    assert (r.exit_code, r.setup_error) == (1, None)


def test_usage_covers_the_command(sbx):
    r = py(sbx, "x = bytearray(100 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1")
    assert r.exit_code == 0
    assert r.usage.max_memory_kb >= 100 * 1024
    assert r.usage.cpu_time_ms > 0


def test_concurrent_runs_from_threads(sbx):
    results = [None] * 8

    def worker(i: int) -> None:
        results[i] = sbx("sh", "-c", f"echo {i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]


def test_root_without_run_as_is_refused(workspace):
    with pytest.raises(SandboxSetupError, match="run_as is required"):
        run(SandboxSpec(argv=("true",), workspace=workspace))
    with pytest.raises(SandboxSetupError, match="must not be 0"):
        run(SandboxSpec(argv=("true",), workspace=workspace, run_as=RunAs(0, 0)))


# -- interactive runs: a pipe as stdin, output streamed without a cap ---------------------


def test_a_stdin_pipe_is_the_commands_input_and_its_only_extra(sbx):
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"hello\n")
        os.close(write_end)
        code = ("import os, sys\nextra=[]\nfor fd in range(3, 1024):\n"
                "    try: os.fstat(fd)\n    except OSError: continue\n    extra.append(fd)\n"
                "print(sys.stdin.read().strip(), extra, os.readlink('/proc/self/fd/0').split(':')[0])")
        r = py(sbx, code, stdin=read_end)
    finally:
        os.close(read_end)
    assert r.stdout == b"hello [] pipe\n", r.stderr


def test_a_long_lived_command_converses_over_its_pipes(sbx):
    """A server the caller talks to line by line while it runs (what an MCP server over stdio
    is): each answer arrives before the next question is asked; closing stdin ends it."""
    read_end, write_end = os.pipe()
    answers: list[bytes] = []
    answered = threading.Condition()

    def on_output(stream: int, data: bytes, truncated: bool) -> None:
        with answered:
            answers.append(data)
            answered.notify_all()

    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
    result: list = []
    runner = threading.Thread(target=lambda: result.append(
        py(sbx, code, stdin=read_end, on_output=on_output, keep_output=False, timeout_s=30)))
    runner.start()
    try:
        for n, word in enumerate((b"one", b"two", b"three"), start=1):
            os.write(write_end, word + b"\n")
            with answered:
                assert answered.wait_for(lambda n=n: b"".join(answers).count(b"\n") >= n, timeout=15), answers
    finally:
        os.close(write_end)
        runner.join(30)
        os.close(read_end)
    assert b"".join(answers) == b"ONE\nTWO\nTHREE\n"
    (r,) = result
    assert (r.exit_code, r.limit_reason, r.stdout, r.stdout_truncated) == (0, None, b"", False)


def test_streamed_output_is_neither_capped_nor_kept(sbx):
    seen = {1: 0, 2: 0}

    def on_output(stream: int, data: bytes, truncated: bool) -> None:
        assert not truncated
        seen[stream] += len(data)

    r = sbx("sh", "-c", "head -c 3000000 /dev/zero; head -c 5000 /dev/zero >&2", output_bytes=1 << 20,
            on_output=on_output, keep_output=False)
    assert seen == {1: 3_000_000, 2: 5000}
    assert (r.exit_code, r.stdout, r.stderr, r.stdout_truncated, r.stderr_truncated) == (0, b"", b"", False, False)


def test_stdin_must_be_a_pipe_or_a_socket(sbx, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    terminal, other_side = os.openpty()
    left, right = socket.socketpair()
    refused = {"file": os.open(tmp_path / "f", os.O_RDONLY), "device": os.open(os.devnull, os.O_RDONLY),
               "terminal": terminal}
    try:
        for what, fd in refused.items():
            with pytest.raises(SandboxSetupError, match="must be a pipe or a socket"):
                sbx("true", stdin=fd)
                pytest.fail(f"a {what} was taken as stdin")
        with pytest.raises(SandboxSetupError, match="is not open"):
            sbx("true", stdin=999)
        assert sbx("true", stdin=left.fileno()).exit_code == 0  # a socket is a conversation too
        with pytest.raises(SandboxSetupError, match="needs on_output"):
            sbx("true", keep_output=False)
    finally:
        for fd in (*refused.values(), other_side):
            os.close(fd)
        left.close()
        right.close()

