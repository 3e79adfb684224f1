"""Gateway settings: one schema, many sources (design section 10).

Precedence, highest first: command-line flags (passed as init kwargs), environment
variables ``MCP_GATEWAY_*`` (nested with ``__``, e.g. ``MCP_GATEWAY_TASKS__MAX_CONCURRENT=8``),
the YAML file named by ``--config`` / ``MCP_GATEWAY_CONFIG``, then the defaults here.
Every field states its unit and default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.models import SCOPES, Principal

__all__ = [
    "NAME_PATTERN",
    "AdmissionSettings",
    "ApiKeyEntry",
    "AuditSettings",
    "WebhookSettings",
    "AuthSettings",
    "ClientCertIdentity",
    "JwtSettings",
    "RateLimit",
    "RateLimitSettings",
    "TlsSettings",
    "FileSettings",
    "LimitSettings",
    "PolicySettings",
    "SandboxSettings",
    "Settings",
    "TaskSettings",
    "default_policy_dir",
    "is_loopback_host",
    "load_settings",
]


def default_policy_dir() -> Path:
    """The policy bundle shipped with the source tree (``<repo>/policies``)."""
    return Path(__file__).resolve().parent.parent / "policies"


def is_loopback_host(host: str) -> bool:
    """True when ``host`` is ``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SandboxSettings(BaseModel):
    """How commands are sandboxed (see sandbox/ and design section 7)."""

    model_config = ConfigDict(extra="forbid")

    bwrap_path: str = Field("bwrap", description="bubblewrap executable (PATH lookup).")
    uid: int = Field(
        60000,
        ge=1,
        description="First host uid of the range sandboxes run as when the gateway runs as "
        "root: each running task gets a uid of its own, uid .. uid+uid_count-1 (never 0; bwrap "
        "is never exec'd as root). Nothing else on the host may use these uids; the gateway "
        "refuses to start if a process does. Ignored when not root (sandboxes then share the "
        "gateway's uid).",
    )
    gid: int = Field(60000, ge=1, description="First host gid of the range, paired with uid.")
    uid_count: int = Field(
        256, ge=1, le=65536, description="Size of the uid/gid range; at least tasks.max_concurrent."
    )
    cgroups: Literal["auto", "required", "off"] = Field(
        "auto",
        description="Per-task cgroups (memory incl. swap, pids, CPU quota): 'auto' uses them when "
        "the host allows and reports what it cannot enforce (requests for an unenforceable limit "
        "get 4001); 'required' refuses to start without memory and pids controllers; 'off' never "
        "uses them (memory is then RLIMIT_AS per process).",
    )
    address_space_bytes: int = Field(
        16 << 30,
        ge=1 << 20,
        description="RLIMIT_AS per process, bytes, when a memory cgroup enforces the task's "
        "memory limit (runtimes like Go, Java and Node reserve far more address space than they "
        "use). Without a memory cgroup the task's memory limit is the RLIMIT_AS.",
    )
    profile: str = Field("default", description="seccomp profile name.")
    workspace_root: Path | None = Field(
        None,
        description="Parent of per-task workspaces; default <state_dir>/workspaces. Every "
        "ancestor must be searchable (x bit) by the sandbox uids, because bwrap resolves the "
        "bind source by path as that uid, and writable only by root or the gateway, so nothing "
        "can swap a directory under a bind; the gateway checks both at start.",
    )
    default_timeout_s: int = Field(30, ge=1, description="Wall-clock limit when a request asks 0, seconds.")
    max_timeout_s: int = Field(3600, ge=1, description="Hard maximum a request may ask, seconds.")
    max_memory_bytes: int = Field(4 << 30, ge=1 << 20, description="Hard cap on memory, bytes.")
    max_pids: int = Field(
        256, ge=8,
        description="Hard cap on processes + threads per task (pids cgroup; without one, "
        "RLIMIT_NPROC on the task's own uid).",
    )
    max_cpu_cores: float = Field(
        64.0, gt=0, description="Hard cap on the CPU quota a request may ask, cores."
    )
    max_cpu_seconds: int = Field(3600, ge=1, description="Hard cap on CPU time, seconds.")
    output_bytes: int = Field(1 << 20, ge=1024, description="Captured output cap per stream, bytes.")
    tmp_size_bytes: int = Field(64 << 20, ge=1 << 20, description="Size of each of the sandbox /tmp and /dev/shm tmpfs, bytes.")
    file_size_bytes: int = Field(64 << 20, ge=1 << 20, description="RLIMIT_FSIZE, bytes.")
    open_files: int = Field(256, ge=16, description="RLIMIT_NOFILE.")
    nice: int = Field(
        10, ge=0, le=19,
        description="Nice value of every sandboxed process (setpriority(2)): under CPU contention tasks "
        "yield to the gateway, so admission, health and status answers stay fast. 0 = the gateway's own.",
    )


