"""The restricted network end to end: a real gateway (root, real bwrap, its egress proxy) and
test hosts in a network namespace of their own (``tests/egress_hosts.py``), tried the way a
task (or an attacker inside one) would: curl, pip, raw sockets, DNS.

Every refusal must answer the client, explain itself on the task's stderr, and leave an
``egress_denied`` audit event; after every test no proxy connection is open and no veth was
added."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import EgressSettings
from gateway.egress.allowlist import AllowList
from gateway.egress.proxy import Denial, EgressProxy, EgressTask
from sandbox import NetworkMode
from tests.conftest import REPO, GatewayProcess, start_gateway
from tests.egress_hosts import BIG_BYTES, HELLO, PACKAGE_VALUE, EgressHosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the restricted network needs a root gateway")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def hosts(state_root: Path) -> Iterator[EgressHosts]:
    if shutil.which("ip") is None or shutil.which("curl") is None:
        pytest.skip("iproute2 and curl are needed for the egress test hosts (scripts/setup.sh --test installs them)")
    workdir = Path(tempfile.mkdtemp(prefix="egress-hosts-", dir=state_root))
    started = EgressHosts.start(workdir)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def gw(hosts: EgressHosts, state_root: Path) -> Iterator[GatewayProcess]:
    base = Path(tempfile.mkdtemp(prefix="egress-gw-", dir=state_root))
    http_port = _free_port()
    policy = base / "policy"
    shutil.copytree(REPO / "policies", policy)
    data = json.loads((policy / "data.json").read_text())
    config = data["mcp"]["config"]
    config["roles"]["user"]["network"]["restricted"] = True
    config["network"]["allowed_hosts"] = {
        "allowed.test": True, "*.allowed.test": True, "loop.test": True, "metadata.test": True,
        f"self.test:{http_port}": True,
    }
    (policy / "data.json").write_text(json.dumps(data))
    env = {"MCP_GATEWAY_EGRESS__ALLOW_NETWORKS": json.dumps([hosts.network]),
           "MCP_GATEWAY_EGRESS__STATIC_HOSTS": json.dumps(hosts.names)}
    process = start_gateway(base / "var", "--policy-dir", str(policy), "--http-port", str(http_port), env=env)
    process.http_port = http_port  # type: ignore[attr-defined]
    yield process
    assert process.stop() == 0


@pytest.fixture
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.http_url, timeout=120) as client:
        yield client


@pytest.fixture(autouse=True)
def _no_proxy_connection_or_veth_left(gw: GatewayProcess) -> Iterator[None]:
    before = _veths()
    yield
    deadline = time.monotonic() + 5
    while (open_now := _metric(gw, "mcp_egress_open_connections")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_now == 0, f"{open_now} egress proxy connections are still open"
    assert _veths() == before, "a veth appeared or vanished during the test"


def _veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _metric(gw: GatewayProcess, name: str) -> float:
    text = httpx.get(f"{gw.http_url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def run(http: httpx.Client, script: str, env: dict[str, str] | None = None, network: str = "NETWORK_RESTRICTED",
        timeout: int = 60, hosts: list[str] | None = None) -> dict[str, Any]:
    """``sh -c script`` through the gateway, waited for; the final task body. ``hosts``:
    the request's own allow-list (``sandbox_config.allowed_hosts``)."""
    body = {"command": "sh", "args": ["-c", script], "env": env or {}, "timeout": timeout,
            "sandbox_config": {"network_access": network, "allowed_hosts": hosts or []}}
    answer = http.post("/v1/execute", params={"wait": timeout + 30}, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def denials(gw: GatewayProcess, task_id: str) -> list[tuple[str, int, str]]:
    """``(host, port, reason)`` of the task's ``egress_denied`` events."""
    return [(e["egress_host"], e["egress_port"], e["egress_reason"]) for e in gw.audit_events()
            if e["event_type"] == "egress_denied" and e.get("task_id") == task_id]


def test_an_allowed_http_get_passes(gw: GatewayProcess, http: httpx.Client) -> None:
    task = run(http, "curl -sS http://allowed.test/hello.txt")
    assert task["result"]["stdout"].encode() == HELLO, task["result"]
    assert task["result"]["resource_usage"]["egress_bytes_received"] >= len(HELLO)
    assert denials(gw, task["task_info"]["task_id"]) == []


def test_an_allowed_https_download_passes(gw: GatewayProcess, http: httpx.Client, hosts: EgressHosts) -> None:
    task = run(http, 'printf "%s" "$CA" > /tmp/ca.pem && curl -sS --cacert /tmp/ca.pem '
                     "https://files.allowed.test/hello.txt -o /workspace/hello.txt && cat /workspace/hello.txt",
               env={"CA": hosts.ca_pem.read_text()})
    assert task["result"]["stdout"].encode() == HELLO, task["result"]


def test_pip_installs_from_the_allowed_index(http: httpx.Client) -> None:
    if subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("Debian's python3-pip is not installed (scripts/setup.sh --test installs it)")
    task = run(http, "python3 -m pip install -q --no-cache-dir --disable-pip-version-check --no-input "
                     "--target /workspace/site --index-url http://allowed.test/simple/ --trusted-host allowed.test "
                     "mcp-egress-probe && PYTHONPATH=/workspace/site python3 -c "
                     "'import mcp_egress_probe; print(mcp_egress_probe.VALUE)'", timeout=120)
    assert task["result"]["stdout"] == PACKAGE_VALUE + "\n", task["result"]


@pytest.mark.parametrize(("url", "host", "port", "reason"), [
    ("http://other.test/hello.txt", "other.test", 80, "not_allowed"),
    ("https://other.test/hello.txt", "other.test", 443, "not_allowed"),
    ("http://allowed.test:8080/", "allowed.test", 8080, "not_allowed"),  # a port the entry does not name
    ("http://{allowed_ip}/hello.txt", "{allowed_ip}", 80, "ip_literal"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", 80, "ip_literal"),
    ("http://metadata.test/latest/meta-data/", "metadata.test", 80, "forbidden_address"),
    ("http://loop.test/", "loop.test", 80, "forbidden_address"),
    ("http://self.test:{http_port}/health", "self.test", "{http_port}", "gateway_port"),
])
def test_a_refused_destination_is_explained_and_audited(gw: GatewayProcess, http: httpx.Client, hosts: EgressHosts,
                                                         url: str, host: str, port: Any, reason: str) -> None:
    fill = {"allowed_ip": hosts.allowed_ip, "http_port": gw.http_port}  # type: ignore[attr-defined]
    url, host, port = url.format(**fill), host.format(**fill), int(str(port).format(**fill))
    task = run(http, f"curl -sS -o /dev/null -w '%{{http_code}}' {url}; echo; curl -sS -o /dev/null {url} --fail")
    result = task["result"]
    assert result["exit_code"] != 0
    assert f"mcp-gateway egress: refused: {host}:{port}" in result["stderr"], result["stderr"]
    if url.startswith("http://"):
        assert result["stdout"].strip() == "403"  # the proxy's answer
    assert denials(gw, task["task_info"]["task_id"]) == [(host, port, reason)] * 2


def test_a_task_that_names_its_hosts_reaches_only_those(gw: GatewayProcess, http: httpx.Client) -> None:
    task = run(http, "curl -sS http://files.allowed.test/hello.txt; curl -sS --fail http://allowed.test/hello.txt",
               hosts=["files.allowed.test"])
    assert task["result"]["stdout"].encode() == HELLO, task["result"]
    assert "is not among the hosts the task asked for (files.allowed.test)" in task["result"]["stderr"]
    assert denials(gw, task["task_info"]["task_id"]) == [("allowed.test", 80, "not_allowed")]
    # Naming a host the policy does not allow is refused before anything runs.
    answer = http.post("/v1/execute", json={"command": "curl", "args": ["http://other.test/"], "sandbox_config": {
        "network_access": "NETWORK_RESTRICTED", "allowed_hosts": ["other.test"]}})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == 3002, answer.text
    assert "'other.test' is not on the network allow-list" in answer.json()["error"]["message"]
    bad = http.post("/v1/execute", json={"command": "true", "sandbox_config": {
        "network_access": "NETWORK_RESTRICTED", "allowed_hosts": ["http://allowed.test/"]}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 2003, bad.text


def test_a_connect_whose_sni_is_not_its_host_is_refused(gw: GatewayProcess, http: httpx.Client,
                                                        hosts: EgressHosts) -> None:
    # Domain fronting: the tunnel is asked for allowed.test, the TLS inside names another host.
    script = (
        "import socket, ssl, sys\n"
        "s = socket.create_connection(('127.0.0.1', 3128), 10)\n"
        "s.sendall(b'CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test:443\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
        "ctx = ssl.create_default_context(cadata=open('/tmp/ca.pem').read())\n"
        "ctx.check_hostname = False\n"
        "try:\n"
        "    ctx.wrap_socket(s, server_hostname=sys.argv[1])\n"
        "    print('handshake done')\n"
        "except (OSError, ssl.SSLError) as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    task = run(http, 'printf "%s" "$CA" > /tmp/ca.pem && python3 -c "$PROBE" other.test && '
                     'python3 -c "$PROBE" allowed.test', env={"CA": hosts.ca_pem.read_text(), "PROBE": script})
    lines = task["result"]["stdout"].splitlines()
    assert lines[0] == "HTTP/1.1 200 Connection established" and lines[1].startswith("refused"), task["result"]
    assert lines[2:] == ["HTTP/1.1 200 Connection established", "handshake done"], task["result"]
    assert denials(gw, task["task_info"]["task_id"]) == [("allowed.test", 443, "sni_mismatch")]
    assert "the TLS server name other.test is not the CONNECT host allowed.test" in task["result"]["stderr"]


def test_traffic_that_ignores_the_proxy_reaches_nothing(http: httpx.Client, hosts: EgressHosts) -> None:
    script = (
        "import errno, socket\n"
        f"for target in [('{hosts.allowed_ip}', 80), ('{hosts.host_ip}', 22), ('8.8.8.8', 53)]:\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    print('tcp', errno.errorcode.get(s.connect_ex(target), 'connected'))\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n"
        "    u.sendto(b'x', ('8.8.8.8', 53)); print('udp sent')\n"
        "except OSError as e:\n"
        "    print('udp', errno.errorcode[e.errno])\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw opened')\n"
        "except OSError as e:\n"
        "    print('raw', errno.errorcode[e.errno])\n"
        "try:\n"
        "    print('dns', socket.getaddrinfo('allowed.test', 80))\n"
        "except socket.gaierror as e:\n"
        "    print('dns failed')\n"
    )
    task = run(http, 'python3 -c "$PROBE"', env={"PROBE": script})
    lines = task["result"]["stdout"].splitlines()
    assert lines[:3] == ["tcp ENETUNREACH"] * 3, task["result"]
    assert lines[3] == "udp ENETUNREACH"
    assert lines[4] in ("raw EPERM", "raw EACCES")
    assert lines[5] == "dns failed"  # no resolver inside: names are the proxy's to resolve


def test_a_large_download_counts_its_bytes(gw: GatewayProcess, http: httpx.Client, hosts: EgressHosts) -> None:
    task = run(http, 'printf "%s" "$CA" > /tmp/ca.pem && curl -sS --cacert /tmp/ca.pem '
                     "https://allowed.test/big.bin | wc -c", env={"CA": hosts.ca_pem.read_text()})
    assert task["result"]["stdout"].strip() == str(BIG_BYTES), task["result"]
    usage = task["result"]["resource_usage"]
    assert BIG_BYTES <= usage["egress_bytes_received"] < BIG_BYTES * 1.05  # + TLS framing
    assert 0 < usage["egress_bytes_sent"] < 64 * 1024
    end = [e for e in gw.audit_events() if e["event_type"] == "task_end"
           and e.get("task_id") == task["task_info"]["task_id"]]
    assert end[0]["egress_bytes_received"] == usage["egress_bytes_received"]


@pytest.mark.parametrize(("limits", "script", "reason"), [
    ({"max_bytes": 1 << 20}, "curl -sS -o /dev/null http://allowed.test/big.bin", "bytes_cap"),
    ({"max_connections": 2},
     "for i in 1 2 3; do curl -sS --fail -o /dev/null http://allowed.test/hello.txt || exit 7; done",
     "connections_cap"),
])
def test_an_egress_cap_refuses_traffic_and_ends_the_run_with_limit_reason_egress(
        sbx: Any, hosts: EgressHosts, limits: dict[str, int], script: str, reason: str) -> None:
    # The library path (sandbox.run with the gateway's proxy), as the containment suite runs it.
    proxy = EgressProxy(EgressSettings(allow_networks=[hosts.network], static_hosts=hosts.names, **limits))
    refused: list[Denial] = []
    try:
        attach = proxy.attach(EgressTask("task-cap", AllowList.parse(["allowed.test"]), refused.append))
        result = sbx("sh", "-c", script, network=NetworkMode.RESTRICTED, egress=attach, timeout_s=30)
    finally:
        proxy.close()
    assert result.limit_reason == "egress", result
    assert result.exit_code != 0
    assert [d.reason for d in refused] == [reason]
    assert "mcp-gateway egress: refused: the task's" in result.stderr.decode()
    if reason == "bytes_cap":
        total = result.usage.egress_bytes_sent + result.usage.egress_bytes_received
        assert (1 << 20) < total <= (1 << 20) + 256 * 1024  # cut within one read of the cap


def test_concurrent_tasks_each_count_only_their_own_traffic(gw: GatewayProcess) -> None:
    # Four restricted tasks at once (the gateway's four sandbox slots), each fetching the
    # big file a different number of times: every session's counters are its own.
    def fetch(times: int) -> dict[str, Any]:
        with httpx.Client(base_url=gw.http_url, timeout=120) as client:
            return run(client, f"for i in $(seq {times}); do curl -sS -o /dev/null http://allowed.test/big.bin; done")

    with ThreadPoolExecutor(4) as pool:
        tasks = list(pool.map(fetch, [1, 2, 3, 4]))
    for times, task in enumerate(tasks, start=1):
        received = task["result"]["resource_usage"]["egress_bytes_received"]
        assert times * BIG_BYTES < received < times * (BIG_BYTES + 4096), (times, task["result"])


def test_other_network_modes_keep_network_tools_refused(http: httpx.Client) -> None:
    answer = http.post("/v1/execute", json={"command": "curl", "args": ["http://allowed.test/"],
                                            "sandbox_config": {"network_access": "NETWORK_LOOPBACK"}})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == 3002, answer.text
