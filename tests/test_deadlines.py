"""gatehouse.deadlines on its own: how a deadline is set, read, tightened, cut and dropped."""

from __future__ import annotations

import asyncio

import pytest

from gatehouse import deadlines
from gatehouse.errors import Code, DeadlineExceeded


async def test_no_deadline_by_default_and_cap_leaves_timeouts_alone() -> None:
    assert deadlines.deadline() is None and deadlines.remaining() is None
    assert deadlines.cap(0.25) == 0.25 and deadlines.cap(None) is None


async def test_bounded_sets_tightens_and_restores() -> None:
    with deadlines.bounded(10.0):
        left = deadlines.remaining()
        assert left is not None and 9.0 < left <= 10.0
        assert deadlines.cap(0.25) == 0.25
        assert deadlines.cap(None) == pytest.approx(left, abs=0.1)
        with deadlines.bounded(60.0):  # a later deadline never loosens an earlier one
            assert (deadlines.remaining() or 0) <= 10.0
        with deadlines.bounded(1.0):
            assert (deadlines.remaining() or 0) <= 1.0
            with deadlines.detached():
                assert deadlines.deadline() is None
        with deadlines.bounded(None):
            assert deadlines.remaining() is not None
    assert deadlines.deadline() is None


async def test_cap_after_the_deadline_raises() -> None:
    with deadlines.bounded(0.0):
        with pytest.raises(DeadlineExceeded) as raised:
            deadlines.cap(1.0)
    assert raised.value.code is Code.DEADLINE_EXCEEDED and raised.value.reason == "GATEHOUSE_DEADLINE_EXCEEDED"


async def test_within_cancels_the_block_at_the_deadline() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with deadlines.bounded(0.02):
        with pytest.raises(DeadlineExceeded):
            async with deadlines.within():
                await slow()
    assert cancelled == [True]


async def test_within_without_a_deadline_arms_nothing_and_passes_own_timeouts_through() -> None:
    async with deadlines.within():
        await asyncio.sleep(0)
    with deadlines.bounded(5.0):
        with pytest.raises(TimeoutError):
            async with deadlines.within():
                raise TimeoutError("the block's own")


async def test_within_after_the_deadline_raises_before_the_block() -> None:
    ran = []
    with deadlines.bounded(-1.0):
        with pytest.raises(DeadlineExceeded):
            async with deadlines.within():
                ran.append(True)
    assert ran == []


async def test_disarm_lets_the_rest_of_the_block_finish() -> None:
    with deadlines.bounded(0.02):
        async with deadlines.within() as bound:
            bound.disarm()
            await asyncio.sleep(0.05)


async def test_tasks_copy_the_deadline_unless_detached() -> None:
    async def seen() -> float | None:
        return deadlines.deadline()

    with deadlines.bounded(5.0):
        inherited = await asyncio.create_task(seen())
        with deadlines.detached():
            detached = asyncio.create_task(seen())
        assert inherited is not None and await detached is None