class TaskSettings(BaseModel):
    """Task scheduling, storage and lifecycle."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(4, ge=1, le=256, description="Sandboxes running at once (per gateway process).")
    max_queued: int = Field(
        256, ge=0, description="Tasks waiting for a slot (TASK_QUEUED) before 4290 + Retry-After is answered."
    )
    max_running_per_principal: int = Field(
        0, ge=0,
        description="Sandboxes one principal may run at once; its further tasks wait in the queue "
        "while other principals' tasks go ahead. 0 = max_concurrent.",
    )
    store_dsn: str | None = Field(
        None,
        description="Task store: unset = SQLite at <state_dir>/tasks.db (one gateway process); a "
        "'postgresql://user:pass@host:port/db' DSN = PostgreSQL, shared by several replicas.",
    )
    output_flush_ms: int = Field(
        50, ge=5, le=5000,
        description="Live output is written to the store and pushed to readers at least this "
        "often while a task runs, milliseconds.",
    )
    max_wait_s: float = Field(
        300.0, ge=0, le=3600,
        description="Longest a call that creates a task may wait for its result (REST "
        "'POST /v1/execute?wait=', gRPC ExecuteCommandAndWait), seconds; a longer wait is refused "
        "with 2001. The wait holds no admission slot, only the connection.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0,
        description="On SIGTERM: running tasks may finish for this long, seconds; the rest are "
        "then cancelled and recorded. Queued tasks are cancelled at once.",
    )
    retention_s: int = Field(
        7 * 86400, ge=60, description="Finished tasks and their output are deleted this long after they end, seconds."
    )
    workspace_retention_s: int = Field(
        86400, ge=60, description="A workspace no task or file call has used for this long is removed, seconds."
    )
    sweep_interval_s: float = Field(
        60.0, gt=0, description="How often expired tasks and workspaces are removed, seconds."
    )
    orphan_check_interval_s: float = Field(
        10.0, gt=0,
        description="Shared store: how often a replica looks for unfinished tasks of a dead replica "
        "(and fails them with reason gateway_restart), seconds.",
    )

    @property
    def running_per_principal(self) -> int:
        """The effective per-principal running quota."""
        return min(self.max_running_per_principal or self.max_concurrent, self.max_concurrent)

    @field_validator("store_dsn")
    @classmethod
    def _postgres_dsn(cls, dsn: str | None) -> str | None:
        if dsn is not None and not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("tasks.store_dsn must be a postgresql:// URL (unset for the embedded SQLite store)")
        return dsn


class FileSettings(BaseModel):
    """The files API (ReadFile / WriteFile / DeleteFile, /v1/files)."""

    model_config = ConfigDict(extra="forbid")

    max_read_bytes: int = Field(3 << 20, ge=1, description="Largest file ReadFile returns, bytes.")
    max_write_bytes: int = Field(
        1 << 20, ge=1, description="Largest content WriteFile accepts, bytes (also bounded by limits.max_request_bytes)."
    )


class LimitSettings(BaseModel):
    """Request size caps, checked before policy evaluation."""

    model_config = ConfigDict(extra="forbid")

    max_command_bytes: int = Field(4096, ge=1, description="Command name/path length, bytes.")
    max_args: int = Field(
        512, ge=0,
        description="Number of arguments. Policy evaluation time grows with it "
        "(about 35 ms per 1000 arguments with the shipped policy).",
    )
    max_args_bytes: int = Field(
        64 << 10, ge=1,
        description="Total size of all arguments, bytes. Arguments are policy input: the "
        "policy engine's input cap is derived from this (see policy_input_cap_bytes).",
    )
    max_env: int = Field(128, ge=0, description="Number of environment variables.")
    max_env_bytes: int = Field(64 << 10, ge=1, description="Total size of env keys and values, bytes.")
    max_metadata: int = Field(64, ge=0, description="Number of metadata entries.")
    max_metadata_bytes: int = Field(16 << 10, ge=1, description="Total size of metadata, bytes.")
    max_paths: int = Field(
        64, ge=0, description="Entries in each of ro_paths/rw_paths/denied_paths/allowed_hosts."
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body/message, bytes.")

    @property
    def policy_input_cap_bytes(self) -> int:
        """Cap on the JSON policy input, bytes: what a request within these limits can
        produce, with JSON escaping at its worst (6 bytes per control character) plus
        64 KiB for keys and structure; so a valid request never hits it."""
        return 6 * (self.max_args_bytes + 2 * self.max_command_bytes + self.max_env_bytes) + (64 << 10)


class PolicySettings(BaseModel):
    """Which engine decides and how (design section 6; the bundle is ``policy_dir``)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["embedded", "wasm", "opa"] = Field(
        "embedded",
        description="'embedded': Rego evaluated by regopy (rego-cpp) in worker processes, no server. "
        "'wasm': the bundle compiled by OPA's compiler (opa build -t wasm, needs opa_binary) and evaluated "
        "in-process by wasmtime: OPA's semantics, ~15x faster than 'embedded'. "
        "'opa': an OPA server's Data API at opa_url decides.",
    )
    opa_binary: str = Field(
        "opa", description="engine 'wasm': the opa CLI that compiles the bundle at start and at each reload "
        "(a path, or a name on PATH).",
    )
    wasm_memory_bytes: int = Field(
        256 << 20, ge=1 << 20,
        description="engine 'wasm': the most memory one evaluation instance may use, bytes; an evaluation "
        "that needs more is a deny (5003).",
    )
    opa_url: str | None = Field(None, description="OPA base URL, e.g. http://127.0.0.1:8181 (engine 'opa').")
    opa_push: bool = Field(
        False,
        description="engine 'opa': upload policy_dir to OPA at start and on every reload. "
        "False: OPA loads the bundle itself (opa run -s -b policies/ --watch).",
    )
    opa_startup_wait_s: float = Field(
        30.0, ge=0, description="How long start-up waits for OPA to answer /health, seconds."
    )
    timeout_ms: int = Field(
        250, ge=1, le=10_000,
        description="Deadline of one decision, milliseconds: the embedded worker is killed "
        "and replaced past it, the wasm instance interrupted and replaced (waiting for a free "
        "worker or instance has the same limit); the OPA request is abandoned. Either way: deny, 5003.",
    )
    workers: int = Field(
        2, ge=1, le=64,
        description="Evaluations at once: worker processes (engine 'embedded') or instances (engine 'wasm').",
    )
    cache_entries: int = Field(
        4096, ge=0,
        description="Engines 'embedded' and 'wasm': decisions kept for reuse by equal inputs (LRU; 0 = off). Used only "
        "when no module can read input.context, so a decision depends on the rest of the input and "
        "the bundle alone; a reload empties it.",
    )
    watch: bool = Field(
        True,
        description="Reload policy_dir when its files change (engines 'embedded' and 'wasm', or 'opa' with "
        "opa_push); a bundle that fails to load, compile or decide is rejected and the old "
        "one stays.",
    )

    @model_validator(mode="after")
    def _opa_needs_url(self) -> PolicySettings:
        if self.engine == "opa" and not self.opa_url:
            raise ValueError("policy.engine 'opa' needs policy.opa_url")
        return self


