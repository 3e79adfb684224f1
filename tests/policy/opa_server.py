"""A real OPA server for tests: find (or build) the ``opa`` binary and run ``opa run -s``.

Reusable outside this package::

    from tests.policy.opa_server import OpaServer, opa_binary_or_skip

    binary = opa_binary_or_skip()          # pytest.skip(reason) when there is no opa
    with OpaServer(binary, tmp_path, bundle=Path("policies")) as opa:
        httpx.get(opa.url + "/health")

The binary is ``opa`` on ``PATH``, else ``<repo>/.tools/bin/opa``, else it is built with
``go install github.com/open-policy-agent/opa@v1.22.2`` into ``<repo>/.tools/bin`` when a Go
toolchain is present. Without any of these, tests that need OPA are skipped with the
reason, never reported as passed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import pytest

from tests.procs import free_port

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
OPA_VERSION = "v1.22.2"
START_DEADLINE_S = 30.0


@functools.lru_cache(maxsize=1)
def find_or_build_opa() -> tuple[str | None, str]:
    """``(path, "found" | "built")`` of an ``opa`` binary, or ``(None, reason)``.

    Looks at ``PATH``, then ``<repo>/.tools/bin/opa``; else runs ``go install`` of
    ``OPA_VERSION`` (``GOBIN=<repo>/.tools/bin``, ``CGO_ENABLED=0``, up to 900 s).
    """
    found = shutil.which("opa")
    if found:
        return found, "found"
    local = TOOLS_BIN / "opa"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local), "found"
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return None, "no opa binary on PATH or in .tools/bin, and no Go toolchain to build it"
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    try:
        build = subprocess.run(
            [go, "install", f"github.com/open-policy-agent/opa@{OPA_VERSION}"],
            env={**os.environ, "GOBIN": str(TOOLS_BIN), "CGO_ENABLED": "0"},
            capture_output=True, text=True, timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"go install opa@{OPA_VERSION} failed: {exc}"
    if build.returncode != 0 or not local.is_file():
        return None, f"go install opa@{OPA_VERSION} failed: {build.stderr.strip()[-500:]}"
    return str(local), "built"


def opa_binary_or_skip() -> str:
    """The ``opa`` binary path; ``pytest.skip`` with the reason when there is none."""
    path, how = find_or_build_opa()
    if path is None:
        pytest.skip(f"OPA server tests need the opa binary: {how}")
    return path


class OpaServer:
    """``opa run -s -a 127.0.0.1:<port> [--set decision_logs.console=true] [-b <bundle>]``.

    Started by the constructor (and the context manager); :meth:`stop` kills it with
    SIGKILL, :meth:`start` starts it again on the same port. Its stdout and stderr go to
    ``<log_dir>/opa-<port>.log`` (appended to across restarts).

    Args:
        binary: the ``opa`` executable.
        log_dir: where the log file goes.
        bundle: a bundle directory to load with ``-b``; None for an empty OPA (push mode).
        decision_logs: turn OPA's console decision log on (answers then carry ``decision_id``).
        port: the port, default a free one.

    Raises:
        RuntimeError: OPA did not answer ``GET /health`` with 200 within 30 s (the
            message ends with the log tail).
    """

    def __init__(
        self,
        binary: str,
        log_dir: Path,
        *,
        bundle: Path | None = None,
        decision_logs: bool = False,
        port: int | None = None,
    ) -> None:
        self.binary = binary
        self.bundle = bundle
        self.decision_logs = decision_logs
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"opa-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start()

    @property
    def command(self) -> list[str]:
        cmd = [self.binary, "run", "-s", "-a", f"127.0.0.1:{self.port}", "--skip-version-check"]
        if self.decision_logs:
            cmd += ["--set", "decision_logs.console=true"]
        if self.bundle is not None:
            cmd += ["-b", str(self.bundle)]
        return cmd

    def start(self) -> None:
        """Start OPA (again, on the same port) and wait until ``GET /health`` is 200."""
        if self.running:
            return
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_DEADLINE_S
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        code = self._proc.poll()
        self.stop()
        raise RuntimeError(
            f"opa did not become healthy on {self.url} (exit {code}): {' '.join(self.command)}\n{self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGKILL OPA and reap it; a no-op when it is not running."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> OpaServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class OpaServers:
    """Starts OPA servers into one log directory and stops them all at :meth:`close`
    (for a fixture: ``servers = OpaServers(binary, tmp); yield servers; servers.close()``)."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.binary, self.log_dir = binary, Path(log_dir)
        self._servers: list[OpaServer] = []

    def start(self, *, bundle: Path | None = None, decision_logs: bool = False) -> OpaServer:
        server = OpaServer(self.binary, self.log_dir, bundle=bundle, decision_logs=decision_logs)
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
