"""The client library (``gateway.client``) and the installed ``mcp-gateway exec``, ``tasks``
and ``files`` against real gateway processes, over REST and gRPC, plaintext and TLS.

Shown: output streams in order and the exit status is the command's (0, 3), 124 for a
timeout, 126 and the reason for a policy deny, 130 and no process left after Ctrl-C; a
stream cut in the middle (by a TCP relay that drops the connection) resumes without a gap or
a repeat; a queued task says so on stderr; the wire error becomes the class of its code on
both transports; 4290 is retried after its Retry-After; settings come from the flags, the
environment and the config file, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.client import AsyncClient, Client, TransportError
from gateway.client.cli import EXIT_STATUSES
from gateway.errors import BY_CODE, CommandDenied, FileDenied, NotFound, RateLimited, Unauthenticated, from_wire
from tests.conftest import GATEWAY_BIN, GatewayProcess, start_gateway, wait_until
from tests.pki import CertificateAuthority

SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]
COUNT = "for i in $(seq 1 30); do echo line-$i; sleep 0.05; done"


@pytest.fixture(scope="module")
def key() -> str:
    return new_api_key()


def _gateway(state_root: Path, key: str, name: str, extra: dict[str, Any] | None = None,
             tls: Any = None, client_ca: Path | None = None) -> GatewayProcess:
    state = Path(tempfile.mkdtemp(prefix=f"client-{name}-", dir=state_root))
    extra = dict(extra or {})
    auth = {"api_keys": [{"hash": hash_api_key(key), "principal": "alice", "tenant": "acme", "roles": ["user"],
                          "scopes": SCOPES}], **extra.pop("auth", {})}
    config: dict[str, Any] = {"auth": auth, **extra}
    if tls is not None:
        config["tls"] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if client_ca is not None:
            config["tls"]["client_ca_file"] = str(client_ca)
    (state / "gw.yaml").write_text(yaml.safe_dump(config))
    return start_gateway(state / "var", "--config", str(state / "gw.yaml"), dev=False)


@pytest.fixture(scope="module")
def gateway(state_root: Path, key: str) -> Iterator[GatewayProcess]:
    gw = _gateway(state_root, key, "plain", {"tasks": {"max_concurrent": 1}})
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.stderr_path.read_text()


@pytest.fixture(scope="module")
def pki(state_root: Path) -> CertificateAuthority:
    return CertificateAuthority(Path(tempfile.mkdtemp(prefix="client-pki-", dir=state_root)), "client-test-ca")


@pytest.fixture(scope="module")
def tls_gateway(state_root: Path, key: str, pki: CertificateAuthority) -> Iterator[GatewayProcess]:
    """TLS on both ports, client certificates of ``pki`` required: CN=ci-bot,O=acme is a principal."""
    server = pki.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",))
    mtls = {"auth": {"client_certs": [{"subject": "CN=ci-bot,O=acme", "principal": "ci-bot", "tenant": "acme",
                                       "roles": ["user"], "scopes": SCOPES}]}}
    gw = _gateway(state_root, key, "tls", mtls, tls=server, client_ca=pki.cert)
    yield gw
    assert gw.stop() == 0


def urls(gw: GatewayProcess, tls: bool = False) -> dict[str, str]:
    http = gw.http_url.replace("http://", "https://" if tls else "http://")
    return {"rest": http, "grpc": f"{'grpcs' if tls else 'grpc'}://{gw.grpc_addr}"}


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "XDG_CONFIG_HOME": "/nonexistent"}
    return subprocess.run([str(GATEWAY_BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, **kwargs)


# -- the library ------------------------------------------------------------------------


def test_every_error_code_has_its_class_from_the_wire_body() -> None:
    for code, cls in BY_CODE.items():
        error = from_wire({"error": {"code": code, "message": "m", "details": {"k": 1}}}, retry_after_s=7)
        assert type(error) is cls and error.code == code and error.details == {"k": 1}
    assert from_wire({"error": {"code": 4290, "message": "m", "details": {}}}, retry_after_s=7).retry_after_s == 7
    assert from_wire({"nothing": 1}).code == 5001 and from_wire({"error": {"code": 9999}}).code == 5001


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_execute_stream_and_read_back_over_both_transports(gateway: GatewayProcess, key: str,
                                                           transport: str) -> None:
    with Client(urls(gateway)[transport], key) as gw:
        task = gw.execute("sh", ["-c", COUNT + "; echo bye >&2; exit 3"], workspace="lib")
        chunks = list(gw.output(task.task_id))
        assert [c.offset for c in chunks] == list(range(len(chunks)))
        assert b"".join(c.data for c in chunks if c.kind == "stdout").decode().split() == \
            [f"line-{i}" for i in range(1, 31)]
        assert chunks[-1].kind == "exit" and chunks[-1].exit_code == 3
        final = gw.get_task(task.task_id)
        assert final.status == "COMPLETED" and final.result is not None and final.result.exit_code == 3
        assert final.result.stderr == "bye\n" and final.metadata["workspace"] == "lib"
        waited = gw.execute("echo", ["waited"], wait_s=30)
        assert waited.final and waited.result is not None and waited.result.stdout == "waited\n"
        assert gw.write_file("d/f.bin", b"\x00\x01", workspace="lib", create_dirs=True) == 2
        assert gw.read_file("d/f.bin", workspace="lib") == b"\x00\x01"
        gw.delete_file("d", workspace="lib", recursive=True)
        with pytest.raises(NotFound):
            gw.read_file("d/f.bin", workspace="lib")
        assert task.task_id in {t.task_id for t in gw.iter_tasks(page_size=2)}


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_the_wire_error_is_the_class_of_its_code(gateway: GatewayProcess, key: str, transport: str) -> None:
    url = urls(gateway)[transport]
    with Client(url, key) as gw:
        with pytest.raises(CommandDenied) as denied:
            gw.execute("sudo", ["id"])
        assert denied.value.code == 3001 and "privilege" in denied.value.message
        with pytest.raises(NotFound):
            gw.get_task("task-" + "0" * 32)
    with Client(url, "mgw_" + "A" * 43) as stranger, pytest.raises(Unauthenticated):
        stranger.get_task("task-" + "0" * 32)
    with Client(url.replace(str(_port(url)), str(_free_port())), key, timeout_s=2) as nowhere, \
            pytest.raises(TransportError):
        nowhere.get_task("task-" + "0" * 32)


def test_4290_is_retried_after_its_retry_after(state_root: Path, key: str) -> None:
    limits = {"rate_limits": {"principal": {"requests_per_s": 1, "burst": 2}}}
    gw = _gateway(state_root, key, "limited", limits)
    try:
        async def run() -> tuple[float, int]:
            async with AsyncClient(gw.http_url, key, max_retries=0) as impatient:
                with pytest.raises(RateLimited) as refused:
                    for _ in range(4):
                        await impatient.list_tasks()
            started = time.monotonic()
            async with AsyncClient(gw.http_url, key, max_retries=5) as patient:
                for _ in range(4):
                    await patient.list_tasks()
            return time.monotonic() - started, refused.value.retry_after_s
        waited_s, retry_after_s = asyncio.run(run())
        assert retry_after_s >= 1 and waited_s >= 1.0  # it slept on Retry-After instead of failing
    finally:
        assert gw.stop() == 0


# -- mcp-gateway exec -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_exec_streams_output_and_exits_with_the_commands_status(gateway: GatewayProcess, key: str,
                                                                transport: str) -> None:
    url = urls(gateway)[transport]
    done = cli("exec", "--url", url, "--token", key, "--", "sh", "-c", COUNT + "; echo to-stderr >&2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"line-{i}" for i in range(1, 31)] and done.stderr == "to-stderr\n"
    three = cli("exec", "--", "sh", "-c", "exit 3", env={"MCP_GATEWAY_URL": url, "MCP_GATEWAY_TOKEN": key})
    assert three.returncode == 3, three.stderr
    slow = cli("exec", "--url", url, "--token", key, "--timeout", "1", "--", "sleep", "30")
    assert slow.returncode == EXIT_STATUSES["timed_out"] == 124, slow.stderr
    denied = cli("exec", "--url", url, "--token", key, "--", "sudo", "id")
    assert denied.returncode == EXIT_STATUSES["policy_denied"] == 126
    assert "denied by policy (error 3001)" in denied.stderr and "sudo" in denied.stderr


def test_exec_ctrl_c_cancels_the_task_and_leaves_no_process(gateway: GatewayProcess, key: str) -> None:
    marker = "4711"
    proc = subprocess.Popen([str(GATEWAY_BIN), "exec", "--url", gateway.http_url, "--token", key, "--",
                             "sh", "-c", f"echo up; exec sleep {marker}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_STATUSES["cancelled"] == 130, stderr
    assert "cancelled task task-" in stderr
    wait_until(lambda: not _processes(f"sleep\0{marker}"), timeout_s=10, what="the sandboxed sleep's end")
    with Client(gateway.http_url, key) as gw:
        assert next(iter(gw.iter_tasks())).status == "CANCELLED"


def test_exec_says_when_the_task_waits_in_the_queue(gateway: GatewayProcess, key: str) -> None:
    # The gateway runs one task at a time: a second one queues behind the first.
    with Client(gateway.http_url, key) as gw:
        blocker = gw.execute("sleep", ["4"])
        try:
            queued = cli("exec", "--url", gateway.http_url, "--token", key, "--", "echo", "after")
        finally:
            gw.cancel_task(blocker.task_id)
    assert queued.returncode == 0 and queued.stdout == "after\n"
    assert "is queued, waiting for a sandbox" in queued.stderr


def test_exec_resumes_a_dropped_stream_without_gap_or_repeat(gateway: GatewayProcess, key: str) -> None:
    with _Relay(_port(gateway.http_url), cut_after_bytes=1500) as relay:
        done = cli("exec", "--url", f"http://127.0.0.1:{relay.port}", "--token", key, "--",
                   "sh", "-c", COUNT)
    assert relay.cuts == 1, "the relay never dropped the stream"
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"line-{i}" for i in range(1, 31)]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_exec_over_mtls(tls_gateway: GatewayProcess, key: str, pki: CertificateAuthority, transport: str,
                        tmp_path: Path) -> None:
    url = urls(tls_gateway, tls=True)[transport]
    bot = pki.issue("ci-bot", organization="acme")
    tls = ["--ca-file", str(pki.cert), "--client-cert", str(bot.cert), "--client-key", str(bot.key)]
    done = cli("exec", "--url", url, *tls, "--", "sh", "-c", "echo mtls; exit 5")  # the certificate alone
    assert done.returncode == 5 and done.stdout == "mtls\n", done.stderr
    with_token = cli("exec", "--url", url, *tls, "--token", key, "--", "true")
    assert with_token.returncode == 0, with_token.stderr
    untrusted = cli("exec", "--url", url, "--client-cert", str(bot.cert), "--client-key", str(bot.key), "--", "true")
    assert untrusted.returncode == EXIT_STATUSES["gateway_error"]  # the gateway's CA is not the system's
    no_cert = cli("exec", "--url", url, "--ca-file", str(pki.cert), "--", "true")
    assert no_cert.returncode == EXIT_STATUSES["gateway_error"]


# -- tasks, files, settings -----------------------------------------------------------


def test_tasks_and_files_commands(gateway: GatewayProcess, key: str, tmp_path: Path) -> None:
    env = {"MCP_GATEWAY_URL": gateway.http_url, "MCP_GATEWAY_TOKEN": key}
    with Client(gateway.http_url, key) as gw:
        task = gw.execute("sh", ["-c", "echo logged"], wait_s=30)
    listed = cli("tasks", "list", "--limit", "3", "--output", "json", env=env)
    assert listed.returncode == 0 and task.task_id in listed.stdout
    logs = cli("tasks", "logs", task.task_id, env=env)
    assert logs.returncode == 0 and logs.stdout == "logged\n"
    got = cli("tasks", "get", task.task_id, "--output", "json", env=env)
    assert '"exit_code": 0' in got.stdout
    missing = cli("tasks", "get", "task-" + "0" * 32, env=env)
    assert missing.returncode == 1 and "error 6001" in missing.stderr
    put = cli("files", "put", "--workspace", "cli", "--create-dirs", "a/b.txt", input="payload", env=env)
    assert put.returncode == 0, put.stderr
    assert cli("files", "get", "--workspace", "cli", "a/b.txt", env=env).stdout == "payload"
    assert cli("files", "rm", "--workspace", "cli", "-r", "a", env=env).returncode == 0
    assert cli("files", "get", "--workspace", "cli", "a/b.txt", env=env).returncode == 1


def test_settings_come_from_flags_then_environment_then_the_config_file(gateway: GatewayProcess, key: str,
                                                                        tmp_path: Path) -> None:
    config = tmp_path / "mcp-gateway" / "client.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"url": gateway.http_url, "token": key}))
    config.chmod(0o644)
    home = {"XDG_CONFIG_HOME": str(tmp_path)}
    loose = cli("tasks", "list", env=home)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr  # a token others may read is refused
    config.chmod(0o600)
    assert cli("tasks", "list", env=home).returncode == 0  # from the file
    wrong = {**home, "MCP_GATEWAY_TOKEN": "mgw_" + "B" * 43}
    assert cli("tasks", "list", env=wrong).returncode == 1  # the environment beats the file
    assert cli("tasks", "list", "--token", key, env=wrong).returncode == 0  # the flag beats both


# -- helpers ----------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes(cmdline: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if cmdline.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


class _Relay:
    """A TCP relay to the gateway that drops one connection once the gateway has sent it
    ``cut_after_bytes`` bytes of an event stream (the first answer that holds ``text/event-stream``)."""

    def __init__(self, target_port: int, cut_after_bytes: int) -> None:
        self._target = target_port
        self._cut_after = cut_after_bytes
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> _Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_gateway: bool) -> None:
        sent, streaming = 0, False
        try:
            while data := source.recv(65536):
                streaming = streaming or (from_gateway and b"text/event-stream" in data)
                sink.sendall(data)
                sent += len(data)
                if streaming and self.cuts == 0 and sent >= self._cut_after:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_dev_gateway_answers_only_loopback_names(state_root: Path) -> None:
    # DNS rebinding: a page whose name now resolves to 127.0.0.1 must not reach the dev principal.
    state = Path(tempfile.mkdtemp(prefix="client-dev-", dir=state_root))
    gw = start_gateway(state / "var")
    try:
        import httpx

        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            assert http.get("/v1/tasks").status_code == 200
            assert http.get("/v1/tasks", headers={"Host": "localhost:8080"}).status_code == 200
            rebound = http.post("/v1/execute", json={"command": "id"}, headers={"Host": "evil.example"})
            assert rebound.status_code == 403 and rebound.json()["error"]["code"] == 1003
            page = http.post("/v1/execute", json={"command": "id"}, headers={"Origin": "http://evil.example"})
            assert page.status_code == 403 and "Origin" in page.json()["error"]["message"]
            assert http.get("/v1/tasks", headers={"Origin": "http://127.0.0.1:3000"}).status_code == 200
    finally:
        assert gw.stop() == 0


def test_the_cli_refuses_what_would_leak_or_mislead(gateway: GatewayProcess, key: str, tmp_path: Path) -> None:
    # A token never goes in clear to another host, a line break in it is no header and is
    # not echoed, dot segments never reach another route, local file errors are arguments.
    elsewhere = cli("tasks", "list", "--url", "http://192.0.2.1:8080", "--token", key)
    assert elsewhere.returncode == 2 and "in clear to 192.0.2.1" in elsewhere.stderr
    stray = cli("exec", "--url", "http://192.0.2.1:8080", "--token", key, "--", "true")
    assert stray.returncode == EXIT_STATUSES["gateway_error"]
    newline = cli("tasks", "list", env={"MCP_GATEWAY_URL": gateway.http_url, "MCP_GATEWAY_TOKEN": key + "\n"})
    assert newline.returncode == 0, newline.stderr  # the trailing line break of a secret file is dropped
    spaced = cli("tasks", "list", "--url", gateway.http_url, "--token", "mgw_a b")
    assert spaced.returncode == 2 and "mgw_a b" not in spaced.stderr
    with Client(gateway.http_url, key) as gw:
        task = gw.execute("true", wait_s=30)
        for client in (gw, Client(urls(gateway)["grpc"], key)):
            with pytest.raises(FileDenied):
                client.read_file(f"../tasks/{task.task_id}", workspace="cli")
        with pytest.raises(ValueError, match="port"):
            Client("http://127.0.0.1:notaport")
    missing = cli("files", "put", "--workspace", "cli", "x", "--from", str(tmp_path / "none"),
                  env={"MCP_GATEWAY_URL": gateway.http_url, "MCP_GATEWAY_TOKEN": key})
    assert missing.returncode == 2 and "No such file" in missing.stderr
    assert cli("tasks", "list", "--limit", "0", "--url", gateway.http_url, "--token", key).returncode == 2


def test_an_unclosed_client_does_not_keep_python_from_exiting(gateway: GatewayProcess, key: str) -> None:
    script = (f"from gateway.client import Client\nc = Client({gateway.http_url!r}, {key!r})\n"
              "c.list_tasks(limit=1)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
