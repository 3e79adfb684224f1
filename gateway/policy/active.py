"""The active policy: one engine at a time, replaced atomically by a checked reload.

:class:`ActivePolicy` is the :class:`~gateway.policy.PolicyEngine` the service holds.
A reload (file watcher, or :meth:`ActivePolicy.reload`) is all or nothing:

1. read and validate ``policy_dir`` (:func:`~gateway.policy.bundle.load_policy_dir`);
   the same digest as the active bundle is a no-op;
2. compile it into a new embedded engine (in its own worker processes) and make one
   decision on a request that must be denied (no principal, no action): a bundle that
   does not compile, errors, returns a malformed decision or *allows* that request is
   rejected;
3. only then swap it in (one reference assignment: a request sees the old bundle or the
   new, never a mix) and stop the old engine once its evaluations finish. In OPA push
   mode the checked bundle is uploaded instead, with the previous one re-uploaded if
   the upload fails half way.

A rejected bundle leaves the active one in place, logs one line saying why, and counts
``mcp_policy_reloads_total{result="rejected"}``. The active revision is in
``/health/ready``, ``mcp_policy_bundle_info`` and every audit event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import watchfiles

from gateway.errors import PolicyEngineError
from gateway.observability.metrics import POLICY_RELOADS, set_active_bundle
from gateway.models import Decision
from gateway.policy.bundle import PolicySource, load_policy_dir
from gateway.policy.embedded import EmbeddedEngine

__all__ = ["ActivePolicy", "SMOKE_INPUT", "check_bundle", "check_source"]

log = logging.getLogger("gateway.policy")

#: A request every sound bundle denies: no principal, no action.
SMOKE_INPUT: dict[str, Any] = {
    "principal": {"id": "", "tenant": "", "roles": [], "scopes": []},
    "action": "",
    "command": {"name": "", "args": [], "cwd": "", "env_keys": []},
    "network": {"access": "none", "hosts": []},
    "resources": {"timeout_s": 0, "memory_bytes": 0, "pids": 0, "cpu": 0},
    "context": {"transport": "reload", "client_addr": "", "request_id": "", "time_ns": 0},
}


def check_bundle(engine: Any) -> None:
    """Make one decision on :data:`SMOKE_INPUT`; it must be a well-formed deny.

    Raises:
        PolicyEngineError: the engine failed, or the bundle allowed the request.
    """
    decision = engine.evaluate(SMOKE_INPUT)
    if decision.allow:
        raise PolicyEngineError("the bundle allows a request with no principal and no action")


def check_source(source: PolicySource) -> None:
    """Compile ``source`` in a throwaway embedded engine and :func:`check_bundle` it: the
    check a bundle passes before it is pushed to OPA, and ``mcp-gateway policy check``.

    Raises:
        PolicyEngineError: it does not compile, fails, or allows the smoke request.
    """
    probe = EmbeddedEngine(source, workers=1)
    try:
        check_bundle(probe)
    finally:
        probe.close(drain_timeout_s=0)


class ActivePolicy:
    """The engine deciding now (a :class:`~gateway.policy.PolicyEngine`), reloadable.

    Args:
        engine: the engine built at start.
        policy_dir: the bundle directory reloads read.
        source: the bundle ``engine`` was built from (its digest detects no-op reloads);
            None when OPA loads the bundle itself (reload is then OPA's business).
        build: makes an engine from a checked source (embedded), or None to push the
            source to ``engine`` instead (OPA push mode: ``engine.push(source)``).
    """

    def __init__(
        self,
        engine: Any,
        policy_dir: Path,
        *,
        source: PolicySource | None,
        build: Callable[[PolicySource], Any] | None,
    ) -> None:
        self._engine = engine
        self._policy_dir = Path(policy_dir)
        self._source = source
        self._build = build
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        set_active_bundle(engine.name, engine.revision)

    @property
    def name(self) -> str:
        """The active engine's name (``embedded``, ``wasm`` or ``opa``)."""
        return str(self._engine.name)

    @property
    def revision(self) -> str:
        """The active bundle's revision."""
        return str(self._engine.revision)

    @property
    def engine(self) -> Any:
        """The active engine object."""
        return self._engine

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """The active engine's decision (see :meth:`PolicyEngine.evaluate`)."""
        return self._engine.evaluate(policy_input)

    def health(self) -> tuple[bool, str]:
        """(healthy, detail) of the active engine (OPA: its /health)."""
        return self._engine.health()

    def reload(self) -> str:
        """Load, check and activate ``policy_dir``; returns ``applied`` or ``unchanged``.

        Raises:
            PolicyEngineError: the bundle was rejected; the active one stays.
        """
        if self._source is None:
            raise PolicyEngineError("OPA loads this bundle itself; reload it there (opa run --watch)")
        with self._reload_lock:
            try:
                source = load_policy_dir(self._policy_dir)
                if source.digest == self._source.digest and source.revision == self._source.revision:
                    POLICY_RELOADS.labels("unchanged").inc()
                    return "unchanged"
                if self._build is not None:
                    self._swap_engine(source)
                else:
                    self._push(source)
            except PolicyEngineError as exc:
                POLICY_RELOADS.labels("rejected").inc()
                log.error("policy reload rejected, keeping revision %s: %s", self.revision, exc.message)
                raise
            self._source = source
            POLICY_RELOADS.labels("applied").inc()
            set_active_bundle(self.name, self.revision)
            log.info("policy reloaded: revision %s", self.revision)
            return "applied"

    def _swap_engine(self, source: PolicySource) -> None:
        assert self._build is not None
        new = self._build(source)
        try:
            check_bundle(new)
        except BaseException:
            new.close(drain_timeout_s=0)
            raise
        old, self._engine = self._engine, new
        # The old engine's evaluations under way finish on it; then its workers stop.
        threading.Thread(target=old.close, name="policy-retire", daemon=True).start()

    def _push(self, source: PolicySource) -> None:
        check_source(source)  # a bundle that does not compile never reaches OPA half-uploaded
        assert self._source is not None
        try:
            self._engine.push(source)
        except PolicyEngineError:
            try:
                self._engine.push(self._source)
            except PolicyEngineError as exc:
                log.error("could not restore the previous bundle in OPA: %s", exc.message)
            raise
        check_bundle(self._engine)

    # -- watching -------------------------------------------------------------

    def watch(self) -> None:
        """Reload on every change under ``policy_dir`` (a background thread; debounced)."""
        if self._source is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="policy-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        for _changes in watchfiles.watch(
            self._policy_dir, stop_event=self._stop, debounce=300, step=50, raise_interrupt=False
        ):
            try:
                self.reload()
            except PolicyEngineError:
                pass  # logged and counted by reload(); the old bundle stays
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("policy reload failed unexpectedly")

    def close(self) -> None:
        """Stop watching and stop the active engine."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._engine.close()
