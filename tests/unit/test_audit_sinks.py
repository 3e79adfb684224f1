"""Copies of the trail: stdout and the webhook get every line, in order, or the call fails."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.audit.log import AuditError, AuditLog
from gateway.audit.sessions import SessionCounters
from gateway.audit.sinks import FileSink, StdoutSink, WebhookSink
from gateway.models import McpCall, Principal, RequestContext, addressed_host

CTX = RequestContext(
    transport="http", method="POST /v1/execute", client_addr="127.0.0.1:5000", request_id="r1",
    session_id="conn-1", server_host="gw.example", server_port=8080, client_process="curl/8",
)
ALICE = Principal(id="alice", tenant="t1", roles=("user",), scopes=("tasks:execute",), auth_scheme="bearer")


class Collector:
    """An httpx transport standing for the collector: records bodies; ``up`` says whether it
    answers 200 (else 503)."""

    def __init__(self) -> None:
        self.up = True
        self.bodies: list[bytes] = []
        self.headers: list[httpx.Headers] = []
        self.gate = threading.Event()
        self.gate.set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.gate.wait()
        if not self.up:
            return httpx.Response(503)
        self.bodies.append(request.content)
        self.headers.append(request.headers)
        return httpx.Response(204)

    def lines(self) -> list[str]:
        return [line for body in self.bodies for line in body.decode().splitlines()]


def _webhook(collector: Collector, **kw: object) -> WebhookSink:
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return WebhookSink("http://collector.test/audit", transport=httpx.MockTransport(collector.handle), **kw)  # type: ignore[arg-type]


def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_webhook_gets_every_line_in_order_signed(tmp_path: Path) -> None:
    collector = Collector()
    hook = _webhook(collector, secret=b"s3cret", batch_events=10)
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [hook])
    for i in range(35):
        log.emit("decision", CTX, ALICE, decision="allow", command=f"echo {i}")
    _until(lambda: len(collector.lines()) == 35)
    assert collector.lines() == _file_lines(tmp_path / "a.jsonl")
    assert all(len(body.splitlines()) <= 10 for body in collector.bodies)
    for body, headers in zip(collector.bodies, collector.headers, strict=True):
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["x-mcp-audit-signature"] == expected
        assert headers["content-type"] == "application/x-ndjson"
        seqs = [json.loads(line)["seq"] for line in body.splitlines()]
        assert headers["x-mcp-audit-seq"] == f"{seqs[0]}-{seqs[-1]}"
    log.close()


def test_a_collector_that_is_down_gets_everything_once_it_is_back(tmp_path: Path) -> None:
    collector = Collector()
    collector.up = False
    hook = _webhook(collector)
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [hook])
    for i in range(20):
        log.emit("decision", CTX, ALICE, decision="allow", command=f"echo {i}")
    time.sleep(0.2)
    assert collector.lines() == [] and hook.depth == 20
    assert REGISTRY.get_sample_value("mcp_audit_queue_depth", {"sink": "webhook"}) == 20
    collector.up = True
    _until(lambda: hook.depth == 0)
    assert collector.lines() == _file_lines(tmp_path / "a.jsonl")
    log.close()


def test_a_full_queue_blocks_callers_up_to_the_deadline_then_fails_them(tmp_path: Path) -> None:
    collector = Collector()
    collector.gate.clear()  # the collector hangs: nothing is delivered
    hook = _webhook(collector, queue_events=3, batch_events=1, on_full="block", block_timeout_s=0.3)
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [hook])
    for _ in range(3):
        log.emit("decision", CTX, ALICE, decision="deny")
    started = time.monotonic()
    with pytest.raises(AuditError, match="webhook"):
        log.emit("decision", CTX, ALICE, decision="deny")
    assert 0.25 <= time.monotonic() - started < 2.0
    assert len(_file_lines(tmp_path / "a.jsonl")) == 3, "a refused line is in no sink"
    assert not log.health().healthy and log.health().sink == "webhook"
    collector.gate.set()
    _until(lambda: hook.depth == 0)
    log.emit("decision", CTX, ALICE, decision="deny")  # room again: the chain goes on
    _until(lambda: len(collector.lines()) == 5)
    lines = _file_lines(tmp_path / "a.jsonl")
    assert collector.lines() == lines
    kinds = [json.loads(line)["event_type"] for line in lines]
    assert kinds == ["decision"] * 4 + ["audit_outage"], "the outage is recorded once it is over"
    log.close()


def test_a_blocked_caller_goes_on_as_soon_as_there_is_room(tmp_path: Path) -> None:
    collector = Collector()
    collector.gate.clear()
    hook = _webhook(collector, queue_events=2, batch_events=1, on_full="block", block_timeout_s=5.0)
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [hook])
    log.emit("decision", CTX, ALICE, decision="deny")
    log.emit("decision", CTX, ALICE, decision="deny")
    threading.Timer(0.2, collector.gate.set).start()
    started = time.monotonic()
    log.emit("decision", CTX, ALICE, decision="deny")
    assert 0.15 <= time.monotonic() - started < 4.0
    log.close()


def test_fail_mode_refuses_at_once(tmp_path: Path) -> None:
    collector = Collector()
    collector.gate.clear()
    hook = _webhook(collector, queue_events=1, batch_events=1, on_full="fail")
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [hook])
    log.emit("decision", CTX, ALICE, decision="deny")
    started = time.monotonic()
    with pytest.raises(AuditError):
        log.emit("decision", CTX, ALICE, decision="deny")
    assert time.monotonic() - started < 0.2
    collector.gate.set()
    log.close()


def test_the_spool_keeps_undelivered_lines_across_a_restart(tmp_path: Path) -> None:
    down = Collector()
    down.up = False
    spool = tmp_path / "spool.jsonl"
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [_webhook(down, spool=spool, close_timeout_s=0.1)])
    for i in range(5):
        log.emit("decision", CTX, ALICE, decision="allow", command=f"echo {i}")
    log.close()
    assert os.stat(spool).st_mode & 0o777 == 0o600
    up = Collector()
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [_webhook(up, spool=spool)])
    log.emit("decision", CTX, ALICE, decision="deny")
    _until(lambda: len(up.lines()) == 6)
    assert up.lines() == _file_lines(tmp_path / "a.jsonl")
    log.close()
    assert spool.stat().st_size == 0, "a delivered spool starts over"


def test_stdout_gets_every_line_and_a_refused_one_is_taken_back_from_the_file(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    stdout = StdoutSink(write_end)
    log = AuditLog(FileSink(tmp_path / "a.jsonl"), [stdout])
    log.emit("decision", CTX, ALICE, decision="allow")
    log.emit("decision", CTX, ALICE, decision="deny")
    assert os.read(read_end, 65536).decode().splitlines() == _file_lines(tmp_path / "a.jsonl")
    os.close(read_end)  # the reader is gone: EPIPE
    with pytest.raises(AuditError, match="stdout"):
        log.emit("decision", CTX, ALICE, decision="deny")
    assert len(_file_lines(tmp_path / "a.jsonl")) == 2, "the record does not keep what stdout refused"
    os.close(write_end)


def test_sessions_count_per_principal_and_session() -> None:
    counters = SessionCounters(max_sessions=2)
    assert [counters.count_call("alice", "s1", tool=True, file=False) for _ in range(3)] == [(1, None), (2, None),
                                                                                            (3, None)]
    assert counters.count_call("bob", "s1", tool=True, file=False) == (1, None)  # the same id, another principal
    assert counters.count_call("alice", "s1", tool=False, file=True) == (None, 1)
    assert counters.count_call("alice", "s1", tool=True, file=True) == (4, 2)  # a file tool over MCP
    assert counters.add_bytes("alice", "s1", 10, 100) == (10, 100)
    assert counters.add_bytes("alice", "s1", 5, 0) == (15, 100)
    counters.count_call("carol", "s9", tool=True, file=False)  # a third session: the least recent goes
    assert counters.count_call("bob", "s1", tool=True, file=False) == (1, None)


def test_mcp_calls_count_every_tool_and_carry_the_handshake(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    mcp = dataclasses.replace(CTX, method="tools/call", mcp=McpCall("read_file", "7", "2025-11-25", "agent", "1.2"))
    assert log.count_call(CTX, ALICE, file=True) == {"file_access_count": 1}
    assert log.count_call(mcp, ALICE, file=True) == {"tool_invoke_count": 1, "file_access_count": 2}
    assert log.count_call(mcp, ALICE) == {"tool_invoke_count": 2}
    event = log.emit("file", mcp, ALICE, tool_name="file_read", file_path="a")
    assert {k: event[k] for k in ("tool_name", "jsonrpc_id", "protocol_version", "client_name", "client_version",
                                  "method")} == {
        "tool_name": "read_file", "jsonrpc_id": "7", "protocol_version": "2025-11-25", "client_name": "agent",
        "client_version": "1.2", "method": "tools/call"}


def test_events_carry_the_session_totals(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "a.jsonl"))
    counts = [log.count_call(CTX, ALICE)["tool_invoke_count"] for _ in range(2)]
    e1 = log.emit("decision", CTX, ALICE, decision="allow", request_bytes=100, tool_invoke_count=counts[0])
    e2 = log.emit("task_end", CTX, ALICE, status="COMPLETED", response_bytes=7000)
    assert (e1["session_request_bytes"], e1["session_response_bytes"]) == (100, 0)
    assert (e2["session_request_bytes"], e2["session_response_bytes"]) == (100, 7000)
    assert counts == [1, 2]


@pytest.mark.parametrize(("header", "host"), [
    ("gw.example.com:8443", "gw.example.com"),
    ("GW.Example.COM", "gw.example.com"),
    ("[::1]:8080", "::1"),
    ("10.0.0.1", "10.0.0.1"),
    ("evil\x00host", "evil?host"),
    ("", None),
    (None, None),
])
def test_the_addressed_host(header: str | None, host: str | None) -> None:
    assert addressed_host(header) == host


@pytest.mark.parametrize(("sent", "session"), [
    ("mcp-abc-123", "mcp-abc-123"),
    ("has space", "conn-c1"),
    ("x" * 129, "conn-c1"),
    (None, "conn-c1"),
])
def test_the_session_is_the_callers_else_the_connections(sent: str | None, session: str) -> None:
    ctx = RequestContext.for_call(transport="http", method="GET /x", peer="1.2.3.4:5", server_host="0.0.0.0",
                                  server_port=1, request_bytes=0, user_agent=None, connection_id="c1",
                                  session_header=sent, authority="gw:1")
    assert (ctx.session_id, ctx.server_host) == (session, "gw")


def test_stdout_probe_fails_on_a_closed_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(OSError) as info:
        StdoutSink(write_end).probe(10)
    assert info.value.errno == errno.EBADF
