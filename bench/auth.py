"""What authentication adds to a request: in process, and end to end over a real gateway.

    .venv/bin/python bench/auth.py [--quick] [--smoke]

Target (issue): the authentication step adds less than 0.3 ms median to a request, for
API keys and JWTs.

Part 1, in process: ``Authenticator.authenticate`` alone, timed per call with
``time.perf_counter_ns`` over N calls per path (20,000; 3,000 with ``--quick``, 100 with
``--smoke``) after a warm-up, the paths interleaved in 10 chunks so machine drift hits all
of them alike. Paths:
dev mode without credentials (the baseline: the cheapest path), an API key, JWTs signed
RS256 / ES256 / EdDSA (checked against a JWKS file) and HS256 (shared secret), the same
ES256 JWT but a new token on every call (all signed before timing: what a token's first use
costs; a verified token is remembered until it expires, so later calls with it skip the
signature check), and an mTLS client certificate as PEM bytes, as gRPC hands them (with
``tls.client_ca_file`` set, so a certificate is required). A client sends the same
credential on every call, so the other rows repeat one. Printed: median and p99 in µs,
the median as a multiple of the baseline's, PASS/FAIL of median < 300 µs (the whole
step is what authentication adds).

Part 2, end to end: a real ``mcp-gateway serve --dev --config <yaml>`` (API key and JWKS
file configured, rate limits off), and ``GET /v1/tasks/task-<32 zeros>`` over one HTTP
keep-alive connection (httpx), and ``GetTaskStatus`` of the same id over one gRPC channel
with ``authorization`` metadata. The answer is 404 / NOT_FOUND (6001): the caller was
authenticated, authorized and the store was asked; nothing runs. Variants: no credentials
(the dev principal, the baseline), API key, JWT ES256, JWT RS256 (one token each, as a
client sends), and JWT ES256 with a new token on every request (each token's first use);
after a warm-up they take turns one request at a time (A, B, C, D, E, A, B, ...) so drift on
a noisy machine hits all alike. Printed: median ms per variant and "added" = its median
minus the baseline's, PASS/FAIL of added < 0.3 ms. Added times of a few µs are below the
noise: read them as "nothing measurable", and a negative one as noise.

Reading the two parts together: part 1 is a tight loop with warm caches, the step's floor.
Inside a serving gateway other work runs between two calls, so the same step costs more
there (2-3x for a JWT on a small VM); part 2's "added" is what a caller pays.

Numbers only: the exit status is 0 when a target is missed; the last line sums up. Run as
root, the gateway's sandbox uid range is one of its own (nothing runs in it here).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import yaml
from common import parse_args

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.auth import Authenticator, Credentials  # noqa: E402
from gateway.auth.apikeys import hash_api_key, new_api_key  # noqa: E402
from gateway.auth.tokens import generate_signing_key, issue_token  # noqa: E402
from gateway.config import ApiKeyEntry, AuthSettings, ClientCertIdentity, JwtSettings, TlsSettings  # noqa: E402
from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402
from tests.pki import CertificateAuthority  # noqa: E402

FIRST_UID = 290_000  # the gateway's sandbox uid range when root: not one another bench or gateway holds
ISSUER, AUDIENCE = "https://issuer.bench.example", "mcp-gateway-bench"
SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]
TASK_ID = "task-" + "0" * 32
TARGET_US = 300.0
CHUNKS = 10


class BenchCredentials:
    """Every credential both parts use: an API key, ES256/RS256/EdDSA signing keys with
    their JWKS file, an HS256 secret, and an mTLS client certificate from a test CA."""

    def __init__(self, directory: Path) -> None:
        self.api_key = new_api_key()
        self.keys = {alg: generate_signing_key(alg) for alg in ("RS256", "ES256", "EdDSA")}
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk for _, jwk in self.keys.values()]}))
        self.hs256_secret = secrets.token_urlsafe(32)
        ca = CertificateAuthority(directory / "pki", "bench-ca")
        self.server = ca.issue("localhost", server=True, dns=("localhost",))
        self.client = ca.issue("bench-client", organization="bench")
        self.ca_file = ca.cert

    def token(self, alg: str) -> str:
        """A fresh JWT for principal ``bench-jwt`` (tenant ``default``, every scope)."""
        claims = dict(subject="bench-jwt", tenant="default", issuer=ISSUER, audience=AUDIENCE, scopes=SCOPES,
                      roles=["user"])
        if alg == "HS256":
            return issue_token(self.hs256_secret.encode(), hs256=True, **claims)
        return issue_token(self.keys[alg][0], **claims)

    def auth_settings(self) -> AuthSettings:
        key = ApiKeyEntry(hash=hash_api_key(self.api_key), principal="bench-key", tenant="default",
                          roles=["user"], scopes=SCOPES)
        jwt = JwtSettings(jwks_file=self.jwks_file, issuer=ISSUER, audience=AUDIENCE,
                          hs256_secret=self.hs256_secret)
        cert = ClientCertIdentity(subject=self.client.certificate.subject.rfc4514_string(),
                                  principal="bench-mtls", tenant="default", roles=["user"], scopes=SCOPES)
        return AuthSettings(dev_mode=True, api_keys=[key], jwt=jwt, client_certs=[cert])


def percentile(samples: list[int], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- part 1: the step in process -------------------------------------------------------


def in_process(creds: BenchCredentials, calls: int, warmup: int) -> list[tuple[str, float, float]]:
    """``(path, median µs, p99 µs)`` of ``Authenticator.authenticate`` per path."""
    settings = creds.auth_settings()
    plain = Authenticator(settings, TlsSettings())
    mtls = Authenticator(settings, TlsSettings(cert_file=creds.server.cert, key_file=creds.server.key,
                                               client_ca_file=creds.ca_file))
    for authenticator in (plain, mtls):
        authenticator.load()

    def bearer(value: str) -> Credentials:
        return Credentials(authorization=f"Bearer {value}")

    fresh = [bearer(creds.token("ES256")) for _ in range(calls + warmup)]  # signed before any timing
    paths: dict[str, tuple[Authenticator, Callable[[int], Credentials], str]] = {}

    def path(name: str, authenticator: Authenticator, one: Credentials | None, principal: str) -> None:
        paths[name] = (authenticator, (lambda i: one) if one is not None else (lambda i: fresh[i]), principal)

    path("dev mode, no credentials (baseline)", plain, Credentials(), "anonymous")
    path("API key", plain, bearer(creds.api_key), "bench-key")
    for alg in ("RS256", "ES256", "EdDSA", "HS256"):
        path(f"JWT {alg}", plain, bearer(creds.token(alg)), "bench-jwt")
    path("JWT ES256, new token each call", plain, None, "bench-jwt")
    pem = creds.client.cert.read_bytes()
    path("mTLS client certificate (PEM)", mtls, Credentials(client_cert=pem), "bench-mtls")

    samples: dict[str, list[int]] = {name: [] for name in paths}
    for name, (authenticator, credential, principal) in paths.items():  # check, then warm up
        got = authenticator.authenticate(credential(calls)).id
        if got != principal:
            raise SystemExit(f"{name}: authenticated as {got!r}, expected {principal!r}")
        for i in range(warmup):
            authenticator.authenticate(credential(calls + i))
    per_chunk = calls // CHUNKS
    clock = time.perf_counter_ns
    for chunk in range(CHUNKS):
        for name, (authenticator, credential, _) in paths.items():
            out = samples[name]
            for i in range(chunk * per_chunk, (chunk + 1) * per_chunk):
                c = credential(i)
                t0 = clock()
                authenticator.authenticate(c)
                out.append(clock() - t0)
    return [(name, statistics.median(s) / 1000, percentile(s, 0.99) / 1000) for name, s in samples.items()]


# -- part 2: end to end ------------------------------------------------------------------


class Gateway:
    """A real ``mcp-gateway serve --dev`` on free loopback ports, with a temporary state dir
    and a config file naming the API key and the JWKS file; rate limits off."""

    def __init__(self, creds: BenchCredentials, directory: Path) -> None:
        self._state = tempfile.TemporaryDirectory(prefix="auth-bench-gw-")
        os.chmod(self._state.name, 0o711)  # as a real state dir: the sandbox uids must reach workspaces
        config = directory / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "auth": {
                "api_keys": [{"hash": hash_api_key(creds.api_key), "principal": "bench-key", "tenant": "default",
                              "roles": ["user"], "scopes": SCOPES}],
                "jwt": {"jwks_file": str(creds.jwks_file), "issuer": ISSUER, "audience": AUDIENCE},
            },
            "rate_limits": {"principal": {"requests_per_s": 0}, "tenant": {"requests_per_s": 0}},
        }))
        env = dict(os.environ, MCP_GATEWAY_SANDBOX__UID=str(FIRST_UID), MCP_GATEWAY_SANDBOX__GID=str(FIRST_UID),
                   MCP_GATEWAY_SANDBOX__UID_COUNT="4", MCP_GATEWAY_TASKS__MAX_CONCURRENT="4")
        self._log = (directory / "gateway.stderr").open("w")
        self._proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mcp-gateway"), "serve", "--http-port", "0", "--grpc-port", "0",
             "--state-dir", self._state.name, "--config", str(config), "--log-level", "warning", "--dev"],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            stderr = Path(self._log.name).read_text()[-3000:]
            raise SystemExit(f"gateway did not start (exit {self._proc.returncode}): {line!r}\n{stderr}")
        self.addresses = dict(p.split("=", 1) for p in line.split()[1:])  # grpc=H:P http=H:P

    def close(self) -> None:
        """SIGTERM, then wait (SIGKILL after 60 s)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self._state.cleanup()


