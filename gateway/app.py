"""Assembly: build every part from settings, serve both edges, shut down cleanly.

Start-up refuses to serve (exit status 3, one clear message on stderr) when the host
cannot sandbox (no bwrap, no user namespaces, no seccomp), the policy bundle does not
compile, or the store or audit file cannot be opened: there is no degraded mode.
Once both ports are bound it prints one line on stdout,
``listening grpc=HOST:PORT http=HOST:PORT``, for scripts and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

import sandbox
from gateway.admission import EdgeGate
from gateway.audit import AuditLog, AuditSink, FileSink, StdoutSink, WebhookSink
from gateway.audit.signing import CheckpointSigner, create_signing_key, load_signing_key
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.edges.grpc_server import GrpcEdge, create_grpc_server
from gateway.edges.mcp_server import McpEdge, McpHttpApp
from gateway.edges.rest import GatewayHttpProtocol, create_app
from gateway.errors import GatewayError, PolicyEngineError
from gateway.observability.metrics import STORE_LOCK_HELD
from gateway.policy import EmbeddedEngine, PolicySource, load_policy_dir
from gateway.policy.wasm import WasmEngine
from gateway.policy.active import ActivePolicy, check_bundle, check_source
from gateway.policy.opa import OpaEngine
from gateway.ratelimit import RateLimiter, SharedBuckets
from gateway.service import READINESS_REFRESH_S, GatewayService
from gateway.egress.proxy import EgressProxy
from gateway.tasks import Isolation, TaskManager, TaskStore, open_store
from gateway.tasks.workspaces import WorkspaceManager
from gateway.tls import TlsFiles

__all__ = ["StartupError", "build_service", "serve"]

log = logging.getLogger("gateway")

EXIT_STARTUP_FAILED = 3
EXIT_STORE_LOST = 4  # the owner claim on a shared store was lost: restart me
_SERVICE_THREADS = 64
_EDGE_STOP_GRACE_S = 5.0  # after the drain: how long open calls and streams may go on
_CONFIG_CHECK_S = 1.0  # how often the config file is checked for changes, seconds


class StartupError(Exception):
    """The gateway cannot start; the message says what to fix."""


@dataclass
class Runtime:
    """Everything :func:`build_service` made, for serving and shutdown."""

    service: GatewayService
    tasks: TaskManager
    store: TaskStore
    audit: AuditLog
    isolation: Isolation
    policy: ActivePolicy
    authenticator: Authenticator
    limiter: RateLimiter
    tls: TlsFiles | None


def build_service(settings: Settings) -> Runtime:
    """Probe the sandbox, load policy, open the store and audit log, build the service.

    Raises:
        StartupError: with an actionable message for any part that cannot be set up.
    """
    isolation = _isolation(settings)
    try:
        return _build(settings, isolation)
    except BaseException:
        _close_isolation(isolation)
        raise


def _build(settings: Settings, isolation: Isolation) -> Runtime:
    authenticator, tls = _auth(settings)
    # Before the probe and any run: reaping each sandbox's pid 1 is how usage is measured.
    sandbox.set_child_subreaper()
    probe_uid = isolation.uids.acquire() if isolation.uids is not None else None
    try:
        report = sandbox.probe(settings.sandbox.bwrap_path, run_as=probe_uid, cgroups=isolation.cgroups)
    except sandbox.SandboxError as exc:
        raise StartupError(f"cannot sandbox commands on this host: {exc}") from exc
    finally:
        if isolation.uids is not None and probe_uid is not None:
            isolation.uids.release(probe_uid)
    log.info("sandbox ready: %s", report)
    for note in report.notes:
        log.warning("sandbox: %s", note)
    if isolation.uids is None:
        log.warning("gateway is not root: sandboxes share the gateway's own uid %d", os.geteuid())
    policy = _policy(settings)
    state_dir = settings.state_dir
    try:
        # 0711: the sandbox uid may traverse to its workspace but not list the directory;
        # the store and the audit file inside are 0600 (the store sees to its own files).
        _make_private_dir(state_dir)
        _make_private_dir(settings.workspace_root)
        _make_private_file(settings.audit_path)
        audit = _audit_log(settings)
    except (OSError, GatewayError) as exc:
        raise StartupError(f"cannot open state in {state_dir}: {exc}") from exc
    _check_workspace_root(settings.workspace_root, isolation.uids)
    # This process's instance id: written into every task it runs, claimed in the store
    # for as long as the process lives, so other replicas can tell its tasks from a dead
    # process's.
    owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
    try:
        store = open_store(settings)
        store.claim_owner(owner)
    except GatewayError as exc:
        raise StartupError(f"cannot open the task store: {exc.message}") from exc
    # Replicas on one PostgreSQL store hold the workspaces their tasks use there.
    workspaces = WorkspaceManager(settings.workspace_root, isolation.uids, shared=store, owner=owner)
    tasks = TaskManager(store, audit, settings.sandbox, settings.tasks, workspaces, isolation, owner)
    try:
        tasks.fail_orphaned()
    except GatewayError as exc:
        raise StartupError(f"cannot recover tasks of a previous process: {exc.message}") from exc
    # Replicas sharing a PostgreSQL store share its rate buckets too.
    limiter = RateLimiter(settings.rate_limits, shared=store if isinstance(store, SharedBuckets) else None)
    try:
        service = GatewayService(settings, policy, store, tasks, audit, workspaces, authenticator, limiter)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    return Runtime(service, tasks, store, audit, isolation, policy, authenticator, limiter, tls)


def _auth(settings: Settings) -> tuple[Authenticator, TlsFiles | None]:
    """The authenticator (JWKS loaded) and the TLS files; StartupError when unusable or
    when nothing could ever authenticate (no credentials configured and no dev mode)."""
    if not (settings.auth.configured or settings.auth.dev_mode):
        raise StartupError(
            "no authentication configured: set auth.jwt, auth.api_keys or auth.client_certs "
            "(see the README), or pass --dev for unauthenticated development use on loopback"
        )
    try:
        tls = TlsFiles(settings.tls) if settings.tls.enabled else None
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    try:
        authenticator = Authenticator(settings.auth, settings.tls)
    except ValueError as exc:
        raise StartupError(f"bad auth settings: {exc}") from exc
    try:
        authenticator.load()
    except ValueError as exc:
        if settings.auth.jwt.jwks_file is not None:
            raise StartupError(f"cannot load auth.jwt.jwks_file: {exc}") from exc
        # An IdP that is down now may be up for the first token: refetched on demand.
        log.error("auth: JWKS not available yet (tokens are refused until it is): %s", exc)
    if settings.auth.dev_mode:
        banner = (
            "DEV MODE: calls without credentials run as the development principal "
            "'anonymous' (tenant 'default', every scope). Never use this outside a developer machine."
        )
        if settings.log_format == "text":  # loud on a terminal, whatever the log level
            print(f"mcp-gateway: WARNING: {banner}", file=sys.stderr, flush=True)
        log.warning(banner)
    log.info(
        "auth: %d API keys, JWT %s, client certificates %s, TLS %s",
        len(settings.auth.api_keys), "on" if settings.auth.jwt.enabled else "off",
        "required" if settings.tls.client_ca_file else "off", "on" if tls else "off",
    )
    return authenticator, tls


async def _watch_config(runtime: Runtime, config_file: Path, reload_settings: Callable[[], Settings],
                        hangup: asyncio.Event) -> None:
    """Forever: when ``config_file`` changes (checked every second; also on SIGHUP) re-read
    the settings and apply the ``auth`` and ``rate_limits`` sections, so a removed or
    revoked API key is refused from the next call on. Other sections need a restart. A
    file that does not validate is logged and the running settings stay."""

    def signature() -> tuple[int, int, int] | None:
        try:
            st = config_file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    seen = signature()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hangup.wait(), _CONFIG_CHECK_S)
        current = signature()
        if current == seen and not hangup.is_set():
            continue
        hangup.clear()
        seen = current
        try:
            fresh = await asyncio.to_thread(reload_settings)
            runtime.authenticator.update(fresh.auth)
        except (ValidationError, OSError, ValueError) as exc:
            log.error("config reload of %s failed; keeping the running settings: %s", config_file, exc)
            continue
        runtime.limiter.update(fresh.rate_limits)
        log.info("config reloaded from %s: %d API keys, rate limits updated", config_file, len(fresh.auth.api_keys))


async def _housekeeping(runtime: Runtime, settings: Settings, lost_store: asyncio.Event) -> None:
    """Forever: fail tasks of dead replicas (shared store) and apply retention. When this
    process's owner claim is lost (its lock session ended), other replicas may already be
    failing its tasks: set ``lost_store`` so the process drains and exits non-zero, to be
    restarted with a fresh claim, rather than keep running tasks nobody can see end."""
    shared = settings.tasks.store_dsn is not None
    interval = min(settings.tasks.sweep_interval_s, settings.tasks.orphan_check_interval_s if shared else 1e9)
    next_sweep = 0.0
    STORE_LOCK_HELD.set(1)
    while True:
        try:
            if shared and not await asyncio.to_thread(runtime.store.owner_alive):
                STORE_LOCK_HELD.set(0)
                log.error("lost the task store's owner lock (database restart or connection cut): "
                          "other replicas may fail this process's tasks; shutting down to restart")
                lost_store.set()
                return
            if shared:
                await asyncio.to_thread(runtime.tasks.fail_orphaned)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + settings.tasks.sweep_interval_s
                await asyncio.to_thread(runtime.tasks.sweep)
        except Exception:  # a store outage must not end housekeeping; the next round retries
            log.exception("housekeeping failed")
        await asyncio.sleep(interval)


async def _refresh_readiness(service: GatewayService) -> None:
    """Forever: recompute the readiness answer every ``READINESS_REFRESH_S`` in a thread, so
    probes read a fresh snapshot and never wait on the policy engine or the store."""
    while True:
        try:
            await asyncio.to_thread(service.refresh_readiness)
        except Exception:  # the next round retries; the probe keeps the last answer
            log.exception("readiness check failed")
        await asyncio.sleep(READINESS_REFRESH_S)


def _policy(settings: Settings) -> ActivePolicy:
    """The configured engine with the bundle loaded and checked (one decision on a request
    it must deny), watching ``policy_dir`` when reloads are ours to do."""
    cfg = settings.policy
    cap = settings.limits.policy_input_cap_bytes
    timeout_s = cfg.timeout_ms / 1000

    def build(source: PolicySource) -> EmbeddedEngine | WasmEngine:
        if cfg.engine == "wasm":
            return WasmEngine(source, opa_binary=cfg.opa_binary, max_input_bytes=cap, instances=cfg.workers,
                              timeout_s=timeout_s, cache_entries=cfg.cache_entries,
                              memory_bytes=cfg.wasm_memory_bytes)
        return EmbeddedEngine(source, max_input_bytes=cap, workers=cfg.workers, timeout_s=timeout_s,
                              cache_entries=cfg.cache_entries)

    engine: Any = None
    try:
        if cfg.engine in ("embedded", "wasm"):
            source: PolicySource | None = load_policy_dir(settings.policy_dir)
            engine = build(source)
            active = ActivePolicy(engine, settings.policy_dir, source=source, build=build)
        else:
            assert cfg.opa_url is not None  # PolicySettings checks it
            source = load_policy_dir(settings.policy_dir) if cfg.opa_push else None
            if source is not None:
                check_source(source)
            _wait_for_opa(cfg.opa_url, cfg.opa_startup_wait_s)
            engine = OpaEngine(cfg.opa_url, timeout_s=timeout_s, max_input_bytes=cap, source=source)
            active = ActivePolicy(engine, settings.policy_dir, source=source, build=None)
        check_bundle(active)
    except PolicyEngineError as exc:
        if engine is not None:
            engine.close()
        where = settings.policy_dir if cfg.engine != "opa" or cfg.opa_push else cfg.opa_url
        raise StartupError(f"cannot load policy from {where}: {exc.message}") from exc
    if cfg.watch:
        active.watch()
    log.info("policy: engine %s, revision %s", active.name, active.revision)
    return active


def _wait_for_opa(url: str, wait_s: float) -> None:
    """Poll OPA's health until it answers 200 or ``wait_s`` seconds pass (PolicyEngineError)."""
    probe = OpaEngine(url, timeout_s=1.0)  # /health?bundles: 200 once OPA's bundle is active
    try:
        deadline = time.monotonic() + wait_s
        while True:
            healthy, detail = probe.health()
            if healthy:
                return
            if time.monotonic() >= deadline:
                raise PolicyEngineError(f"OPA at {url} is not healthy after {wait_s:.0f} s: {detail}")
            time.sleep(0.2)
    finally:
        probe.close()


