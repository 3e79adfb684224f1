"""An audit webhook collector for tests: an HTTP server on loopback that takes the gateway's
``POST``s of ``application/x-ndjson`` lines and keeps every line, and that can go down
(connections refused) and come back on the same port, as a real collector does."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Collector"]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.collector._take(body.decode().splitlines())  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


class Collector:
    """Receives audit lines at :attr:`url`; :attr:`received` holds them in arrival order.

    Args:
        port: the port to listen on (0: a free one, kept across :meth:`down` / :meth:`up`).
    """

    def __init__(self, port: int = 0) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.up()

    @property
    def url(self) -> str:
        """Where the gateway's ``audit.webhook.url`` should point."""
        return f"http://127.0.0.1:{self.port}/audit"

    def _take(self, lines: list[str]) -> None:
        with self._lock:
            self.received.extend(lines)

    def up(self) -> None:
        """Listen (again) on :attr:`port`."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.collector = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        """Stop listening: from now on connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
