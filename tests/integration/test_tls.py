"""TLS and mTLS on both ports, against real gateway processes: client certificates mapped
to principals (by subject and by SAN), calls without one or with one from another CA,
unmapped certificates, an API key over mTLS, certificate rotation without a restart, and
the README's grpcurl / curl commands with certificates."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import mcp_types as types
import pytest
from cryptography.hazmat.primitives import serialization
from mcp import Client, StdioServerParameters

from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GATEWAY_BIN, GatewayProcess, start_gateway, wait_until
from tests.pki import CertificateAuthority, Issued

ALL_TASK_SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]
UNLIMITED = {"requests_per_s": 0, "burst": 100_000, "concurrent_tasks": 0}
ECHO = {"command": "echo", "args": ["hi"]}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


# -- PKI and gateways --------------------------------------------------------------


@dataclass
class Pki:
    """The gateway's CA and what it issued, plus a foreign CA and a certificate from it."""

    ca: CertificateAuthority
    server: Issued
    ci_bot: Issued  # subject CN=ci-bot,O=acme -> principal ci-bot
    agent: Issued  # SAN uri:spiffe://acme/agent -> principal agent
    unmapped: Issued  # right CA, named by no auth.client_certs entry
    foreign_ca: CertificateAuthority
    foreign: Issued  # the same subject as ci_bot, from the foreign CA


@dataclass
class TlsGateway:
    """A gateway with TLS on both ports: ``https`` base URL, gRPC ``addr``, its API key."""

    process: GatewayProcess
    api_key: str
    api_key_principal: str

    @property
    def addr(self) -> str:
        return self.process.grpc_addr

    @property
    def https(self) -> str:
        return "https://" + self.process.http_url.removeprefix("http://")

    @property
    def http_hostport(self) -> tuple[str, int]:
        host, port = self.process.http_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


def der(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def fingerprint(issued: Issued) -> str:
    """Hex SHA-256 of the certificate's DER: what audit events name it by."""
    return hashlib.sha256(der(issued)).hexdigest()


def gateway_dir(state_root: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=state_root)) / "var"


def start_tls_gateway(state_dir: Path, tls: dict[str, Any], client_certs: list[dict[str, Any]],
                      api_key_principal: str = "deployer") -> TlsGateway:
    """A non-dev gateway with ``tls`` settings, ``client_certs`` and one API key (tenant
    acme), and rate limits out of the way."""
    key = new_api_key()
    config = {
        "auth": {
            "api_keys": [{"hash": hash_api_key(key), "principal": api_key_principal, "tenant": "acme",
                          "scopes": ALL_TASK_SCOPES}],
            "client_certs": client_certs,
        },
        "tls": {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()},
        "rate_limits": {"principal": UNLIMITED, "tenant": UNLIMITED},
    }
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    path = state_dir.parent / "gateway.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return TlsGateway(start_gateway(state_dir, "--config", str(path), dev=False), key, api_key_principal)


def stop(gw: TlsGateway) -> None:
    code = gw.process.stop()
    assert code == 0, f"gateway exited {code}:\n{gw.process.stderr_path.read_text()}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(root / "gateway", "gateway-ca")
    foreign_ca = CertificateAuthority(root / "foreign", "foreign-ca")
    return Pki(
        ca=ca,
        server=ca.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",)),
        ci_bot=ca.issue("ci-bot", organization="acme"),
        agent=ca.issue("agent", uris=("spiffe://acme/agent",)),
        unmapped=ca.issue("stranger", organization="acme"),
        foreign_ca=foreign_ca,
        foreign=foreign_ca.issue("ci-bot", organization="acme"),
    )


@pytest.fixture(scope="module")
def mtls(pki: Pki, state_root: Path) -> Iterator[TlsGateway]:
    """A gateway requiring client certificates from ``pki.ca``."""
    identity = {"tenant": "acme", "scopes": ALL_TASK_SCOPES}
    gw = start_tls_gateway(
        gateway_dir(state_root, "test_tls-mtls-"),
        {"cert_file": pki.server.cert, "key_file": pki.server.key, "client_ca_file": pki.ca.cert},
        [{"subject": "CN=ci-bot,O=acme", "principal": "ci-bot", **identity},
         {"san": "uri:spiffe://acme/agent", "principal": "agent", **identity}],
    )
    yield gw
    stop(gw)


# -- clients -----------------------------------------------------------------------


