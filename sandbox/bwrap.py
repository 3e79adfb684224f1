"""Spec -> bubblewrap command line (pure), plus the generated read-only /etc.

``build_argv(spec, *, fds, netns_ready, bwrap_path) -> list[str]`` validates
the spec and returns bwrap's argv; it opens nothing and spawns nothing, so the exact recipe
is golden-tested (tests/unit/test_sandbox_argv.py). ``etc_files(spec) -> {path: bytes}``
is the content of the minimal /etc, which the runner hands to bwrap through one memfd per
file (``--perms 0444 --file FD DEST``, copied into the sandbox's own root tmpfs, which
``--remount-ro /`` then makes read-only): nothing of the host's /etc is visible, no per-run
file touches the host filesystem, and no mount is needed per file (four bind mounts cost
~0.6 ms of CPU per spawn; four file copies a few microseconds).

The recipe (bwrap(1) for bubblewrap 0.8.0; design.md section 7):

``--unshare-all``          new user, ipc, pid, net, uts, cgroup namespaces.
``--unshare-user --disable-userns``  the user namespace is required (not "-try"), and
                           nested ones are refused: bwrap sets user.max_user_namespaces so
                           that creating one fails with ENOSPC, below the seccomp refusal.
``--share-net``            HOST: the host's network. NONE when the runner already put the
                           child in a fresh, empty network namespace (root only; ``lo``
                           stays down, so nothing at all is reachable). Otherwise bwrap
                           makes the netns and brings ``lo`` up (network.c): LOOPBACK, and
                           NONE for a non-root caller, which is then loopback-only.
``--die-with-parent``      PR_SET_PDEATHSIG=SIGKILL in the sandbox's pid 1 and command.
``--new-session``          setsid(): no controlling terminal, so TIOCSTI has no target.
``--clearenv --args FD``   the environment is exactly base env + spec.env: ``--setenv K V``
                           pairs read from a sealed memfd (``env_args``), never on the
                           command line, which every host user can read in
                           /proc/PID/cmdline (an upstream MCP server's secrets, a task's
                           tokens). Without an env fd (``SpawnFds.env``), ``--setenv`` inline.
``--hostname``             private UTS name.
``--ro-bind /usr``, root symlinks, ``--proc``, ``--dev`` (a minimal tmpfs /dev: null, zero,
                           full, random, urandom, tty, pts), ``--size N --tmpfs /dev/shm``
                           (POSIX shm and semaphores) and ``--size N --tmpfs /tmp``.
``--dir /etc`` + ``--file``  the generated /etc, files in the root tmpfs (read-only below).
``--bind-fd FD /workspace``  the only host directory the command can write (plus
                           rw_paths), opened by fd without following symlinks
                           (``sandbox.mounts``); extra paths likewise with ``--ro-bind-fd``.
``--remount-ro /dev /``    bwrap's root and its /dev are tmpfs without a size (half of host
                           RAM) writable by the sandbox user; without this a command could
                           fill host memory through them, or rewrite the generated /etc.
                           Device nodes stay usable on a read-only mount.
``--cap-drop ALL``         no capabilities even inside the user namespace.
``--seccomp FD``           loaded last, right before execvp (after NO_NEW_PRIVS).
``--json-status-fd FD``    ``{"child-pid": N, ...}`` after clone, and ``{"exit-code": N}``
                           only if execvp of the command succeeded (bubblewrap.c
                           report_child_exit_status): how the runner tells a setup failure
                           from a command that exited 1.

Errors: ``SandboxSetupError`` (invalid spec or unsupported mode), with the offending value.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.errors import SandboxSetupError
from sandbox.seccomp import PROFILES
from sandbox.spec import NetworkMode, SandboxSpec

__all__ = ["BASE_ENV", "ETC_FILES", "SpawnFds", "build_argv", "env_args", "etc_files", "proxy_env", "validate"]

#: The environment every command starts from (spec.env is layered on top).
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/workspace",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}

#: A RESTRICTED run's proxy settings, over spec.env: curl, pip, npm, git and Go read these
#: (both cases: some tools read only one). Nothing else is reachable, so a command that
#: sets its own gets nowhere.
def proxy_env(port: int) -> dict[str, str]:
    """``{"HTTP_PROXY": "http://127.0.0.1:<port>", ...}`` for the proxy on the sandbox's lo."""
    url = f"http://127.0.0.1:{port}"
    env = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": "localhost,127.0.0.1,::1"}
    return {**env, **{key.lower(): value for key, value in env.items()}}


#: The generated files of /etc, in argv order.
ETC_FILES: tuple[str, ...] = ("/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/passwd")

WORKSPACE = "/workspace"
_ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib64")
# Mount points the recipe owns: an extra bind here would replace the /proc, /dev or /etc
# we built (e.g. expose the host's /etc/shadow), or shadow the workspace or /tmp.
_RESERVED = ("/proc", "/dev", "/etc", WORKSPACE, "/tmp")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


