"""Live task output: the owner writes each task's output log, readers follow it.

The store holds every task's output log (``OutputChunk`` entries numbered from 0, see
:class:`gateway.models.OutputChunk`), and readers only ever read the store: a reader on
another replica sees exactly what a local one sees, and a slow reader holds nothing but
its own offset, so it can neither block the task nor other readers.

Writing (the replica that runs the task):
    the sandbox supervisor calls :meth:`OutputLog.add` for every read of stdout/stderr;
    bytes are appended to a pending entry of the same stream (at most 64 KiB each). The
    :class:`OutputHub`'s flusher thread writes pending entries to the store every
    ``flush_ms`` and wakes local readers; the task's last entries (the rest, a
    ``task_end`` event, the EXIT_CODE entry) go into the store in the same transaction as
    its final state (:meth:`OutputLog.close`). A per-log lock keeps "number the entries"
    and "write them" together, so entries reach the store in offset order and a reader
    can never skip one.

Reading (:meth:`OutputHub.follow`): read from the offset, yield, and when nothing new is
there wait for a local wake-up (or poll, for a task another replica runs) until the
EXIT_CODE entry has been sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.models import OutputChunk, OutputKind
from gateway.tasks.store import TaskStore

__all__ = ["ENTRY_MAX_BYTES", "OutputHub", "OutputLog", "event_chunk_data"]

log = logging.getLogger(__name__)

#: Largest stdout/stderr entry, bytes (a gRPC message or SSE event each).
ENTRY_MAX_BYTES = 64 * 1024
_READ_BATCH = 256  # entries per store read
_REMOTE_POLL_S = 0.2  # a task run by another replica: how often a reader looks again
_LOCAL_POLL_S = 1.0  # a local task: wake-ups normally come first; this is the safety net
_STREAMS = {1: (OutputKind.STDOUT, "stdout"), 2: (OutputKind.STDERR, "stderr")}


def event_chunk_data(event: str, **fields: Any) -> bytes:
    """The data of an EVENT entry: compact UTF-8 JSON ``{"event": event, **fields}``."""
    return json.dumps({"event": event, **fields}, separators=(",", ":")).encode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class OutputLog:
    """The output log of one running task, on the replica that runs it.

    Args:
        task_id: the task.
        cap_bytes: the per-stream capture cap (``sandbox.output_bytes``), for the
            ``output_truncated`` event.
    """

    def __init__(self, task_id: str, cap_bytes: int) -> None:
        self.task_id = task_id
        self._cap = cap_bytes
        self._lock = threading.Lock()  # pending entries
        self.flush_lock = threading.Lock()  # numbering + writing, one writer at a time
        self._pending: list[tuple[OutputKind, bytearray, int]] = []
        self._numbered: list[OutputChunk] = []  # numbered, not yet confirmed in the store
        self._next_offset = 0
        self.closed = False

    def add(self, stream: int, data: bytes, truncated: bool) -> None:
        """The ``sandbox.OutputListener``: ``stream`` 1 or 2, ``data`` kept bytes,
        ``truncated`` once when the stream's cap is first exceeded."""
        kind, name = _STREAMS[stream]
        now = _now_ms()
        with self._lock:
            view = memoryview(data)
            while view:
                last = self._pending[-1] if self._pending else None
                if last is not None and last[0] is kind and len(last[1]) < ENTRY_MAX_BYTES:
                    room = ENTRY_MAX_BYTES - len(last[1])
                    last[1].extend(view[:room])
                    view = view[room:]
                else:
                    self._pending.append((kind, bytearray(view[:ENTRY_MAX_BYTES]), now))
                    view = view[ENTRY_MAX_BYTES:]
            if truncated:
                event = event_chunk_data("output_truncated", stream=name, cap_bytes=self._cap)
                self._pending.append((OutputKind.EVENT, bytearray(event), now))

    @property
    def has_pending(self) -> bool:
        """True when entries wait to be written."""
        with self._lock:
            return bool(self._pending or self._numbered)

    def take(self, extra: tuple[tuple[OutputKind, bytes], ...] = ()) -> list[OutputChunk]:
        """Every entry not yet in the store, numbered: those a failed write left, then the
        pending ones, then ``extra``. The caller holds :attr:`flush_lock`, writes them,
        and confirms with :meth:`written`; unconfirmed entries are offered again, so a
        failed write leaves no gap."""
        now = _now_ms()
        with self._lock:
            pending, self._pending = self._pending, []
        entries = [(kind, bytes(data), ts) for kind, data, ts in pending]
        entries += [(kind, data, now) for kind, data in extra]
        self._numbered += [
            OutputChunk(offset=self._next_offset + i, kind=kind, data=data, timestamp_ms=ts)
            for i, (kind, data, ts) in enumerate(entries)
        ]
        self._next_offset += len(entries)
        return list(self._numbered)

    def written(self) -> None:
        """The entries of the last :meth:`take` are in the store."""
        self._numbered = []

    def close(self, status: str, exit_code: int, limit_reason: str | None, error: str | None) -> list[OutputChunk]:
        """The log's last entries: what is not stored yet, a ``task_end`` event and the
        EXIT_CODE entry. Call with :attr:`flush_lock` held and write them with the final
        state; the flusher leaves a closed log alone."""
        self.closed = True
        end = event_chunk_data("task_end", status=status, exit_code=exit_code, limit_reason=limit_reason,
                               error=error)
        return self.take(((OutputKind.EVENT, end), (OutputKind.EXIT_CODE, str(exit_code).encode())))


