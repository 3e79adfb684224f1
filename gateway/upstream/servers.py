"""Upstream MCP servers run over stdio inside the gateway's sandbox, one per (server, tenant).

Why per tenant: a third-party server may keep state (a cache, an open file, a login), and
nothing one tenant's calls leave behind may reach another tenant. Each tenant that calls
a server gets its own sandbox of it, with that tenant's workspace (``mcp-<server>`` by
default) at /workspace and the workspace's uid; a server that keeps no state costs one
process per active tenant, bounded by ``mcp.max_upstream_instances`` and the idle timeout.

One instance's life, in order:

1. **start** (on the first call that needs it): lease the tenant's workspace, read the
   ``env_files`` secrets, and run the server through ``TaskManager.run_server`` on a thread
   of its own: bwrap + seccomp, the server's limits, network ``none`` (its own empty
   namespace) or ``restricted`` (only its allow-list, through the egress proxy). Its stdin
   is a pipe the hub writes; its stdout is read line by line as JSON-RPC (the MCP stdio
   transport, spec 2025-11-25 "Transports"); its stderr is kept (the last 4 KiB) for the
   failure message.
2. **handshake**: an SDK ``ClientSession`` over those pipes (``initialize``, then
   ``tools/list`` page by page) within ``startup_timeout_s``. A listing that names a tool
   twice, or a name that cannot be served as ``<server>__<tool>`` (MCP tool names: 1-128 of
   ``A-Z a-z 0-9 _ - .``), refuses the server: the start fails.
3. **serve**: calls share the session; ``notifications/tools/list_changed`` re-lists the tools
   at once, and every listing is compared with the approved pins (``gateway.upstream.pins``)
   by the caller (``on_listing``).
4. **stop**: after ``idle_timeout_s`` without a call, at ``max_lifetime_s`` (the sandbox's wall
   clock), when the server exits or breaks the protocol, or at shutdown. A server that
   stopped by failing is started again on the next call, but not before its backoff (1 s,
   doubling to 60 s; reset once it served a call).

Nothing of the caller travels upstream: the session is the gateway's own (``clientInfo``
mcp-gateway), and a call carries only the tool's name and arguments.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import errno
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter
from pydantic import ValidationError

import sandbox
from gateway import __version__
from gateway.audit.log import redact_text
from gateway.config import UpstreamServerSettings
from gateway.egress.allowlist import AllowList
from gateway.egress.proxy import Denial, EgressTask
from gateway.errors import DependencyUnavailable, GatewayError, RateLimited
from gateway.models import ExecutionPlan
from gateway.observability.metrics import UPSTREAM_RUNNING, UPSTREAM_STARTS
from gateway.tasks import TaskManager
from gateway.tasks.workspaces import WorkspaceManager
from gateway.upstream.pins import tool_sha256

__all__ = ["TOOL_NAME_PATTERN", "Listing", "UpstreamHub", "exposed_name", "split_name"]

log = logging.getLogger("gateway.upstream")

#: MCP tool names (schema 2025-11-25 ``Tool.name`` guidance): what a served name must match.
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")
SEPARATOR = "__"
_MAX_LINE_BYTES = 16 << 20  # one JSON-RPC message from a server, at most (more stops it)
_MAX_PENDING = 256  # messages read but not yet taken by the session (more stops the server)
_STDERR_KEPT = 4096  # bytes of a server's stderr kept for the failure message
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 60.0
_REAP_EVERY_S = 1.0
_STOP_WAIT_S = 10.0
_MAX_TOOLS = 256  # tools one server may list (its listing goes into every tools/list answer)
_MAX_TOOL_BYTES = 64 << 10  # one tool's definition as JSON, at most
_ERROR_CHARS = 512  # of an upstream JSON-RPC error message, passed on to the caller
_CANCEL_POLL_S = 0.05  # how often a waiting call looks at its cancel event, seconds


def exposed_name(server: str, tool: str) -> str:
    """The name a server's tool is served under: ``<server>__<tool>``."""
    return f"{server}{SEPARATOR}{tool}"


def split_name(name: str) -> tuple[str, str] | None:
    """``(server, tool)`` of a served name, or None when ``name`` has no server prefix.
    Server names never hold ``_`` (``UPSTREAM_NAME_PATTERN``), so the first ``__`` splits."""
    server, sep, tool = name.partition(SEPARATOR)
    return (server, tool) if sep and server and tool else None