@dataclass(frozen=True)
class SpawnFds:
    """Descriptors bwrap reads during setup; all must be in Popen ``pass_fds``.

    seccomp    the BPF program (``--seccomp``)
    status     write end for ``--json-status-fd``, or None
    etc        one readable fd per ``ETC_FILES`` path (``--file``)
    workspace  ``O_PATH`` fd of the workspace (``--bind-fd``, see ``sandbox.mounts``)
    ro_paths, rw_paths  ``O_PATH`` fds, one per spec path, same order
    env        a readable fd holding ``env_args(spec, proxy_port)`` (``--args``), or None
               for ``--setenv`` on the command line
    """

    seccomp: int
    status: int | None
    etc: Mapping[str, int]
    workspace: int
    ro_paths: tuple[int, ...] = ()
    rw_paths: tuple[int, ...] = ()
    env: int | None = None


def validate(spec: SandboxSpec) -> None:
    """Check ``spec`` against the rules below; raise ``SandboxSetupError`` naming the field.

    argv non-empty, no NUL; env keys non-empty without '=' or NUL, values without NUL;
    workspace an existing host directory; every path absolute without '..'; ro/rw paths
    exist and are not / or under /proc, /dev, /etc, /workspace, /tmp; cwd under /workspace
    or /tmp; hostname a DNS label; limits positive; a known network mode and profile.
    Reads the host filesystem (existence checks) but changes nothing.
    """
    if not spec.argv or not all(isinstance(a, str) for a in spec.argv):
        raise SandboxSetupError("argv must be a non-empty tuple of strings")
    if any("\0" in a for a in spec.argv):
        raise SandboxSetupError("argv must not contain NUL bytes")
    if not spec.argv[0]:
        raise SandboxSetupError("argv[0] must not be empty")
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key:
            raise SandboxSetupError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise SandboxSetupError(f"environment variable {key} contains a NUL byte")
    _check_path("workspace", spec.workspace)
    if not os.path.isdir(spec.workspace):
        raise SandboxSetupError(f"workspace {spec.workspace!r} is not an existing directory")
    for kind, paths in (("ro_paths", spec.ro_paths), ("rw_paths", spec.rw_paths)):
        for path in paths:
            _check_path(kind, path)
            if path == "/" or any(_is_under(path, r) for r in _RESERVED):
                raise SandboxSetupError(f"{kind}: {path!r} overlaps a path the sandbox owns")
            if not os.path.lexists(path):
                raise SandboxSetupError(f"{kind}: {path!r} does not exist on the host")
    _check_path("cwd", spec.cwd)
    if not (_is_under(spec.cwd, WORKSPACE) or _is_under(spec.cwd, "/tmp")):
        raise SandboxSetupError(f"cwd {spec.cwd!r} must be under /workspace or /tmp")
    if not _HOSTNAME.match(spec.hostname):
        raise SandboxSetupError(f"invalid hostname {spec.hostname!r}")
    if not isinstance(spec.network, NetworkMode):
        raise SandboxSetupError(f"unknown network mode {spec.network!r}")
    if spec.profile not in PROFILES:
        raise SandboxSetupError(f"unknown seccomp profile {spec.profile!r}")
    lim = spec.limits
    if not lim.timeout_s > 0:
        raise SandboxSetupError("limits.timeout_s must be > 0")
    for name in ("cpu_seconds", "memory_bytes", "file_size_bytes", "open_files", "tmp_size_bytes",
                 "pids", "cpu_cores", "address_space_bytes", "uid_process_cap"):
        value = getattr(lim, name)
        if value is not None and not value > 0:
            raise SandboxSetupError(f"limits.{name} must be > 0")
    if lim.output_bytes < 0:
        raise SandboxSetupError("limits.output_bytes must be >= 0")
    if not 0 <= lim.nice <= 19:
        raise SandboxSetupError("limits.nice must be between 0 and 19")
    if spec.run_as is not None and (spec.run_as.uid < 0 or spec.run_as.gid < 0):
        raise SandboxSetupError("run_as uid/gid must be >= 0")


def etc_files(spec: SandboxSpec) -> dict[str, bytes]:
    """Content of the generated /etc: ``{"/etc/passwd": b"...", ...}`` (keys = ETC_FILES).

    One user ``sandbox`` with the uid/gid the command has inside. No uid remapping is
    requested (no ``--uid``), so that is ``spec.run_as`` or else the caller's euid/egid.
    Host-owned files appear as the kernel overflow id 65534 ("nobody") inside.
    """
    uid, gid = (spec.run_as.uid, spec.run_as.gid) if spec.run_as else (os.geteuid(), os.getegid())
    passwd = f"sandbox:x:{uid}:{gid}:sandbox:{WORKSPACE}:/bin/sh\n"
    group = f"sandbox:x:{gid}:\n"
    if uid != 65534:
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    if gid != 65534:
        group += "nogroup:x:65534:\n"
    return {
        "/etc/group": group.encode(),
        "/etc/hosts": (
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{spec.hostname}\n"
        ).encode(),
        "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
        "/etc/passwd": passwd.encode(),
    }