class WebhookSettings(BaseModel):
    """An HTTP collector that receives every audit line (``gateway.audit.sinks.WebhookSink``)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://", description="Collector URL; lines are POSTed as application/x-ndjson.")
    secret_file: Path | None = Field(
        None, description="File whose bytes (trailing line breaks dropped) key the X-MCP-Audit-Signature HMAC-SHA256.",
    )
    batch_events: int = Field(100, ge=1, le=10_000, description="Lines per POST, at most.")
    batch_delay_s: float = Field(0.05, ge=0, le=10, description="How long a batch waits for more lines, seconds.")
    queue_events: int = Field(10_000, ge=1, le=1_000_000, description="Lines waiting for delivery, at most.")
    spool_path: Path | None = Field(
        None, description="Spool file: queued lines survive a restart (default: memory only).",
    )
    timeout_s: float = Field(5.0, gt=0, le=300, description="Per POST, seconds.")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First retry delay, seconds (doubles).")
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Longest retry delay, seconds.")
    on_full: Literal["block", "fail"] = Field(
        "block",
        description="When the queue is full: block callers up to block_timeout_s, or fail them at once (5001).",
    )
    block_timeout_s: float = Field(2.0, ge=0, le=60, description="The 'block' deadline, seconds; then 5001.")


class AuditSettings(BaseModel):
    """The audit trail (design sections 8 and 11)."""

    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(None, description="JSON-lines file; default <state_dir>/audit.jsonl.")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="always: fsync each event before the call proceeds (nothing acknowledged is lost, even "
        "to power loss; ~ms per event). interval: fsync within fsync_interval_s (power loss loses at most "
        "that). never: the kernel's writeback (power loss loses up to ~30 s). A gateway crash loses "
        "nothing under any policy: each line is in the kernel before the call proceeds.",
    )
    fsync_interval_s: float = Field(1.0, gt=0, le=60, description="The 'interval' policy's bound, seconds.")
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Rotate the file at this size, bytes (0 = never).")
    rotate_age_s: float = Field(86400.0, ge=0, description="Rotate when its first event is this old, seconds (0 = never).")
    retention_files: int = Field(0, ge=0, description="Rotated files kept, newest first (0 = all).")
    signing_key: Path | None = Field(
        None,
        description="Ed25519 private key (PKCS#8 PEM, mode 0600) that signs checkpoints; default "
        "<state_dir>/audit-signing.key, created at first start. A key named here must exist "
        "(mcp-gateway audit keygen).",
    )
    checkpoint_events: int = Field(1000, ge=1, le=1_000_000, description="A signed checkpoint follows at most this many events.")
    checkpoint_interval_s: float = Field(
        60.0, gt=0, le=86400, description="And at most this long after an event, seconds.",
    )
    stdout: bool = Field(False, description="Also write every line to standard output (container log pipelines).")
    webhook: WebhookSettings | None = Field(None, description="Also deliver every line to an HTTP collector.")

    @field_validator("fsync", mode="before")
    @classmethod
    def _fsync_bool(cls, value: Any) -> Any:
        """``fsync: true|false`` of earlier versions means always / never."""
        if isinstance(value, bool):
            return "always" if value else "never"
        return value


#: Principal ids, tenants and role names: 1-128 characters, no spaces or controls.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:/+=-]{0,127}$"


class _Binding(BaseModel):
    """Who a credential stands for: the principal of the policy input."""

    model_config = ConfigDict(extra="forbid")
    principal: str = Field(pattern=NAME_PATTERN, description="Principal id.")
    tenant: str = Field(pattern=NAME_PATTERN, description="Tenant the principal belongs to.")
    roles: list[str] = Field(default_factory=lambda: ["user"], description="Role names ('admin' sees the whole tenant's tasks).")
    scopes: list[str] = Field(description="Granted scopes (see gateway.models.SCOPES).")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
        return scopes

    def as_principal(self, auth_scheme: str, credential_sha256: str | None = None) -> Principal:
        """The principal this binding names, authenticated by ``auth_scheme``."""
        return Principal(id=self.principal, tenant=self.tenant, roles=tuple(self.roles), scopes=tuple(self.scopes),
                         auth_scheme=auth_scheme, credential_sha256=credential_sha256)

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: list[str]) -> list[str]:
        bad = [r for r in roles if not re.fullmatch(NAME_PATTERN, r)]
        if bad:
            raise ValueError(f"bad role names {bad}")
        return roles


class ApiKeyEntry(_Binding):
    """One API key, stored only as its hash (``mcp-gateway apikey create`` prints the line).

    Keys are ``mgw_`` + 43 base64url characters (256 random bits), so a plain SHA-256 is the
    right hash: nothing can be guessed, and checking one costs a microsecond.
    """

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="'sha256:' + hex SHA-256 of the whole key.")
    name: str = Field("", max_length=128, description="Free text for operators (who holds the key).")
    revoked: bool = Field(
        False, description="Refuse the key (1001, reason revoked_api_key); deleting the entry refuses it too."
    )
    expires_at: int | None = Field(None, ge=0, description="Refuse the key after this time, unix seconds (1002).")


class ClientCertIdentity(_Binding):
    """Maps a verified client certificate to a principal: by its subject or by one SAN.

    ``subject`` is the RFC 4514 string as ``cryptography`` prints it (most specific RDN first,
    e.g. ``CN=ci-bot,O=acme``); ``san`` is ``dns:NAME``, ``uri:URI`` (SPIFFE ids) or
    ``email:ADDR``. Exactly one of them is set.
    """

    subject: str | None = Field(None, description="RFC 4514 subject, e.g. 'CN=ci-bot,O=acme'.")
    san: str | None = Field(None, pattern=r"^(dns|uri|email):.+", description="'dns:…', 'uri:…' or 'email:…'.")

    @model_validator(mode="after")
    def _one_match(self) -> ClientCertIdentity:
        if (self.subject is None) == (self.san is None):
            raise ValueError("a client certificate identity needs exactly one of 'subject' or 'san'")
        return self


class JwtSettings(BaseModel):
    """JWT bearer tokens (RFC 7519), verified with PyJWT.

    Asymmetric tokens (RS256, ES256, EdDSA) are checked against a JWKS (RFC 7517) file or
    URL; HS256 only when ``hs256_secret`` is set. ``alg: none``, an algorithm outside
    ``algorithms``, or a key of another type than the token's algorithm is refused.
    """

    model_config = ConfigDict(extra="forbid")
    jwks_file: Path | None = Field(None, description="JWKS file; re-read when it changes.")
    jwks_url: str | None = Field(None, pattern=r"^https?://", description="JWKS URL (an IdP's jwks_uri).")
    hs256_secret: SecretStr | None = Field(None, description="Shared HS256 secret, at least 32 bytes.")
    issuer: str | None = Field(None, description="Required 'iss'.")
    audience: str | None = Field(None, description="Required 'aud' (one of the token's audiences).")
    algorithms: list[Literal["RS256", "ES256", "EdDSA"]] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"], description="Asymmetric algorithms accepted."
    )
    leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp / nbf / iat, seconds.")
    jwks_cache_s: float = Field(300.0, ge=1, description="A fetched JWKS is refreshed after this long, seconds.")
    jwks_min_refresh_s: float = Field(
        10.0, ge=0,
        description="An unknown 'kid' refetches the JWKS at most this often, seconds (so random kids "
        "cannot make the gateway hammer the IdP).",
    )
    cache_entries: int = Field(
        4096, ge=0,
        description="Verified tokens kept (by SHA-256) so a client's next call with the same token "
        "skips the signature check; each is used only while its exp / nbf hold and the JWKS it was "
        "checked against is current. A config reload empties it. 0 = off.",
    )
    principal_claim: str = Field("sub", description="Claim holding the principal id.")
    tenant_claim: str = Field("tenant", description="Claim holding the tenant (required in every token).")
    roles_claim: str = Field("roles", description="Claim holding a list of roles (optional).")
    scopes_claim: str = Field(
        "scope", description="Claim holding scopes: a space-separated string (RFC 8693) or a list."
    )

    @property
    def enabled(self) -> bool:
        """Whether bearer JWTs are accepted at all."""
        return bool(self.jwks_file or self.jwks_url or self.hs256_secret)

    @field_validator("hs256_secret")
    @classmethod
    def _long_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            raise ValueError("auth.jwt.hs256_secret must be at least 32 bytes (RFC 7518 section 3.2)")
        return secret

    @model_validator(mode="after")
    def _issuer_and_audience(self) -> JwtSettings:
        if self.enabled and not (self.issuer and self.audience):
            raise ValueError("auth.jwt needs 'issuer' and 'audience' when a JWKS or HS256 secret is set")
        if self.jwks_file and self.jwks_url:
            raise ValueError("auth.jwt: set jwks_file or jwks_url, not both")
        return self


class AuthSettings(BaseModel):
    """Who may call (issue 6). Without any credential source configured the gateway only
    starts in ``dev_mode`` on loopback."""

    model_config = ConfigDict(extra="forbid")
    dev_mode: bool = Field(
        False,
        description="A call without credentials is the development principal (tenant 'default', every "
        "task and file scope). Loopback binds only; the gateway warns loudly at start. Presented "
        "credentials are still verified.",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    api_keys: list[ApiKeyEntry] = Field(default_factory=list, description="API keys (hashes only).")
    client_certs: list[ClientCertIdentity] = Field(
        default_factory=list, description="mTLS: client certificate -> principal (needs tls.client_ca_file)."
    )

    @property
    def configured(self) -> bool:
        """Whether any credential can authenticate (JWT, API keys or client certificates)."""
        return self.jwt.enabled or bool(self.api_keys) or bool(self.client_certs)

    @field_validator("api_keys")
    @classmethod
    def _unique_hashes(cls, keys: list[ApiKeyEntry]) -> list[ApiKeyEntry]:
        hashes = [k.hash for k in keys]
        if len(hashes) != len(set(hashes)):
            raise ValueError("auth.api_keys lists the same key hash twice")
        return keys


class TlsSettings(BaseModel):
    """TLS on both ports (gRPC and HTTPS) from PEM files, re-read when they change."""

    model_config = ConfigDict(extra="forbid")
    cert_file: Path | None = Field(None, description="Server certificate chain, PEM.")
    key_file: Path | None = Field(None, description="Server private key, PEM (unencrypted).")
    client_ca_file: Path | None = Field(
        None,
        description="CA bundle for client certificates (mTLS): gRPC requires a certificate from it in "
        "the handshake; HTTPS asks for one and refuses API calls without it (401/1001); health and "
        "metrics stay reachable for probes.",
    )
    reload_check_s: float = Field(
        2.0, gt=0, description="How often the files are checked for changes, seconds."
    )
    terminated_upstream: bool = Field(
        False,
        description="TLS ends in front of the gateway (mesh sidecar, ingress): allow plaintext on a "
        "non-loopback bind. Otherwise a non-loopback bind needs cert_file and key_file.",
    )

    @property
    def enabled(self) -> bool:
        """Whether both ports speak TLS."""
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file")
        return self


class RateLimit(BaseModel):
    """One set of limits: a token bucket for requests and a cap on concurrent tasks."""

    model_config = ConfigDict(extra="forbid")
    requests_per_s: float = Field(200.0, ge=0, description="Sustained requests per second; 0 = unlimited.")
    burst: int = Field(400, ge=1, description="Bucket size: requests allowed at once after a quiet spell.")
    concurrent_tasks: int = Field(64, ge=0, description="Queued + running tasks at once; 0 = unlimited.")


class RateLimitOverride(BaseModel):
    """Fields of :class:`RateLimit` to change for one tenant; unset fields keep the global value."""

    model_config = ConfigDict(extra="forbid")
    requests_per_s: float | None = Field(None, ge=0)
    burst: int | None = Field(None, ge=1)
    concurrent_tasks: int | None = Field(None, ge=0)


class TenantRateLimits(BaseModel):
    """One tenant's overrides: for each of its principals, and for the tenant as a whole."""

    model_config = ConfigDict(extra="forbid")
    principal: RateLimitOverride = Field(default_factory=RateLimitOverride)
    tenant: RateLimitOverride = Field(default_factory=RateLimitOverride)