@dataclass(frozen=True)
class Listing:
    """A server's tools as listed now: ``tools`` by upstream name (the SDK's ``Tool``), and
    ``digests``, each tool's pinned-definition digest (``pins.tool_sha256``)."""

    tools: Mapping[str, types.Tool]
    digests: Mapping[str, str]


#: ``on_listing(server, tenant, listing)``: called (on the hub's thread; quick, no raise)
#: after every listing of an instance: the first and each after ``tools/list_changed``.
ListingObserver = Callable[[str, str, Listing], None]
#: ``on_egress_denied(server, tenant, denial)``: a restricted server's refused connection.
EgressObserver = Callable[[str, str, Denial], None]


@dataclass
class _Backoff:
    until: float = 0.0
    delay_s: float = _BACKOFF_FIRST_S


@dataclass
class _Instance:
    """One running server for one tenant; all fields are touched on the hub's loop only,
    except ``cancel`` (any thread) and the pipes (the sandbox thread reads stdout)."""

    server: str
    tenant: str
    settings: UpstreamServerSettings
    cancel: threading.Event = field(default_factory=threading.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    session: ClientSession | None = None
    listing: Listing | None = None
    error: str = ""
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    served: bool = False  # it answered a call (its backoff is then reset)
    clean_stop: bool = False  # stopped by the hub (idle, room, shutdown), not by failing
    stderr: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None


class UpstreamHub:
    """Runs the configured upstream servers (``mcp.servers``) on demand and calls their tools.

    The hub owns one event loop on a thread of its own (an anyio blocking portal); its
    public methods are called from any other thread and block until done.

    Args:
        servers: the ``mcp.servers`` section, by name.
        tasks: the task manager, whose ``run_server`` makes each sandbox.
        workspaces: the tenants' workspaces (each instance leases its tenant's).
        max_instances: instances running at once (``mcp.max_upstream_instances``).
        on_listing: see :data:`ListingObserver`.
        on_egress_denied: see :data:`EgressObserver`.
    """

    def __init__(self, servers: Mapping[str, UpstreamServerSettings], tasks: TaskManager,
                 workspaces: WorkspaceManager, *, max_instances: int, on_listing: ListingObserver,
                 on_egress_denied: EgressObserver) -> None:
        self.servers = dict(servers)
        self._tasks = tasks
        self._workspaces = workspaces
        self._max_instances = max_instances
        self._on_listing = on_listing
        self._on_egress_denied = on_egress_denied
        self._instances: dict[tuple[str, str], _Instance] = {}
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._portal_cm: Any = None
        self._portal: BlockingPortal | None = None
        self._reaper: Any = None
        self._start_lock = asyncio.Lock()  # binds to the hub's loop on first use

    # -- life of the hub ------------------------------------------------------------

    def start(self) -> None:
        """Start the hub's loop (idempotent); servers start later, on demand."""
        if self._portal is None and self.servers:
            self._portal_cm = start_blocking_portal()
            self._portal = self._portal_cm.__enter__()
            self._reaper = self._portal.start_task_soon(self._reap)

    def close(self) -> None:
        """Stop every instance (each sandbox killed and reaped) and the hub's loop."""
        if self._portal is None:
            return
        portal, self._portal = self._portal, None
        with contextlib.suppress(Exception):
            portal.call(self._stop_all)
        self._reaper.cancel()
        with contextlib.suppress(BaseException):
            self._portal_cm.__exit__(None, None, None)

    # -- calls (from any thread) ------------------------------------------------------

    def listing(self, server: str, tenant: str) -> Listing:
        """``server``'s tools as ``tenant``'s instance lists them, starting it when needed.

        Raises:
            DependencyUnavailable (5003): the server cannot be started (the message says
                why; ``details.retry_after_s`` while its backoff lasts).
            RateLimited (4290): ``max_upstream_instances`` run and none is idle.
        """
        running = self._instances.get((server, tenant))  # a read from another thread: the fast path
        if running is not None and running.ready.is_set() and not running.ended.is_set() and running.listing:
            return running.listing
        instance = self._call(self._ready, server, tenant)
        assert instance.listing is not None
        return instance.listing

    def listings(self, tenant: str) -> dict[str, Listing | GatewayError]:
        """Every server's listing for ``tenant`` (as :meth:`listing`, the servers started
        at once), or the error that server gave."""
        async def all_of() -> list[Any]:
            return await asyncio.gather(*(self._ready(name, tenant) for name in self.servers), return_exceptions=True)

        found: dict[str, Listing | GatewayError] = {}
        for name, got in zip(self.servers, self._call(all_of), strict=True):
            if isinstance(got, GatewayError):
                found[name] = got
            elif isinstance(got, BaseException):
                raise got
            else:
                assert got.listing is not None
                found[name] = got.listing
        return found

    def call_tool(self, server: str, tenant: str, tool: str, arguments: dict[str, Any],
                  cancel: threading.Event | None = None) -> types.CallToolResult:
        """Call ``tool`` of ``tenant``'s instance of ``server`` with ``arguments``, within the
        server's ``call_timeout_s``. A result the server marks ``isError`` is returned as it is.
        Setting ``cancel`` (the caller went away) cancels the call: the SDK's session tells
        the server (``notifications/cancelled``) and this raises.

        Raises:
            DependencyUnavailable (5003): the server cannot be started, failed during the
                call, or did not answer in time (``details.timeout_s``), or the call was
                cancelled (``details.cancelled``).
            RateLimited (4290): as :meth:`listing`.
        """
        future = self._running_portal().start_task_soon(self._call_tool, server, tenant, tool, arguments)
        while True:
            try:
                return future.result(timeout=_CANCEL_POLL_S)
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()
            except concurrent.futures.CancelledError:
                raise DependencyUnavailable(f"the call of {server}__{tool} was cancelled",
                                            details={"server": server, "cancelled": True}) from None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._running_portal().call(fn, *args)

    def _running_portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            raise DependencyUnavailable("upstream MCP servers are not running (the gateway is stopping)")
        return portal

    # -- on the hub's loop ------------------------------------------------------------

    async def _ready(self, server: str, tenant: str) -> _Instance:
        """``tenant``'s running instance of ``server``, started when there is none, once it
        has listed its tools. Starts are serialised (``_start_lock``): two callers of one
        (server, tenant) get the one instance, and ``max_instances`` holds."""
        settings = self.servers[server]
        key = (server, tenant)
        async with self._start_lock:
            instance = self._instances.get(key)
            if instance is None or instance.ended.is_set() or instance.cancel.is_set():
                backoff = self._backoff.get(key)
                now = time.monotonic()
                if backoff is not None and now < backoff.until:
                    wait_s = math.ceil(backoff.until - now)
                    raise DependencyUnavailable(
                        f"upstream MCP server {server!r} failed to start or stopped; next start in {wait_s} s",
                        details={"server": server, "retry_after_s": wait_s})
                if instance is not None:  # stopping: its successor starts once it is gone
                    await instance.ended.wait()
                await self._make_room()
                instance = _Instance(server, tenant, settings)
                self._instances[key] = instance
                # Its own context: the instance outlives the call that started it (and its log fields).
                instance.task = asyncio.create_task(self._run(instance), context=contextvars.Context())
        instance.last_used = time.monotonic()
        try:
            await asyncio.wait_for(_first(instance.ready.wait(), instance.ended.wait()), settings.startup_timeout_s)
        except TimeoutError:
            self._stop(instance, f"no tool list within startup_timeout_s ({settings.startup_timeout_s:g} s)")
            await instance.ended.wait()
        if not instance.ready.is_set() or instance.ended.is_set():
            # The reason (stderr, paths) is the operator's: logged, not told to the caller.
            raise DependencyUnavailable(f"upstream MCP server {server!r} did not start (the gateway's log says why)",
                                        details={"server": server})
        return instance

    async def _call_tool(self, server: str, tenant: str, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        instance = await self._ready(server, tenant)
        timeout_s = instance.settings.call_timeout_s
        session = instance.session
        assert session is not None
        instance.in_flight += 1
        # The session's call runs as a task of its own, so the server's end can be noticed
        # while it waits; whatever ends this coroutine (a timeout, the caller's cancel) ends
        # that task too, and the SDK tells the server (notifications/cancelled).
        call = asyncio.ensure_future(session.call_tool(tool, arguments))
        try:
            try:
                with anyio.fail_after(timeout_s):
                    await _first(call, instance.ended.wait())
            finally:
                answered = call.done()
                if not answered:
                    call.cancel()
                    call.add_done_callback(_retrieve)
            if not answered:  # the server ended first (why is logged, not told the caller)
                raise DependencyUnavailable(f"upstream MCP server {server!r} stopped during the call",
                                            details={"server": server})
            result: types.CallToolResult = call.result()
        except TimeoutError:
            raise DependencyUnavailable(f"upstream MCP server {server!r} did not answer within {timeout_s:g} s",
                                        details={"server": server, "timeout_s": timeout_s}) from None
        except DependencyUnavailable:
            raise
        except MCPError as exc:  # a JSON-RPC error: the server's own words, cut (the caller sees them)
            text = redact_text(exc.error.message[:_ERROR_CHARS]) if instance.settings.redact_results \
                else exc.error.message[:_ERROR_CHARS]
            raise DependencyUnavailable(f"upstream MCP server {server!r} answered error {exc.error.code}: {text}",
                                        details={"server": server, "upstream_code": exc.error.code}) from None
        except Exception as exc:  # a closed stream, output that does not fit the result's schema
            log.warning("upstream MCP server %s (tenant %s) failed a call: %s", server, tenant, _reason(exc))
            raise DependencyUnavailable(f"upstream MCP server {server!r} failed the call",
                                        details={"server": server}) from None
        finally:
            instance.in_flight -= 1
            instance.last_used = time.monotonic()
        if not instance.served:
            instance.served = True
            self._backoff.pop((server, tenant), None)
        return result

    async def _make_room(self) -> None:
        """With ``_start_lock`` held: wait until fewer than ``max_instances`` run, stopping
        the least recently used idle instance for each one too many (RateLimited, 4290, when
        none is idle)."""
        while True:
            live = [i for i in self._instances.values() if not i.ended.is_set()]
            if len(live) < self._max_instances:
                return
            stopping = [i for i in live if i.cancel.is_set()]
            if not stopping:
                idle = [i for i in live if i.in_flight == 0]
                if not idle:
                    raise RateLimited(f"all {self._max_instances} upstream MCP server sandboxes are busy",
                                      retry_after_s=1, details={"limit": "upstream_instances"})
                oldest = min(idle, key=lambda i: i.last_used)
                oldest.clean_stop = True
                self._stop(oldest, "stopped to make room for another server")
                stopping = [oldest]
            await stopping[0].ended.wait()

    async def _run(self, instance: _Instance) -> None:
        """One instance from start to end (see the module docstring)."""
        server, tenant = instance.server, instance.tenant
        loop = asyncio.get_running_loop()
        received, messages = anyio.create_memory_object_stream[SessionMessage | Exception](_MAX_PENDING)
        outgoing, to_write = anyio.create_memory_object_stream[SessionMessage](0)
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(stdin_w, False)
        lines = _Lines(lambda line: loop.call_soon_threadsafe(self._deliver, instance, received, line),
                       lambda: loop.call_soon_threadsafe(self._stop, instance, "a message over 16 MiB"))

        def on_output(stream: int, data: bytes, truncated: bool) -> None:
            if stream == 1:
                lines.add(data)
            else:
                instance.stderr += data
                del instance.stderr[:-_STDERR_KEPT]

        def ended(outcome: str) -> None:
            instance.error = instance.error or outcome
            instance.ended.set()
            received.close()

        thread = threading.Thread(target=self._sandbox_thread, name=f"upstream-{server}",
                                  args=(instance, stdin_r, on_output,
                                        lambda outcome: loop.call_soon_threadsafe(ended, outcome)), daemon=True)
        UPSTREAM_RUNNING.labels(server).inc()
        thread.start()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_write, to_write, stdin_w)
                try:
                    await self._converse(instance, messages, outgoing)
                except Exception as exc:
                    self._stop(instance, _reason(exc))
                group.cancel_scope.cancel()
        finally:
            self._stop(instance, instance.error or "stopped")
            await instance.ended.wait()
            await asyncio.to_thread(thread.join)
            os.close(stdin_w)
            UPSTREAM_RUNNING.labels(server).dec()
            outcome = "ready" if instance.ready.is_set() else "failed"
            UPSTREAM_STARTS.labels(server, outcome).inc()
            if not instance.clean_stop:
                self._note_failure(instance)
            log.info("upstream MCP server %s (tenant %s) stopped: %s", server, tenant, instance.error)

    async def _converse(self, instance: _Instance, messages: Any, outgoing: Any) -> None:
        """The client session of one instance: handshake, listing, then serve until it ends."""
        refresh = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                refresh.set()

        async with ClientSession(messages, outgoing, message_handler=on_message,
                                 client_info=types.Implementation(name="mcp-gateway", version=__version__)) as session:
            await session.initialize()
            instance.session = session
            while not instance.ended.is_set():  # list, then again after each list_changed
                refresh.clear()
                instance.listing = await _list_tools(session, instance.server)
                instance.ready.set()
                self._on_listing(instance.server, instance.tenant, instance.listing)
                await _first(refresh.wait(), instance.ended.wait())

    def _deliver(self, instance: _Instance, received: Any, line: bytes) -> None:
        """One line of the server's stdout into the session (on the loop)."""
        if instance.ended.is_set() or not line.strip():
            return
        try:
            message: SessionMessage | Exception = SessionMessage(jsonrpc_message_adapter.validate_json(line))
        except ValidationError as exc:
            message = exc  # the session reports it; a server that writes logs to stdout is broken
        try:
            received.send_nowait(message)
        except anyio.WouldBlock:
            self._stop(instance, f"more than {_MAX_PENDING} messages unread")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _sandbox_thread(self, instance: _Instance, stdin_r: int, on_output: sandbox.OutputListener,
                        ended: Callable[[str], None]) -> None:
        """Run the server's sandbox until it ends (blocking; its own thread)."""
        server, tenant, settings = instance.server, instance.tenant, instance.settings
        outcome = "the server exited"
        try:
            lease = self._workspaces.acquire(tenant, settings.workspace or f"mcp-{server}")
        except (OSError, ValueError, sandbox.SandboxError) as exc:
            os.close(stdin_r)
            ended(f"workspace: {exc}")
            return
        try:
            plan = _plan(settings)
            egress = None
            if settings.network == "restricted":
                egress = EgressTask(f"mcp-{server}-{tenant}", AllowList.parse(tuple(settings.allowed_hosts)),
                                    lambda denial: self._on_egress_denied(server, tenant, denial))
            result = self._tasks.run_server(plan, lease, stdin=stdin_r, on_output=on_output, cancel=instance.cancel,
                                            egress=egress)
            if result.setup_error:
                outcome = f"sandbox setup failed: {result.setup_error}"
            elif result.limit_reason == "wall_timeout":
                outcome = f"max_lifetime_s ({settings.max_lifetime_s:g} s) reached"
            elif result.limit_reason and result.limit_reason != "cancelled":
                outcome = f"limit {result.limit_reason} hit"
            else:
                outcome = f"the server exited with status {result.exit_code}"
        except (OSError, ValueError, sandbox.SandboxError) as exc:
            outcome = f"sandbox: {exc}"
        except Exception as exc:  # never leave the instance waiting: record and report it
            log.exception("upstream MCP server %s (tenant %s) could not run", server, tenant)
            outcome = f"internal error: {type(exc).__name__}"
        finally:
            os.close(stdin_r)
            self._workspaces.release(lease)
        stderr = instance.stderr.decode(errors="replace").strip()
        ended(f"{outcome}; stderr: {stderr[-512:]}" if stderr else outcome)

    def _stop(self, instance: _Instance, reason: str) -> None:
        """Ask ``instance``'s sandbox to end (it is killed within ~50 ms); on the loop."""
        if not instance.cancel.is_set():
            instance.error = instance.error or reason
            instance.cancel.set()

    def _note_failure(self, instance: _Instance) -> None:
        key = (instance.server, instance.tenant)
        backoff = self._backoff.setdefault(key, _Backoff())
        backoff.until = time.monotonic() + backoff.delay_s
        backoff.delay_s = min(_BACKOFF_MAX_S, backoff.delay_s * 2)
        log.warning("upstream MCP server %s (tenant %s) failed: %s", instance.server, instance.tenant, instance.error)

    async def _reap(self) -> None:
        """Stop instances idle for longer than their ``idle_timeout_s``, forget ended ones."""
        while True:
            await asyncio.sleep(_REAP_EVERY_S)
            now = time.monotonic()
            for key, instance in list(self._instances.items()):
                if instance.ended.is_set() and instance.task is not None and instance.task.done():
                    del self._instances[key]
                elif instance.in_flight == 0 and now - instance.last_used > instance.settings.idle_timeout_s:
                    instance.clean_stop = True
                    self._stop(instance, f"idle for {instance.settings.idle_timeout_s:g} s")

    async def _stop_all(self) -> None:
        for instance in list(self._instances.values()):
            instance.clean_stop = True
            self._stop(instance, "the gateway is stopping")
        tasks = [i.task for i in self._instances.values() if i.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_WAIT_S)


def _plan(settings: UpstreamServerSettings) -> ExecutionPlan:
    """The sandbox of one server: its argv, environment (secrets read now), limits, network."""
    env = dict(settings.env)
    for key, path in settings.env_files.items():
        env[key] = path.read_text().rstrip("\r\n")  # OSError refuses the start
    return ExecutionPlan(
        argv=(settings.command, *settings.args), env=env, cwd="/workspace", network=settings.network,
        timeout_s=max(1, int(settings.max_lifetime_s)), memory_bytes=settings.memory_bytes, pids=settings.pids,
        cpu_seconds=settings.cpu_seconds, cpu_cores=settings.cpu_cores, ro_paths=tuple(settings.ro_paths),
        allowed_hosts=tuple(settings.allowed_hosts),
    )


def _reason(exc: BaseException) -> str:
    """``exc`` as one line for the log, an exception group by its first member."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _list_tools(session: ClientSession, server: str) -> Listing:
    """Every page of ``tools/list``; ValueError when a name repeats or cannot be served."""
    tools: dict[str, types.Tool] = {}
    digests: dict[str, str] = {}
    cursor: str | None = None
    for _ in range(_MAX_TOOLS + 1):  # every page but the last lists a tool at least, or the loop ends
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        for tool in page.tools:
            if tool.name in tools:
                raise ValueError(f"the server lists tool {tool.name[:64]!r} twice")
            if len(tools) == _MAX_TOOLS:
                raise ValueError(f"the server lists more than {_MAX_TOOLS} tools")
            definition = tool.model_dump(by_alias=True, mode="json")
            if len(json.dumps(definition)) > _MAX_TOOL_BYTES:
                raise ValueError(f"tool {tool.name[:64]!r}'s definition is over {_MAX_TOOL_BYTES} bytes")
            if not TOOL_NAME_PATTERN.match(exposed_name(server, tool.name)):
                raise ValueError(f"tool {tool.name[:64]!r} cannot be served as {server}__<tool> "
                                 "(1-128 of A-Z a-z 0-9 _ - .)")
            tools[tool.name] = tool
            digests[tool.name] = tool_sha256(definition)
        cursor = page.next_cursor
        if not cursor:
            return Listing(tools, digests)
    raise ValueError(f"the server's tool list has more than {_MAX_TOOLS + 1} pages")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a cancelled call's outcome as seen (it may have failed as it was cancelled)."""
    if not task.cancelled():
        task.exception()


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until one of ``waits`` is done. The waits started here (coroutines such as an
    event's ``wait()``) are cancelled then; a task passed in is left as it is."""
    started = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(started, waits, strict=True):
            if future is not wait:
                future.cancel()


async def _write(to_write: Any, fd: int) -> None:
    """The session's messages to the server's stdin, one JSON line each (non-blocking fd)."""
    loop = asyncio.get_running_loop()
    async with to_write:
        async for message in to_write:
            data = memoryview((message.message.model_dump_json(by_alias=True, exclude_none=True) + "\n").encode())
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    writable = loop.create_future()
                    loop.add_writer(fd, writable.set_result, None)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(fd)
                except OSError as exc:
                    if exc.errno == errno.EPIPE:
                        return  # the server is gone; its end is reported by the sandbox thread
                    raise


class _Lines:
    """Splits a byte stream into lines (the stdio transport's framing: one JSON-RPC message
    per ``\\n``-terminated line); on the sandbox thread."""

    def __init__(self, on_line: Callable[[bytes], Any], on_overflow: Callable[[], Any]) -> None:
        self._buffer = bytearray()
        self._on_line = on_line
        self._on_overflow = on_overflow
        self._overflowed = False

    def add(self, data: bytes) -> None:
        if self._overflowed:
            return
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            self._on_line(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
        if len(self._buffer) > _MAX_LINE_BYTES:
            self._overflowed = True
            self._buffer.clear()
            self._on_overflow()

