"""Test hosts for the restricted network: a network namespace joined to this host by a veth
pair, holding the servers of ``tests/egress_servers.py`` (root only).

``EgressHosts.start(workdir)`` makes, on a /24 of 10.253.0.0/16 that no interface here uses:

- namespace ``mcpt-eg-<pid>`` with ``lo`` and the veth end ``.2`` (plus ``.3``);
- this host's end ``.1``;
- HTTP on ``.2``:80 and ``.3``:80, HTTPS on ``.2``:443 with a certificate for
  ``allowed.test`` (and ``*.allowed.test``) from a CA of the test run (``ca_pem``);
- files: ``/hello.txt``, ``/big.bin`` (``BIG_BYTES``) and a package index ``/simple/``
  holding the wheel ``mcp-egress-probe`` 1.0 (``import mcp_egress_probe``).

The gateway reaches them by name through ``egress.static_hosts`` (``names``) and is allowed
the /24 by ``egress.allow_networks``: policy alone could not (private addresses). ``stop()``
removes the namespace, the veth pair and the servers.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.pki import CertificateAuthority

__all__ = ["BIG_BYTES", "HELLO", "PACKAGE_VALUE", "EgressHosts"]

HELLO = b"hello from allowed.test\n"
BIG_BYTES = 8 * 1024 * 1024
PACKAGE_VALUE = "installed through the egress proxy"
REPO = Path(__file__).resolve().parent.parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for third in range(os.getpid() % 200 + 20, 256):
        net = ipaddress.ip_network(f"10.253.{third}.0/24")
        if f"10.253.{third}." not in used:
            return net
    raise RuntimeError("no free /24 in 10.253.0.0/16 for the egress test hosts")


def _wheel(directory: Path) -> Path:
    """A pure-Python wheel (PEP 427) with a RECORD of sha256 hashes."""
    files = {
        "mcp_egress_probe/__init__.py": f"VALUE = {PACKAGE_VALUE!r}\n".encode(),
        "mcp_egress_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mcp-egress-probe\nVersion: 1.0\n",
        "mcp_egress_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    ) + "mcp_egress_probe-1.0.dist-info/RECORD,,\n"
    files["mcp_egress_probe-1.0.dist-info/RECORD"] = record.encode()
    wheel = directory / "mcp_egress_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


@dataclass
class EgressHosts:
    """The running test hosts (module docstring)."""

    namespace: str
    veth: str
    host_ip: str
    allowed_ip: str
    other_ip: str
    network: str
    ca_pem: Path
    root: Path
    servers: subprocess.Popen[str]

    @property
    def names(self) -> dict[str, str]:
        """``egress.static_hosts`` for the tests' names."""
        return {"allowed.test": self.allowed_ip, "files.allowed.test": self.allowed_ip,
                "other.test": self.other_ip, "self.test": self.host_ip,
                "loop.test": "127.0.0.1", "metadata.test": "169.254.169.254"}

    @classmethod
    def start(cls, workdir: Path) -> EgressHosts:
        net = _free_subnet()
        host_ip, allowed_ip, other_ip = (str(net.network_address + i) for i in (1, 2, 3))
        namespace, veth = f"mcpt-eg-{os.getpid()}", f"mcpeg{os.getpid() % 100000}"
        root = workdir / "www"
        (root / "simple" / "mcp-egress-probe").mkdir(parents=True)
        (root / "packages").mkdir()
        (root / "hello.txt").write_bytes(HELLO)
        (root / "big.bin").write_bytes(os.urandom(BIG_BYTES))
        wheel = _wheel(root / "packages")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (root / "simple" / "mcp-egress-probe" / "index.html").write_text(
            f'<html><body><a href="/packages/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>\n')
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        ca = CertificateAuthority(workdir / "pki", "egress-test-ca")
        leaf = ca.issue("allowed.test", server=True, dns=("allowed.test", "*.allowed.test"))
        _ip("netns", "add", namespace)
        try:
            _ip("link", "add", veth + "a", "type", "veth", "peer", "name", veth + "b")
            _ip("link", "set", veth + "b", "netns", namespace)
            _ip("addr", "add", f"{host_ip}/24", "dev", veth + "a")
            _ip("link", "set", veth + "a", "up")
            for address in (allowed_ip, other_ip):
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", veth + "b")
            _ip("-n", namespace, "link", "set", veth + "b", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            servers = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, str(REPO / "tests" / "egress_servers.py"),
                 "--root", str(root), "--allowed-ip", allowed_ip, "--other-ip", other_ip,
                 "--cert", str(leaf.cert), "--key", str(leaf.key)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert servers.stdout is not None
            if servers.stdout.readline().strip() != "ready":
                servers.kill()
                servers.communicate()
                raise RuntimeError("the egress test servers did not start")
        except BaseException:
            subprocess.run(["ip", "link", "del", veth + "a"], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            raise
        return cls(namespace, veth, host_ip, allowed_ip, other_ip, str(net), ca.cert, root, servers)

    def stop(self) -> None:
        """Stop the servers; remove the veth pair and the namespace."""
        for stream in (self.servers.stdin, self.servers.stdout):
            if stream is not None:
                stream.close()
        self.servers.kill()
        self.servers.wait(timeout=10)
        subprocess.run(["ip", "link", "del", self.veth + "a"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
