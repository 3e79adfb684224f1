"""``mcp-gateway exec``, ``tasks`` and ``files``: the gateway from a terminal, on
:class:`gateway.client.Client`.

* ``mcp-gateway exec [--workspace W] [--timeout S] [--env K=V]... [--cwd DIR] [--network N]
  -- CMD ARGS...`` runs one command in the gateway's sandbox: its stdout and stderr stream
  live to this terminal's, and its exit status is this command's. A line on stderr says
  when the task waits in the queue for more than a second. Ctrl-C cancels the task. A
  dropped stream reconnects from the last entry received.
* ``mcp-gateway tasks list [--status S] [--since T] [--limit N]``, ``tasks get ID``,
  ``tasks logs ID [-f]`` (without ``-f`` a final task's whole log; with it, live until the
  end), ``tasks cancel ID``.
* ``mcp-gateway files get --workspace W PATH [--to FILE]``, ``files put --workspace W PATH
  [--from FILE] [--mode 0644] [--create-dirs]`` (standard input without ``--from``),
  ``files rm --workspace W PATH [-r]``.

Every command takes ``--url`` (``http(s)://`` for REST, ``grpc(s)://`` for gRPC),
``--token`` (an API key or JWT; ``--api-key`` is the same), ``--ca-file``,
``--client-cert`` / ``--client-key`` (mTLS) and ``--output text|json`` (json: one JSON
document on stdout, for scripts). Settings come from the flags, then ``MCP_GATEWAY_URL`` /
``MCP_GATEWAY_TOKEN``, then the config file ``$XDG_CONFIG_HOME/mcp-gateway/client.yaml``
(default ``~/.config/...``; keys ``url``, ``token``, ``ca_file``, ``client_cert``,
``client_key``), which must not be readable by others when it holds a token.

Exit status of ``exec`` (:data:`EXIT_STATUSES`): the command's own; 124 when it ran out
of time (as timeout(1)); 125 when the gateway refused the call or failed (authentication,
a bad request, a rate limit, the sandbox could not start, unreachable); 126 when policy
denied it; 130 when it was cancelled (Ctrl-C). The other commands: 0 done, 1 the gateway
refused (its error on stderr), 2 bad arguments or settings (a local file too), 3 the gateway
could not be reached, 130 interrupted. A token goes over plain ``http://`` / ``grpc://`` only
to this host, unless ``--insecure-http``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from gateway.client import Client, Task, TransportError
from gateway.errors import GatewayError, PolicyDenied

__all__ = ["EXIT_STATUSES", "add_parsers", "run_client_command"]

#: ``exec``'s own exit statuses (any other is the command's).
EXIT_STATUSES = {"timed_out": 124, "gateway_error": 125, "policy_denied": 126, "cancelled": 130}
_QUEUE_NOTICE_S = 1.0  # a task still queued this long after it was accepted gets a line on stderr
_DEFAULT_URL = "http://127.0.0.1:8080"
_STATUSES = ("TASK_CREATED", "TASK_QUEUED", "TASK_RUNNING", "TASK_COMPLETED", "TASK_FAILED", "TASK_CANCELLED",
             "TASK_TIMED_OUT")


def _positive(text: str) -> int:
    """An argparse type: an integer from 1 to 10,000."""
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{value} is not from 1 to 10000")
    return value


def add_parsers(sub: Any) -> None:
    """Add ``exec``, ``tasks`` and ``files`` to the ``mcp-gateway`` sub-command parser ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway: http(s)://host:port (REST) or grpc(s)://host:port "
                        f"(default $MCP_GATEWAY_URL, the config file, else {_DEFAULT_URL})")
    common.add_argument("--token", "--api-key", dest="token",
                        help="API key or JWT (default $MCP_GATEWAY_TOKEN, else the config file)")
    common.add_argument("--ca-file", help="PEM CA bundle that verifies the gateway's certificate")
    common.add_argument("--client-cert", help="PEM client certificate (mTLS)")
    common.add_argument("--client-key", help="PEM key of --client-cert")
    common.add_argument("--output", choices=("text", "json"), default="text", help="json: for scripts")
    common.add_argument("--insecure-http", action="store_true",
                        help="send the token over plain http:// or grpc:// to another host (never do this)")

    run = sub.add_parser("exec", parents=[common], help="run one command in the gateway's sandbox")
    run.add_argument("--workspace", help="workspace (in your tenant) to run in")
    run.add_argument("--timeout", type=int, default=0, help="wall-clock limit, seconds (0: the server's default)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="an environment variable")
    run.add_argument("--cwd", help="working directory, relative to /workspace")
    run.add_argument("--network", choices=("none", "loopback", "host", "restricted"),
                     help="network the task asks for (policy may grant less)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    tasks = sub.add_parser("tasks", help="list, read, follow and cancel tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", required=True)
    listing = tsub.add_parser("list", parents=[common], help="your tasks, newest first")
    listing.add_argument("--status", type=str.upper, choices=[s.removeprefix("TASK_") for s in _STATUSES],
                         help="only tasks in this state")
    listing.add_argument("--since", help="only tasks created at or after this RFC 3339 time")
    listing.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    for name, text in (("get", "a task's state and result"), ("cancel", "cancel a task")):
        tsub.add_parser(name, parents=[common], help=text).add_argument("task_id")
    logs = tsub.add_parser("logs", parents=[common], help="a task's output")
    logs.add_argument("task_id")
    logs.add_argument("-f", "--follow", action="store_true", help="live, until the task ends")

    files = sub.add_parser("files", help="read, write and delete workspace files")
    fsub = files.add_subparsers(dest="files_command", required=True)
    for name, text in (("get", "print (or save) a file"), ("put", "write a file"), ("rm", "delete a file")):
        cmd = fsub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("--workspace", required=True, help="workspace id in your tenant")
        cmd.add_argument("path", help="path in the workspace")
        if name == "get":
            cmd.add_argument("--to", help="write to this file instead of stdout")
        elif name == "put":
            cmd.add_argument("--from", dest="source", help="read from this file instead of stdin")
            cmd.add_argument("--mode", help="permission bits in octal, e.g. 0644")
            cmd.add_argument("--create-dirs", action="store_true", help="create missing parent directories")
        else:
            cmd.add_argument("-r", "--recursive", action="store_true", help="delete a directory tree")


def run_client_command(args: argparse.Namespace) -> int:
    """Run ``exec``, ``tasks ...`` or ``files ...``; returns the exit status."""
    try:
        settings = _settings(args)
        gw = Client(settings.pop("url"), settings.pop("token"), **settings)
    except (ValueError, OSError) as exc:  # settings, URL, token, TLS files
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        # exec's own statuses must not look like the command's: as docker run, 125.
        return EXIT_STATUSES["gateway_error"] if args.command == "exec" else 2
    with gw:
        if args.command == "exec":
            return _exec(gw, args)
        try:
            return _tasks(gw, args) if args.command == "tasks" else _files(gw, args)
        except GatewayError as exc:
            print(f"mcp-gateway: error {exc.code} ({type(exc).__name__}): {exc.message}", file=sys.stderr)
            return 1
        except TransportError as exc:
            print(f"mcp-gateway: {exc}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:
            print("\nmcp-gateway: interrupted", file=sys.stderr)
            return EXIT_STATUSES["cancelled"]


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """url, token, ca_file, client_cert, client_key: flags, then environment, then file.

    Raises:
        ValueError: the config file is unreadable, not a mapping, or holds a token while
            others may read it.
    """
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = home / "mcp-gateway" / "client.yaml"
    stored: dict[str, Any] = {}
    if path.is_file():
        try:
            stored = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if not isinstance(stored, dict):
            raise ValueError(f"{path}: not a mapping of settings")
        if (stored.get("token") or stored.get("api_key")) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"{path} holds a token and others may read it: chmod 600 {path}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file")
    if "api_key" in stored:  # the same as token, as the flags spell both
        stored.setdefault("token", stored.pop("api_key"))
    env = {"url": os.environ.get("MCP_GATEWAY_URL"), "token": os.environ.get("MCP_GATEWAY_TOKEN")}
    settings: dict[str, Any] = {}
    for key in ("url", "token", "ca_file", "client_cert", "client_key"):
        value = getattr(args, key, None) or env.get(key) or stored.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be text, not {type(value).__name__} ({path})")
        settings[key] = value.strip() if key == "token" and value else value
    settings["url"] = settings["url"] or _DEFAULT_URL
    settings["insecure"] = args.insecure_http
    return settings


def _exec(gw: Client, args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("mcp-gateway: exec needs a command: mcp-gateway exec [options] -- CMD ARGS...", file=sys.stderr)
        return 2
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"mcp-gateway: --env {item!r} is not K=V", file=sys.stderr)
            return 2
        env[key] = value
    try:
        task = gw.execute(argv[0], argv[1:], env=env, cwd=args.cwd, timeout_s=args.timeout,
                          workspace=args.workspace, network=args.network)
    except PolicyDenied as exc:
        print(f"mcp-gateway: denied by policy (error {exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_STATUSES["policy_denied"]
    except GatewayError as exc:
        print(f"mcp-gateway: error {exc.code} ({type(exc).__name__}): {exc.message}", file=sys.stderr)
        return EXIT_STATUSES["gateway_error"]
    except TransportError as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        return EXIT_STATUSES["gateway_error"]
    except KeyboardInterrupt:
        print("\nmcp-gateway: interrupted before the gateway answered; if the task was created it runs on "
              "('mcp-gateway tasks list' shows it)", file=sys.stderr)
        return EXIT_STATUSES["cancelled"]
    return _follow(gw, task, args.output == "json")


def _follow(gw: Client, task: Task, as_json: bool) -> int:
    """Stream ``task``'s output to stdout/stderr until its end; its exit status (see
    :data:`EXIT_STATUSES`). Ctrl-C cancels it."""
    started = threading.Event()
    notice = threading.Timer(_QUEUE_NOTICE_S, _queue_notice, (gw, task.task_id, started))
    notice.daemon = True
    notice.start()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for chunk in gw.output(task.task_id):
            started.set()
            if as_json:
                continue
            if chunk.kind in ("stdout", "stderr"):
                stream = out if chunk.kind == "stdout" else err
                stream.write(chunk.data)
                stream.flush()
            elif chunk.kind == "event" and b"output_truncated" in chunk.data:
                print("\nmcp-gateway: output beyond the gateway's cap was dropped", file=sys.stderr, flush=True)
        final = gw.final_task(task.task_id)
    except KeyboardInterrupt:
        started.set()
        try:
            gw.cancel_task(task.task_id)
        except (GatewayError, TransportError) as exc:
            print(f"\nmcp-gateway: task {task.task_id} may still run: {exc}", file=sys.stderr)
        else:
            print(f"\nmcp-gateway: cancelled task {task.task_id}", file=sys.stderr)
        return EXIT_STATUSES["cancelled"]
    except (GatewayError, TransportError) as exc:
        print(f"mcp-gateway: lost task {task.task_id}: {exc}", file=sys.stderr)
        return EXIT_STATUSES["gateway_error"]
    finally:
        notice.cancel()
    if as_json:
        print(json.dumps(dataclasses.asdict(final), indent=1, default=dict))
    return _exit_status(final)


def _exit_status(task: Task) -> int:
    result = task.result
    if task.status == "TIMED_OUT":
        return EXIT_STATUSES["timed_out"]
    if task.status == "CANCELLED":
        return EXIT_STATUSES["cancelled"]
    if task.status == "FAILED" and (result is None or result.exit_code < 0):
        error = result.error if result is not None and result.error else "the sandbox did not start"
        print(f"mcp-gateway: task {task.task_id} failed: {error}", file=sys.stderr)
        return EXIT_STATUSES["gateway_error"]
    return result.exit_code if result is not None and 0 <= result.exit_code <= 255 else 1


def _queue_notice(gw: Client, task_id: str, started: threading.Event) -> None:
    """The line that says a task is still waiting for a sandbox."""
    if started.is_set():
        return
    try:
        task = gw.get_task(task_id)
    except (GatewayError, TransportError):
        return
    if task.status in ("CREATED", "QUEUED") and not started.is_set():
        print(f"mcp-gateway: task {task_id} is queued, waiting for a sandbox", file=sys.stderr, flush=True)


def _tasks(gw: Client, args: argparse.Namespace) -> int:
    as_json = args.output == "json"
    if args.tasks_command == "list":
        tasks = []
        for task in gw.iter_tasks(status=args.status, since=args.since, page_size=min(100, args.limit)):
            tasks.append(task)
            if len(tasks) == args.limit:
                break
        if as_json:
            print(json.dumps([dataclasses.asdict(t) for t in tasks], indent=1, default=dict))
        else:
            for task in tasks:
                print(f"{task.task_id}  {task.status:<10} {task.created_at}  {task.metadata.get('workspace', '')}")
        return 0
    if args.tasks_command == "logs":
        if not args.follow and not gw.get_task(args.task_id).final:
            print(f"mcp-gateway: task {args.task_id} has not ended: follow it with -f", file=sys.stderr)
            return 1
        entries = []
        for chunk in gw.output(args.task_id):
            if as_json:
                entries.append({"offset": chunk.offset, "stream": chunk.kind,
                                "text": chunk.data.decode(errors="replace")})
            elif chunk.kind in ("stdout", "stderr"):
                stream = sys.stdout.buffer if chunk.kind == "stdout" else sys.stderr.buffer
                stream.write(chunk.data)
                stream.flush()
        if as_json:
            print(json.dumps(entries, indent=1))
        return 0
    task = gw.get_task(args.task_id) if args.tasks_command == "get" else gw.cancel_task(args.task_id)
    if as_json:
        print(json.dumps(dataclasses.asdict(task), indent=1, default=dict))
    else:
        result = task.result
        print(f"{task.task_id}  {task.status}" + (f"  exit {result.exit_code}" if result else ""))
        if result is not None:
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
    return 0


def _files(gw: Client, args: argparse.Namespace) -> int:
    if args.files_command == "get":
        data = gw.read_file(args.path, workspace=args.workspace)
        if args.to:
            try:
                Path(args.to).write_bytes(data)
            except OSError as exc:
                print(f"mcp-gateway: {args.to}: {exc.strerror}", file=sys.stderr)
                return 2
        else:
            sys.stdout.buffer.write(data)
        return 0
    if args.files_command == "put":
        try:
            mode = int(args.mode, 8) if args.mode else None
        except ValueError:
            print(f"mcp-gateway: --mode {args.mode!r} is not octal permission bits", file=sys.stderr)
            return 2
        try:
            data = Path(args.source).read_bytes() if args.source else sys.stdin.buffer.read()
        except OSError as exc:
            print(f"mcp-gateway: {args.source}: {exc.strerror}", file=sys.stderr)
            return 2
        written = gw.write_file(args.path, data, workspace=args.workspace, mode=mode, create_dirs=args.create_dirs)
        if args.output == "json":
            print(json.dumps({"path": args.path, "bytes_written": written}))
        return 0
    gw.delete_file(args.path, workspace=args.workspace, recursive=args.recursive)
    if args.output == "json":
        print(json.dumps({"path": args.path, "deleted": True}))
    return 0