def client_context(ca: CertificateAuthority, client: Issued | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (and checking the server's name), presenting ``client``."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


@contextmanager
def rest(gw: TlsGateway, ca: CertificateAuthority, client: Issued | None = None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.https, verify=client_context(ca, client), timeout=30) as http:
        yield http


@contextmanager
def grpc_stub(gw: TlsGateway, ca: CertificateAuthority,
              client: Issued | None = None) -> Iterator[mcp_pb2_grpc.McpServiceStub]:
    """A stub over a fresh channel (its own subchannels, so every channel does its own
    handshake) trusting ``ca`` and presenting ``client``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    with grpc.secure_channel(gw.addr, credentials, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        yield mcp_pb2_grpc.McpServiceStub(channel)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError ``call`` fails with (failing the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=10, **kwargs)
    return err.value


def error_details(err: grpc.RpcError) -> dict[str, Any]:
    trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    return json.loads(trailers["error-details"])["error"]


def grpc_execute_and_wait(stub: mcp_pb2_grpc.McpServiceStub, metadata: Any = None) -> str:
    """Run ``echo hi`` over gRPC; returns the task id once it completed with stdout ``hi``."""
    created = stub.ExecuteCommand(mcp_pb2.CommandRequest(**ECHO), timeout=30, metadata=metadata)

    def final() -> mcp_pb2.TaskStatusResponse | None:
        status = stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=created.task_id), timeout=30,
                                    metadata=metadata)
        return status if status.task_info.status >= mcp_pb2.TASK_COMPLETED else None

    status = wait_until(final, timeout_s=30, what="task end")
    assert status.task_info.status == mcp_pb2.TASK_COMPLETED, status
    assert (status.result.exit_code, status.result.stdout) == (0, "hi\n")
    return created.task_id


def rest_execute_and_wait(http: httpx.Client, headers: dict[str, str] | None = None) -> str:
    """Run ``echo hi`` over REST; returns the task id once it completed with stdout ``hi``."""
    response = http.post("/v1/execute", json=ECHO, headers=headers)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]

    def final() -> dict[str, Any] | None:
        body = http.get(f"/v1/tasks/{task_id}", headers=headers).json()
        return body if body["task_info"]["status"] in FINAL else None

    body = wait_until(final, timeout_s=30, what="task end")
    assert body["task_info"]["status"] == "COMPLETED", body
    assert (body["result"]["exit_code"], body["result"]["stdout"]) == (0, "hi\n")
    return task_id


def grpc_health_ok(gw: TlsGateway, ca: CertificateAuthority, client: Issued | None = None) -> bool:
    """Whether a fresh channel trusting only ``ca`` (presenting ``client``) completes a call
    (Health needs no credentials); False when it fails with UNAVAILABLE (the handshake)."""
    with grpc_stub(gw, ca, client) as stub:
        try:
            return stub.Health(mcp_pb2.HealthRequest(), timeout=5).status != ""
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err  # type: ignore[attr-defined]
            return False


def served_certificate(gw: TlsGateway) -> bytes:
    """DER of the certificate a new HTTPS connection is served (not verified: just looked at)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(gw.http_hostport, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


# -- audit -------------------------------------------------------------------------


def decision_event(gw: TlsGateway, task_id: str) -> dict[str, Any]:
    return next(e for e in gw.process.audit_events() if e["event_type"] == "decision" and e.get("task_id") == task_id)


def auth_failures(gw: TlsGateway) -> list[dict[str, Any]]:
    return [e for e in gw.process.audit_events() if e["event_type"] == "auth_failure"]


def assert_decision(event: dict[str, Any], *, principal: str, scheme: str, credential: str, transport: str) -> None:
    assert event["decision"] == "allow", event
    assert {k: event.get(k) for k in ("principal", "tenant", "auth_scheme", "credential_sha256", "tls", "transport")} \
        == {"principal": principal, "tenant": "acme", "auth_scheme": scheme, "credential_sha256": credential,
            "tls": True, "transport": transport}


# -- 1. mapped client certificates --------------------------------------------------


@pytest.mark.parametrize("who", ["ci_bot", "agent"], ids=["by-subject", "by-san"])
def test_mapped_client_certificate_over_grpc(mtls: TlsGateway, pki: Pki, who: str) -> None:
    client: Issued = getattr(pki, who)
    with grpc_stub(mtls, pki.ca, client) as stub:
        task_id = grpc_execute_and_wait(stub)
    assert_decision(decision_event(mtls, task_id), principal=who.replace("_", "-"), scheme="mtls",
                    credential=fingerprint(client), transport="grpc")


@pytest.mark.parametrize("who", ["ci_bot", "agent"], ids=["by-subject", "by-san"])
def test_mapped_client_certificate_over_https(mtls: TlsGateway, pki: Pki, who: str) -> None:
    client: Issued = getattr(pki, who)
    with rest(mtls, pki.ca, client) as http:
        task_id = rest_execute_and_wait(http)
    assert_decision(decision_event(mtls, task_id), principal=who.replace("_", "-"), scheme="mtls",
                    credential=fingerprint(client), transport="https")


def test_mapped_client_certificate_over_mcp_through_the_stdio_bridge(mtls: TlsGateway, pki: Pki) -> None:
    """The MCP edge authenticates client certificates like the others; the stdio bridge
    presents one (and trusts the gateway's CA) when told to."""
    params = StdioServerParameters(command=str(GATEWAY_BIN), args=[
        "mcp-stdio", "--url", mtls.https, "--ca-file", str(pki.ca.cert), "--client-cert", str(pki.agent.cert),
        "--client-key", str(pki.agent.key)])

    async def run() -> types.CallToolResult:
        async with Client(params, mode="legacy", cache=None) as client:
            return await client.call_tool("execute_command", {"command": "echo", "args": ["hi"]})

    body = asyncio.run(run()).structured_content or {}
    assert body["stdout"] == "hi\n"
    assert_decision(decision_event(mtls, body["task_id"]), principal="agent", scheme="mtls",
                    credential=fingerprint(pki.agent), transport="mcp")


# -- 2. no client certificate --------------------------------------------------------


def test_https_without_client_certificate_is_refused_with_1001(mtls: TlsGateway, pki: Pki) -> None:
    before = len(auth_failures(mtls))
    with rest(mtls, pki.ca) as http:
        response = http.post("/v1/execute", json=ECHO)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["reason"]) == (1001, "client_certificate_required")
    assert response.headers["www-authenticate"].startswith("Bearer")
    (event,) = auth_failures(mtls)[before:]
    assert (event["auth_reason"], event["auth_scheme"], event["transport"], event["tls"]) == \
        ("client_certificate_required", "none", "https", True)
    assert "credential_sha256" not in event


def test_https_probes_need_no_client_certificate(mtls: TlsGateway, pki: Pki) -> None:
    with rest(mtls, pki.ca) as http:
        for path in ("/health", "/health/ready", "/health/live", "/metrics"):
            assert http.get(path).status_code == 200, path


def test_grpc_without_client_certificate_fails_the_handshake(mtls: TlsGateway, pki: Pki) -> None:
    # grpcio's server has no "ask for a client certificate but do not require one" mode, so
    # with a client CA the handshake itself is refused (a TLS alert): no RPC reaches the
    # gateway and no project error (1001) can be sent; the client sees UNAVAILABLE.
    before = len(mtls.process.audit_events())
    with grpc_stub(mtls, pki.ca) as stub:
        err = rpc_error(stub.ExecuteCommand, mcp_pb2.CommandRequest(**ECHO))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err  # type: ignore[attr-defined]
    assert not [e for e in mtls.process.audit_events()[before:] if e["event_type"] == "auth_failure"]
    # Not even Health (which needs no credentials) gets through; with a certificate it does.
    assert not grpc_health_ok(mtls, pki.ca)
    assert grpc_health_ok(mtls, pki.ca, pki.ci_bot)


# -- 3. a client certificate from another CA -------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_https_with_foreign_ca_certificate_fails_the_handshake(mtls: TlsGateway, pki: Pki,
                                                               version: ssl.TLSVersion) -> None:
    before = len(auth_failures(mtls))
    context = client_context(pki.ca, pki.foreign)
    context.maximum_version = version
    with httpx.Client(base_url=mtls.https, verify=context, timeout=30) as http:
        # The server drops the connection in the handshake (asyncio's TLS closes without
        # flushing its alert, so the client sees an EOF rather than "unknown ca"). Under TLS
        # 1.2 that is inside the client's handshake: ConnectError. Under TLS 1.3 the client
        # has finished its side before the server checks the certificate, so the drop shows
        # on the first read: no HTTP response either way.
        expected = httpx.ConnectError if version == ssl.TLSVersion.TLSv1_2 else (
            httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
        with pytest.raises(expected):
            http.post("/v1/execute", json=ECHO)
    assert len(auth_failures(mtls)) == before
    assert not [e for e in mtls.process.audit_events() if e.get("credential_sha256") == fingerprint(pki.foreign)]


def test_grpc_with_foreign_ca_certificate_fails_the_handshake(mtls: TlsGateway, pki: Pki) -> None:
    before = len(auth_failures(mtls))
    with grpc_stub(mtls, pki.ca, pki.foreign) as stub:
        err = rpc_error(stub.ExecuteCommand, mcp_pb2.CommandRequest(**ECHO))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err  # type: ignore[attr-defined]
    assert len(auth_failures(mtls)) == before
    assert not grpc_health_ok(mtls, pki.ca, pki.foreign)


# -- 4. a certificate from the right CA that no identity maps ---------------------------


def assert_unmapped_audited(gw: TlsGateway, before: int, client: Issued, transport: str) -> None:
    (event,) = auth_failures(gw)[before:]
    assert {k: event.get(k) for k in ("principal", "tenant", "auth_scheme", "auth_reason", "error_code",
                                      "transport", "tls")} == {
        "principal": "unauthenticated", "tenant": "unknown", "auth_scheme": "mtls",
        "auth_reason": "unmapped_client_certificate", "error_code": 1001, "transport": transport, "tls": True,
    }
    assert event.get("credential_sha256") == fingerprint(client)


def test_unmapped_certificate_over_https_is_1001(mtls: TlsGateway, pki: Pki) -> None:
    before = len(auth_failures(mtls))
    with rest(mtls, pki.ca, pki.unmapped) as http:
        response = http.post("/v1/execute", json=ECHO)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["reason"]) == (1001, "unmapped_client_certificate")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_unmapped_audited(mtls, before, pki.unmapped, "https")


def test_unmapped_certificate_over_grpc_is_1001(mtls: TlsGateway, pki: Pki) -> None:
    before = len(auth_failures(mtls))
    with grpc_stub(mtls, pki.ca, pki.unmapped) as stub:
        err = rpc_error(stub.ExecuteCommand, mcp_pb2.CommandRequest(**ECHO))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err  # type: ignore[attr-defined]
    error = error_details(err)
    assert (error["code"], error["details"]["reason"]) == (1001, "unmapped_client_certificate")
    assert_unmapped_audited(mtls, before, pki.unmapped, "grpc")


# -- 5. an API key over mTLS -------------------------------------------------------------


def test_api_key_over_mtls_names_the_principal_on_grpc(mtls: TlsGateway, pki: Pki) -> None:
    with grpc_stub(mtls, pki.ca, pki.ci_bot) as stub:
        task_id = grpc_execute_and_wait(stub, metadata=bearer(mtls.api_key))
    assert_decision(decision_event(mtls, task_id), principal=mtls.api_key_principal, scheme="bearer",
                    credential=hashlib.sha256(mtls.api_key.encode()).hexdigest(), transport="grpc")


def test_api_key_over_mtls_names_the_principal_on_https(mtls: TlsGateway, pki: Pki) -> None:
    with rest(mtls, pki.ca, pki.ci_bot) as http:
        task_id = rest_execute_and_wait(http, headers={"authorization": f"Bearer {mtls.api_key}"})
    assert_decision(decision_event(mtls, task_id), principal=mtls.api_key_principal, scheme="bearer",
                    credential=hashlib.sha256(mtls.api_key.encode()).hexdigest(), transport="https")


# -- 6. certificate reload ----------------------------------------------------------------


@dataclass
class Rotation:
    """The reloading gateway, the live cert/key files it serves, and CAs to issue from."""

    gw: TlsGateway
    cert_file: Path
    key_file: Path
    old_ca: CertificateAuthority
    new_ca: CertificateAuthority


def install(cert: Path, key: Path, rotation: Rotation) -> None:
    """Replace the served files, each in one rename (key first)."""
    for source, target in ((key, rotation.key_file), (cert, rotation.cert_file)):
        staged = target.with_suffix(".staged")
        shutil.copyfile(source, staged)
        os.replace(staged, target)


@pytest.fixture(scope="module")
def rotation(pki: Pki, state_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotation]:
    """A TLS-only gateway (no client CA) checking its files every 0.2 s."""
    live = tmp_path_factory.mktemp("live-tls")
    cert_file, key_file = live / "server.crt", live / "server.key"
    shutil.copyfile(pki.server.cert, cert_file)
    shutil.copyfile(pki.server.key, key_file)
    gw = start_tls_gateway(gateway_dir(state_root, "test_tls-reload-"),
                           {"cert_file": cert_file, "key_file": key_file, "reload_check_s": 0.2}, [])
    yield Rotation(gw, cert_file, key_file, pki.ca, CertificateAuthority(live / "new-ca", "new-ca"))
    stop(gw)


def test_rotated_certificate_is_served_without_a_restart(rotation: Rotation, pki: Pki) -> None:
    gw = rotation.gw
    assert served_certificate(gw) == der(pki.server)
    assert grpc_health_ok(gw, rotation.old_ca) and not grpc_health_ok(gw, rotation.new_ca)

    new = rotation.new_ca.issue("rotated", server=True, dns=("localhost",), ips=("127.0.0.1",))
    install(new.cert, new.key, rotation)
    wait_until(lambda: served_certificate(gw) == der(new), timeout_s=5, what="new HTTPS certificate")
    wait_until(lambda: grpc_health_ok(gw, rotation.new_ca), timeout_s=5, what="new gRPC certificate")
    assert not grpc_health_ok(gw, rotation.old_ca)
    # The API key works over the new certificate.
    with rest(gw, rotation.new_ca) as http:
        rest_execute_and_wait(http, headers={"authorization": f"Bearer {gw.api_key}"})
    with grpc_stub(gw, rotation.new_ca) as stub:
        grpc_execute_and_wait(stub, metadata=bearer(gw.api_key))


def test_mismatched_certificate_and_key_keep_the_previous_certificate(rotation: Rotation) -> None:
    gw = rotation.gw
    serving = served_certificate(gw)
    serving_ca = next(ca for ca in (rotation.old_ca, rotation.new_ca) if grpc_health_ok(gw, ca))
    one = rotation.new_ca.issue("mismatch-cert", server=True, dns=("localhost",), ips=("127.0.0.1",))
    other = rotation.new_ca.issue("mismatch-key", server=True, dns=("localhost",), ips=("127.0.0.1",))
    install(one.cert, other.key, rotation)

    def refused() -> bool:
        served_certificate(gw)  # a new connection makes the gateway look at the files
        return "keeping the previous certificate" in gw.process.stderr_path.read_text()

    wait_until(refused, timeout_s=5, what="the mismatched pair refused")
    assert served_certificate(gw) == serving
    assert grpc_health_ok(gw, serving_ca)


# -- 7. the README's grpcurl and curl commands, with certificates -----------------------------


def readme_headers(gw: TlsGateway, with_key: bool, flag: str) -> list[str]:
    """The README's ``-H "authorization: Bearer $TOKEN"`` (grpcurl ``-H``, curl ``-H``), or nothing."""
    return [flag, f"authorization: Bearer {gw.api_key}"] if with_key else []


@pytest.mark.grpcurl
@pytest.mark.parametrize("with_key", [False, True], ids=["certificate", "certificate+api-key"])
def test_grpcurl_with_client_certificate(mtls: TlsGateway, pki: Pki, grpcurl_binary: str | None,
                                         with_key: bool) -> None:
    if grpcurl_binary is None:
        pytest.skip("grpcurl unavailable here (reason printed by the grpcurl_binary fixture)")
    out = subprocess.run(
        [grpcurl_binary, "-cacert", str(pki.ca.cert), "-cert", str(pki.ci_bot.cert), "-key", str(pki.ci_bot.key),
         *readme_headers(mtls, with_key, "-H"), "-d", json.dumps(ECHO), mtls.addr, "mcp.McpService/ExecuteCommand"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["task_id"]
    assert task_id.startswith("task-")
    assert decision_event(mtls, task_id)["principal"] == (mtls.api_key_principal if with_key else "ci-bot")
    # Without a client certificate grpcurl cannot even connect (it would retry for its
    # whole -connect-timeout, so keep that short).
    refused = subprocess.run(
        [grpcurl_binary, "-connect-timeout", "1", "-cacert", str(pki.ca.cert), *readme_headers(mtls, with_key, "-H"),
         "-d", json.dumps(ECHO), mtls.addr, "mcp.McpService/ExecuteCommand"], capture_output=True, text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "Failed to dial target host" in refused.stderr, refused.stderr


@pytest.mark.parametrize("with_key", [False, True], ids=["certificate", "certificate+api-key"])
def test_curl_with_client_certificate(mtls: TlsGateway, pki: Pki, with_key: bool) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not on PATH")
    out = subprocess.run(
        [curl, "-sS", "--cacert", str(pki.ca.cert), "--cert", str(pki.ci_bot.cert), "--key", str(pki.ci_bot.key),
         f"{mtls.https}/v1/execute", *readme_headers(mtls, with_key, "-H"), "-H", "content-type: application/json",
         "-d", json.dumps(ECHO), "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "202", out.stdout
    task_id = json.loads(body)["task_id"]
    assert decision_event(mtls, task_id)["principal"] == (mtls.api_key_principal if with_key else "ci-bot")
