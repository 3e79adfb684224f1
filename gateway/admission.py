"""Admission control (design section 14): bounded calls in flight, refused fast beyond.

Overload is refused at the door rather than suffered: a call that cannot start soon is
answered 4290 (HTTP 429 + ``Retry-After`` / gRPC ``RESOURCE_EXHAUSTED`` + ``retry-after``)
at once, before it costs a thread, a policy evaluation, an audit write or a store write.
Without a bound every queue in the process (the accept backlog, the event loop, the
service threads, the policy workers) grows without limit and every caller, health probes
included, waits for all the callers ahead of it.

Two bounds, checked in this order:

1. :class:`EdgeGate`, one per edge (gRPC, HTTP), on the event loop before any work: at most
   ``limit`` calls in flight; a call beyond waits in FIFO order for at most ``max_wait_s``
   and is then refused. The wait is short so that the calls it admits still answer
   quickly; a call refused here is counted, not audited (it has not been authenticated,
   and writing an audit line per shed call would let a flood write the disk).
2. :class:`PrincipalSlots`, in the service after authentication: at most ``limit`` calls
   of one principal in flight, so one caller cannot take the whole edge; refused at once
   and audited as a ``rate_limit`` event.

Health, readiness and metrics never pass either bound (``gateway.edges``).
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time

from gateway.errors import RateLimited
from gateway.observability.metrics import ADMISSION_REFUSED, IN_FLIGHT

__all__ = ["EdgeGate", "PrincipalSlots"]

_EWMA_WEIGHT = 0.1  # weight of the newest call in the mean service time


class EdgeGate:
    """At most ``limit`` calls in flight through one edge; asyncio, one event loop.

    Args:
        edge: ``grpc`` or ``http`` (metric label).
        limit: calls in flight at once; 0 = no bound.
        max_wait_s: how long a call beyond the bound may wait for a slot, seconds; 0 =
            refuse at once.

    Use ``async with gate.slot(): ...``; :meth:`slot` raises :class:`RateLimited`
    (details ``{"limit": "<edge>_in_flight"}``) when no slot frees within ``max_wait_s``.
    """

    def __init__(self, edge: str, limit: int, max_wait_s: float) -> None:
        self.edge = edge
        self._limit = limit
        self._max_wait_s = max_wait_s
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._mean_s = 0.01  # mean service time of admitted calls, seconds
        self._gauge = IN_FLIGHT.labels(edge)
        self._refused = ADMISSION_REFUSED.labels(edge, f"{edge}_in_flight")

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    def slot(self) -> _Slot:
        """An async context manager holding one slot for the duration of a call."""
        return _Slot(self)

    async def _acquire(self) -> None:
        if not self._limit or (self._in_flight < self._limit and not self._waiters):
            self._take()
            return
        # Waiting longer than the bound's own size in calls would only queue behind it.
        if not self._max_wait_s or len(self._waiters) >= self._limit:
            raise self._refusal()
        # The waiter's result: True = a slot was handed over, False = max_wait_s passed.
        # (Not asyncio.wait_for: before Python 3.12 it drops a cancellation that races
        # with the result, so a caller that went away would keep a slot.)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(self._max_wait_s, _expire, waiter)
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:  # the caller went away while waiting
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._release()  # a slot was handed over just now: pass it on
            else:
                self._remove(waiter)
            raise
        finally:
            timer.cancel()
        if not handed:
            self._remove(waiter)
            raise self._refusal()

    def _remove(self, waiter: asyncio.Future[bool]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _take(self) -> None:
        self._in_flight += 1
        self._gauge.set(self._in_flight)

    def _release(self, service_s: float | None = None) -> None:
        if service_s is not None:
            self._mean_s += _EWMA_WEIGHT * (service_s - self._mean_s)
        self._in_flight -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1  # handed straight to the oldest waiter
                waiter.set_result(True)
                break
        self._gauge.set(self._in_flight)

    def _refusal(self) -> RateLimited:
        self._refused.inc()
        # Until the calls ahead (in flight and waiting) are served at the mean service time.
        ahead = self._in_flight + len(self._waiters)
        retry_after = max(1, math.ceil(ahead * self._mean_s / max(1, self._limit)))
        return RateLimited(
            f"the gateway is at its limit of {self._limit} {self.edge} calls in flight, retry later",
            retry_after_s=retry_after,
            details={"limit": f"{self.edge}_in_flight", "in_flight": self._in_flight},
        )


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Slot:
    __slots__ = ("_gate", "_start")

    def __init__(self, gate: EdgeGate) -> None:
        self._gate = gate
        self._start = 0.0

    async def __aenter__(self) -> None:
        await self._gate._acquire()
        self._start = time.perf_counter()

    async def __aexit__(self, *exc: object) -> None:
        self._gate._release(time.perf_counter() - self._start)


class PrincipalSlots:
    """At most ``limit`` calls of one principal in flight (0 = no bound). Thread-safe.

    Keys are ``(tenant, principal id)``; a key is forgotten when its last call ends.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def enter(self, key: tuple[str, str]) -> None:
        """Take one of the principal's slots; give it back with :meth:`leave`.

        Raises:
            RateLimited (4290): the principal already has ``limit`` calls in flight
                (details ``{"limit": "principal_in_flight"}``).
        """
        with self._lock:
            count = self._counts.get(key, 0)
            if self._limit and count >= self._limit:
                ADMISSION_REFUSED.labels("any", "principal_in_flight").inc()
                raise RateLimited(
                    f"the principal already has {count} calls in flight (limit {self._limit}), retry later",
                    retry_after_s=1,
                    details={"limit": "principal_in_flight", "in_flight": count},
                )
            self._counts[key] = count + 1

    def leave(self, key: tuple[str, str]) -> None:
        """Give back a slot taken by :meth:`enter`."""
        with self._lock:
            left = self._counts[key] - 1
            if left:
                self._counts[key] = left
            else:
                del self._counts[key]
