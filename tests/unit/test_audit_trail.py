"""Signed checkpoints, rotation and ``verify``: every way of rewriting the trail is caught.

The trail is written by the real :class:`AuditLog` with a real Ed25519 key; each test then
rewrites it the way an attacker with write access to the file would, and ``verify_files``
(and the ``mcp-gateway audit verify`` command) must name the first break.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.audit.chain import GENESIS_HASH, canonical_json, event_hash
from gateway.audit.fields import json_schema
from gateway.audit.log import AuditLog
from gateway.audit.signing import CheckpointSigner, CheckpointVerifier, create_signing_key, load_signing_key
from gateway.audit.sinks import FileSink, rotated_name
from gateway.audit.verify import verify_files
from gateway.cli import main as cli_main
from gateway.models import Principal, RequestContext

CTX = RequestContext(
    transport="http", method="POST /v1/execute", client_addr="127.0.0.1:5000", request_id="r1",
    session_id="conn-1", server_host="gw.example", server_port=8080, client_process="curl/8",
)
ALICE = Principal(id="alice", tenant="t1", roles=("user",), scopes=("tasks:execute",), auth_scheme="bearer")


@pytest.fixture
def key(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.of(create_signing_key(tmp_path / "signing.key"))


@pytest.fixture
def verifier(key: CheckpointSigner) -> CheckpointVerifier:
    return CheckpointVerifier.of(key.private_key.public_key())


def _trail(path: Path, key: CheckpointSigner, events: int, *, every: int = 5, close: bool = True,
           **sink: Any) -> AuditLog:
    log = AuditLog(FileSink(path, **sink), signer=key, checkpoint_events=every, checkpoint_interval_s=3600)
    for i in range(events):
        log.emit("decision", CTX, ALICE, decision="allow", command=f"echo {i}", request_bytes=10)
    if close:
        log.close()
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _rechain(events: list[dict[str, Any]]) -> list[bytes]:
    """What a forger without the key does: fix every seq, prev_hash and hash."""
    prev, out = GENESIS_HASH, []
    for seq, event in enumerate(events, 1):
        event = {**event, "seq": seq, "prev_hash": prev}
        event["hash"] = prev = event_hash(event)
        out.append((canonical_json(event) + "\n").encode())
    return out


def test_an_untouched_trail_verifies_with_its_checkpoints(tmp_path: Path, key: CheckpointSigner,
                                                          verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 12)
    events = [json.loads(line) for line in _lines(path)]
    reasons = [e.get("checkpoint") for e in events if e["event_type"] == "checkpoint"]
    assert reasons == ["start", "count", "count", "shutdown"]
    validator = jsonschema.Draft202012Validator(json_schema())
    for event in events:
        validator.validate(event)
    report = verify_files([path], verifier)
    assert report.intact, report.summary()
    assert (report.events, report.checkpoints, report.unsigned_tail) == (16, 4, 0)
    assert report.key_ids == [key.key_id]


def test_the_chain_continues_across_restarts_each_start_signed(tmp_path: Path, key: CheckpointSigner,
                                                               verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 3)
    _trail(path, key, 3)
    report = verify_files([path], verifier)
    assert report.intact, report.summary()
    types = [json.loads(line).get("checkpoint") for line in _lines(path)]
    assert types.count("start") == 2 and types.count("shutdown") == 2


@pytest.mark.parametrize(("tamper", "kind", "line"), [
    ("edit", "edited", 4),
    ("delete", "deleted", 4),
    ("swap", "reordered", 4),
    ("insert", "inserted", 5),
    ("truncate", "truncated", 16),
])
def test_every_rewrite_of_a_line_is_named(tmp_path: Path, key: CheckpointSigner, verifier: CheckpointVerifier,
                                          tamper: str, kind: str, line: int) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 12)
    lines = _lines(path)
    if tamper == "edit":  # line 4: a decision turned from allow into deny
        lines[3] = lines[3].replace(b'"decision":"allow"', b'"decision":"deny"')
    elif tamper == "delete":
        del lines[3]
    elif tamper == "swap":
        lines[3], lines[4] = lines[4], lines[3]
    elif tamper == "insert":  # a well-formed copy of line 4, its own hash right
        lines.insert(4, lines[3])
    elif tamper == "truncate":
        lines[-1] = lines[-1][:40]
    _write(path, lines)
    report = verify_files([path], verifier)
    assert report.problem is not None, "not caught"
    assert (report.problem.kind, report.problem.line) == (kind, line), report.summary()


def test_a_trail_rechained_without_the_key_fails_at_the_first_signature(
        tmp_path: Path, key: CheckpointSigner, verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 12)
    events = [json.loads(line) for line in _lines(path)]
    events[3]["decision"] = "deny"
    _write(path, _rechain(events))
    assert verify_files([path]).intact, "without the key, a re-chained trail looks whole"
    report = verify_files([path], verifier)
    assert report.problem is not None and report.problem.kind == "bad_signature"
    assert report.problem.seq == 7  # the first checkpoint after the edit


def test_a_trail_rechained_without_its_checkpoints_is_unsigned(tmp_path: Path, key: CheckpointSigner,
                                                               verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 12)
    events = [json.loads(line) for line in _lines(path)]
    _write(path, _rechain([e for e in events if e["event_type"] != "checkpoint"]))
    for given in (None, verifier):
        report = verify_files([path], given)
        assert report.problem is not None and report.problem.kind == "unsigned", report.summary()


def test_checkpoints_dropped_from_the_middle_leave_too_long_a_gap(tmp_path: Path, key: CheckpointSigner,
                                                                   verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 12)
    events = [json.loads(line) for line in _lines(path)]
    middle = [e for e in events if e.get("checkpoint") != "count"]
    _write(path, _rechain(middle))
    report = verify_files([path], verifier)
    assert report.problem is not None and report.problem.kind in ("unsigned", "bad_signature"), report.summary()


def test_another_key_is_named(tmp_path: Path, key: CheckpointSigner) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 3)
    other = CheckpointVerifier.of(create_signing_key(tmp_path / "other.key").public_key())
    report = verify_files([path], other)
    assert report.problem is not None and report.problem.kind == "bad_signature"
    assert "not by the key given" in report.problem.message


def test_a_live_trail_has_an_unsigned_tail_within_the_interval(tmp_path: Path, key: CheckpointSigner,
                                                               verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    log = _trail(path, key, 8, close=False)  # start, 5 events, count, 3 events: a tail of 3
    report = verify_files([path], verifier)
    assert report.intact and report.unsigned_tail == 3, report.summary()
    assert "3 events after the last checkpoint not signed yet" in report.summary()
    log.close()


def test_an_interval_checkpoint_signs_a_quiet_trail(tmp_path: Path, key: CheckpointSigner,
                                                    verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(FileSink(path), signer=key, checkpoint_events=1000, checkpoint_interval_s=0.2)
    log.emit("decision", CTX, ALICE, decision="deny")
    deadline = time.monotonic() + 5
    while verify_files([path], verifier).unsigned_tail and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = [json.loads(line).get("checkpoint") for line in _lines(path)]
    assert reasons == ["start", None, "interval"]
    time.sleep(0.4)  # nothing new: no further checkpoint
    assert len(_lines(path)) == 3
    log.close()


def test_rotation_checkpoints_each_file_and_names_sort_in_order(tmp_path: Path, key: CheckpointSigner,
                                                                verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 40, every=1000, max_bytes=4096, retention_files=0)
    rotated = sorted(tmp_path.glob("audit*.jsonl"))
    assert rotated[-1] == path and len(rotated) >= 4
    for old in rotated[:-1]:
        last = json.loads(_lines(old)[-1])
        assert last.get("checkpoint") == "rotation" and old == rotated_name(path, last["seq"])
        assert os.stat(old).st_mode & 0o777 == 0o600
    report = verify_files(rotated, verifier)
    assert report.intact, report.summary()
    assert report.first_seq == 1 and report.events == sum(len(_lines(p)) for p in rotated)


def test_a_missing_rotated_file_is_named(tmp_path: Path, key: CheckpointSigner,
                                         verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 40, every=1000, max_bytes=4096)
    rotated = sorted(tmp_path.glob("audit*.jsonl"))
    report = verify_files(rotated[:1] + rotated[2:], verifier)
    assert report.problem is not None and report.problem.kind == "missing_file"
    assert (report.problem.file, report.problem.line) == (str(rotated[2]), 1)


def test_retention_keeps_the_newest_rotated_files(tmp_path: Path, key: CheckpointSigner,
                                                  verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 60, every=1000, max_bytes=4096, retention_files=2)
    rotated = sorted(tmp_path.glob("audit*.jsonl"))
    assert len(rotated) == 3
    report = verify_files(rotated, verifier)  # starts mid-trail: fine, the rest is whole
    assert report.intact and report.first_seq is not None and report.first_seq > 1, report.summary()


def test_rotation_by_age(tmp_path: Path, key: CheckpointSigner, verifier: CheckpointVerifier) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(FileSink(path, max_age_s=0.2), signer=key, checkpoint_interval_s=3600)
    log.emit("decision", CTX, ALICE, decision="deny")
    time.sleep(0.3)
    log.emit("decision", CTX, ALICE, decision="deny")
    log.close()
    files = sorted(tmp_path.glob("audit*.jsonl"))
    assert len(files) == 2
    assert verify_files(files, verifier).intact


def test_the_chain_continues_after_a_restart_right_after_rotation(tmp_path: Path, key: CheckpointSigner,
                                                                  verifier: CheckpointVerifier) -> None:
    """An empty live file (the gateway stopped right after a rotation): the chain goes on
    from the newest rotated file."""
    path = tmp_path / "audit.jsonl"
    _trail(path, key, 3)
    last = json.loads(_lines(path)[-1])
    os.rename(path, rotated_name(path, last["seq"]))
    path.write_bytes(b"")
    _trail(path, key, 2)
    assert json.loads(_lines(path)[0])["prev_hash"] == last["hash"]
    report = verify_files(sorted(tmp_path.glob("audit*.jsonl")), verifier)
    assert report.intact and report.first_seq == 1, report.summary()


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_writes_whole_lines(tmp_path: Path, key: CheckpointSigner,
                                               verifier: CheckpointVerifier, policy: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    path = tmp_path / "audit.jsonl"
    log = _trail(path, key, 3, close=False, fsync=policy, fsync_interval_s=0.1)
    if policy == "interval":
        deadline = time.monotonic() + 5
        while not synced and time.monotonic() < deadline:
            time.sleep(0.02)
    assert bool(synced) == (policy != "never")
    if policy == "always":
        assert len(synced) >= 4  # start checkpoint + 3 events
    log.close()
    assert verify_files([path], verifier).intact


def test_keygen_verify_and_pubkey_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    assert cli_main(["audit", "keygen", "--key", str(key), "--public-key", str(pub)]) == 0
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert cli_main(["audit", "keygen", "--key", str(key)]) == 2  # never overwritten
    capsys.readouterr()
    assert cli_main(["audit", "pubkey", "--key", str(key)]) == 0
    assert capsys.readouterr().out == pub.read_text()
    path = tmp_path / "audit.jsonl"
    _trail(path, CheckpointSigner.of(load_signing_key(key)), 4)
    assert cli_main(["audit", "verify", "--public-key", str(pub), str(path)]) == 0
    assert capsys.readouterr().out.startswith("intact: 1 files, 6 events")
    lines = _lines(path)
    del lines[2]
    _write(path, lines)
    assert cli_main(["audit", "verify", "--json", "--public-key", str(pub), str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "broken" and report["problem"]["kind"] == "deleted"
    assert cli_main(["audit", "verify", str(tmp_path / "absent.jsonl")]) == 2
    assert cli_main(["audit", "verify", "--public-key", str(key), str(path)]) == 2  # a private key is no public key


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    create_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="must be 0600"):
        load_signing_key(path)

