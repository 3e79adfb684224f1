"""A real Falco filter engine for tests: Debian 12's ``sysdig`` 0.29.3 (libsinsp of 2022,
plugin API 0.3.0) evaluates conditions on the fields our plugin API 3.x ``mcp_audit``
plugin extracts, through the test-only C bridge in ``falco/test/sysdigbridge/``.

    reason = ensure_sysdig()            # None, or why sysdig cannot be had here (skip)
    rows = match(plugin_so, audit_file, 'mcp.tls = false and mcp.request_bytes > 10485760',
                 ["mcp.event_id", "mcp.tls"])
    # [{"mcp.event_id": "…", "mcp.tls": "false"}, …]: one dict per matched event

Semantics are libsinsp's of 2022 (see the README beside the bridge): no macros or lists
(expand them), no ``regex``/``bcontains``/``evt.source``, bools are the strings
"true"/"false", a comparison on an absent field is false.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.debian import apt_install
from tests.falco import plugin_build

__all__ = ["SysdigError", "build_bridge", "ensure_sysdig", "match"]

REPO = Path(__file__).resolve().parents[2]
BRIDGE_SRC = REPO / "falco" / "test" / "sysdigbridge"
BRIDGE_ROOT = REPO / ".tools" / "falco" / "sysdig"
PLUGIN_NAME = "mcp_audit"
# The plugin API 0.3.0 header of the very libsinsp sysdig links (libfalcosecurity0-dev).
V0_HEADER_DIR = Path("/usr/include/falcosecurity-libs/userspace/libscap")
APT_PACKAGES = ("sysdig", "libfalcosecurity0-dev")
# A plain read of the file that stops at its end (no follow).
INIT_CONFIG = '{"follow":false}'
CFLAGS = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fvisibility=hidden"]

RUN_TIMEOUT_S = 60
_FIELD_RE = re.compile(r"^[A-Za-z0-9_.]+(\[[^\]%\s]+\])?$")

_checked: str | None | bool = False  # False: not checked yet


class SysdigError(RuntimeError):
    """sysdig refused the run (bad condition, unknown field, plugin error) or timed out."""

    def __init__(self, message: str, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(f"{message}\n--- sysdig stderr ---\n{stderr.strip()}" if stderr.strip() else message)
        self.stderr = stderr
        self.returncode = returncode


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def _check() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc is missing: it builds the sysdig bridge"
    missing = shutil.which("sysdig") is None or not (V0_HEADER_DIR / "plugin_info.h").is_file()
    if missing:
        if not shutil.which("apt-get") or not Path("/etc/debian_version").exists():
            return ("sysdig 0.29.3 and libfalcosecurity0-dev are Debian 12 packages; this is not a Debian "
                    "machine with apt-get")
        failure = apt_install(*APT_PACKAGES)
        if failure is not None:
            return failure
        installed = True
    else:
        installed = False
    # From here on sysdig must work: an install that succeeded but does not run is a failure.
    try:
        out = _run(["sysdig", "--version"], 30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssertionError(f"sysdig is installed but does not run: {exc}") from exc
    if out.returncode != 0 or "sysdig version" not in out.stdout:
        raise AssertionError(f"sysdig --version failed (exit {out.returncode}): {out.stdout}{out.stderr}")
    if not (V0_HEADER_DIR / "plugin_info.h").is_file():
        raise AssertionError(f"{V0_HEADER_DIR}/plugin_info.h is missing after installing {APT_PACKAGES}")
    if installed:
        print(f"installed {' '.join(APT_PACKAGES)}: {out.stdout.strip()}", file=sys.stderr)
    return None


def ensure_sysdig() -> str | None:
    """None when sysdig and the plugin API 0.3.0 header are usable (installing them with
    apt-get when missing and we are root), else the reason to skip, also printed. Raises
    AssertionError when sysdig is there but does not run."""
    global _checked
    if _checked is False:
        _checked = _check()
        if _checked is not None:
            print(f"sysdig unavailable: {_checked}", file=sys.stderr)
    assert _checked is not False
    return _checked


def build_bridge(plugin_so: Path) -> Path:
    """Compile the bridge (cached by a hash of its sources and the 0.3.0 header) and return
    the directory holding only ``libmcp_audit.so``, for SYSDIG_PLUGIN_DIR. The 3.x plugin
    itself is not built in: :func:`match` points the bridge at ``plugin_so`` at run time.
    When the plugin SDK's headers are in the Go module cache, plugin_v3.h is first checked
    against them (abi_check.c)."""
    if not Path(plugin_so).is_file():
        raise FileNotFoundError(f"3.x plugin not found: {plugin_so}")
    sources = [BRIDGE_SRC / "bridge.c", BRIDGE_SRC / "plugin_v3.h", V0_HEADER_DIR / "plugin_info.h"]
    # The ABI check of plugin_v3.h against the SDK's own header, wherever Go can fetch it.
    sdk = plugin_build.sdk_header_dir() if plugin_build.go_unavailable() is None else None
    if sdk is not None:
        sources += [BRIDGE_SRC / "abi_check.c", sdk / "plugin_api.h", sdk / "plugin_types.h"]
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    out_dir = BRIDGE_ROOT / h.hexdigest()[:16]
    if (out_dir / f"lib{PLUGIN_NAME}.so").is_file():
        return out_dir

    BRIDGE_ROOT.mkdir(parents=True, exist_ok=True)
    if sdk is not None:
        chk = _run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I", str(sdk),
                    "-I", str(BRIDGE_SRC), str(BRIDGE_SRC / "abi_check.c")], 120)
        if chk.returncode != 0:
            raise RuntimeError(f"plugin_v3.h does not match the SDK's plugin_api.h ({sdk}):\n{chk.stderr}")
    # Build in a scratch directory, then rename it into place: the final directory only
    # ever holds the finished library (sysdig loads whatever is in it).
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=BRIDGE_ROOT))
    tmp.chmod(0o755)
    try:
        cc = _run(["gcc", *CFLAGS, "-I", str(V0_HEADER_DIR), "-I", str(BRIDGE_SRC),
                   "-o", str(tmp / f"lib{PLUGIN_NAME}.so"), str(BRIDGE_SRC / "bridge.c"), "-ldl", "-lpthread"], 120)
        if cc.returncode != 0:
            raise RuntimeError(f"building the sysdig bridge failed:\n{cc.stdout}{cc.stderr}")
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / f"lib{PLUGIN_NAME}.so").is_file():  # not a concurrent build
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def as_printed(value: Any) -> str | None:
    """A JSON value as the filter engine prints a field: bools as true/false, uint64 (a JSON
    number) as its decimal digits, absent as None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # uint64 comes as a JSON number: its decimal digits