def _isolation(settings: Settings) -> Isolation:
    """A uid range and network namespaces made ahead (root only) and cgroup slots, as
    configured; StartupError when unusable.

    The cgroup pool comes first: making it sweeps the slots of gateways that died, killing
    what still runs there. A sandbox can outlive a gateway killed with SIGKILL: bwrap's
    inner process sets its parent-death signal only after its clone(2), so it misses the
    death of an outer bwrap killed in between. Only then are the sandbox uids checked, and
    a process still running with one is refused as before (not ours to kill)."""
    cfg = settings.sandbox
    cgroups = None
    if cfg.cgroups != "off":
        try:
            cgroups = sandbox.CgroupPool.create("mcp-gateway")
        except sandbox.SandboxUnavailable as exc:
            if cfg.cgroups == "required":
                raise StartupError(f"sandbox.cgroups is 'required' but: {exc}") from exc
            log.warning("sandbox: no per-task cgroups: %s", exc)
    try:
        uids = _uid_pool(settings)
    except StartupError:
        if cgroups is not None:
            cgroups.close()
        raise
    # Root only: making a network namespace needs CAP_SYS_ADMIN (and only root runs
    # sandboxes in one of their own, sandbox.runner); so does the restricted network.
    if os.geteuid() != 0:
        return Isolation(uids, cgroups)
    netns = sandbox.NetnsPool(spare=min(settings.tasks.max_concurrent, 8))
    return Isolation(uids, cgroups, netns, EgressProxy(settings.egress))


