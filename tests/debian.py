"""Installing a Debian package a test needs (PostgreSQL, Prometheus, sysdig), as the test
setup's own step: the suite must pass on a fresh machine that has none of them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

__all__ = ["apt_install", "find_or_install"]

_TIMEOUT_S = 900


def apt_install(*packages: str) -> str | None:
    """``apt-get install --no-install-recommends`` ``packages``, refreshing the package lists
    once when the first try fails (a fresh machine may have none yet).

    A package's maintainer scripts must not start a machine-wide service (PostgreSQL's
    ``main`` cluster, Prometheus): while installing, ``/usr/sbin/policy-rc.d`` answers 101
    ("action forbidden", invoke-rc.d(8)), unless the machine already has one.

    Returns:
        None when installed, else why not (not root, no apt-get, the command's failure):
        the reason for a test to skip with.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"installing {' '.join(packages)} needs root and apt-get (a Debian machine)"
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
               *packages]
    try:
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
        if out.returncode != 0:
            subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"], env=env,
                           capture_output=True, timeout=_TIMEOUT_S)
            out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(install)}: {exc}"
    finally:
        if own_policy:
            policy.unlink()
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
        return f"{' '.join(install)} failed (exit {out.returncode}): {tail}"
    return None


def find_or_install(package: str, find: Callable[[], T | None], need: str) -> T:
    """What ``find()`` finds, installing ``package`` with :func:`apt_install` first when it
    finds nothing; pytest's skip, saying ``need`` and why, when it still finds nothing."""
    found = find()
    if found is not None:
        return found
    failure = apt_install(package)
    found = find()
    if failure is not None or found is None:
        pytest.skip(f"{need}: {failure or f'not found after installing {package}'}")
    return found
