"""Builds of the ``mcp_audit`` Falco plugin and its test harness, for the tests.

- :func:`build_plugin` -> ``.tools/falco/libmcp_audit.so`` (``go build -buildmode=c-shared``);
- :func:`build_harness` -> ``.tools/falco/harness`` (``falco/test/harness``, build tag
  ``harness``, the SDK's C headers on the include path);
- :func:`go_env` -> the environment every ``go`` command of the tests runs with.

Each is built again only when its inputs changed: the SHA-256 of every ``falco/**/*.go``,
``go.mod``, ``go.sum`` and the Go version is stored beside the output (``<name>.sha256``).
Builds of concurrent test processes are serialized by a lock file, and an output is
replaced atomically. Both return None when no Go toolchain is found (``go`` on PATH or
``/usr/local/go/bin/go``), after printing why; :func:`go_unavailable` gives that reason
for ``pytest.skip``. A failed build raises :class:`BuildError`: a broken plugin fails the
tests, it never skips them.

Modules come from the Go module proxy, checked against the committed ``falco/go.sum``
(``-mod=readonly``: a build never rewrites go.mod or go.sum).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FALCO_DIR", "OUT_DIR", "BuildError", "build_harness", "build_plugin", "go_binary", "go_env",
           "go_unavailable", "plugin_or_skip", "sdk_header_dir"]

REPO = Path(__file__).resolve().parents[2]
FALCO_DIR = REPO / "falco"
OUT_DIR = REPO / ".tools" / "falco"
SDK_MODULE = "github.com/falcosecurity/plugin-sdk-go"
_BUILD_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """A ``go`` command of the build failed; the message carries its output."""


@functools.cache
def go_binary() -> str | None:
    """The ``go`` command: on PATH, else ``/usr/local/go/bin/go``; None when neither exists."""
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.exists() else None


def go_unavailable() -> str | None:
    """Why the plugin cannot be built here (no Go toolchain), or None when it can."""
    if go_binary() is None:
        return "no Go toolchain (go on PATH or /usr/local/go/bin/go) to build the mcp_audit plugin"
    return None


def _run(args: list[str], env: dict[str, str], what: str) -> str:
    """Run a go command in falco/; its stdout, or BuildError with its output."""
    proc = subprocess.run(args, cwd=FALCO_DIR, env=env, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _base_env(go: str) -> dict[str, str]:
    """go commands on falco/: the local toolchain only, go.sum as committed, cgo on."""
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "1",
            "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _go() -> str:
    go = go_binary()
    if go is None:
        raise BuildError(go_unavailable() or "no Go")
    return go


@functools.cache
def sdk_header_dir() -> Path:
    """plugin-sdk-go's ``pkg/sdk`` (``plugin_api.h``, ``plugin_types.h``) at the version
    falco/go.mod pins, downloaded into the module cache when missing.

    Raises:
        BuildError: when Go is missing or the module cannot be downloaded.
    """
    go = _go()
    env = _base_env(go)
    _run([go, "mod", "download", SDK_MODULE], env, "go mod download")
    sdk_dir = _run([go, "list", "-m", "-f", "{{.Dir}}", SDK_MODULE], env, "go list").strip()
    if not sdk_dir:
        raise BuildError(f"go list gives no directory for {SDK_MODULE}")
    return Path(sdk_dir) / "pkg" / "sdk"


@functools.cache
def go_env() -> dict[str, str]:
    """The environment for go commands on falco/ (:func:`_base_env`), with the SDK's C
    headers on cgo's include path for the harness.

    Raises:
        BuildError: when Go is missing or the SDK module cannot be downloaded.
    """
    return {**_base_env(_go()), "CGO_CFLAGS": f"-I{sdk_header_dir()}"}


def _inputs_hash(go: str, env: dict[str, str]) -> str:
    digest = hashlib.sha256(_run([go, "version"], env, "go version").encode())
    paths = sorted([*FALCO_DIR.rglob("*.go"), FALCO_DIR / "go.mod", FALCO_DIR / "go.sum"])
    for path in paths:
        digest.update(str(path.relative_to(FALCO_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextmanager
def _locked() -> Iterator[None]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(OUT_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(name: str, package: str, flags: list[str], extra_env: dict[str, str]) -> Path | None:
    """``.tools/falco/<name>``, built by ``go build <flags> -o <tmp> <package>`` unless current."""
    go = go_binary()
    if go is None:
        print(f"\n[{name} not built: {go_unavailable()}]", file=sys.stderr)
        return None
    env = {**go_env(), **extra_env}
    out, stamp = OUT_DIR / name, OUT_DIR / f"{name}.sha256"
    with _locked():
        wanted = _inputs_hash(go, env)
        if out.exists() and stamp.exists() and stamp.read_text() == wanted:
            return out
        with tempfile.TemporaryDirectory(dir=OUT_DIR, prefix=".build-") as tmp:
            built = Path(tmp) / name  # c-shared also writes a header beside it, left in tmp
            _run([go, "build", *flags, "-o", str(built), package], env, f"go build {name}")
            os.replace(built, out)
        stamp.write_text(wanted)
    return out


def build_plugin() -> Path | None:
    """``.tools/falco/libmcp_audit.so``, built from falco/ when its sources changed.

    Returns:
        the library's path, or None (the reason printed) when Go is missing.

    Raises:
        BuildError: when the build fails.
    """
    # The official plugins' build line; cgocheck=0 as they set it.
    return _build("libmcp_audit.so", "./plugin", ["-buildmode=c-shared"], {"GODEBUG": "cgocheck=0"})


def plugin_or_skip() -> Path:
    """The built plugin for a test, or pytest's skip with the reason when Go is missing (a
    failed build raises: a broken plugin fails, never skips)."""
    import pytest

    reason = go_unavailable()
    if reason is not None:
        pytest.skip(reason)
    built = build_plugin()
    assert built is not None
    return built


def build_harness() -> Path | None:
    """``.tools/falco/harness`` (falco/test/harness), built when falco/'s sources changed.

    Returns:
        the program's path, or None (the reason printed) when Go is missing.

    Raises:
        BuildError: when the build fails.
    """
    return _build("harness", "./test/harness", ["-tags", "harness"], {})