def end_to_end(gateway: Gateway, variants: dict[str, list[str | None]], requests: int,
               warmup: int) -> dict[str, dict[str, float]]:
    """Median ms per transport and variant (``variants``: name -> the authorization values
    (None: none) its requests send in turn)."""
    http = httpx.Client(base_url=f"http://{gateway.addresses['http']}", timeout=30)
    channel = grpc.insecure_channel(gateway.addresses["grpc"])
    stub = mcp_pb2_grpc.McpServiceStub(channel)
    request = mcp_pb2.TaskStatusRequest(task_id=TASK_ID)

    def over_http(authorization: str | None) -> None:
        response = http.get(f"/v1/tasks/{TASK_ID}", headers={"authorization": authorization} if authorization else None)
        if response.status_code != 404 or "6001" not in response.text:
            raise SystemExit(f"HTTP: expected 404/6001, got {response.status_code} {response.text[:300]}")

    def over_grpc(authorization: str | None) -> None:
        try:
            stub.GetTaskStatus(request, metadata=[("authorization", authorization)] if authorization else None)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise SystemExit(f"gRPC: expected NOT_FOUND, got {exc.code().name}: {exc.details()}") from None
        else:
            raise SystemExit("gRPC: expected NOT_FOUND, got an answer")

    results: dict[str, dict[str, float]] = {}
    try:
        for t, (transport, call) in enumerate((("HTTP", over_http), ("gRPC", over_grpc))):
            samples: dict[str, list[int]] = {name: [] for name in variants}
            first = t * (warmup + requests)  # each transport its own slice of a list of fresh tokens
            for i in range(first, first + warmup):
                for values in variants.values():
                    call(values[i % len(values)])
            for i in range(first + warmup, first + warmup + requests):
                for name, values in variants.items():
                    authorization = values[i % len(values)]
                    t0 = time.perf_counter_ns()
                    call(authorization)
                    samples[name].append(time.perf_counter_ns() - t0)
            results[transport] = {name: statistics.median(s) / 1e6 for name, s in samples.items()}
    finally:
        http.close()
        channel.close()
    return results