class RateLimitSettings(BaseModel):
    """Per-principal and per-tenant limits. Excess answers 4290 with Retry-After and is
    audited (event_type ``rate_limit``). With a PostgreSQL ``tasks.store_dsn`` they hold for
    all replicas together (request buckets in the store; ``concurrent_tasks`` counted there
    when a task is created); otherwise per gateway process."""

    model_config = ConfigDict(extra="forbid")
    principal: RateLimit = Field(default_factory=RateLimit)
    tenant: RateLimit = Field(
        default_factory=lambda: RateLimit(requests_per_s=1000.0, burst=2000, concurrent_tasks=256)
    )
    tenants: dict[str, TenantRateLimits] = Field(default_factory=dict, description="Overrides by tenant.")

    def resolve(self, tenant: str) -> tuple[RateLimit, RateLimit]:
        """The (per-principal, per-tenant) limits that apply in ``tenant``."""
        override = self.tenants.get(tenant)
        if override is None:
            return self.principal, self.tenant
        return (
            self.principal.model_copy(update=override.principal.model_dump(exclude_none=True)),
            self.tenant.model_copy(update=override.tenant.model_dump(exclude_none=True)),
        )


class EgressSettings(BaseModel):
    """The egress proxy of ``restricted`` tasks (``gateway.egress``). Policy names the hosts a
    task may reach; these operator settings bound every task whatever policy says."""

    model_config = ConfigDict(extra="forbid")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs the proxy may connect to although they are not globally routable (private, "
        "loopback, link-local such as 169.254.169.254), and where an IP-literal allow-list entry may point. "
        "Empty (default): only global addresses. Policy alone can never open these.",
    )
    static_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Names the proxy resolves to these addresses instead of asking DNS (the address rules "
        "still apply), e.g. {\"pypi.internal\": \"10.0.0.5\"}.",
    )
    max_bytes: int = Field(
        0, ge=0, description="Payload bytes a task may move through the proxy, both ways (0 = no cap); over it, "
        "every connection is cut and the task ends with limit reason 'egress'.",
    )
    max_connections: int = Field(
        0, ge=0, description="Connections a task may open through the proxy in all (0 = no cap); "
        "over it, limit reason 'egress'.",
    )
    max_open_connections: int = Field(
        32, ge=1, le=4096, description="Connections of one task open at once (each buffers up to about 0.7 MiB)."
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of one connection attempt, seconds.")

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"egress.allow_networks: {entry!r} is not a CIDR ({exc})") from exc
        return value

    @field_validator("static_hosts")
    @classmethod
    def _static(cls, value: dict[str, str]) -> dict[str, str]:
        for name, address in value.items():
            try:
                ipaddress.ip_address(address)
            except ValueError as exc:
                raise ValueError(f"egress.static_hosts: {name!r} -> {address!r} is not an IP address") from exc
        return value


