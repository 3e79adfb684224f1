"""The egress proxy: the only way out of a ``restricted`` task's network namespace.

One ``EgressProxy`` per gateway process runs an asyncio loop on a thread of its own. For
each restricted run, ``sandbox.run`` makes a socket listening on 127.0.0.1:3128 inside the
run's namespace and hands it to ``proxy.attach(task)`` (an ``EgressAttach``); the session
accepts the sandbox's connections outside the namespace and, per connection, reads one
request head (at most 16 KiB, within 10 s):

- ``CONNECT host:port``: allowed when the task's allow-list matches and the operator's
  address rules pass (``allowlist``); the proxy resolves the name itself (the sandbox
  has no DNS), connects, answers 200, then reads the TLS ClientHello: its SNI must equal
  the CONNECT host (``sni``), else the tunnel is closed before a byte reaches the
  destination (no domain fronting, no non-TLS tunnels, no bare-IP CONNECTs);
- ``GET http://host[:port]/path`` (any method, absolute form): the same checks, then the
  request goes out in origin form with ``Host`` set to the target and
  ``Connection: close`` (one request per connection, so the destination of every byte is
  the one checked);
- anything else is answered 400.

A refusal answers ``403`` with a one-line reason (also written to the task's stderr,
``mcp-gateway egress: ...``), counts ``mcp_egress_denied_total{reason}`` and reports
``Denial(host, port, reason, detail)`` to the task's ``on_denied`` (the gateway audits it as
``egress_denied``). Reasons: ``not_allowed``, ``ip_literal``, ``forbidden_address``,
``gateway_port``, ``sni_mismatch``, ``not_tls``, ``bad_request``, ``connections_cap``,
``bytes_cap``.

Bounds, per task: ``max_open_connections`` at once and ``max_connections`` in all;
``max_bytes`` both ways (then every connection is cut and the run ends with limit reason
"egress"); per connection and direction, at most 256 KiB read ahead (two reads of 128 KiB)
plus asyncio's 64 KiB write buffer. The loop runs in the gateway process, so its CPU and
memory are the gateway's (metrics, cgroup). Nothing is shared between gateway processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from gateway.audit.fields import EGRESS_REASONS
from gateway.config import EgressSettings
from gateway.egress.allowlist import AllowList, Destinations, ip_literal, normalize_host
from gateway.egress.sni import Incomplete, NotClientHello, read_sni
from gateway.observability.metrics import EGRESS_BYTES, EGRESS_CONNECTIONS, EGRESS_DENIED, EGRESS_OPEN
from sandbox import EgressUsage

__all__ = ["Denial", "EgressProxy", "EgressTask"]

log = logging.getLogger(__name__)

_HEAD_LIMIT = 16 * 1024
_HEAD_TIMEOUT_S = 10.0
_HELLO_TIMEOUT_S = 10.0
_BUFFER = 128 * 1024  # per read; a stream buffers twice this before it stops reading
_HOP_BY_HOP = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate",
               b"te", b"trailer", b"upgrade", b"host"}


@dataclass(frozen=True)
class Denial:
    """One refused connection: where it wanted to go, the reason code, a human sentence."""

    host: str
    port: int
    reason: str
    detail: str


@dataclass(frozen=True)
class EgressTask:
    """What the proxy needs of one task: its id (logs), its allow-list, where refusals go
    (called on the proxy's thread; it must not block for long), and the hosts the request
    named, when it named any: a connection must then match both lists."""

    task_id: str
    allow: AllowList
    on_denied: Callable[[Denial], None]
    requested: AllowList | None = None


class _Refused(Exception):
    def __init__(self, denial: Denial, status: int = 403) -> None:
        super().__init__(denial.detail)
        self.denial = denial
        self.status = status


class _Failed(Exception):
    """The destination could not be reached (not a refusal): 502 to the client."""


class EgressProxy:
    """The process's proxy (module docstring), bounded by the operator's ``egress`` settings:
    the address rules (``allow_networks``), names pinned to addresses (``static_hosts``) and
    the per-task caps (``max_bytes``, ``max_connections``, ``max_open_connections``,
    ``connect_timeout_s``)."""

    def __init__(self, settings: EgressSettings) -> None:
        self._destinations = Destinations(settings.allow_networks)
        self._limits = settings
        self._static = {normalize_host(k): ipaddress.ip_address(v) for k, v in settings.static_hosts.items()}
        # Series at 0 from the start, so the first refusal shows in rate() (metrics.start_series).
        for reason in EGRESS_REASONS:
            EGRESS_DENIED.labels(reason)
        for direction in ("sent", "received"):
            EGRESS_BYTES.labels(direction)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="egress-proxy", daemon=True)
        self._thread.start()

    def attach(self, task: EgressTask) -> Callable[[socket.socket, int], _Session]:
        """The ``EgressAttach`` for ``sandbox.run`` of ``task``."""

        def attach(listener: socket.socket, notes_fd: int) -> _Session:
            session = _Session(self, task, notes_fd)
            try:
                self._run(session.serve(listener))
            except BaseException:
                listener.close()
                raise
            return session

        return attach

    def set_own_ports(self, ports: set[int]) -> None:
        """The gateway's listening ports: never reachable on an address of this host."""
        self._destinations.set_own_ports(ports)

    def close(self) -> None:
        """Stop the loop (sessions end with their runs first)."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coro: object, timeout: float = 10) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)  # type: ignore[arg-type]

    async def resolve(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The addresses of ``host``: the static map, else the resolver (getaddrinfo)."""
        fixed = self._static.get(host)
        if fixed is not None:
            return [fixed]
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _Failed(f"cannot resolve {host}: {exc}") from exc
        seen: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            if address not in seen:
                seen.append(address)
        return seen


class _Session:
    """One task's proxy: its listener, connections and counters (an ``EgressSession``)."""

    def __init__(self, proxy: EgressProxy, task: EgressTask, notes_fd: int) -> None:
        self._proxy = proxy
        self._task = task
        self._notes_fd = notes_fd
        self._limits = proxy._limits
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._sent = 0
        self._received = 0
        self._connections = 0
        self._limit_hit = False
        self._closed = False

    async def serve(self, listener: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accept, sock=listener, limit=_BUFFER)

    def close(self) -> EgressUsage:
        """Stop accepting, cut every connection, and return what was carried."""
        try:
            self._proxy._run(self._close())
        except Exception:  # the loop is gone (gateway stopping): nothing left to close
            log.exception("egress proxy: closing the session of %s failed", self._task.task_id)
        return EgressUsage(bytes_sent=self._sent, bytes_received=self._received,
                           connections=self._connections, limit_hit=self._limit_hit)

    async def _close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    # -- one connection -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(writer)
        EGRESS_OPEN.inc()
        upstream: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream, first = await self._open(reader, writer)
            self._writers.add(upstream)
            if first:
                self._count_sent(len(first))
                upstream.write(first)
            await self._relay(reader, writer, upstream_reader, upstream)
        except _Refused as refused:
            await self._refuse(writer, refused)
        except _Failed as failed:
            self._note(f"cannot reach the destination: {failed}")
            await _answer(writer, 502, f"mcp-gateway egress: {failed}")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # the session closed
        except Exception:
            log.exception("egress proxy: a connection of %s failed", self._task.task_id)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            EGRESS_OPEN.dec()
            self._handlers.discard(handler)

    def _admit(self, host: str, port: int) -> None:
        """Count one more connection to ``host``:``port``, or refuse it by the task's caps."""
        limits = self._limits
        if limits.max_bytes and self._sent + self._received > limits.max_bytes:
            raise _Refused(Denial(host, port, "bytes_cap",
                                  f"the task's egress cap of {limits.max_bytes} bytes is used up"))
        if limits.max_connections and self._connections >= limits.max_connections:
            self._limit_hit = True
            raise _Refused(Denial(host, port, "connections_cap",
                                  f"the task's cap of {limits.max_connections} connections is used up"))
        if len(self._handlers) > limits.max_open_connections:
            raise _Refused(Denial(host, port, "connections_cap",
                                  f"the task has {limits.max_open_connections} connections open already"), 429)
        self._connections += 1
        EGRESS_CONNECTIONS.inc()

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Read and check the request; connect. Returns the upstream streams and the bytes
        to send first (the ClientHello, or the rewritten HTTP request head)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            head = b""  # no end in a whole buffer: longer still
        if not head or len(head) > _HEAD_LIMIT:
            raise _Refused(Denial("", 0, "bad_request", "a request head over 16 KiB"), 431)
        request = _parse_head(head)
        if request.method == b"CONNECT":
            host, port = _authority(request.target.decode("ascii", "replace"))
            self._admit(host, port)
            up_reader, up_writer = await self._connect(host, port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            hello = await self._client_hello(reader, host, port)
            return up_reader, up_writer, hello
        url = urlsplit(request.target.decode("ascii", "replace"))
        if url.scheme != "http" or not url.hostname:
            raise _Refused(Denial(url.hostname or "", 0, "bad_request",
                                  "only CONNECT host:port and absolute http:// requests go through this proxy"), 400)
        try:
            port = url.port or 80
        except ValueError as exc:
            raise _Refused(Denial(url.hostname, 0, "bad_request", "a port out of range"), 400) from exc
        host = normalize_host(url.hostname)
        self._admit(host, port)
        up_reader, up_writer = await self._connect(host, port)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        authority = host if port == 80 else f"{host}:{port}"
        if ":" in host:
            authority = f"[{host}]" if port == 80 else f"[{host}]:{port}"
        lines = [request.method + b" " + path.encode() + b" HTTP/1.1", b"Host: " + authority.encode()]
        lines += [name + b": " + value for name, value in request.headers if name not in _HOP_BY_HOP]
        lines.append(b"Connection: close")
        return up_reader, up_writer, b"\r\n".join(lines) + b"\r\n\r\n"

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Check ``host``:``port`` against the allow-list and the address rules, resolve it
        (names only) and connect to the first address allowed."""
        host = normalize_host(host)
        literal = ip_literal(host)
        rule = self._task.allow.match(host, port)
        if rule is not None and self._task.requested is not None and self._task.requested.match(host, port) is None:
            raise _Refused(Denial(host, port, "not_allowed",
                                  f"{host}:{port} is not among the hosts the task asked for ({self._task.requested})"))
        destinations = self._proxy._destinations
        if literal is not None:
            if rule is None or not destinations.operator_allows(literal):
                raise _Refused(Denial(host, port, "ip_literal",
                                      f"{host}:{port} is an IP address; only names on the task's allow-list "
                                      "are reachable (and addresses the operator allows)"))
            addresses = [literal]
        else:
            if rule is None:
                raise _Refused(Denial(host, port, "not_allowed",
                                      f"{host}:{port} is not on the task's allow-list ({self._task.allow})"))
            addresses = await self._proxy.resolve(host, port)
        refusals = {a: destinations.refusal(a, port) for a in addresses}
        allowed = [a for a in addresses if refusals[a] is None]
        if not allowed:
            reason = "gateway_port" if "gateway_port" in refusals.values() else "forbidden_address"
            shown = ", ".join(str(a) for a in addresses)
            raise _Refused(Denial(host, port, reason,
                                  f"{host}:{port} resolves to {shown}, which the gateway never connects to "
                                  f"({reason.replace('_', ' ')})"))
        error: Exception | None = None
        for address in allowed:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(address), port, limit=_BUFFER), self._limits.connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                error = exc
        raise _Failed(f"{host}:{port}: {error or 'no address'}")

    async def _client_hello(self, reader: asyncio.StreamReader, host: str, port: int) -> bytes:
        """The tunnel's first flight, once it is a ClientHello whose SNI is ``host``."""
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _HELLO_TIMEOUT_S
        while True:
            try:
                name = read_sni(data)
                break
            except Incomplete:
                chunk = await asyncio.wait_for(reader.read(_BUFFER), max(0.0, deadline - loop.time()))
                if not chunk:
                    raise ConnectionResetError("the client closed the tunnel before its ClientHello") from None
                data += chunk
            except NotClientHello as exc:
                raise _Refused(Denial(host, port, "not_tls",
                                      f"the tunnel to {host}:{port} did not start with a TLS ClientHello ({exc})"),
                               0) from exc
        if name != normalize_host(host):
            raise _Refused(Denial(host, port, "sni_mismatch",
                                  f"the TLS server name {name or '(none)'} is not the CONNECT host {host}"), 0)
        return data

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Both directions until both end (each passes the other's EOF on), or either fails."""
        pipes = {asyncio.create_task(self._pipe(reader, up_writer, self._count_sent)),
                 asyncio.create_task(self._pipe(up_reader, writer, self._count_received))}
        try:
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pipe in pipes:
                pipe.cancel()
        for pipe in done:
            if not pipe.cancelled() and pipe.exception() is not None:
                raise pipe.exception()  # type: ignore[misc]

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    count: Callable[[int], None]) -> None:
        while data := await source.read(_BUFFER):
            count(len(data))
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            with contextlib.suppress(OSError):
                sink.write_eof()

    def _count_sent(self, n: int) -> None:
        self._sent += n
        EGRESS_BYTES.labels("sent").inc(n)
        self._check_bytes()

    def _count_received(self, n: int) -> None:
        self._received += n
        EGRESS_BYTES.labels("received").inc(n)
        self._check_bytes()

    def _check_bytes(self) -> None:
        cap = self._limits.max_bytes
        if cap and not self._limit_hit and self._sent + self._received > cap:
            self._limit_hit = True
            denial = Denial("", 0, "bytes_cap", f"the task's egress cap of {cap} bytes is used up; "
                            "every connection is cut")
            self._report(denial)
            for writer in list(self._writers):
                writer.transport.abort()
            raise ConnectionAbortedError(denial.detail)

    # -- refusals -------------------------------------------------------------------------

    async def _refuse(self, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        self._report(refused.denial)
        if refused.status:
            await _answer(writer, refused.status, f"mcp-gateway egress: refused: {refused.denial.detail}")

    def _report(self, denial: Denial) -> None:
        EGRESS_DENIED.labels(denial.reason).inc()
        self._note(f"refused: {denial.detail}")
        try:
            self._task.on_denied(denial)
        except Exception:
            log.exception("egress proxy: reporting a refusal of %s failed", self._task.task_id)

    def _note(self, text: str) -> None:
        """One line on the task's stderr; dropped when the pipe is full (never blocks)."""
        line = f"mcp-gateway egress: {text}\n".encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            os.write(self._notes_fd, line[:4096])


def _parse_head(head: bytes) -> h11.Request:
    """The request line and headers, parsed strictly (h11). Raises _Refused (400)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_LIMIT)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise _Refused(Denial("", 0, "bad_request", f"a malformed request ({exc})"), 400) from exc
    if not isinstance(event, h11.Request):
        raise _Refused(Denial("", 0, "bad_request", "a malformed request"), 400)
    return event


def _authority(target: str) -> tuple[str, int]:
    """``host``, ``port`` of a CONNECT target (``host:port``, ``[v6]:port``). Raises _Refused."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        raise _Refused(Denial(target[:255], 0, "bad_request", "CONNECT needs host:port"), 400)
    return normalize_host(host), int(port_text)


def _response(status: int, text: str) -> bytes:
    reasons = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
               502: "Bad Gateway", 503: "Service Unavailable"}
    body = (text + "\n").encode("utf-8", "replace")
    return (f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _answer(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(_response(status, text))
        await asyncio.wait_for(writer.drain(), _HEAD_TIMEOUT_S)
