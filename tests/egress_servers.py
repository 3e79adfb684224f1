"""The servers of the egress test hosts (``tests/egress_hosts.py`` runs this inside their
network namespace): plain HTTP on ``--allowed-ip``:80 and ``--other-ip``:80, HTTPS on
``--allowed-ip``:443 with ``--cert``/``--key``, all serving the files under ``--root``.
Prints ``ready`` once every socket listens; serves until its stdin closes."""

from __future__ import annotations

import argparse
import functools
import http.server
import ssl
import sys
import threading


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--root", "--allowed-ip", "--other-ip", "--cert", "--key"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    handler = functools.partial(_Quiet, directory=args.root)
    servers = [http.server.ThreadingHTTPServer((ip, 80), handler) for ip in (args.allowed_ip, args.other_ip)]
    tls = http.server.ThreadingHTTPServer((args.allowed_ip, 443), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    servers.append(tls)
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
