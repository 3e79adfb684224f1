"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["throughput"]


def throughput(fn: Callable[[int], None], concurrency: int, seconds: float) -> float:
    """Calls of ``fn(thread_index)`` completed per second by ``concurrency`` threads
    looping for ``seconds``."""
    done = [0] * concurrency
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            fn(i)
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)
