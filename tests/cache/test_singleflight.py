"""Single-flight and fresh reads under deadlines and cancellation: the shared load is
nobody's own (it runs without a caller's deadline), one caller leaving does not cancel
it for the others, and when every caller has left it is cancelled."""

from __future__ import annotations

import asyncio
import time

import pytest

from gatehouse import deadlines
from gatehouse.cache.fresh_read import FreshRead
from gatehouse.cache.singleflight import SingleFlight
from gatehouse.errors import DeadlineExceeded


class Load:
    """A load that waits until released, recording how it ended."""

    def __init__(self, value: str = "v") -> None:
        self.value = value
        self.started = 0
        self.cancelled = 0
        self.seen_deadline: list[float | None] = []
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.started += 1
        self.seen_deadline.append(deadlines.deadline())
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.value


async def test_concurrent_callers_share_one_load() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    callers = [asyncio.create_task(flight.do("k", load)) for _ in range(10)]
    await asyncio.sleep(0)
    load.release.set()
    assert await asyncio.gather(*callers) == ["v"] * 10
    assert load.started == 1 and len(flight) == 0


async def test_the_load_runs_without_the_callers_deadline() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    with deadlines.bounded(5.0):
        caller = asyncio.create_task(flight.do("k", load))
        await asyncio.sleep(0)
    load.release.set()
    assert await caller == "v"
    assert load.seen_deadline == [None]


async def test_a_waiter_that_leaves_does_not_cancel_the_load_for_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    patient = asyncio.create_task(flight.do("k", load))
    impatient = asyncio.create_task(flight.do("k", load))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    load.release.set()
    assert await patient == "v"
    assert load.cancelled == 0


async def test_a_waiter_past_its_deadline_leaves_with_deadline_exceeded_and_the_others_get_the_value() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    patient = asyncio.create_task(flight.do("k", load))

    async def short() -> str:
        with deadlines.bounded(0.02):
            return await flight.do("k", load)

    with pytest.raises(DeadlineExceeded):
        await short()
    assert not patient.done() and load.cancelled == 0
    load.release.set()
    assert await patient == "v"


async def test_when_every_waiter_has_left_the_load_is_cancelled() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()

    async def short() -> str:
        with deadlines.bounded(0.02):
            return await flight.do("k", load)

    results = await asyncio.gather(*(short() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, DeadlineExceeded) for r in results)
    await asyncio.sleep(0)
    assert load.cancelled == 1 and len(flight) == 0
    # The next caller starts a load of its own, not the cancelled one.
    fresh = Load("w")
    caller = asyncio.create_task(flight.do("k", fresh))
    await asyncio.sleep(0)
    fresh.release.set()
    assert await caller == "w" and fresh.started == 1


async def test_cancelled_callers_cancel_the_load_too() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    callers = [asyncio.create_task(flight.do("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await asyncio.sleep(0)
    assert load.cancelled == 1


async def test_a_passed_deadline_starts_nothing_it_would_wait_for() -> None:
    flight: SingleFlight[str] = SingleFlight()
    load = Load()
    with deadlines.bounded(0.0):
        with pytest.raises(DeadlineExceeded):
            await flight.do("k", load)
    await asyncio.sleep(0)
    # The load may have been created, but nobody waits for it: it is cancelled at once.
    assert load.started == load.cancelled and len(flight) == 0


async def test_fresh_read_is_cancelled_when_its_last_waiter_leaves_not_before() -> None:
    probe: FreshRead[str] = FreshRead(0.05)
    read = Load()
    arrived = time.monotonic()
    patient = asyncio.create_task(probe.read_since("k", arrived, read, lambda _: True))

    async def short() -> str:
        with deadlines.bounded(0.02):
            return await probe.read_since("k", arrived, read, lambda _: True)

    with pytest.raises(DeadlineExceeded):
        await short()
    assert read.cancelled == 0 and read.seen_deadline == [None]
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient
    await asyncio.sleep(0)
    assert read.started == 1 and read.cancelled == 1