def build_argv(
    spec: SandboxSpec,
    *,
    fds: SpawnFds,
    netns_ready: bool = False,
    bwrap_path: str = "bwrap",
    validated: bool = False,
    proxy_port: int | None = None,
) -> list[str]:
    """bwrap argv for ``spec`` (see the module docstring for the recipe).

    ``fds``: the descriptors the child inherits (``keep_fds`` of ``sandbox.limits.spawn``).
    ``netns_ready``: the child enters a fresh network namespace of its own before exec
    (``sandbox.limits``, root only), so for NetworkMode.NONE bwrap keeps that one
    (``--share-net``) instead of making its own, whose ``lo`` it would bring up.
    ``proxy_port``: RESTRICTED only, the port of the proxy listening on the namespace's lo
    (``sandbox.netns.proxy_listener``), which must be ``netns_ready``.
    ``validated``: the caller already ran ``validate(spec)`` (``run`` does, before it opens
    anything), so the filesystem checks are not repeated. Raises ``SandboxSetupError``.
    """
    if not validated:
        validate(spec)
    missing = set(ETC_FILES) - set(fds.etc)
    if missing:
        raise SandboxSetupError(f"fds.etc lacks {sorted(missing)}")
    if (len(fds.ro_paths), len(fds.rw_paths)) != (len(spec.ro_paths), len(spec.rw_paths)):
        raise SandboxSetupError("fds.ro_paths/rw_paths must match spec.ro_paths/rw_paths")
    if spec.network is NetworkMode.RESTRICTED and (not netns_ready or proxy_port is None):
        raise SandboxSetupError("restricted network needs the namespace and proxy listener run() makes")
    share_net = spec.network is NetworkMode.HOST or (
        spec.network in (NetworkMode.NONE, NetworkMode.RESTRICTED) and netns_ready
    )
    argv = [bwrap_path, "--unshare-all", "--unshare-user", "--disable-userns"]
    if share_net:
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    argv += ["--args", str(fds.env)] if fds.env is not None else _setenv(spec, proxy_port)
    argv += ["--hostname", spec.hostname]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link, target in _root_links():
        if target is None:
            argv += ["--ro-bind", link, link]
        else:
            argv += ["--symlink", target, link]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(spec.limits.tmp_size_bytes), "--tmpfs", "/dev/shm"]
    argv += ["--size", str(spec.limits.tmp_size_bytes), "--tmpfs", "/tmp"]
    argv += ["--dir", "/etc"]
    for path in ETC_FILES:
        argv += ["--perms", "0444", "--file", str(fds.etc[path]), path]
    if spec.network is NetworkMode.HOST:
        # -try: a host without resolv.conf still gets a sandbox (DNS then fails inside).
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--bind-fd", str(fds.workspace), WORKSPACE]
    for path, fd in zip(spec.ro_paths, fds.ro_paths, strict=True):
        argv += ["--ro-bind-fd", str(fd), path]
    for path, fd in zip(spec.rw_paths, fds.rw_paths, strict=True):
        argv += ["--bind-fd", str(fd), path]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--chdir", spec.cwd]
    argv += ["--cap-drop", "ALL"]
    argv += ["--seccomp", str(fds.seccomp)]
    if fds.status is not None:
        argv += ["--json-status-fd", str(fds.status)]
    argv.append("--")
    argv += spec.argv
    return argv


def env_args(spec: SandboxSpec, proxy_port: int | None = None) -> bytes:
    """The command's environment as bwrap ``--args`` content: ``--setenv``, key, value, each
    NUL-terminated (bwrap(1) ``--args FD``). ``proxy_port``: RESTRICTED, as for ``build_argv``."""
    return b"".join(arg.encode() + b"\0" for arg in _setenv(spec, proxy_port))


def _setenv(spec: SandboxSpec, proxy_port: int | None) -> list[str]:
    env = {**BASE_ENV, **spec.env}
    if spec.network is NetworkMode.RESTRICTED and proxy_port is not None:
        env.update(proxy_env(proxy_port))
    return [arg for key in sorted(env) for arg in ("--setenv", key, env[key])]


@functools.lru_cache(maxsize=1)
def _root_links() -> tuple[tuple[str, str | None], ...]:
    """``((path, symlink target or None for a real dir), ...)`` for /bin /sbin /lib /lib64
    as they are on this host (merged-/usr hosts have symlinks; others real dirs)."""
    out: list[tuple[str, str | None]] = []
    for link in _ROOT_LINKS:
        if os.path.islink(link):
            out.append((link, os.readlink(link)))
        elif os.path.isdir(link):
            out.append((link, None))
    return tuple(out)


def _check_path(kind: str, path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise SandboxSetupError(f"{kind}: {path!r} must be an absolute path")
    if ".." in path.split("/"):
        raise SandboxSetupError(f"{kind}: {path!r} must not contain '..'")


def _is_under(path: str, root: str) -> bool:
    path = os.path.normpath(path)
    return path == root or path.startswith(root + "/")
