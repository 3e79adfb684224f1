"""``AsyncClient`` and ``Client``: one gateway's API over REST or gRPC, with typed results.

The URL picks the transport: ``http://`` and ``https://`` speak REST (``gateway.client._rest``),
``grpc://`` and ``grpcs://`` (TLS) speak gRPC (``gateway.client._grpc``); both give the same
:mod:`gateway.client._models` results and raise the same errors.

Errors: the gateway's refusals are ``gateway.errors`` classes chosen by their wire code
(``CommandDenied`` 3001, ``RateLimited`` 4290, ``NotFound`` 6001, ...); a call refused with
4290 is sent again after its ``Retry-After`` (at most ``max_retries`` times, each wait at
most ``max_retry_wait_s``), which is safe: a refused call did nothing. Anything else that
fails on the way is :class:`TransportError`.

``Client`` is the same API, blocking: it runs an ``AsyncClient`` on an asyncio loop of its
own daemon thread, so it can be used from any thread and inside no loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from gateway.client._errors import TransportError
from gateway.client._grpc import GrpcTransport
from gateway.client._models import OutputChunk, Task, TaskPage
from gateway.client._rest import RestTransport
from gateway.config import is_loopback_host
from gateway.errors import InvalidParameter, RateLimited

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
_NETWORKS = {"none": "NETWORK_NONE", "loopback": "NETWORK_LOOPBACK", "host": "NETWORK_HOST",
             "restricted": "NETWORK_RESTRICTED"}
_TOKEN = re.compile(r"^[\x21-\x7e]{1,8192}$")  # what an Authorization header value may carry
_RECONNECT_FIRST_S = 0.2
_RECONNECT_MAX_S = 5.0


class AsyncClient:
    """The gateway's API for asyncio code.

    Args:
        url: ``http(s)://host:port`` (REST) or ``grpc(s)://host:port`` (gRPC).
        token: an API key (``mgw_...``) or a JWT; None for a ``--dev`` gateway on loopback.
        ca_file: PEM CA bundle that verifies the gateway's certificate (default: the system's).
        client_cert, client_key: PEM client certificate and key for mTLS.
        timeout_s: connect and answer timeout of each call, seconds (a wait adds its own).
        max_retries: how often a call refused with 4290 is sent again after its Retry-After.
        max_retry_wait_s: the longest Retry-After honoured, seconds; a longer one is raised.
        max_reconnects: how often :meth:`output` reconnects without receiving an entry
            between two breaks before it raises.
        insecure: send ``token`` over plain ``http://`` / ``grpc://`` to a host other than
            this one (refused otherwise: anyone on the path could take it).

    Raises:
        ValueError: an URL of another scheme or with a bad port, a client key without its
            certificate, TLS files for a plaintext URL, a token that no header may carry
            (a trailing newline?), or a token for a plaintext URL to another host.
        OSError: a certificate or key file that cannot be read.
    """

    def __init__(self, url: str, token: str | None = None, *, ca_file: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 timeout_s: float = 30.0, max_retries: int = 3, max_retry_wait_s: float = 60.0,
                 max_reconnects: int = 10, insecure: bool = False) -> None:
        if client_key is not None and client_cert is None:
            raise ValueError("a client key needs its certificate (client_cert)")
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{url!r}: the URL names no host")
        plaintext = parts.scheme in ("http", "grpc")
        if plaintext and (ca_file is not None or client_cert is not None):
            raise ValueError(f"{url!r} is plaintext: TLS files need https:// or grpcs://")
        if token is not None:
            if not _TOKEN.match(token):
                raise ValueError("the token holds characters no header may carry (spaces, a line break?)")
            if plaintext and not insecure and not is_loopback_host(parts.hostname):
                raise ValueError(f"refusing to send the token in clear to {parts.hostname}: use https:// or "
                                 "grpcs:// (or insecure=True)")
        self.url = url
        self._retries = max_retries
        self._max_retry_wait_s = max_retry_wait_s
        self._max_reconnects = max_reconnects
        if parts.scheme in ("http", "https"):
            verify: ssl.SSLContext | bool = True
            if ca_file is not None or client_cert is not None:
                verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
                if client_cert is not None:
                    verify.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
            self._transport: RestTransport | GrpcTransport = RestTransport(
                f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}", token, verify, timeout_s)
        elif parts.scheme in ("grpc", "grpcs"):
            tls = None
            if parts.scheme == "grpcs":
                tls = (_read(ca_file), _read(client_key), _read(client_cert))
            self._transport = GrpcTransport(parts.netloc, token, tls, timeout_s)
        else:
            raise ValueError(f"{url!r}: the URL must start with http://, https://, grpc:// or grpcs://")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._transport.close()

    # -- tasks ------------------------------------------------------------------------

    async def execute(self, command: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                      cwd: str | None = None, timeout_s: int = 0, workspace: str | None = None,
                      network: str | None = None, allowed_hosts: Sequence[str] = (), wait_s: float = 0.0) -> Task:
        """Run ``command args`` in the gateway's sandbox as a task.

        Args:
            env: environment variables on top of the sandbox's base.
            cwd: working directory, relative to /workspace.
            timeout_s: wall-clock limit, seconds; 0 = the server's default.
            workspace: the workspace (in your tenant) it runs in; default its own.
            network: ``none``, ``loopback``, ``host`` or ``restricted`` (only narrows what
                policy grants; ``loopback`` is REST only).
            allowed_hosts: ``restricted``: the hosts it needs.
            wait_s: wait up to this long for the end, seconds (at most the server's
                ``tasks.max_wait_s``); 0 = answer once queued.

        Returns:
            the task: queued (``QUEUED``/``RUNNING``), or final with its result when it
            ended within ``wait_s``.

        Raises:
            CommandDenied, NetworkDenied, FileDenied, ResourceDenied (3001-3004): policy said no.
            InvalidParameter, MissingParameter, InvalidFormat (2001-2003): a bad request.
            RateLimited (4290): still refused after the retries; Unauthenticated (1001), ...
        """
        body: dict[str, Any] = {"command": command, "args": list(args), "env": dict(env or {}),
                                "timeout": timeout_s, "metadata": {"workspace": workspace} if workspace else {}}
        if cwd is not None:
            body["cwd"] = cwd
        if network is not None or allowed_hosts:
            if (network or "none") not in _NETWORKS:
                raise InvalidParameter(f"network {network!r} is none of {', '.join(_NETWORKS)}",
                                       details={"field": "network"})
            body["sandbox_config"] = {"network_access": _NETWORKS[network or "none"],
                                      "allowed_hosts": list(allowed_hosts)}
        return await self._retrying(lambda: self._transport.execute(body, wait_s))

    async def get_task(self, task_id: str) -> Task:
        """The task's state and, once final, its result. NotFound (6001) for a task that is
        not yours (or your tenant's, as a tenant admin) as for one that does not exist."""
        return await self._retrying(lambda: self._transport.get_task(task_id))

    async def cancel_task(self, task_id: str) -> Task:
        """Cancel the task (its sandbox is killed) and return it once final; a final task is
        returned as it is. NotFound (6001) as :meth:`get_task`."""
        return await self._retrying(lambda: self._transport.cancel_task(task_id))

    async def list_tasks(self, *, status: str | None = None, since: str | None = None, limit: int = 20,
                         page_token: str | None = None) -> TaskPage:
        """One page of your tasks (a tenant admin: the tenant's), newest first.

        Args:
            status: only tasks in this state (``QUEUED``, ``COMPLETED``, ...).
            since: only tasks created at or after this RFC 3339 time.
            limit: tasks per page, 1-100.
            page_token: the previous page's ``next_page_token``.
        """
        return await self._retrying(lambda: self._transport.list_tasks(status, since, limit, page_token))

    async def iter_tasks(self, *, status: str | None = None, since: str | None = None,
                         page_size: int = 100) -> AsyncIterator[Task]:
        """Every task :meth:`list_tasks` would show, page after page."""
        token: str | None = None
        while True:
            page = await self.list_tasks(status=status, since=since, limit=page_size, page_token=token)
            for task in page.tasks:
                yield task
            if page.next_page_token is None:
                return
            token = page.next_page_token

    async def output(self, task_id: str, offset: int = 0) -> AsyncIterator[OutputChunk]:
        """The task's output log from entry ``offset``, as it is written, up to and including
        its ``exit`` entry. A broken stream is opened again after the last entry received
        (no gap, no repeat), after 0.2 s doubling to 5 s; :class:`TransportError` after
        ``max_reconnects`` breaks in a row without an entry; a stream refused with 4290 is
        opened again after its Retry-After. NotFound (6001) as :meth:`get_task`."""
        next_offset = offset
        failures = 0
        delay_s = _RECONNECT_FIRST_S
        while True:
            try:
                async for chunk in self._transport.output(task_id, next_offset):
                    if chunk.offset < next_offset:
                        continue  # already yielded before a reconnect
                    next_offset = chunk.offset + 1
                    failures, delay_s = 0, _RECONNECT_FIRST_S
                    yield chunk
                    if chunk.kind == "exit":
                        return
                raise TransportError(f"the output stream of {task_id} ended before its exit entry")
            except (TransportError, RateLimited) as exc:
                failures += 1
                wait_s = exc.retry_after_s if isinstance(exc, RateLimited) else delay_s
                if failures > self._max_reconnects or wait_s > self._max_retry_wait_s:
                    raise
                await asyncio.sleep(wait_s)
                delay_s = min(_RECONNECT_MAX_S, delay_s * 2)

    async def wait(self, task_id: str) -> Task:
        """Follow the task's output to its end and return the final task with its result."""
        async for _ in self.output(task_id):
            pass
        return await self.final_task(task_id)

    async def final_task(self, task_id: str, timeout_s: float = 30.0) -> Task:
        """The task once its state is final, read again until it is (the exit entry of its
        output can be seen a moment before its final state is stored), for at most
        ``timeout_s`` seconds; then as it is."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        delay_s = 0.02
        while True:
            task = await self.get_task(task_id)
            if task.final or asyncio.get_running_loop().time() >= deadline:
                return task
            await asyncio.sleep(delay_s)
            delay_s = min(1.0, delay_s * 2)

    # -- files ------------------------------------------------------------------------

    async def read_file(self, path: str, *, workspace: str) -> bytes:
        """A file of ``workspace`` (in your tenant): its bytes. ``path`` is relative to the
        workspace (or absolute under /workspace). NotFound (6001), FileDenied (3003)."""
        return await self._retrying(lambda: self._transport.read_file(workspace, path))

    async def write_file(self, path: str, data: bytes, *, workspace: str, mode: int | None = None,
                         create_dirs: bool = False) -> int:
        """Write ``data`` to a file of ``workspace`` (created when new), replacing it
        atomically; ``mode`` its permission bits (default 0o644). Returns bytes written."""
        return await self._retrying(lambda: self._transport.write_file(workspace, path, data, mode, create_dirs))

    async def delete_file(self, path: str, *, workspace: str, recursive: bool = False) -> None:
        """Delete a file of ``workspace``, or with ``recursive`` a directory tree."""
        await self._retrying(lambda: self._transport.delete_file(workspace, path, recursive))

    async def _retrying(self, send: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``send()``, sent again after each 4290's Retry-After (see the module docstring)."""
        for attempt in range(self._retries + 1):
            try:
                return await send()
            except RateLimited as exc:
                if attempt == self._retries or exc.retry_after_s > self._max_retry_wait_s:
                    raise
                await asyncio.sleep(exc.retry_after_s)
        raise AssertionError("unreachable")


class Client:
    """The gateway's API, blocking (see :class:`AsyncClient` for every method's contract).

    It runs an :class:`AsyncClient` on an asyncio loop of its own, on a daemon thread: a
    client left open never keeps the interpreter from exiting. Use it as a context manager,
    or call :meth:`close` (idempotent) to close its connections. Thread-safe: calls from
    several threads share the connections.
    """

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-gateway-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            # Made on the client's loop: a gRPC channel belongs to the loop that creates it.
            self._client: AsyncClient = self._run(_make(url, token, options))
        except BaseException:
            self._stop_loop()
            raise
        self.url = url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and end the client's thread; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def execute(self, command: str, args: Sequence[str] = (), **options: Any) -> Task:
        return self._call(self._client.execute, command, args, **options)

    def get_task(self, task_id: str) -> Task:
        return self._call(self._client.get_task, task_id)

    def cancel_task(self, task_id: str) -> Task:
        return self._call(self._client.cancel_task, task_id)

    def list_tasks(self, **filters: Any) -> TaskPage:
        return self._call(self._client.list_tasks, **filters)

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        return self._iterate(self._client.iter_tasks(**filters))

    def output(self, task_id: str, offset: int = 0) -> Iterator[OutputChunk]:
        return self._iterate(self._client.output(task_id, offset))

    def wait(self, task_id: str) -> Task:
        return self._call(self._client.wait, task_id)

    def final_task(self, task_id: str, timeout_s: float = 30.0) -> Task:
        return self._call(self._client.final_task, task_id, timeout_s)

    def read_file(self, path: str, *, workspace: str) -> bytes:
        return self._call(self._client.read_file, path, workspace=workspace)

    def write_file(self, path: str, data: bytes, **options: Any) -> int:
        return self._call(self._client.write_file, path, data, **options)

    def delete_file(self, path: str, **options: Any) -> None:
        self._call(self._client.delete_file, path, **options)

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RuntimeError("the client is closed")
        return self._run(fn(*args, **kwargs))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine`` on the client's loop; interrupted (Ctrl-C), it is cancelled there."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """``agen``'s items, each fetched on the client's loop. Left early (a break, Ctrl-C
        while waiting), the pending fetch is cancelled and the generator closed."""
        try:
            while True:
                try:
                    item = self._run(agen.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
                yield item
        finally:
            with contextlib.suppress(Exception):  # already closed by a cancelled fetch
                self._run(agen.aclose())  # type: ignore[attr-defined]


async def _make(url: str, token: str | None, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(url, token, **options)


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


for _name in ("execute", "get_task", "cancel_task", "list_tasks", "iter_tasks", "output", "wait", "final_task",
              "read_file", "write_file", "delete_file"):
    getattr(Client, _name).__doc__ = getattr(AsyncClient, _name).__doc__  # one contract, written once
