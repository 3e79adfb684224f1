"""``python -m sandbox run [--timeout S] [--network MODE] [--workspace DIR] [--uid U --gid G]
[--memory BYTES] [--pids N] [--cpu-cores C] -- CMD ARGS...``: run one command in the
sandbox with the default profile, in a cgroup when this host allows it.

The command's stdout/stderr are written through to ours; one summary line goes to stderr
(``sandbox: exit_code=0 limit=none cpu_ms=1 max_rss_kb=1234 duration_ms=7.1``); our exit
status is the command's (1 on a setup error, 2 on usage errors). As root the command runs
as uid/gid 65534 unless --uid/--gid say otherwise. Without --workspace a temporary
directory (owned by that uid, in a root-only parent) is used and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from sandbox.cgroup import CgroupPool
from sandbox.errors import SandboxError, SandboxUnavailable
from sandbox.mounts import create_workspace
from sandbox.runner import run, set_child_subreaper
from sandbox.spec import Limits, NetworkMode, RunAs, SandboxSpec


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox run [--timeout S] [--network M] [--workspace DIR] [--uid U --gid G]
    -- CMD ARGS...``: run one command with the default profile, pass its output through, print
    the result line on stderr; returns the command's exit code (137 when killed)."""
    parser = argparse.ArgumentParser(prog="python -m sandbox")
    sub = parser.add_subparsers(dest="action", required=True)
    p_run = sub.add_parser("run", help="run one command in a sandbox")
    p_run.add_argument("--timeout", type=float, default=Limits.timeout_s, help="wall clock, seconds")
    p_run.add_argument("--network", choices=[m.value for m in NetworkMode], default="none")
    p_run.add_argument("--workspace", help="host dir bound at /workspace (default: temp dir)")
    p_run.add_argument("--uid", type=int, default=65534, help="uid to run as when root")
    p_run.add_argument("--gid", type=int, default=65534, help="gid to run as when root")
    p_run.add_argument("--memory", type=int, default=Limits.memory_bytes, help="memory, bytes")
    p_run.add_argument("--pids", type=int, help="processes + threads (needs a pids cgroup)")
    p_run.add_argument("--cpu-cores", type=float, help="CPU quota in cores (needs a cpu cgroup)")
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing command after --")

    run_as = RunAs(args.uid, args.gid) if os.geteuid() == 0 else None
    workspace = args.workspace
    holder = None
    if workspace is None:
        # The workspace's parent must be writable by root only (sandbox.mounts).
        holder = tempfile.mkdtemp(prefix="sandbox-ws-")
        os.chmod(holder, 0o711)
        workspace = create_workspace(holder, "workspace", run_as)
    set_child_subreaper()  # so usage covers the command (see sandbox.runner)
    try:
        cgroups = CgroupPool.create("sandbox-cli")
    except SandboxUnavailable as exc:
        print(f"sandbox: no cgroup limits: {exc}", file=sys.stderr)
        cgroups = None
    try:
        spec = SandboxSpec(
            argv=tuple(command),
            workspace=os.path.abspath(workspace),
            network=NetworkMode(args.network),
            limits=Limits(timeout_s=args.timeout, memory_bytes=args.memory, pids=args.pids,
                          cpu_cores=args.cpu_cores),
            run_as=run_as,
        )
        result = run(spec, cgroups=cgroups)
    except SandboxError as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        if cgroups is not None:
            cgroups.close()
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    extra = f" setup_error={result.setup_error!r}" if result.setup_error else ""
    print(
        f"sandbox: exit_code={result.exit_code} limit={result.limit_reason or 'none'} "
        f"cpu_ms={result.usage.cpu_time_ms} max_rss_kb={result.usage.max_memory_kb} "
        f"duration_ms={result.duration_ms:.1f}{extra}",
        file=sys.stderr,
    )
    return result.exit_code if result.exit_code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
