"""``mcp-gateway audit verify``: is an audit trail whole, in order and signed?

The files are read in the order given (rotated files oldest first, then the live one:
``audit*.jsonl`` in a shell sorts them so, see :func:`gateway.audit.sinks.rotated_name`).
Every line must be a whole JSON object whose ``hash`` matches its content, whose ``seq``
follows the one before by one, and whose ``prev_hash`` is that event's ``hash``. Every
``checkpoint`` event's Ed25519 signature must verify with the public key given, and no
more events may pass between two checkpoints than the earlier one announced
(``checkpoint_events``): whoever rewrites the trail can recompute every hash, but cannot
sign, and dropping the checkpoints leaves a gap that is too long.

The first problem found is reported (:class:`Problem`):

========================  ==============================================================
kind                      what it means
========================  ==============================================================
``truncated``             the last line has no newline (cut short)
``malformed``             not a JSON object, or no integer ``seq`` / string hashes
``edited``                the line's ``hash`` does not match its content
``deleted``               one or more ``seq`` are missing inside a file
``reordered``             a later ``seq`` comes before an earlier one
``inserted``              a ``seq`` repeats, or the link to the event before is wrong
``missing_file``          ``seq`` jumps from one file to the next (a rotated file is absent)
``bad_signature``         a checkpoint does not verify: the chain was recomputed, or another key
``unsigned``              more events without a checkpoint than announced, or none at all
========================  ==============================================================

Events after the last checkpoint, up to the number it announced, are an *unsigned tail*:
reported, not a break (a live file always has one; after a crash, the events since the
last checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.chain import GENESIS_HASH, event_hash
from gateway.audit.signing import CheckpointVerifier, signed_bytes

__all__ = ["Problem", "VerifyReport", "verify_files"]

_LOOKAHEAD = 64  # lines searched for a missing seq to tell "reordered" from "deleted"


@dataclass(frozen=True)
class Problem:
    """The first break found.

    Attributes:
        kind: see the module's table.
        file: the file it is in.
        line: 1-based line number in that file.
        seq: the line's ``seq`` when it has one.
        message: one sentence for a person.
    """

    kind: str
    file: str
    line: int
    seq: int | None
    message: str


@dataclass
class VerifyReport:
    """What :func:`verify_files` found.

    Attributes:
        files: the files read, in order.
        events: lines read (checkpoints included).
        checkpoints: checkpoint events read.
        first_seq / last_seq: the ``seq`` range read (None when empty).
        unsigned_tail: events after the last checkpoint.
        signatures_checked: whether a public key was given.
        key_ids: the ``key_id`` of every checkpoint read, once each.
        problem: the first break, or None.
    """

    files: list[str]
    events: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    unsigned_tail: int = 0
    signatures_checked: bool = False
    key_ids: list[str] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def intact(self) -> bool:
        """No break found."""
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with ``status`` (``intact|broken``)."""
        return {"status": "intact" if self.intact else "broken", **asdict(self)}

    def summary(self) -> str:
        """One line for a person."""
        if self.problem is not None:
            p = self.problem
            where = f"{p.file} line {p.line}" + (f" (seq {p.seq})" if p.seq is not None else "")
            return f"broken: {where}: {p.kind}: {p.message}"
        span = f"seq {self.first_seq}-{self.last_seq}" if self.first_seq is not None else "empty"
        signed = (f"{self.checkpoints} checkpoints, signatures verified" if self.signatures_checked
                  else f"{self.checkpoints} checkpoints, signatures NOT checked (no --public-key)")
        tail = (f", {self.unsigned_tail} events after the last checkpoint not signed yet"
                if self.unsigned_tail else "")
        return f"intact: {len(self.files)} files, {self.events} events ({span}), {signed}{tail}"


