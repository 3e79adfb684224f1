"""A full disk under a real gateway (issue 13, finding 2), on a real 3 MiB tmpfs holding the
audit file, the task store, or both: every call fails with its code and nothing runs,
readiness names the failing audit sink and the failure is logged (a bounded number of
times); once space returns readiness recovers by itself, and the trail continues with
whole lines that parse and verify end to end, closing every allowed request that never
ran with a ``task_end`` carrying its error code."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.audit.fields import json_schema
from gateway.audit.log import verify_chain
from tests.conftest import GatewayProcess, start_gateway, wait_until

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
SINK_ERROR = "audit sink 'file' cannot write events"
# layout: (the state directory, with the task store, is on the tmpfs; the audit file is)
LAYOUTS = {"shared": (True, True), "audit_only": (False, True), "store_only": (True, False)}


def mount_tmpfs(where: Path) -> None:
    """A 3 MiB tmpfs at ``where``, or skip (with the reason printed) where mounting is not
    permitted."""
    where.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0711", "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        out = subprocess.CompletedProcess([], 1, "", "no mount(8) on this machine")
    if out.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}"
        print(f"\n[{reason}]")
        pytest.skip(reason)


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a filler file into ``directory`` until its filesystem has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)  # the last one is short, the next fails
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def execute(http: httpx.Client) -> tuple[int, int | None, str | None]:
    """POST one echo; (HTTP status, error code or None, task id or None)."""
    response = http.post("/v1/execute", json={"command": "echo", "args": ["full-disk"]})
    body = response.json()
    if response.status_code == 202:
        return 202, None, body["task_id"]
    return response.status_code, body["error"]["code"], None


def wait_final(http: httpx.Client, task_id: str) -> str:
    def final() -> str | None:
        state = http.get(f"/v1/tasks/{task_id}").json()["task_info"]["status"]
        return state if state in FINAL else None

    return wait_until(final, timeout_s=60, what=f"task {task_id} final")


def sink_errors(gw: GatewayProcess) -> int:
    return gw.stderr_path.read_text().count(SINK_ERROR)


@pytest.fixture
def layout_dirs(state_root: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path, Path]]:
    """(tmpfs mount point, state dir, audit file) for ``request.param`` of LAYOUTS; the
    gateway's stderr file is never on the tmpfs (its log must get out)."""
    state_on_tmpfs, audit_on_tmpfs = LAYOUTS[request.param]
    base = Path(tempfile.mkdtemp(prefix=f"full-disk-{request.param}-", dir=state_root))
    base.chmod(0o711)
    mnt = base / ("var" if state_on_tmpfs else "audit")
    mount_tmpfs(mnt)
    try:
        state_dir = mnt if state_on_tmpfs else base / "var"
        audit_path = (mnt if audit_on_tmpfs else base) / "audit.jsonl"
        yield mnt, state_dir, audit_path
    finally:
        unmount(mnt)


@pytest.mark.parametrize("layout_dirs", list(LAYOUTS), indirect=True)
def test_a_full_disk_fails_calls_then_the_trail_continues_whole_and_verified(
    layout_dirs: tuple[Path, Path, Path],
) -> None:
    mnt, state_dir, audit_path = layout_dirs
    audit_full = audit_path.is_relative_to(mnt)
    gw = start_gateway(state_dir, env={"MCP_GATEWAY_AUDIT__PATH": str(audit_path)})
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            status, code, first = execute(http)
            assert status == 202 and wait_final(http, first) == "COMPLETED"

            filler = fill(mnt)
            started = time.monotonic()
            answers = []
            # Keep calling until the full disk shows (the store's WAL and the audit file's
            # last page may take a few more bytes first), then a few more.
            wanted = 5001 if audit_full else 5002
            while sum(a[1] == wanted for a in answers) < 5 and len(answers) < 40:
                answers.append(execute(http))
            assert sum(a[1] == wanted for a in answers) >= 5, answers
            allowed = {(202, None), (503, 5002)} | ({(500, 5001)} if audit_full else set())
            assert {a[:2] for a in answers} <= allowed, answers
            refused_by_store = sum(a[1] == 5002 for a in answers)

            if audit_full:
                def not_ready() -> dict[str, Any] | None:
                    r = http.get("/health/ready")
                    return r.json() if r.status_code == 503 else None

                body = wait_until(not_ready, timeout_s=10, what="readiness 503")
                assert body["status"] == "not_ready"
                audit = body["audit"]
                assert (audit["sink"], audit["healthy"], audit["detail"]) == ("file", False, "No space left on device")
                assert audit["failed_events"] >= 5
                logged = sink_errors(gw)  # logged, but at most once per 10 s
                assert 1 <= logged <= 1 + math.ceil((time.monotonic() - started) / 10), logged
            else:
                assert http.get("/health/ready").json()["audit"]["healthy"] is True

            filler.unlink()
            if audit_full:  # no call comes: readiness finds out by itself
                wait_until(lambda: http.get("/health/ready").status_code == 200, timeout_s=10,
                           what="readiness 200 after space returned")
            status, code, last = execute(http)
            assert status == 202 and wait_final(http, last) == "COMPLETED"
            for _, _, task_id in answers:
                if task_id is not None:
                    wait_final(http, task_id)
        assert gw.stop() == 0, gw.stderr_path.read_text()
    finally:
        gw.stop()

    data = audit_path.read_bytes()
    assert data.endswith(b"\n"), f"torn tail: {data[-120:]!r}"
    events = [json.loads(line) for line in data.splitlines()]  # every line is whole
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in events:
        validator.validate(event)
    assert verify_chain(events) == len(events)  # no line missing, no dangling prev_hash
    ends: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["event_type"] == "task_end":
            ends.setdefault(event["task_id"], []).append(event)
    allowed_tasks = [e["task_id"] for e in events if e["event_type"] == "decision" and "task_id" in e]
    assert {first, last} <= set(allowed_tasks)
    for task_id in allowed_tasks:  # every allowed task is closed, once
        assert len(ends.get(task_id, [])) == 1, (task_id, ends.get(task_id))
    never_ran = [e[0] for e in ends.values() if e[0].get("error_code") == 5002]
    assert len(never_ran) == refused_by_store
    assert all(e["status"] == "FAILED" and "exit_code" not in e for e in never_ran)  # absent: never ran
    if not audit_full:
        assert refused_by_store >= 5