def _uid_pool(settings: Settings) -> sandbox.UidPool | None:
    """The sandbox uid range when running as root (None otherwise); StartupError when it is
    too small, malformed, or in use by any process."""
    if os.geteuid() != 0:
        return None
    cfg = settings.sandbox
    if cfg.uid_count < settings.tasks.max_concurrent:
        raise StartupError(
            f"sandbox.uid_count ({cfg.uid_count}) must be at least tasks.max_concurrent "
            f"({settings.tasks.max_concurrent}): each running task needs a uid of its own"
        )
    try:
        uids = sandbox.UidPool(cfg.uid, cfg.gid, cfg.uid_count)
    except sandbox.SandboxSetupError as exc:
        raise StartupError(f"bad sandbox uid range: {exc}") from exc
    busy = sandbox.busy_uids(uids)
    if busy:
        shown = ", ".join(f"pid {pid} (uid {uid})" for pid, uid in sorted(busy.items())[:5])
        raise StartupError(
            f"processes already run with sandbox uids {cfg.uid}..{cfg.uid + cfg.uid_count - 1}: "
            f"{shown}; the range must be reserved for sandboxes (set sandbox.uid)"
        )
    return uids


def _close_isolation(isolation: Isolation) -> None:
    if isolation.cgroups is not None:
        isolation.cgroups.close()
    if isolation.egress is not None:
        isolation.egress.close()
    if isolation.netns is not None:
        isolation.netns.close()


