"""Where audit lines go: the file the chain lives in, and copies to stdout and a webhook.

:class:`FileSink` is the record: the audit log continues its chain from the file's last
event, rotates it and writes checkpoints into it. :class:`StdoutSink` (container log
pipelines) and :class:`WebhookSink` (an HTTP collector) receive the same lines, in the same
order. No sink drops a line silently: a line is written, or the call that needed it fails
with 5001 and the failure is counted and logged (see :class:`gateway.audit.log.AuditLog`).

A sink that delivers later (the webhook) is ``queued``: the audit log first ``reserve``s a
place in its queue (waiting up to the operator's deadline, or refusing at once), then
writes the record and the other copies, then ``write``s into the queue, which cannot fail
then.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from gateway.observability.metrics import AUDIT_QUEUE_CAPACITY, AUDIT_QUEUE_DEPTH

__all__ = ["AuditSink", "FileSink", "FsyncPolicy", "StdoutSink", "WebhookSink", "rotated_name"]

log = logging.getLogger("gateway.audit")

FsyncPolicy = Literal["always", "interval", "never"]
_TAIL_CHUNK = 64 * 1024


class AuditSink(Protocol):
    """One destination of audit lines.

    ``write`` receives one complete JSON object with no newline and must either persist
    (or, for a ``queued`` sink, accept) it whole or raise ``OSError`` leaving nothing of it
    behind; ``probe`` checks, without writing an event, that a line of ``size_bytes`` could
    be written now (how a failing sink is found to have recovered while no call comes),
    raising ``OSError`` when it could not; ``tick`` does the sink's periodic work (an
    interval fsync) and is called about every 100 ms; ``close`` flushes and releases it.
    """

    name: str
    queued: bool

    def write(self, line: str) -> None:
        """Persist one line. Raises OSError on failure, with nothing of the line stored."""
        ...

    def probe(self, size_bytes: int) -> None:
        """Raise OSError unless ``size_bytes`` could be written now."""
        ...

    def tick(self, now: float) -> Callable[[], None] | None:
        """Periodic work due at ``now`` (``time.monotonic()``), as a callable to run outside
        the audit log's lock, or None."""
        ...

    def close(self) -> None:
        """Flush and release the sink."""
        ...


def rotated_name(path: Path, last_seq: int) -> Path:
    """The name a rotated audit file gets: ``<stem>-<last seq, 20 digits><suffix>`` beside
    ``path`` (``audit-00000000000000012345.jsonl``). Names sort in chain order, before the
    live file (``-`` sorts before ``.``), so ``audit*.jsonl`` in a shell lists a whole
    trail in order."""
    return path.with_name(f"{path.stem}-{last_seq:020d}{path.suffix}")


