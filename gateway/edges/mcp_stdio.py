"""``mcp-gateway mcp-stdio``: MCP over stdin/stdout, for agents that launch their MCP
servers as subprocesses, as a client of a running gateway's ``/mcp``.

Why a client of a running gateway and not the service embedded in the subprocess: the
agent host launches this process with the agent's own privileges, once per agent. An
embedded gateway would need the sandbox's prerequisites (bwrap, user namespaces, cgroups)
there, would keep its own task store, audit trail, quotas and policy copy per launch (two
launches on one state directory would fight over it), and its policy and audit files would
be writable by the very user whose agent it confines. As a client it holds no privilege at
all: the one gateway decides, sandboxes, limits and audits every call, whichever edge it
came through, and the subprocess only needs a URL and a credential.

The bridge is an MCP server on stdio (the SDK's low-level server: the agent may speak
either protocol revision) whose ``tools/list`` and ``tools/call`` are forwarded to the
gateway through the SDK's streamable HTTP client, progress notifications back and
cancellation forth. It connects on the agent's first request, presenting the agent's own
``clientInfo``, so the gateway's audit events name the agent, not the bridge; a connection
that fails or drops (a gateway restart) is made again on the next request. Refusals
arrive as the gateway's tool errors (``isError`` with the project's error code); a
gateway that cannot be reached or refuses the credential answers every request with a
JSON-RPC internal error saying why. Nothing but protocol goes to stdout: the SDK's
``stdio_server`` points fd 1 at stderr while it serves, and logs go to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from gateway import __version__

__all__ = ["BridgeSettings", "StdioBridge"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 30.0
# A command may run for up to tasks.max_wait_s (at most an hour) without output.
_READ_TIMEOUT_S = 3700.0
_RECONNECT_S = 1.0  # connection attempts at most this often, seconds


@dataclass(frozen=True)
class BridgeSettings:
    """Where the bridge forwards to.

    Attributes:
        url: the gateway's MCP endpoint, e.g. ``https://gw.example.com/mcp``.
        token: an API key (``mgw_...``) or a JWT, sent as ``Authorization: Bearer``; None
            for a gateway in dev mode or one that authenticates the client certificate.
        ca_file: PEM CA bundle that verifies the gateway's certificate (default: the
            system's).
        client_cert / client_key: PEM client certificate and key for mTLS.
    """

    url: str
    token: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


class StdioBridge:
    """The stdio MCP server forwarding to a gateway (see the module docstring).

    Args:
        settings: the gateway to forward to.
    """

    def __init__(self, settings: BridgeSettings) -> None:
        self._settings = settings
        self._wanted = anyio.Event()  # a request waits for a connection
        self._ready = anyio.Event()  # the connection attempt it waits for succeeded or failed
        self._client: Client | None = None
        self._failure: str | None = None
        self._refusal: str | None = None  # the last HTTP refusal the gateway answered
        self._client_info: types.Implementation | None = None
        self.server: Server[Any] = Server(
            "mcp-gateway", version=__version__, title="MCP Security Gateway (stdio)",
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
        )

    async def run(self) -> None:
        """Serve the agent on stdin/stdout until stdin closes."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._hold_upstream)
            async with stdio_server() as (read_stream, write_stream):
                await self.server.run(read_stream, write_stream, self.server.create_initialization_options())
            tg.cancel_scope.cancel()

    def _http_client(self) -> httpx2.AsyncClient:
        s = self._settings
        headers = {"Authorization": f"Bearer {s.token}"} if s.token else {}
        verify: ssl.SSLContext | bool = True
        if s.ca_file or s.client_cert:
            verify = ssl.create_default_context(cafile=s.ca_file)
            if s.client_cert:
                verify.load_cert_chain(s.client_cert, s.client_key)

        async def note_refusal(response: httpx2.Response) -> None:
            # The SDK's transport turns an HTTP refusal into "Server returned an error
            # response"; the agent should learn what the gateway said (401: the credential,
            # 403: a scope, 429: a rate limit), from its error body and challenge.
            if response.status_code >= 400:
                await response.aread()
                try:
                    error = response.json()["error"]
                    said = f": error {int(error['code'])}: {str(error['message'])[:200]}"
                except (ValueError, KeyError, TypeError):
                    said = ""
                challenge = response.headers.get("www-authenticate")
                self._refusal = f"HTTP {response.status_code}{said}" + (f" ({challenge})" if challenge else "")

        return httpx2.AsyncClient(headers=headers, verify=verify, event_hooks={"response": [note_refusal]},
                                  timeout=httpx2.Timeout(_CONNECT_TIMEOUT_S, read=_READ_TIMEOUT_S))

    async def _hold_upstream(self) -> None:
        """Hold the connection to the gateway in this task (the client's own tasks live in
        it) for as long as the bridge runs: made when a request wants one, and made again
        when the last attempt failed or the connection dropped (a gateway restart), at most
        once per ``_RECONNECT_S``."""
        while True:
            await self._wanted.wait()
            started = anyio.current_time()
            try:
                async with self._http_client() as http, Client(
                    streamable_http_client(self._settings.url, http_client=http), client_info=self._client_info,
                    cache=None,  # tools/list is asked each time: upstream tools come and go
                ) as client:
                    self._client, self._failure = client, None
                    self._ready.set()
                    await anyio.sleep_forever()
            except Exception as exc:  # the waiting handlers report it to the agent
                self._failure = self._refusal or _describe(exc)
                log.warning("cannot use the gateway at %s: %s", self._settings.url, self._failure)
            finally:
                self._client = None
                self._wanted = anyio.Event()
                self._ready.set()
            await anyio.sleep(max(0.0, _RECONNECT_S - (anyio.current_time() - started)))

    async def _upstream(self, ctx: Any) -> Client:
        """The connected client; a request that finds none asks for one and waits for it."""
        if self._client is None:
            if self._client_info is None:  # the agent's, passed on so the gateway's audit names it
                params = ctx.session.client_params
                self._client_info = params.client_info if params is not None else None
            if self._ready.is_set():  # the last attempt ended: a new one
                self._ready = anyio.Event()
            self._wanted.set()
            await self._ready.wait()
        if self._client is None:
            raise MCPError(code=types.INTERNAL_ERROR,
                           message=f"cannot use the gateway at {self._settings.url}: {self._failure}")
        return self._client

    async def _list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        client = await self._upstream(ctx)
        return await client.list_tools(cursor=params.cursor if params is not None else None)

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        client = await self._upstream(ctx)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(value, total, message)

        # A cancellation of this handler (the agent's notifications/cancelled) cancels the
        # forwarded request, which the client announces to the gateway in turn.
        self._refusal = None
        try:
            return await client.call_tool(params.name, params.arguments, progress_callback=progress)
        except MCPError as exc:
            refusal = self._refusal  # what the gateway answered (concurrent calls: the latest refusal)
            if exc.code != types.INTERNAL_ERROR or refusal is None:
                raise
            raise MCPError(code=types.INTERNAL_ERROR, message=f"the gateway refused the call: {refusal}") from None


def _describe(exc: BaseException) -> str:
    """One line for an exception, looking inside the task groups the SDK raises from."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def run_bridge(settings: BridgeSettings) -> int:
    """Run :class:`StdioBridge` until stdin closes; returns the exit status (0)."""
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(StdioBridge(settings).run)
    return 0