def match(plugin_so: Path, audit_file: Path, condition: str, fields: list[str]) -> list[dict[str, str | None]]:
    """Run ``sysdig -H mcp_audit -I mcp_audit:<audit_file>`` with ``condition`` as the filter
    (an empty condition matches every event) and return, per matched event in file order,
    a dict of each of ``fields`` to its value as sysdig prints it: strings as they are,
    uint64 in decimal, bools as "true"/"false", an absent field as None.

    Raises SysdigError (carrying sysdig's stderr) when sysdig refuses the condition or a
    field, the plugin fails, or the run times out."""
    reason = ensure_sysdig()
    if reason is not None:
        raise SysdigError(f"sysdig is not available: {reason}")
    for f in fields:
        if not _FIELD_RE.match(f):
            raise ValueError(f"not a field name: {f!r}")
    plugin_dir = build_bridge(plugin_so)
    # GOMAXPROCS=1 turns off the Go SDK's async extraction, whose busy-waiting worker makes
    # every extraction cost ~0.5 ms on a loaded 2-core machine (20x slower than without).
    env = dict(os.environ, SYSDIG_PLUGIN_DIR=str(plugin_dir), MCP_BRIDGE_TARGET=str(Path(plugin_so).resolve()),
               GOMAXPROCS="1")
    # '*': print every matched event, also when some of the fields are absent (sysdig
    # otherwise drops the event); -j: one JSON object per event, absent fields as null.
    fmt = "*" + " ".join(f"%{f}" for f in (fields or ["evt.num"]))
    argv = ["sysdig", "-H", f"{PLUGIN_NAME}:{INIT_CONFIG}", "-I", f"{PLUGIN_NAME}:{Path(audit_file).resolve()}",
            "-j", "-p", fmt]
    if condition.strip():
        argv += ["--", condition]
    try:
        out = _run(argv, RUN_TIMEOUT_S, env)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise SysdigError(f"sysdig did not finish within {RUN_TIMEOUT_S}s: {argv}", err) from exc
    if out.returncode != 0:
        raise SysdigError(f"sysdig exited {out.returncode} for condition {condition!r}, fields {fields}",
                          out.stderr, out.returncode)
    rows: list[dict[str, str | None]] = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SysdigError(f"unexpected sysdig output line: {line!r}", out.stderr) from exc
        missing = [f for f in fields if f not in obj]
        if missing:
            raise SysdigError(f"sysdig output lacks {missing}: {line!r}", out.stderr)
        rows.append({f: as_printed(obj[f]) for f in fields})
    return rows