def main() -> None:
    """Run both parts and print their tables."""
    parser = argparse.ArgumentParser(description="what authentication adds to a request")
    parser.add_argument("--quick", action="store_true", help="fewer calls (3,000 in process, 300 requests)")
    args = parse_args(parser, smoke={})
    calls, requests = (100, 20) if args.smoke else (3000, 300) if args.quick else (20_000, 2000)
    passed, total = 0, 0
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        creds = BenchCredentials(Path(tmp))

        rows = in_process(creds, calls, warmup=calls // 10)
        base = rows[0][1]
        print(f"part 1: Authenticator.authenticate in process, {calls} calls per path (after {calls // 10} "
              f"warm-up), cpus={os.cpu_count()}")
        print(f"{'path':<36} | {'median µs':>9} | {'p99 µs':>8} | {'x baseline':>10} | median < {TARGET_US:.0f} µs")
        for name, median, p99 in rows:
            ok = median < TARGET_US
            passed, total = passed + ok, total + 1
            print(f"{name:<36} | {median:>9.1f} | {p99:>8.1f} | {median / base:>10.1f} | {'PASS' if ok else 'FAIL'}")

        warmup = max(50, requests // 10)
        # A token's first use is what the last row measures: never one the gateway saw before.
        fresh = [f"Bearer {creds.token('ES256')}" for _ in range(2 * (warmup + requests))]
        variants: dict[str, list[str | None]] = {
            "no credentials (baseline)": [None],
            "API key": [f"Bearer {creds.api_key}"],
            "JWT ES256": [f"Bearer {creds.token('ES256')}"],
            "JWT RS256": [f"Bearer {creds.token('RS256')}"],
            "JWT ES256, new each request": fresh,
        }
        gateway = Gateway(creds, Path(tmp))
        try:
            results = end_to_end(gateway, variants, requests, warmup)
        finally:
            gateway.close()
        print(f"\npart 2: GET /v1/tasks/{{id}} (HTTP keep-alive) and GetTaskStatus (gRPC) -> 404/NOT_FOUND on a "
              f"real gateway, {requests} requests per variant, variants interleaved")
        print(f"{'transport':<9} | {'credential':<27} | {'median ms':>9} | {'added ms':>8} | added < 0.3 ms")
        for transport, medians in results.items():
            baseline = medians["no credentials (baseline)"]
            for name, median in medians.items():
                added = round(median - baseline, 3) + 0.0  # no "-0.000"
                if name == "no credentials (baseline)":
                    verdict = "-"
                else:
                    ok = added < TARGET_US / 1000
                    passed, total, verdict = passed + ok, total + 1, "PASS" if ok else "FAIL"
                print(f"{transport:<9} | {name:<27} | {median:>9.3f} | {added:>+8.3f} | {verdict}")
    print(f"\nsummary: {passed}/{total} targets met (in process: median < 300 µs per path; end to end: "
          f"added < 0.3 ms per credential and transport) -> {'PASS' if passed == total else 'MISS'}")


if __name__ == "__main__":
    main()