class _Broken(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _parse(raw: bytes) -> dict[str, Any] | None:
    """A line's event when it is an object with an integer ``seq`` and string hashes."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not isinstance(event.get("hash"), str) or not isinstance(event.get("prev_hash"), str):
        return None
    return event


def _seq_ahead(lines: list[bytes], start: int, wanted: int) -> bool:
    """Whether one of the next lines after index ``start`` carries ``seq`` ``wanted``."""
    for raw in lines[start + 1:start + 1 + _LOOKAHEAD]:
        event = _parse(raw)
        if event is not None and event["seq"] == wanted:
            return True
    return False


class _Walk:
    """The state carried from line to line across files."""

    def __init__(self, verifier: CheckpointVerifier | None, report: VerifyReport) -> None:
        self.verifier = verifier
        self.report = report
        self.prev: dict[str, Any] | None = None
        self.since_checkpoint = 0
        self.allowed: int | None = None  # checkpoint_events of the last checkpoint

    def line(self, path: Path, lines: list[bytes], index: int, first_in_file: bool) -> None:
        raw = lines[index]
        where = (str(path), index + 1)

        def broken(kind: str, message: str, seq: int | None) -> _Broken:
            return _Broken(Problem(kind, where[0], where[1], seq, message))

        if not raw.endswith(b"\n"):
            raise broken("truncated", "the last line is cut short (no newline)", None)
        event = _parse(raw)
        if event is None:
            raise broken("malformed", "not an audit event (a JSON object with seq, prev_hash and hash)", None)
        seq = event["seq"]
        if event_hash(event) != event["hash"]:
            raise broken("edited", "its hash does not match its content: the line was changed", seq)
        prev = self.prev
        if prev is None:
            if seq == 1 and event["prev_hash"] != GENESIS_HASH:
                raise broken("inserted", "seq 1 does not start from the genesis hash", seq)
        elif seq == prev["seq"] + 1:
            if event["prev_hash"] != prev["hash"]:
                raise broken("inserted", f"it does not link to seq {prev['seq']} before it: a line was "
                             "replaced or inserted", seq)
        elif seq > prev["seq"] + 1:
            missing = f"seq {prev['seq'] + 1}" + (f"-{seq - 1}" if seq - 1 > prev["seq"] + 1 else "")
            if first_in_file:
                raise broken("missing_file", f"{missing} absent between this file and the one before: "
                             "a rotated file is missing", seq)
            if _seq_ahead(lines, index, prev["seq"] + 1):
                raise broken("reordered", f"seq {prev['seq'] + 1} comes later: lines were swapped", seq)
            raise broken("deleted", f"{missing} missing", seq)
        else:
            kind = "inserted" if seq == prev["seq"] else "reordered"
            raise broken(kind, f"seq {seq} after seq {prev['seq']}", seq)
        self._count(event, broken)
        self.prev = event

    def _count(self, event: dict[str, Any], broken: Any) -> None:
        report, seq = self.report, event["seq"]
        report.events += 1
        report.first_seq = seq if report.first_seq is None else report.first_seq
        report.last_seq = seq
        if event.get("event_type") != "checkpoint":
            self.since_checkpoint += 1
            if self.allowed is not None and self.since_checkpoint > self.allowed:
                raise broken("unsigned", f"more than {self.allowed} events since the last checkpoint, which "
                             "announced the next within that many: checkpoints were removed", seq)
            return
        announced = event.get("checkpoint_events")
        if not isinstance(announced, int) or announced < 1:
            raise broken("malformed", "a checkpoint without checkpoint_events", seq)
        if self.allowed is None and self.since_checkpoint > announced:
            raise broken("unsigned", f"{self.since_checkpoint} events before the first checkpoint, which "
                         f"announces one every {announced}", seq)
        key = str(event.get("key_id", ""))
        if key not in report.key_ids:
            report.key_ids.append(key)
        if self.verifier is not None:
            if key != self.verifier.key_id:
                raise broken("bad_signature", f"signed by key {key[:16]}..., not by the key given "
                             f"({self.verifier.key_id[:16]}...)", seq)
            if not self.verifier.verify(signed_bytes(event), str(event.get("signature", ""))):
                raise broken("bad_signature", "the signature does not verify: the chain before it was "
                             "recomputed without the key", seq)
        report.checkpoints += 1
        self.since_checkpoint = 0
        self.allowed = announced


def verify_files(paths: Sequence[Path], verifier: CheckpointVerifier | None = None) -> VerifyReport:
    """Verify the audit trail in ``paths`` (oldest first).

    Args:
        paths: the files, in chain order.
        verifier: the gateway's public key (None: signatures are not checked, only their
            presence and spacing).

    Returns:
        the report; ``report.problem`` is the first break, if any.

    Raises:
        OSError: a file cannot be read.
    """
    report = VerifyReport(files=[str(p) for p in paths], signatures_checked=verifier is not None)
    walk = _Walk(verifier, report)
    try:
        for path in paths:
            lines = path.read_bytes().splitlines(keepends=True)
            for index in range(len(lines)):
                walk.line(path, lines, index, first_in_file=index == 0)
        if report.events and walk.allowed is None:
            raise _Broken(Problem("unsigned", report.files[-1], 0, report.last_seq,
                                  "no checkpoint at all: nothing signs this chain"))
    except _Broken as exc:
        report.problem = exc.problem
    report.unsigned_tail = walk.since_checkpoint
    return report