class AdmissionSettings(BaseModel):
    """Admission control (``gateway.admission``): calls in flight per edge and per principal.
    A call beyond a bound waits at most ``max_wait_ms`` for a slot, then answers 4290 with
    Retry-After. Health, readiness and metrics are never bounded. 16 per edge: at the
    100 requests/s of ``bench/load.py`` on a 2-core host, 8 refused a few calls in 30,000
    during short stalls; 16 refused none, and a flood is still refused within 10 ms."""

    model_config = ConfigDict(extra="forbid")
    grpc_in_flight: int = Field(
        16, ge=0, le=4096, description="gRPC calls in flight at once (a stream counts until it is set up); 0 = no bound."
    )
    http_in_flight: int = Field(16, ge=0, le=4096, description="REST calls in flight at once; 0 = no bound.")
    principal_in_flight: int = Field(
        6, ge=0, le=4096, description="Calls of one principal in flight at once, over both edges; 0 = no bound."
    )
    max_wait_ms: int = Field(
        10, ge=0, le=10_000, description="How long a call may wait for an edge slot before 4290, milliseconds."
    )


#: An upstream MCP server's name: its tools are served as ``<name>__<tool>``, so a name never
#: holds ``__`` (nor ``_``) and ``<name>__`` is an unambiguous prefix.
UPSTREAM_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"


