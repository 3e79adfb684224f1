"""Live task output (gateway/tasks/output.py) against a real SQLite store: how reads become
log entries (coalescing, splitting, stream switches, the truncation event), how entries are
numbered and written without a gap even when a write fails, how a log is closed, and how
readers follow it (live, resumed, finished, many at once, one that never reads)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StorageError
from gateway.models import OutputChunk, OutputKind, TaskRecord, TaskStatus, TaskType
from gateway.tasks.output import ENTRY_MAX_BYTES, OutputHub, OutputLog
from gateway.tasks.store import SqliteTaskStore

from tests.conftest import wait_until

OWNER = "gw-test"
TASK_ID = "task-" + "0" * 31 + "1"
CAP_BYTES = 4096
SLOW_FLUSH_MS = 5000  # the flusher stays out of the way; the test calls flush() itself
STEP_TIMEOUT_S = 3.0  # generous bound for one awaited step; passing runs take milliseconds


def _task(task_id: str = TASK_ID) -> TaskRecord:
    return TaskRecord(
        task_id=task_id, task_type=TaskType.COMMAND, status=TaskStatus.RUNNING, tenant="acme", principal_id="alice",
        command="echo", args=("hi",), metadata={}, created_at_ns=time.time_ns(), decision_id="dec-1",
        started_at_ns=time.time_ns(), owner=OWNER, workspace=task_id,
    )


class FlakyStore:
    """A store whose next ``fail_appends`` calls of ``append_output`` raise StorageError
    (nothing written, as a failed transaction); everything else goes to the real store."""

    def __init__(self, store: SqliteTaskStore) -> None:
        self._store = store
        self.fail_appends = 0

    def append_output(self, task_id: str, chunks: Sequence[OutputChunk]) -> None:
        if self.fail_appends:
            self.fail_appends -= 1
            raise StorageError("task store: disk I/O error (injected)")
        self._store.append_output(task_id, chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTaskStore]:
    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.claim_owner(OWNER)
    store.create(_task())
    yield store
    store.close()


@pytest.fixture
def make_hub(store: SqliteTaskStore) -> Iterator[Callable[..., OutputHub]]:
    """``make_hub(flush_ms, store=...)``: an OutputHub closed after the test."""
    hubs: list[OutputHub] = []

    def make(flush_ms: int = SLOW_FLUSH_MS, on: Any = None) -> OutputHub:
        hubs.append(OutputHub(on if on is not None else store, flush_ms))
        return hubs[-1]

    yield make
    for hub in hubs:
        hub.close()


def _log(store: SqliteTaskStore, task_id: str = TASK_ID) -> list[OutputChunk]:
    return store.read_output(task_id, 0, 10_000)


def _kinds_and_data(chunks: Sequence[OutputChunk]) -> list[tuple[OutputKind, bytes]]:
    return [(c.kind, c.data) for c in chunks]


def _assert_contiguous(chunks: Sequence[OutputChunk], start: int = 0) -> None:
    assert [c.offset for c in chunks] == list(range(start, start + len(chunks)))


def _finish(hub: OutputHub, store: SqliteTaskStore, output: OutputLog, exit_code: int = 0) -> None:
    """End the task as the manager does: close the log and store its last entries with the
    final state in one call, then stop flushing it and wake its readers."""
    with output.flush_lock:
        final = output.close(TaskStatus.COMPLETED.name, exit_code, None, None)
        assert store.finish(output.task_id, TaskStatus.COMPLETED, time.time_ns(), None, final)
        output.written()
    hub.forget(output.task_id)


def _is_final(store: SqliteTaskStore, task_id: str = TASK_ID) -> Callable[[], bool]:
    def is_final() -> bool:
        record = store.get(task_id)
        return record is None or record.final

    return is_final


async def _collect(hub: OutputHub, store: SqliteTaskStore, offset: int = 0) -> list[OutputChunk]:
    return [chunk async for chunk in hub.follow(TASK_ID, offset, _is_final(store))]


# -- entries: coalescing, splitting, streams, truncation ------------------------------


def test_reads_of_one_stream_coalesce_into_one_entry() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    for part in (b"one ", b"two ", b"three"):
        output.add(1, part, False)

    assert _kinds_and_data(output.take()) == [(OutputKind.STDOUT, b"one two three")]


def test_a_large_read_is_split_into_entries_of_at_most_entry_max_bytes() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    data = bytes(range(256)) * (ENTRY_MAX_BYTES * 5 // 2 // 256)  # 2.5 entries

    output.add(2, data, False)
    chunks = output.take()

    assert [len(c.data) for c in chunks] == [ENTRY_MAX_BYTES, ENTRY_MAX_BYTES, ENTRY_MAX_BYTES // 2]
    assert all(c.kind is OutputKind.STDERR for c in chunks)
    assert b"".join(c.data for c in chunks) == data


def test_a_read_fills_the_open_entry_before_starting_the_next() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    output.add(1, b"a" * (ENTRY_MAX_BYTES - 10), False)
    output.add(1, b"b" * 30, False)

    chunks = output.take()

    assert [c.data for c in chunks] == [b"a" * (ENTRY_MAX_BYTES - 10) + b"b" * 10, b"b" * 20]


def test_a_stream_switch_starts_a_new_entry() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    output.add(1, b"out1", False)
    output.add(1, b"out2", False)
    output.add(2, b"err", False)
    output.add(1, b"out3", False)

    assert _kinds_and_data(output.take()) == [
        (OutputKind.STDOUT, b"out1out2"),
        (OutputKind.STDERR, b"err"),
        (OutputKind.STDOUT, b"out3"),
    ]


@pytest.mark.parametrize(("stream", "kind", "name"), [(1, OutputKind.STDOUT, "stdout"), (2, OutputKind.STDERR, "stderr")])
def test_truncation_adds_an_output_truncated_event_after_the_kept_bytes(stream: int, kind: OutputKind,
                                                                        name: str) -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    output.add(stream, b"kept", True)
    output.add(stream, b"more", False)  # a later read of the stream is an entry of its own

    chunks = output.take()

    assert _kinds_and_data(chunks) == [
        (kind, b"kept"),
        (OutputKind.EVENT, b'{"event":"output_truncated","stream":"%s","cap_bytes":4096}' % name.encode()),
        (kind, b"more"),
    ]
    assert json.loads(chunks[1].data) == {"event": "output_truncated", "stream": name, "cap_bytes": CAP_BYTES}


def test_entries_carry_the_time_of_their_first_read() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    before = time.time_ns() // 1_000_000
    output.add(1, b"x", False)
    after = time.time_ns() // 1_000_000

    (chunk,) = output.take()

    assert before <= chunk.timestamp_ms <= after


# -- numbering and writing ------------------------------------------------------------


def test_take_numbers_entries_contiguously_across_calls() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)
    output.add(1, b"a", False)
    output.add(2, b"b", False)
    first = output.take()
    output.written()
    output.add(1, b"c", False)
    second = output.take()
    output.written()

    assert [c.offset for c in first] == [0, 1]
    assert [c.offset for c in second] == [2]
    assert output.take() == []
    assert not output.has_pending


def test_a_failed_store_write_leaves_no_gap(store: SqliteTaskStore, make_hub: Callable[..., OutputHub]) -> None:
    flaky = FlakyStore(store)
    hub = make_hub(on=flaky)
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"first", False)
    output.add(2, b"second", False)
    flaky.fail_appends = 1

    hub.flush()  # the failure is logged, not raised: other logs must still be flushed

    assert _log(store) == []
    assert output.has_pending  # the numbered entries wait for the next flush
    output.add(2, b"third", False)
    hub.flush()

    chunks = _log(store)
    _assert_contiguous(chunks)
    assert _kinds_and_data(chunks) == [
        (OutputKind.STDOUT, b"first"),
        (OutputKind.STDERR, b"second"),
        (OutputKind.STDERR, b"third"),  # taken after the failed write: not merged into its entry
    ]
    assert not output.has_pending


def test_close_gives_the_rest_then_task_end_then_exit_code(store: SqliteTaskStore,
                                                           make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub()
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"flushed", False)
    hub.flush()
    output.add(2, b"rest", False)

    with output.flush_lock:
        final = output.close(TaskStatus.TIMED_OUT.name, 137, "wall_timeout", None)
    hub.flush()  # the flusher leaves a closed log alone: its last entries go with the final state
    assert _kinds_and_data(_log(store)) == [(OutputKind.STDOUT, b"flushed")]
    assert store.finish(TASK_ID, TaskStatus.TIMED_OUT, time.time_ns(), None, final)
    output.written()

    chunks = _log(store)
    _assert_contiguous(chunks)
    assert _kinds_and_data(chunks) == [
        (OutputKind.STDOUT, b"flushed"),
        (OutputKind.STDERR, b"rest"),
        (OutputKind.EVENT,
         b'{"event":"task_end","status":"TIMED_OUT","exit_code":137,"limit_reason":"wall_timeout","error":null}'),
        (OutputKind.EXIT_CODE, b"137"),
    ]
    assert output.closed
    assert not output.has_pending


def test_close_of_a_failed_start_records_the_error() -> None:
    output = OutputLog(TASK_ID, CAP_BYTES)

    chunks = output.close(TaskStatus.FAILED.name, -1, None, "bwrap: execvp nope: No such file or directory")

    assert [c.offset for c in chunks] == [0, 1]
    assert json.loads(chunks[0].data) == {
        "event": "task_end", "status": "FAILED", "exit_code": -1, "limit_reason": None,
        "error": "bwrap: execvp nope: No such file or directory",
    }
    assert (chunks[1].kind, chunks[1].data) == (OutputKind.EXIT_CODE, b"-1")


# -- the flusher ----------------------------------------------------------------------


def test_the_flusher_writes_pending_output_within_the_flush_interval(store: SqliteTaskStore,
                                                                     make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub(flush_ms=20)
    output = hub.open(TASK_ID, CAP_BYTES)

    started = time.monotonic()
    output.add(1, b"hello", False)
    chunks = wait_until(lambda: _log(store), what="the entry in the store")
    elapsed_s = time.monotonic() - started

    assert _kinds_and_data(chunks) == [(OutputKind.STDOUT, b"hello")]
    assert elapsed_s < 0.5  # 20 ms nominal; the bound only catches "never" or "at close"


def test_close_of_the_hub_flushes_what_is_pending(store: SqliteTaskStore, make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub()
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"last words", False)

    hub.close()

    assert _kinds_and_data(_log(store)) == [(OutputKind.STDOUT, b"last words")]


# -- readers --------------------------------------------------------------------------


def test_follow_yields_live_entries_and_ends_after_the_exit_code(store: SqliteTaskStore,
                                                                 make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub(flush_ms=10)
    output = hub.open(TASK_ID, CAP_BYTES)

    async def scenario() -> list[OutputChunk]:
        seen: list[OutputChunk] = []
        follower = hub.follow(TASK_ID, 0, _is_final(store))
        try:
            for n in range(3):
                asked = time.monotonic()
                output.add(1 + n % 2, b"line %d\n" % n, False)  # not yet in the store: the reader waits
                seen.append(await asyncio.wait_for(anext(follower), STEP_TIMEOUT_S))
                assert seen[-1].data == b"line %d\n" % n
                # Woken by the flush (10 ms), not by the 1 s safety-net poll of a local task.
                assert time.monotonic() - asked < 0.5
            await asyncio.to_thread(_finish, hub, store, output, 3)
            seen += [chunk async for chunk in follower]
        finally:
            await follower.aclose()
        return seen

    seen = asyncio.run(scenario())

    _assert_contiguous(seen)
    assert seen == _log(store)
    assert [c.kind for c in seen[-2:]] == [OutputKind.EVENT, OutputKind.EXIT_CODE]
    assert seen[-1].data == b"3"


def test_follow_resumes_from_an_offset_without_gaps_or_duplicates(store: SqliteTaskStore,
                                                                  make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub(flush_ms=10)
    output = hub.open(TASK_ID, CAP_BYTES)
    for n in range(5):
        output.add(1 + n % 2, b"entry %d" % n, False)
    hub.flush()

    async def first_three() -> list[OutputChunk]:
        follower = hub.follow(TASK_ID, 0, _is_final(store))
        try:
            return [await asyncio.wait_for(anext(follower), STEP_TIMEOUT_S) for _ in range(3)]
        finally:
            await follower.aclose()  # the reader goes away (a dropped connection)

    before = asyncio.run(first_three())
    for n in range(5, 8):  # more output while nobody reads
        output.add(1 + n % 2, b"entry %d" % n, False)
    hub.flush()

    async def resume() -> list[OutputChunk]:
        task = asyncio.create_task(_collect(hub, store, offset=before[-1].offset + 1))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(_finish, hub, store, output)
        return await asyncio.wait_for(task, STEP_TIMEOUT_S)

    after = asyncio.run(resume())

    _assert_contiguous(before + after)
    assert before + after == _log(store)
    assert after[-1].kind is OutputKind.EXIT_CODE


def test_follow_of_a_finished_task_from_past_the_end_ends_at_once(store: SqliteTaskStore,
                                                                  make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub()
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"done", False)
    _finish(hub, store, output)
    length = len(_log(store))

    started = time.monotonic()
    rest = asyncio.run(_collect(hub, store, offset=length + 5))
    elapsed_s = time.monotonic() - started

    assert rest == []
    assert elapsed_s < 0.5  # no wait for a wake-up or poll (those are 0.2 s to 1 s)


def test_follow_of_a_finished_task_from_the_start_gives_its_whole_log(store: SqliteTaskStore,
                                                                      make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub()
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"done", False)
    _finish(hub, store, output)

    assert asyncio.run(_collect(hub, store)) == _log(store)


def test_many_followers_of_one_task_get_the_identical_sequence(store: SqliteTaskStore,
                                                               make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub(flush_ms=5)
    output = hub.open(TASK_ID, CAP_BYTES)
    followers = 20

    def produce() -> None:
        for n in range(60):
            output.add(1 + n % 3 // 2, b"%d," % n * (1 + n * 37 % 500), n == 50)
            if n % 7 == 0:
                time.sleep(0.003)  # let some flushes fall between reads
        _finish(hub, store, output, exit_code=1)

    async def scenario() -> list[list[OutputChunk]]:
        readers = [asyncio.create_task(_collect(hub, store)) for _ in range(followers)]
        await asyncio.sleep(0.02)  # every reader is waiting before the first byte
        await asyncio.to_thread(produce)
        return await asyncio.wait_for(asyncio.gather(*readers), STEP_TIMEOUT_S)

    sequences = asyncio.run(scenario())

    full = _log(store)
    _assert_contiguous(full)
    assert full[-1] == OutputChunk(full[-1].offset, OutputKind.EXIT_CODE, b"1", full[-1].timestamp_ms)
    assert all(seq == full for seq in sequences)


def test_a_reader_that_never_consumes_does_not_block_the_flusher(store: SqliteTaskStore,
                                                                 make_hub: Callable[..., OutputHub]) -> None:
    hub = make_hub(flush_ms=5)
    output = hub.open(TASK_ID, CAP_BYTES)
    output.add(1, b"first", False)
    stuck = threading.Event()

    async def stuck_reader() -> None:
        follower = hub.follow(TASK_ID, 0, _is_final(store))
        try:
            await asyncio.wait_for(anext(follower), STEP_TIMEOUT_S)
            # The reader holds its place in the log and its event loop stops dead: wake-ups
            # for it only queue up on that loop.
            stuck.set()
            for n in range(20):
                output.add(1 + n % 2, b"more %d" % n, False)
                hub.flush()
            wait_until(lambda: len(_log(store)) == 21, what="the flusher's writes")
            output.add(1, b"by the flusher", False)
            wait_until(lambda: len(_log(store)) == 22, what="the flusher's writes")
        finally:
            await follower.aclose()

    started = time.monotonic()
    asyncio.run(stuck_reader())

    assert stuck.is_set()
    assert time.monotonic() - started < 2.0
    chunks = _log(store)
    _assert_contiguous(chunks)
    assert chunks[-1].data == b"by the flusher"