class _Waiter:
    """One reader's wake-up: an asyncio.Event set from the flusher thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class OutputHub:
    """Running tasks' output logs, their flusher thread, and readers' wake-ups.

    Args:
        store: where logs are written and read.
        flush_ms: how often pending output is written and readers woken, milliseconds.
        on_tick: called by the flusher thread about every 250 ms (the manager polls the
            store for cancel requests there).
        on_lost: called with a task id whose log can no longer be written because the
            store holds the task as final already (the manager stops its sandbox).
    """

    def __init__(
        self, store: TaskStore, flush_ms: int, on_tick: Callable[[], None] | None = None,
        on_lost: Callable[[str], object] | None = None,
    ) -> None:
        self._store = store
        self._flush_s = flush_ms / 1000
        self._on_tick = on_tick
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._logs: dict[str, OutputLog] = {}
        self._waiters: dict[str, set[_Waiter]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="output-flusher", daemon=True)
        self._thread.start()

    def open(self, task_id: str, cap_bytes: int) -> OutputLog:
        """Start the live log of a task that is about to run here."""
        output = OutputLog(task_id, cap_bytes)
        with self._lock:
            self._logs[task_id] = output
        return output

    def forget(self, task_id: str) -> None:
        """The task is final (its last entries are stored): stop flushing it, wake readers."""
        with self._lock:
            self._logs.pop(task_id, None)
        self.wake(task_id)

    def is_local(self, task_id: str) -> bool:
        """True while the task runs in this process."""
        with self._lock:
            return task_id in self._logs

    def wake(self, task_id: str) -> None:
        """Wake every local reader of ``task_id``."""
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for waiter in waiters:
            waiter.wake()

    async def follow(self, task_id: str, offset: int, is_final: Callable[[], bool]) -> AsyncIterator[OutputChunk]:
        """Entries of ``task_id``'s log from ``offset`` on, as they are written, ending with
        the EXIT_CODE entry (or at once when the log ends before ``offset``).

        ``is_final`` (blocking, run in a thread) tells whether the task is final: a final
        task whose log has nothing at or after the reader's offset is done.

        Raises:
            StorageError: when the store fails (the stream ends with that error).
        """
        waiter = _Waiter()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            while True:
                waiter.event.clear()
                chunks = await asyncio.to_thread(self._store.read_output, task_id, offset, _READ_BATCH)
                for chunk in chunks:
                    yield chunk
                    offset = chunk.offset + 1
                    if chunk.kind is OutputKind.EXIT_CODE:
                        return
                if len(chunks) == _READ_BATCH:
                    continue
                if not chunks and await asyncio.to_thread(is_final):
                    # Final: its whole log was written with the final state. Read once more
                    # in case it landed between the read above and the check.
                    rest = await asyncio.to_thread(self._store.read_output, task_id, offset, _READ_BATCH)
                    if not rest:
                        return
                    continue
                timeout = _LOCAL_POLL_S if self.is_local(task_id) else _REMOTE_POLL_S
                try:
                    await asyncio.wait_for(waiter.event.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[task_id]

    def close(self) -> None:
        """Stop the flusher after one last flush."""
        self._stop.set()
        self._thread.join(timeout=10)

    def flush(self) -> None:
        """Write every running task's pending entries to the store and wake their readers.
        A log whose write fails is retried next round (its entries stay numbered); one whose
        task the store already holds as final (another replica failed it) is closed and
        handed to ``on_lost``. One log's failure never holds up the others."""
        with self._lock:
            logs = [o for o in self._logs.values() if o.has_pending]
        for output in logs:
            try:
                with output.flush_lock:
                    if output.closed:
                        continue  # its last entries went into the store with its final state
                    chunks = output.take()
                    if chunks:
                        self._store.append_output(output.task_id, chunks)
                        output.written()
            except Exception:
                log.exception("writing live output of task %s failed", output.task_id)
                self._check_lost(output)
            self.wake(output.task_id)

    def _check_lost(self, output: OutputLog) -> None:
        try:
            record = self._store.get(output.task_id)
        except Exception:
            return  # the store is down: the next round retries
        if record is None or record.final:
            log.error("task %s is already final in the store (failed by another replica?): "
                      "its sandbox is stopped and its further output dropped", output.task_id)
            with output.flush_lock:
                output.closed = True
            if self._on_lost is not None:
                self._on_lost(output.task_id)

    def _flusher(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.wait(self._flush_s):
            self.flush()
            if self._on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 0.25
                try:
                    self._on_tick()
                except Exception:  # a store outage must not end the flusher; the next tick retries
                    log.exception("polling cancel requests failed")
        self.flush()