class UpstreamServerSettings(BaseModel):
    """One third-party MCP server the gateway runs over stdio inside its sandbox
    (``gateway.upstream``), one long-lived sandbox per tenant that calls it. Its tools are
    served as ``<server>__<tool>`` once approved (``mcp-gateway mcp approve``), each call
    decided by policy (action ``tool.call``)."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(min_length=1, description="Program to run inside the sandbox (PATH lookup there).")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables, in clear (no secrets).")
    env_files: dict[str, Path] = Field(
        default_factory=dict,
        description="Environment variables read from files at each start (secrets, e.g. a mounted Kubernetes "
        "secret); trailing line breaks dropped. A missing file refuses the start.",
    )
    ro_paths: list[str] = Field(
        default_factory=list,
        description="Absolute host paths bound read-only at the same path (the server's code, its virtual "
        "environment); never the gateway's own state, policy or audit files.",
    )
    workspace: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The calling tenant's workspace bound at /workspace (its files API reaches the same "
        "files); default 'mcp-<server>'.",
    )
    network: Literal["none", "restricted"] = Field(
        "none", description="none: no network at all; restricted: only allowed_hosts, through the egress proxy "
        "(the gateway must run as root).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="restricted: the hosts the server may reach (host or host:port, '*.' "
        "wildcards), as for tasks.",
    )
    memory_bytes: int = Field(512 << 20, ge=16 << 20, description="Memory of the server's sandbox, bytes.")
    pids: int = Field(64, ge=1, le=4096, description="Processes and threads of the server, at most.")
    cpu_cores: float | None = Field(None, gt=0, le=256, description="CPU bandwidth, cores; none = no quota.")
    cpu_seconds: int = Field(3600, ge=1, description="CPU time per process before it is killed, seconds.")
    max_lifetime_s: float = Field(
        86_400.0, gt=0, description="A server running this long is stopped and started again, seconds."
    )
    startup_timeout_s: float = Field(30.0, gt=0, le=600, description="Start to a listed tool set, seconds.")
    call_timeout_s: float = Field(60.0, gt=0, le=3600, description="One tools/call, seconds.")
    idle_timeout_s: float = Field(
        600.0, gt=0, description="A server without a call for this long is stopped (started again on demand), seconds."
    )
    requests_per_s: float = Field(
        20.0, ge=0, description="Calls per second to this server from all callers together; 0 = unlimited."
    )
    burst: int = Field(40, ge=1, description="Calls at once after a quiet spell, all callers together.")
    principal_requests_per_s: float = Field(
        5.0, ge=0, description="Calls per second one principal may make to this server; 0 = unlimited."
    )
    principal_burst: int = Field(10, ge=1, description="Calls at once one principal may make to this server.")
    redact_results: bool = Field(
        False, description="Replace secret-looking values in results (key=value with a secret key, URL "
        "credentials, bearer tokens) with ***, as audit commands are.",
    )

    @model_validator(mode="after")
    def _paths(self) -> UpstreamServerSettings:
        for path in self.ro_paths:
            if not os.path.isabs(path):
                raise ValueError(f"ro_paths: {path!r} is not an absolute path")
        if self.allowed_hosts and self.network != "restricted":
            raise ValueError("allowed_hosts needs network: restricted")
        return self


class McpSettings(BaseModel):
    """The MCP edge (``gateway.edges.mcp_server``): streamable HTTP at ``/mcp`` on the HTTP
    port. DNS-rebinding protection checks every request's ``Host`` and ``Origin`` against
    the lists below; empty lists are derived from ``host``: a loopback bind allows the
    loopback names, a bind to one address allows that address, and a wildcard bind
    (0.0.0.0, ::) checks ``Host`` only when ``allowed_hosts`` names the service's names."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Serve /mcp (and its RFC 9728 metadata).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values /mcp answers (host, host:port or host:* for any port); empty = derived "
        "from the bind address.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origin header values /mcp answers (a request without Origin is not a browser's and passes); "
        "empty = derived from the bind address.",
    )
    resource_url: str | None = Field(
        None, pattern=r"^https?://",
        description="This server's MCP URL as clients reach it (RFC 9728 'resource'), e.g. "
        "https://gw.example.com/mcp; default: built from each request's scheme and Host.",
    )
    authorization_servers: list[str] = Field(
        default_factory=list,
        description="OAuth authorization servers whose tokens this gateway accepts, for the RFC 9728 document; "
        "empty = the JWT issuers of auth.jwt.",
    )
    session_idle_timeout_s: float = Field(
        1800.0, gt=0, le=86_400, description="An MCP session without a request for this long is closed, seconds."
    )
    max_sessions: int = Field(1000, ge=1, le=100_000, description="MCP sessions open at once; more are refused (503).")
    max_sessions_per_principal: int = Field(
        32, ge=1, le=100_000,
        description="MCP sessions one principal may have open at once; more are refused (429/4290).",
    )
    max_result_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20,
        description="Largest tool result (text and structured content together), bytes; larger output is cut "
        "and marked truncated.",
    )
    servers: dict[Annotated[str, StringConstraints(pattern=UPSTREAM_NAME_PATTERN)], UpstreamServerSettings] = Field(
        default_factory=dict,
        description="Upstream MCP servers run in the sandbox, by name (lowercase letters, digits and '-'; "
        "their tools are served as '<name>__<tool>').",
    )
    max_upstream_instances: int = Field(
        16, ge=1, le=1024,
        description="Upstream server sandboxes running at once (one per server and calling tenant); when all "
        "run, the least recently used idle one is stopped, and with none idle a call is refused (4290).",
    )
    approvals_file: Path | None = Field(
        None, description="Approved upstream tool definitions (mcp-gateway mcp approve); default "
        "<state_dir>/mcp-approvals.json.",
    )


