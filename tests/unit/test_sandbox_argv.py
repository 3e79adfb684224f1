"""Golden bwrap argv for a few specs, and the validation errors of build_argv."""

from __future__ import annotations

import os

import pytest

from sandbox import Limits, NetworkMode, RunAs, SandboxSetupError, SandboxSpec, build_argv
from sandbox.bwrap import ETC_FILES, SpawnFds, etc_files

ETC_FDS = {path: 10 + i for i, path in enumerate(ETC_FILES)}


def _argv(spec: SandboxSpec, status_fd: int | None = 4, netns_ready: bool = False) -> list[str]:
    fds = SpawnFds(seccomp=3, status=status_fd, etc=ETC_FDS, workspace=5,
                   ro_paths=tuple(20 + i for i in range(len(spec.ro_paths))),
                   rw_paths=tuple(30 + i for i in range(len(spec.rw_paths))))
    return build_argv(spec, fds=fds, netns_ready=netns_ready, bwrap_path="/usr/bin/bwrap")


def _root_links() -> list[str]:
    out: list[str] = []
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(link):
            out += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            out += ["--ro-bind", link, link]
    return out


def _golden(*, share_net: bool = False, env: dict[str, str] | None = None,
            tmp: int = 64 << 20, tail: list[str] | None = None, cwd: str = "/workspace",
            hostname: str = "sandbox", extra: list[str] | None = None,
            netns_ready: bool = False) -> list[str]:
    full_env = {"HOME": "/workspace", "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin",
                "TMPDIR": "/tmp", **(env or {})}
    argv = ["/usr/bin/bwrap", "--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--share-net"] if share_net else []
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    for key in sorted(full_env):
        argv += ["--setenv", key, full_env[key]]
    argv += ["--hostname", hostname, "--ro-bind", "/usr", "/usr", *_root_links(),
             "--proc", "/proc", "--dev", "/dev", "--size", str(tmp), "--tmpfs", "/dev/shm",
             "--size", str(tmp), "--tmpfs", "/tmp",
             "--dir", "/etc",
             "--perms", "0444", "--file", "10", "/etc/group", "--perms", "0444", "--file", "11", "/etc/hosts",
             "--perms", "0444", "--file", "12", "/etc/nsswitch.conf",
             "--perms", "0444", "--file", "13", "/etc/passwd"]
    if share_net and not netns_ready:
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--bind-fd", "5", "/workspace", *(extra or []), "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", cwd,
             "--cap-drop", "ALL", "--seccomp", "3"]
    return argv + (tail if tail is not None else ["--json-status-fd", "4", "--"])


def test_default_spec_golden(tmp_path):
    spec = SandboxSpec(argv=("echo", "hi"), workspace=str(tmp_path))
    assert _argv(spec) == _golden() + ["echo", "hi"]


def test_none_keeps_the_fresh_netns_the_child_made(tmp_path):
    spec = SandboxSpec(argv=("true",), workspace=str(tmp_path))
    assert _argv(spec, netns_ready=True) == _golden(share_net=True, netns_ready=True) + ["true"]


def test_netns_ready_is_ignored_for_loopback(tmp_path):
    spec = SandboxSpec(argv=("true",), workspace=str(tmp_path), network=NetworkMode.LOOPBACK)
    assert _argv(spec, netns_ready=True) == _golden() + ["true"]


def test_host_network_env_paths_golden(tmp_path):
    spec = SandboxSpec(
        argv=("python3", "-c", "pass"),
        workspace=str(tmp_path),
        env={"FOO": "bar", "PATH": "/bin"},
        cwd="/tmp/x",
        network=NetworkMode.HOST,
        ro_paths=("/usr/share",),
        rw_paths=("/var/tmp",),
        limits=Limits(tmp_size_bytes=1 << 20),
        hostname="box-1",
    )
    expected = _golden(share_net=True, env={"FOO": "bar", "PATH": "/bin"},
                       tmp=1 << 20, cwd="/tmp/x", hostname="box-1",
                       extra=["--ro-bind-fd", "20", "/usr/share", "--bind-fd", "30", "/var/tmp"])
    assert _argv(spec) == expected + ["python3", "-c", "pass"]


def test_loopback_same_layout_as_none_and_no_status_fd(tmp_path):
    spec = SandboxSpec(argv=("true",), workspace=str(tmp_path), network=NetworkMode.LOOPBACK)
    assert _argv(spec, status_fd=None) == _golden(tail=["--"]) + ["true"]


def test_command_after_double_dash_even_if_it_looks_like_an_option(tmp_path):
    spec = SandboxSpec(argv=("--version",), workspace=str(tmp_path))
    argv = _argv(spec)
    assert argv[-2:] == ["--", "--version"]


def test_etc_files_name_the_run_as_user():
    spec = SandboxSpec(argv=("true",), workspace="/tmp", run_as=RunAs(1234, 4321), hostname="h")
    files = etc_files(spec)
    assert set(files) == set(ETC_FILES)
    assert files["/etc/passwd"].startswith(b"sandbox:x:1234:4321:sandbox:/workspace:/bin/sh\n")
    assert files["/etc/group"].startswith(b"sandbox:x:4321:\n")
    assert b"127.0.1.1\th\n" in files["/etc/hosts"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"argv": ()}, "argv"),
        ({"argv": ("a\0b",)}, "NUL"),
        ({"env": {"A=B": "x"}}, "invalid environment variable name"),
        ({"env": {"": "x"}}, "invalid environment variable name"),
        ({"env": {"A": "x\0y"}}, "NUL"),
        ({"workspace": "relative/dir"}, "absolute"),
        ({"workspace": "/nonexistent-sandbox-ws"}, "not an existing directory"),
        ({"ro_paths": ("/usr/../etc",)}, "'..'"),
        ({"ro_paths": ("/nonexistent-sandbox-path",)}, "does not exist"),
        ({"rw_paths": ("/etc",)}, "overlaps"),
        ({"rw_paths": ("/",)}, "overlaps"),
        ({"ro_paths": ("/proc/1",)}, "overlaps"),
        ({"cwd": "/usr"}, "under /workspace or /tmp"),
        ({"cwd": "/workspace/../etc"}, "'..'"),
        ({"hostname": "bad host"}, "hostname"),
        ({"network": NetworkMode.RESTRICTED}, "restricted network needs the namespace and proxy listener"),
        ({"profile": "nope"}, "unknown seccomp profile"),
        ({"limits": Limits(timeout_s=0)}, "timeout_s"),
        ({"limits": Limits(memory_bytes=0)}, "memory_bytes"),
        ({"limits": Limits(pids=0)}, "pids"),
        ({"limits": Limits(cpu_cores=0.0)}, "cpu_cores"),
    ],
)
def test_validation_errors(tmp_path, changes, message):
    fields = {"argv": ("true",), "workspace": str(tmp_path), **changes}
    with pytest.raises(SandboxSetupError, match=message.replace("(", r"\(")):
        _argv(SandboxSpec(**fields))


def test_missing_etc_fd_is_an_error(tmp_path):
    spec = SandboxSpec(argv=("true",), workspace=str(tmp_path))
    with pytest.raises(SandboxSetupError, match="fds.etc"):
        build_argv(spec, fds=SpawnFds(seccomp=3, status=None, etc={}, workspace=5))
