"""Admission control: edge gates (asyncio) and per-principal slots (threads)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import EdgeGate, PrincipalSlots
from gateway.errors import RateLimited


async def _hold(gate: EdgeGate, release: asyncio.Event, entered: list[int], n: int) -> None:
    async with gate.slot():
        entered.append(n)
        await release.wait()


def test_edge_gate_admits_up_to_its_limit_and_refuses_at_once_without_wait() -> None:
    async def scenario() -> None:
        gate = EdgeGate("http", 2, 0.0)
        release, entered = asyncio.Event(), []
        holders = [asyncio.create_task(_hold(gate, release, entered, i)) for i in range(2)]
        await asyncio.sleep(0)
        assert entered == [0, 1] and gate.in_flight == 2
        with pytest.raises(RateLimited) as refused:
            async with gate.slot():
                raise AssertionError("admitted beyond the limit")
        assert refused.value.code == 4290
        assert refused.value.details["limit"] == "http_in_flight"
        assert refused.value.retry_after_s >= 1
        release.set()
        await asyncio.gather(*holders)
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_edge_gate_hands_a_freed_slot_to_the_oldest_waiter() -> None:
    async def scenario() -> None:
        gate = EdgeGate("grpc", 1, 5.0)
        release, entered = asyncio.Event(), []
        first = asyncio.create_task(_hold(gate, release, entered, 0))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(_hold(gate, asyncio.Event(), entered, i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert entered == [0]
        release.set()
        await first
        await asyncio.sleep(0)
        assert entered == [0, 1]  # FIFO, and the slot never went back to the pool
        assert gate.in_flight == 1
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_edge_gate_refuses_after_max_wait_and_forgets_the_waiter() -> None:
    async def scenario() -> None:
        gate = EdgeGate("http", 1, 0.02)
        release, entered = asyncio.Event(), []
        holder = asyncio.create_task(_hold(gate, release, entered, 0))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RateLimited):
            async with gate.slot():
                raise AssertionError("admitted while the slot was held")
        assert 0.015 <= loop.time() - start < 0.5
        release.set()
        await holder
        async with gate.slot():  # the timed-out waiter left no claim behind
            assert gate.in_flight == 1
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_edge_gate_bounds_its_waiting_line() -> None:
    async def scenario() -> None:
        gate = EdgeGate("http", 1, 5.0)
        release, entered = asyncio.Event(), []
        holder = asyncio.create_task(_hold(gate, release, entered, 0))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_hold(gate, release, entered, 1))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited):  # one waiting per slot at most: refused at once
            async with gate.slot():
                raise AssertionError("admitted")
        release.set()
        await asyncio.gather(holder, waiter)
        assert entered == [0, 1] and gate.in_flight == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_passes_a_slot_handed_to_it_on() -> None:
    async def scenario() -> None:
        gate = EdgeGate("http", 1, 5.0)
        held = gate.slot()
        await held.__aenter__()
        entered: list[int] = []
        doomed = asyncio.create_task(_hold(gate, asyncio.Event(), entered, 1))
        await asyncio.sleep(0)
        await held.__aexit__(None, None, None)  # hands the slot to `doomed` without yielding
        doomed.cancel()  # ... which goes away before it runs again
        (outcome,) = await asyncio.gather(doomed, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError) and entered == []
        assert gate.in_flight == 0
        async with gate.slot():
            pass

    asyncio.run(scenario())


def test_unbounded_gate_never_refuses() -> None:
    async def scenario() -> None:
        gate = EdgeGate("http", 0, 0.0)
        release, entered = asyncio.Event(), []
        holders = [asyncio.create_task(_hold(gate, release, entered, i)) for i in range(50)]
        await asyncio.sleep(0)
        assert len(entered) == 50
        release.set()
        await asyncio.gather(*holders)

    asyncio.run(scenario())


def test_principal_slots_bound_each_principal_apart() -> None:
    slots = PrincipalSlots(2)
    alice, bob = ("acme", "alice"), ("acme", "bob")
    slots.enter(alice)
    slots.enter(alice)
    with pytest.raises(RateLimited) as refused:
        slots.enter(alice)
    assert refused.value.details == {"limit": "principal_in_flight", "in_flight": 2}
    slots.enter(bob)  # another principal is not held up
    slots.leave(alice)
    slots.enter(alice)
    for key in (alice, alice, bob):
        slots.leave(key)
    assert slots._counts == {}