class Settings(BaseSettings):
    """All gateway settings. See the module docstring for the source precedence."""

    model_config = SettingsConfigDict(
        env_prefix="MCP_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=None,
    )

    host: str = Field("127.0.0.1", description="Bind address for both ports.")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (REST, health); 0 = any free port.")
    grpc_port: int = Field(8081, ge=0, le=65535, description="gRPC port; 0 = any free port.")
    state_dir: Path = Field(Path("var"), description="SQLite store, workspaces and audit.jsonl live here.")
    policy_dir: Path = Field(default_factory=default_policy_dir, description="Rego policy bundle directory.")
    log_level: str = Field("info", description="debug|info|warning|error.")
    log_format: Literal["json", "text"] = Field(
        "text", description="json: one JSON object per line with request, trace and principal ids (production); "
        "text: for a terminal.",
    )
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)

    @model_validator(mode="after")
    def _safe_bind(self) -> Settings:
        # Unauthenticated calls are the development principal: they may only come from
        # this host. Credentials on the network need TLS (or a TLS terminator in front).
        auth, tls = self.auth, self.tls
        if auth.client_certs and tls.client_ca_file is None:
            raise ValueError("auth.client_certs needs tls.client_ca_file")
        if is_loopback_host(self.host):
            return self  # without credentials configured nor dev mode every call is refused
        if auth.dev_mode:
            raise ValueError(
                f"refusing to bind {self.host!r} in dev mode: unauthenticated access is only "
                "allowed on loopback (127.0.0.1, ::1 or localhost)"
            )
        if not auth.configured:
            raise ValueError(
                f"refusing to bind {self.host!r}: without authentication configured the gateway "
                "only listens on loopback (127.0.0.1, ::1 or localhost)"
            )
        if not (tls.enabled or tls.terminated_upstream):
            raise ValueError(
                f"refusing to bind {self.host!r} without TLS: set tls.cert_file and tls.key_file "
                "(or tls.terminated_upstream when a proxy in front terminates TLS)"
            )
        return self

    @property
    def workspace_root(self) -> Path:
        """Where task workspaces live: ``sandbox.workspace_root`` or ``<state_dir>/workspaces``,
        made absolute against the working directory (bind sources are absolute paths)."""
        return Path(os.path.abspath(self.sandbox.workspace_root or self.state_dir / "workspaces"))

    @property
    def mcp_approvals_path(self) -> Path:
        """Where approved upstream tool definitions live: ``mcp.approvals_file`` or
        ``<state_dir>/mcp-approvals.json``."""
        return self.mcp.approvals_file or self.state_dir / "mcp-approvals.json"

    @property
    def audit_path(self) -> Path:
        """Where audit events go: ``audit.path`` or ``<state_dir>/audit.jsonl``."""
        return self.audit.path or self.state_dir / "audit.jsonl"

    @property
    def audit_signing_key(self) -> Path:
        """The checkpoint signing key: ``audit.signing_key`` or ``<state_dir>/audit-signing.key``."""
        return self.audit.signing_key or self.state_dir / "audit-signing.key"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the YAML file."""
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from ``config_file`` (YAML), the environment and ``overrides``.

    ``overrides`` with value None are ignored (unset flags).

    Raises:
        pydantic.ValidationError: on an invalid value (e.g. a non-loopback host).
        FileNotFoundError: when ``config_file`` does not exist.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    given = {k: v for k, v in overrides.items() if v is not None}

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=config_file)

    return _FromFile(**given) if config_file else Settings(**given)