class FileSink:
    """Appends JSON lines to a file opened ``O_APPEND``; a line is whole or absent.

    The sink is the file's only writer (the gateway owns its state directory) and keeps
    the offset just past its last whole line. A write that fails once part of the line
    is in the file (write(2) returns a short count when the disk fills mid-line, and
    the rest then fails with ENOSPC; EIO; a failed fsync) is undone with ftruncate(2)
    back to that offset, so the file always ends with a newline: ``O_APPEND`` puts every
    write at the end, so the next line starts on a line of its own. An undo that itself
    fails is retried before the next write, which fails while it cannot be done. A file
    found at open ending without a newline (torn by a crash or power loss mid-write) is
    cut back to its last whole line, logged at ERROR: that line was never acknowledged,
    and the chain continues from the last whole event.

    Durability (``fsync``): ``always`` fsyncs each line before the call proceeds (nothing
    acknowledged is lost, even to power loss); ``interval`` fsyncs at most ``fsync_interval_s``
    after a line (power loss or a kernel crash loses at most that much; a gateway crash
    loses nothing, the lines are in the kernel); ``never`` leaves it to the kernel's
    writeback (power loss loses what it has not written yet, typically up to 30 s).

    Rotation: :meth:`rotation_due` once the file holds ``max_bytes`` or its first line is
    ``max_age_s`` old; the audit log then writes a checkpoint and calls :meth:`rotate`,
    which renames the file to :func:`rotated_name` and starts a new one, and then removes
    the oldest rotated files beyond ``retention_files``.

    Args:
        path: the audit file; its directory is created (mode 0700) when missing.
        fsync: ``always|interval|never`` (a bool means always / never).
        fsync_interval_s: the ``interval`` policy's bound, seconds.
        max_bytes: rotate at this size, bytes (0 = never by size).
        max_age_s: rotate when the first line is this old, seconds (0 = never by age).
        retention_files: rotated files kept (0 = all).

    Raises:
        OSError: at construction, when the file cannot be opened or repaired.
    """

    name = "file"
    queued = False

    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy | bool = "never",
        fsync_interval_s: float = 1.0,
        max_bytes: int = 0,
        max_age_s: float = 0.0,
        retention_files: int = 0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._fsync: FsyncPolicy = ("always" if fsync else "never") if isinstance(fsync, bool) else fsync
        self._fsync_interval_s = fsync_interval_s
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_s * 1e9)
        self._retention = retention_files
        self._probe_path = path.with_name(f".{path.name}.probe")
        self._dirty_since: float | None = None  # monotonic time of the oldest unsynced line
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._end = _cut_torn_tail(self._fd, self.path)
            self._first_ns = _first_timestamp(self.path) if self._end else None
        except OSError:
            os.close(self._fd)
            raise
        self._torn = False  # bytes past self._end left by an undo that failed
        self._last_start = self._end  # where the last whole line begins (for retract)

    def write(self, line: str) -> None:
        """Append ``line`` + newline, whole or not at all; raises OSError on failure."""
        data = (line + "\n").encode("ascii")
        if self._torn:
            self._undo()
        try:
            view = memoryview(data)
            while view:
                # A short count is not an error yet (a signal, a page that still had
                # room): write the rest; a full disk then fails with ENOSPC.
                view = view[os.write(self._fd, view):]
            if self._fsync == "always":
                os.fsync(self._fd)
        except OSError:
            self._torn = True
            with contextlib.suppress(OSError):  # retried before the next write
                self._undo()
            raise
        self._last_start, self._end = self._end, self._end + len(data)
        if self._first_ns is None:
            self._first_ns = time.time_ns()
        if self._fsync == "interval" and self._dirty_since is None:
            self._dirty_since = time.monotonic()

    def retract(self) -> None:
        """Take back the line just written (another sink refused it): the file ends at the
        line before. Raises OSError when the truncation fails (retried before the next write)."""
        self._end = self._last_start
        self._torn = True
        self._undo()

    def _undo(self) -> None:
        """Cut the file back to its last whole line (never extend it: a file someone
        else shortened stays as it is)."""
        if os.fstat(self._fd).st_size > self._end:
            os.ftruncate(self._fd, self._end)
        self._torn = False

    @property
    def needs_tick(self) -> bool:
        """Whether :meth:`tick` has work (the ``interval`` policy)."""
        return self._fsync == "interval"

    def tick(self, now: float) -> Callable[[], None] | None:
        """``interval`` policy: once the oldest unsynced line is ``fsync_interval_s`` old, the
        fsync to run (outside the audit log's lock, on a duplicate of the descriptor, so
        a rotation meanwhile cannot pull it away)."""
        if self._dirty_since is None or now - self._dirty_since < self._fsync_interval_s:
            return None
        self._dirty_since = None
        fd = os.dup(self._fd)
        path, interval = self.path, self._fsync_interval_s

        def sync() -> None:
            try:
                os.fsync(fd)
            except OSError as exc:
                log.error("audit file %s: fsync failed (%s); up to %.1f s of events may not survive "
                          "a power loss", path, exc, interval)
            finally:
                os.close(fd)

        return sync

    def probe(self, size_bytes: int) -> None:
        """Write ``size_bytes`` to a sibling file (``.<name>.probe``) and remove it; raises
        OSError when they do not fit (or the torn tail of a failed write cannot be undone).
        The audit file itself is not touched, so a tailer never sees probe bytes."""
        if self._torn:
            self._undo()
        os.fstat(self._fd)  # EBADF once closed
        fd = os.open(self._probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(b"\n" * size_bytes)
            while view:
                view = view[os.write(fd, view):]
            if self._fsync == "always":
                os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._probe_path)

    def rotation_due(self, line_bytes: int) -> bool:
        """Whether the file must be rotated before a line of ``line_bytes`` is added."""
        if self._end == 0:
            return False
        if self._max_bytes and self._end + line_bytes > self._max_bytes:
            return True
        return bool(self._max_age_ns and self._first_ns is not None
                    and time.time_ns() - self._first_ns >= self._max_age_ns)

    def rotate(self, last_seq: int) -> Path:
        """Close the file as :func:`rotated_name` (``last_seq`` is its last event's seq) and
        start an empty one; then apply retention.

        Returns:
            the rotated file's path.

        Raises:
            OSError: the rename or the new file failed (the old file then stays live).
        """
        target = rotated_name(self.path, last_seq)
        if os.path.lexists(target):
            raise OSError(errno.EEXIST, f"{target} exists", str(target))
        os.fsync(self._fd)
        os.rename(self.path, target)
        old_fd = self._fd
        try:
            self._open()
        except OSError:
            os.rename(target, self.path)
            raise
        os.close(old_fd)
        self._dirty_since = None
        _fsync_dir(self.path.parent)
        self._apply_retention()
        return target

    def rotated_files(self) -> list[Path]:
        """Every rotated file of this trail beside the live one, oldest first."""
        prefix, suffix = f"{self.path.stem}-", self.path.suffix
        names = sorted(n for n in os.listdir(self.path.parent)
                       if n.startswith(prefix) and n.endswith(suffix) and n[len(prefix):-len(suffix) or None].isdigit())
        return [self.path.parent / n for n in names]

    def _apply_retention(self) -> None:
        if not self._retention:
            return
        rotated = self.rotated_files()
        for old in rotated[: max(0, len(rotated) - self._retention)]:
            try:
                old.unlink()
                log.info("audit retention: removed %s (keeping %d rotated files)", old, self._retention)
            except OSError as exc:
                log.error("audit retention: cannot remove %s: %s", old, exc)

    def last_event(self) -> dict[str, Any] | None:
        """Parse the last line of the file (or, for an empty file just rotated, of the
        newest rotated file), or None when the trail is empty.

        Raises:
            ValueError: when that line is not a JSON object (an edited file: the chain
                cannot be continued safely).
        """
        candidates = [self.path, *reversed(self.rotated_files())]
        for path in candidates:
            tail = _last_line(path)
            if tail is None:
                continue
            try:
                event = json.loads(tail)
            except ValueError as exc:
                raise ValueError(f"audit file {path} ends with a malformed line") from exc
            if not isinstance(event, dict):
                raise ValueError(f"audit file {path} ends with a non-object line")
            return event
        return None

    def close(self) -> None:
        """fsync (unless ``never``) and close the file."""
        if self._fsync != "never":
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
        os.close(self._fd)