def _make_private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) 0711, or take read and write away from group and
    others on one that exists (its x bits stay: the way down to the workspaces), logging
    the change. A shared directory (sticky, writable by others, like /tmp) is refused, not
    chmod'ed. Raises StartupError, or OSError when it cannot be made or changed."""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o711)
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if created:
        os.chmod(path, 0o711)  # mkdir's mode is filtered by the umask
    elif st.st_mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        raise StartupError(f"{path} is a shared directory (mode {mode:04o}); give the gateway one of its own")
    elif mode & 0o066:
        os.chmod(path, mode & ~0o066)
        log.warning("%s was mode %04o, open to other local users; now %04o", path, mode, mode & ~0o066)


def _audit_log(settings: Settings) -> AuditLog:
    """The audit log with the sinks ``settings.audit`` names and the checkpoint signer.

    Raises:
        StartupError: the signing key or the webhook secret is missing or unsuitable.
        OSError / AuditError: the audit file cannot be opened or continued.
    """
    a = settings.audit
    record = FileSink(settings.audit_path, fsync=a.fsync, fsync_interval_s=a.fsync_interval_s,
                      max_bytes=a.rotate_bytes, max_age_s=a.rotate_age_s, retention_files=a.retention_files)
    copies: list[AuditSink] = []
    if a.stdout:
        copies.append(StdoutSink())
    if a.webhook is not None:
        w = a.webhook
        secret = None
        if w.secret_file is not None:
            try:
                secret = w.secret_file.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise StartupError(f"cannot read audit.webhook.secret_file {w.secret_file}: {exc.strerror}") from exc
        copies.append(WebhookSink(
            w.url, secret=secret, batch_events=w.batch_events, batch_delay_s=w.batch_delay_s,
            queue_events=w.queue_events, spool=w.spool_path, timeout_s=w.timeout_s,
            backoff_initial_s=w.backoff_initial_s, backoff_max_s=w.backoff_max_s, on_full=w.on_full,
            block_timeout_s=w.block_timeout_s,
        ))
    return AuditLog(record, copies, signer=_audit_signer(settings), checkpoint_events=a.checkpoint_events,
                    checkpoint_interval_s=a.checkpoint_interval_s, server_host=settings.host)


