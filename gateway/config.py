"""Gateway settings: one schema, many sources (design section 10).

Precedence, highest first: command-line flags (passed as init kwargs), environment
variables ``MCP_GATEWAY_*`` (nested with ``__``, e.g. ``MCP_GATEWAY_TASKS__MAX_CONCURRENT=8``),
the YAML file named by ``--config`` / ``MCP_GATEWAY_CONFIG``, then the defaults here.
Every field states its unit and default.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = [
    "AuditSettings",
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


class TaskSettings(BaseModel):
    """Task scheduling, storage and lifecycle."""

    max_concurrent: int = Field(4, ge=1, le=256, description="Sandboxes running at once (per gateway process).")
    max_queued: int = Field(
        256, ge=0, description="Tasks waiting for a slot (TASK_QUEUED) before 4290 + Retry-After is answered."
    )
    max_running_per_principal: int = Field(
        0, ge=0,
        description="Sandboxes one principal may run at once; its further tasks wait in the queue "
        "while other principals' tasks go ahead. 0 = max_concurrent.",
    )
    max_pending_per_principal: int = Field(
        64, ge=1, description="Queued + running tasks one principal may have; beyond, 4290 + Retry-After."
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

    max_read_bytes: int = Field(3 << 20, ge=1, description="Largest file ReadFile returns, bytes.")
    max_write_bytes: int = Field(
        1 << 20, ge=1, description="Largest content WriteFile accepts, bytes (also bounded by limits.max_request_bytes)."
    )


class LimitSettings(BaseModel):
    """Request size caps, checked before policy evaluation."""

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
    max_paths: int = Field(64, ge=0, description="Paths in each of ro_paths/rw_paths/denied_paths.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body/message, bytes.")

    @property
    def policy_input_cap_bytes(self) -> int:
        """Cap on the JSON policy input, bytes: what a request within these limits can
        produce, with JSON escaping at its worst (6 bytes per control character) plus
        64 KiB for keys and structure; so a valid request never hits it."""
        return 6 * (self.max_args_bytes + 2 * self.max_command_bytes + self.max_env_bytes) + (64 << 10)


class PolicySettings(BaseModel):
    """Which engine decides and how (design section 6; the bundle is ``policy_dir``)."""

    engine: Literal["embedded", "opa"] = Field(
        "embedded",
        description="'embedded': Rego evaluated by regopy in worker processes, no server. "
        "'opa': an OPA server's Data API at opa_url decides.",
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
        "and replaced past it (waiting for a free worker has the same limit); the OPA "
        "request is abandoned. Either way: deny, 5003.",
    )
    workers: int = Field(2, ge=1, le=64, description="Embedded engine worker processes (evaluations at once).")
    cache_entries: int = Field(
        4096, ge=0,
        description="Embedded engine: decisions kept for reuse by equal inputs (LRU; 0 = off). Used only "
        "when no module can read input.context, so a decision depends on the rest of the input and "
        "the bundle alone; a reload empties it.",
    )
    watch: bool = Field(
        True,
        description="Reload policy_dir when its files change (embedded engine, or 'opa' with "
        "opa_push); a bundle that fails to load, compile or decide is rejected and the old "
        "one stays.",
    )

    @model_validator(mode="after")
    def _opa_needs_url(self) -> PolicySettings:
        if self.engine == "opa" and not self.opa_url:
            raise ValueError("policy.engine 'opa' needs policy.opa_url")
        return self


class AuditSettings(BaseModel):
    """The audit trail (design section 8)."""

    path: Path | None = Field(None, description="JSON-lines file; default <state_dir>/audit.jsonl.")
    fsync: bool = Field(
        False,
        description="fsync after every event (survives power loss; costs ~ms per event). "
        "Without it each line is written to the kernel before the request proceeds, "
        "so a gateway crash loses nothing.",
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
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        # Until authentication lands every caller is the anonymous development
        # principal, so anything but loopback would hand the sandbox to the network.
        if not is_loopback_host(host):
            raise ValueError(
                f"refusing to bind {host!r}: without authentication configured the gateway "
                "only listens on loopback (127.0.0.1, ::1 or localhost)"
            )
        return host

    @property
    def workspace_root(self) -> Path:
        """Where task workspaces live: ``sandbox.workspace_root`` or ``<state_dir>/workspaces``,
        made absolute against the working directory (bind sources are absolute paths)."""
        return Path(os.path.abspath(self.sandbox.workspace_root or self.state_dir / "workspaces"))

    @property
    def audit_path(self) -> Path:
        """Where audit events go: ``audit.path`` or ``<state_dir>/audit.jsonl``."""
        return self.audit.path or self.state_dir / "audit.jsonl"

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
