"""Fixtures for the real-sandbox containment tests (real bwrap, run as root here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox import Limits, RunAs, SandboxResult, SandboxSpec, run, set_child_subreaper

NOBODY = RunAs(65534, 65534)


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if os.geteuid() != 0:
        pytest.skip("containment tests drop to uid 65534 and need root")
    set_child_subreaper()  # lets run() report the command's own rusage


@pytest.fixture(scope="session")
def workspace_root() -> Iterator[str]:
    # Not pytest's tmp_path (its parents are 0700 root and bwrap runs as the sandbox uid),
    # and not /tmp itself: a workspace's parent must be writable by root only.
    root = tempfile.mkdtemp(prefix="sandbox-tests-")
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def workspace(workspace_root) -> Iterator[str]:
    ws = tempfile.mkdtemp(prefix="ws-", dir=workspace_root)
    os.chown(ws, NOBODY.uid, NOBODY.gid)
    yield ws
    shutil.rmtree(ws, ignore_errors=True)


@pytest.fixture
def sbx(workspace) -> Callable[..., SandboxResult]:
    """``sbx(*argv, timeout_s=10, **spec_fields)`` runs argv as uid 65534."""

    def _run(*argv: str, cancel: Any = None, **kw: Any) -> SandboxResult:
        limit_fields = {k: kw.pop(k) for k in list(kw) if k in Limits.__dataclass_fields__}
        limit_fields.setdefault("timeout_s", 10.0)
        spec = SandboxSpec(argv=argv, workspace=workspace, run_as=NOBODY,
                           limits=Limits(**limit_fields), **kw)
        return run(spec, cancel=cancel)

    return _run