def _audit_signer(settings: Settings) -> CheckpointSigner:
    """The checkpoint signer: the configured key, or the default one, made at first start.

    Raises:
        StartupError: a configured key is missing, unreadable, not Ed25519, or not 0600.
    """
    path = settings.audit_signing_key
    try:
        return CheckpointSigner.of(load_signing_key(path))
    except FileNotFoundError:
        if settings.audit.signing_key is not None:
            raise StartupError(f"audit.signing_key {path} does not exist; create it with "
                               f"'mcp-gateway audit keygen --key {path}'") from None
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot use the audit signing key: {exc}") from exc
    try:
        signer = CheckpointSigner.of(create_signing_key(path))
    except OSError as exc:
        raise StartupError(f"cannot create the audit signing key {path}: {exc.strerror or exc}") from exc
    log.warning("created the audit signing key %s (key id %s); 'mcp-gateway audit pubkey --key %s' prints the "
                "public key that 'mcp-gateway audit verify --public-key' needs", path, signer.key_id, path)
    return signer


def _make_private_file(path: Path) -> None:
    """Make an existing ``path`` (an older gateway's audit file, say) 0600 when group or
    others may use it, logging the change. Raises OSError when it cannot be changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: never wait on a FIFO
    except FileNotFoundError:
        return
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("%s was mode %04o, open to other local users; now 0600", path, mode)
    finally:
        os.close(fd)


def _check_workspace_root(root: Path, uids: sandbox.UidPool | None) -> None:
    """Refuse to start when the sandbox uids cannot reach ``root`` or someone other than
    root could swap a directory on the way to it (the rules ``sandbox.mounts`` applies to
    every run, checked once here so no task fails for it later)."""
    if uids is not None:
        blocked = _first_unsearchable(root, sandbox.RunAs(uids.first_uid, uids.first_gid))
        if blocked is not None:
            raise StartupError(
                f"sandbox uids cannot reach workspaces under {root}: {blocked} is not "
                "searchable by them (bwrap resolves bind sources as the sandbox uid); use a "
                "--state-dir or MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT whose every parent "
                "directory has the x bit for others (e.g. under /var/lib or /srv)"
            )
    probe = root / f".startup-check-{os.getpid()}"
    owner = sandbox.RunAs(uids.first_uid, uids.first_gid) if uids is not None else None
    try:
        sandbox.create_workspace(str(root), probe.name, owner)
        os.close(sandbox.open_workspace(str(probe), owner.uid if owner is not None else os.geteuid()))
    except sandbox.SandboxSetupError as exc:
        raise StartupError(f"unsafe workspace root {root}: {exc}") from exc
    except OSError as exc:
        raise StartupError(f"cannot create workspaces under {root}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _first_unsearchable(path: Path, run_as: sandbox.RunAs) -> Path | None:
    """The first directory from / down to ``path`` that ``run_as`` may not search, or None.

    Mirrors the kernel's permission check (path_resolution(7)): owner bits when the uid
    owns it, group bits when the gid matches, other bits otherwise.
    """
    resolved = path.resolve()
    for directory in (*reversed(resolved.parents), resolved):
        st = directory.stat()
        if st.st_uid == run_as.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


class _Uvicorn(uvicorn.Server):
    # The gateway owns SIGTERM/SIGINT and stops uvicorn itself (should_exit).
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only for it, and
    # without it a response written in two parts waits ~40 ms for the delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind HTTP on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


async def serve(
    settings: Settings, *, config_file: Path | None = None, reload_settings: Callable[[], Settings] | None = None
) -> int:
    """Run the gateway until SIGTERM or SIGINT; returns the process exit status.

    With ``config_file`` and ``reload_settings`` (which re-reads it with the same flags),
    a change to the file or SIGHUP applies its ``auth`` and ``rate_limits`` sections.

    Raises:
        StartupError: when a part cannot be set up (see :func:`build_service`).
    """
    runtime = build_service(settings)
    http_sock = _bind(settings.host, settings.http_port)
    http_port = http_sock.getsockname()[1]
    admission = settings.admission
    try:
        grpc_edge: GrpcEdge = create_grpc_server(
            runtime.service, settings.host, settings.grpc_port,
            max_message_bytes=settings.limits.max_request_bytes, tls=runtime.tls,
            gate=EdgeGate("grpc", admission.grpc_in_flight, admission.max_wait_ms / 1000),
            max_wait_s=settings.tasks.max_wait_s,
        )
    except RuntimeError as exc:
        raise StartupError(str(exc)) from exc
    http_gate = EdgeGate("http", admission.http_in_flight, admission.max_wait_ms / 1000)
    app = create_app(runtime.service, settings.host, lambda: http_port, settings.limits.max_request_bytes,
                     gate=http_gate, settings=settings)
    mcp_edge = McpEdge(runtime.service, settings, http_gate) if settings.mcp.enabled else None
    if mcp_edge is not None:
        app.router.routes.extend(
            McpHttpApp(mcp_edge, runtime.service, settings, settings.host, lambda: http_port).routes())
    tls = runtime.tls
    web = _Uvicorn(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", http=GatewayHttpProtocol,
        timeout_graceful_shutdown=int(_EDGE_STOP_GRACE_S),
        ssl_context_factory=(lambda config, default: tls.ssl_context()) if tls is not None else None,
    ))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Service calls run in these threads (asyncio.to_thread): each may wait on a policy
    # worker, the store or a cancel; the loop itself only moves bytes.
    loop.set_default_executor(ThreadPoolExecutor(_SERVICE_THREADS, thread_name_prefix="service"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hangup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, hangup.set)

    mcp_sessions = contextlib.AsyncExitStack()
    if mcp_edge is not None:
        await mcp_sessions.enter_async_context(mcp_edge.run())
    await grpc_edge.start()
    web_task = asyncio.create_task(web.serve(sockets=[http_sock]))
    while not web.started and not web_task.done():
        await asyncio.sleep(0.01)
    if web_task.done():
        await grpc_edge.stop(0)
        await mcp_sessions.aclose()
        raise StartupError(f"HTTP server failed to start: {web_task.exception()}")
    # What start-up made (modules, settings, the service) lives as long as the process: out of
    # the collector's sight, a full collection scans only what requests made since (a pause
    # of ~25 ms every few seconds under load otherwise, on the p99 of every call).
    gc.collect()
    gc.freeze()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if runtime.isolation.egress is not None:  # no restricted task may reach these
        runtime.isolation.egress.set_own_ports({grpc_edge.port, http_port})
    print(f"listening grpc={host}:{grpc_edge.port} http={host}:{http_port}", flush=True)
    log.info("gateway serving; policy revision %s", runtime.service.readiness()["policy"]["revision"])

    lost_store = asyncio.Event()
    housekeeping = asyncio.create_task(_housekeeping(runtime, settings, lost_store))
    readiness = asyncio.create_task(_refresh_readiness(runtime.service))
    watcher = (
        asyncio.create_task(_watch_config(runtime, config_file, reload_settings, hangup))
        if config_file is not None and reload_settings is not None else None
    )

    await asyncio.wait([asyncio.create_task(stop.wait()), asyncio.create_task(lost_store.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    # Drain: new tasks are refused (503) and readiness fails while both edges keep serving,
    # so callers can still stream and poll the tasks that are finishing.
    grace = settings.tasks.shutdown_grace_s
    log.info("shutting down: running tasks may finish within %.0f s", grace)
    await grpc_edge.health.enter_graceful_shutdown()
    await asyncio.to_thread(runtime.tasks.drain, grace)
    await asyncio.to_thread(runtime.service.stop_upstream)
    for background in (housekeeping, watcher, readiness):
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
    await mcp_sessions.aclose()  # MCP sessions end (their calls are cancelled) before the HTTP server stops
    web.should_exit = True
    await grpc_edge.stop(_EDGE_STOP_GRACE_S)
    await web_task
    runtime.store.close()
    await asyncio.to_thread(runtime.audit.close)  # the shutdown checkpoint; a webhook delivers what waits
    runtime.policy.close()
    _close_isolation(runtime.isolation)
    return EXIT_STORE_LOST if lost_store.is_set() else 0