def _last_line(path: Path) -> bytes | None:
    """The last line of ``path`` without its newline; None when empty or missing."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return None
    with fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return None
        chunk = min(size, _TAIL_CHUNK)
        fh.seek(size - chunk)
        return fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]


def _first_timestamp(path: Path) -> int | None:
    """The ``timestamp`` of the file's first line (unix ns), or now when it has none."""
    with open(path, "rb") as fh:
        first = fh.readline(_TAIL_CHUNK)
    try:
        value = json.loads(first).get("timestamp")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, int) else time.time_ns()


def _fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename in it survives power loss (fsync(2), NOTES)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Truncate the file open as ``fd`` after its last newline; returns its size then.

    Only a write cut short by a crash or power loss leaves a file ending mid-line (a
    failing write is undone while the process lives); that line was never acknowledged.
    """
    size = keep = os.fstat(fd).st_size
    if size == 0:
        return 0
    with open(path, "rb") as fh:
        while keep > 0:
            start = max(0, keep - _TAIL_CHUNK)
            fh.seek(start)
            chunk = fh.read(keep - start)
            if keep == size and chunk.endswith(b"\n"):
                return size
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
    os.ftruncate(fd, keep)
    log.error(
        "audit file %s ended with %d bytes of a torn line (a write cut short by a crash or "
        "power loss); cut back to its last whole line at byte %d, the chain continues from it",
        path, size - keep, keep,
    )
    return keep


class StdoutSink:
    """Writes each line to the process's standard output (fd 1), for container log
    pipelines. A line of up to ``PIPE_BUF`` (4096) bytes reaches a pipe whole (pipe(7));
    a longer one is written in a loop. The gateway's own logs go to stderr, so stdout
    carries audit lines only (and the one ``listening ...`` line at start).

    Args:
        fd: the file descriptor to write to (1).
    """

    name = "stdout"
    queued = False

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd

    def write(self, line: str) -> None:
        """Write ``line`` + newline; raises OSError (EPIPE, EAGAIN, ...) on failure."""
        view = memoryview((line + "\n").encode("ascii"))
        while view:
            view = view[os.write(self._fd, view):]

    def probe(self, size_bytes: int) -> None:
        """Raise OSError when the descriptor is gone (nothing is written)."""
        os.fstat(self._fd)

    def tick(self, now: float) -> Callable[[], None] | None:
        """Nothing periodic."""
        return None

    def close(self) -> None:
        """Nothing to release (stdout stays open)."""


class WebhookSink:
    """Delivers lines to an HTTP collector in batches, in order, retrying until it answers.

    Each batch is one ``POST`` of ``application/x-ndjson`` (the lines, each ending with a
    newline) with the headers ``X-MCP-Audit-Seq: <first>-<last>`` and, with a secret,
    ``X-MCP-Audit-Signature: sha256=<hex HMAC-SHA256(secret, body)>``. A 2xx answer
    delivers the batch; anything else (an error status, a refused connection, a timeout)
    is retried with exponential backoff (``backoff_initial_s`` doubling up to
    ``backoff_max_s``), the same batch again, so the collector sees every line in order
    and may see a batch twice (deduplicate on ``seq``). One batch is in flight at a time.

    The queue holds at most ``queue_events`` lines. With a ``spool`` file every line is
    also appended there and the delivered prefix is recorded in ``<spool>.pos``, so lines
    not yet delivered survive a restart and are sent first. When the queue is full,
    :meth:`reserve` waits up to ``block_timeout_s`` for room (``on_full="block"``) or
    refuses at once (``"fail"``); refusing fails the call with 5001.

    Args:
        url: the collector's URL.
        secret: the HMAC key (None = unsigned).
        batch_events: lines per POST, at most.
        batch_delay_s: how long a batch waits for more lines once it has one, seconds.
        queue_events: lines waiting, at most.
        spool: the spool file (None = memory only: lines still queued at shutdown after
            ``close`` has waited ``close_timeout_s`` are lost, and logged as such).
        timeout_s: per POST, seconds.
        on_full: ``block`` or ``fail``.
        block_timeout_s: the ``block`` deadline, seconds.
        transport: an httpx transport (tests).
    """

    name = "webhook"
    queued = True

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        batch_events: int = 100,
        batch_delay_s: float = 0.05,
        queue_events: int = 10_000,
        spool: Path | None = None,
        timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_full: Literal["block", "fail"] = "block",
        block_timeout_s: float = 2.0,
        close_timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._batch_events = batch_events
        self._batch_delay_s = batch_delay_s
        self._max = queue_events
        self._on_full = on_full
        self._block_timeout_s = block_timeout_s
        self._close_timeout_s = close_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._reserved = 0
        self._closing = False
        self._stopped = False
        self._spool = _Spool(spool) if spool is not None else None
        if self._spool is not None:
            self._queue.extend(self._spool.pending())
        self._depth = AUDIT_QUEUE_DEPTH.labels(self.name)
        self._depth.set(len(self._queue))
        AUDIT_QUEUE_CAPACITY.labels(self.name).set(queue_events)
        self._client = httpx.Client(timeout=timeout_s, transport=transport)
        self._failing_since: float | None = None
        self._worker = threading.Thread(target=self._run, name="audit-webhook", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Lines waiting for delivery."""
        return len(self._queue)

    def reserve(self) -> None:
        """Hold a place in the queue for the next :meth:`write` (the caller holds the audit
        log's lock, so only one reservation waits at a time).

        Raises:
            OSError (ENOBUFS): the queue stayed full (``fail``: at once; ``block``: for
                ``block_timeout_s``).
        """
        with self._cond:
            if self._has_room():
                self._reserved += 1
                return
            if self._on_full == "block":
                deadline = time.monotonic() + self._block_timeout_s
                while not self._has_room() and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            if not self._has_room():
                raise OSError(errno.ENOBUFS, f"webhook queue full ({self._max} events wait for {self._url})")
            self._reserved += 1

    def _has_room(self) -> bool:
        return len(self._queue) + self._reserved < self._max and not self._stopped

    def write(self, line: str) -> None:
        """Queue ``line`` in the place :meth:`reserve` held (spooled first when configured).

        Raises:
            OSError: the spool write failed (the line is not queued).
        """
        with self._cond:
            self._reserved -= 1
            if self._spool is not None:
                self._spool.append(line)
            self._queue.append(line)
            self._depth.set(len(self._queue))
            self._cond.notify_all()

    def release(self) -> None:
        """Give back a place :meth:`reserve` held whose line was not written after all."""
        with self._cond:
            self._reserved -= 1
            self._cond.notify_all()

    def probe(self, size_bytes: int) -> None:
        """Raise OSError (ENOBUFS) while the queue is full."""
        with self._cond:
            if not self._has_room():
                raise OSError(errno.ENOBUFS, f"webhook queue full ({self._max} events wait for {self._url})")

    def tick(self, now: float) -> Callable[[], None] | None:
        """Nothing periodic (the worker thread delivers)."""
        return None

    def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = time.monotonic() + self._batch_delay_s
                while len(self._queue) < self._batch_events and not self._closing and (
                        left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch = [self._queue[i] for i in range(min(self._batch_events, len(self._queue)))]
            if self._post(batch):
                delay = self._backoff[0]
                with self._cond:
                    for _ in batch:
                        self._queue.popleft()
                    if self._spool is not None:
                        self._spool.delivered(batch, empty=not self._queue)
                    self._depth.set(len(self._queue))
                    self._cond.notify_all()
                continue
            with self._cond:
                if self._stopped:
                    return
                self._cond.wait(delay)
                if self._stopped:
                    return
            delay = min(delay * 2, self._backoff[1])

    def _post(self, batch: list[str]) -> bool:
        body = "".join(line + "\n" for line in batch).encode("ascii")
        headers = {"Content-Type": "application/x-ndjson",
                   "X-MCP-Audit-Seq": f"{_seq_of(batch[0])}-{_seq_of(batch[-1])}"}
        if self._secret is not None:
            headers["X-MCP-Audit-Signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        try:
            response = self._client.post(self._url, content=body, headers=headers)
            ok = 200 <= response.status_code < 300
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if ok:
            if self._failing_since is not None:
                log.warning("audit webhook %s delivers again after %.1f s; %d events wait",
                            self._url, now - self._failing_since, len(self._queue) - len(batch))
                self._failing_since = None
            return True
        if self._failing_since is None:
            self._failing_since = now
            log.error("audit webhook %s does not take events (%s); they wait in the queue (%d now, at most %d), "
                      "then calls are %s", self._url, problem, len(self._queue), self._max,
                      "held" if self._on_full == "block" else "refused with 5001")
        return False

    def close(self) -> None:
        """Deliver what waits (for up to ``close_timeout_s``), then stop. Lines still
        queued stay in the spool, or, without one, are logged as lost."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(self._close_timeout_s)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            left = len(self._queue)
        self._worker.join(1.0)
        self._client.close()
        if left and self._spool is None:
            log.error("audit webhook %s: %d events were not delivered before shutdown and are lost "
                      "(configure audit.webhook.spool_path to keep them)", self._url, left)
        elif left:
            log.warning("audit webhook %s: %d events wait in the spool for the next start", self._url, left)


def _seq_of(line: str) -> str:
    """The ``seq`` of a canonical audit line, read without parsing the whole object."""
    start = line.rfind('"seq":')
    if start < 0:
        return "?"
    end = start + 6
    while end < len(line) and line[end].isdigit():
        end += 1
    return line[start + 6:end] or "?"


class _Spool:
    """An append-only file of queued lines and ``<spool>.pos``, the byte offset of the
    delivered prefix (replaced atomically by rename(2) after each delivered batch)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = path
        self._pos_path = path.with_name(path.name + ".pos")
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._end = _cut_torn_tail(self._fd, path)
        try:
            self._pos = min(int(self._pos_path.read_text() or 0), self._end)
        except (FileNotFoundError, ValueError):
            self._pos = 0

    def pending(self) -> list[str]:
        """The lines past the delivered offset."""
        with open(self._path, "rb") as fh:
            fh.seek(self._pos)
            return [raw.decode("ascii").rstrip("\n") for raw in fh if raw.endswith(b"\n")]

    def append(self, line: str) -> None:
        """Append one line (whole or not at all; raises OSError)."""
        data = (line + "\n").encode("ascii")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
            raise
        self._end += len(data)

    def delivered(self, batch: list[str], *, empty: bool) -> None:
        """Record ``batch`` as delivered; an ``empty`` queue starts the spool over."""
        try:
            if empty:
                os.ftruncate(self._fd, 0)
                self._pos = self._end = 0
            else:
                self._pos += sum(len(line) + 1 for line in batch)
            tmp = self._pos_path.with_name(self._pos_path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(str(self._pos))
            os.replace(tmp, self._pos_path)
        except OSError as exc:  # a restart may then send these lines again: the receiver dedupes on seq
            log.error("audit webhook spool %s: cannot record delivery: %s", self._path, exc)

