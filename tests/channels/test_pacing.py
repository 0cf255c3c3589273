"""The one pacer every adapter uses, on a virtual clock: nothing here really sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from channels.base import RateLimited
from channels.pacing import Limit, LruDict, Pacer, average


class Clock:
    """Virtual time: `sleep` records the wait and parks until `advance` passes its wake-up."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            heapq.heappop(self._sleepers)[2].set_result(None)
            await asyncio.sleep(0)  # let that sleeper run before the next wakes

    async def settle(self) -> None:
        """Run every task until it finishes or parks in `sleep`."""
        for _ in range(10):
            await asyncio.sleep(0)

    async def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run `coroutine` to the end, moving time on to each wake-up it waits for."""
        task = asyncio.create_task(coroutine)
        await self.settle()
        while not task.done():
            await self.advance(self._sleepers[0][0] - self.now)
            await self.settle()
        await task


def pacer(clock: Clock, *limits: Limit, max_wait: float = 10.0, max_keys: int = 100) -> Pacer:
    return Pacer(*limits, max_wait=max_wait, max_keys=max_keys, clock=clock, sleep=clock.sleep)


async def acquire(clock: Clock, paced: Pacer, key: str, is_group: bool = False) -> None:
    """One send, with virtual time moving on for as long as the pacer sleeps."""
    await clock.run(paced.acquire(key, is_group))


async def test_sends_to_one_key_are_spaced_and_other_keys_are_not_held_up() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 1.0))
    for _ in range(3):
        await acquire(clock, paced, "a")
    assert clock.slept == [1.0, 1.0]
    await acquire(clock, paced, "b")
    assert clock.slept == [1.0, 1.0]  # "b" has its own budget


async def test_a_burst_passes_then_the_window_holds_the_rest() -> None:
    clock = Clock()
    paced = pacer(clock, *average(per_second=0.5, burst=3), max_wait=60)
    for _ in range(4):
        await acquire(clock, paced, "a")
    assert clock.slept == [6.0]  # 3 at once; the 4th waits until 6 s after the 1st
    assert clock.now == 1006.0


def test_average_keeps_rate_and_burst_and_zero_means_unpaced() -> None:
    assert average(per_second=1.0, burst=4) == (Limit(4, 4.0),)
    assert average(per_second=1 / 6, burst=20) == (Limit(20, 120.0),)
    assert average(per_second=0, burst=4) == ()
    with pytest.raises(ValueError):
        Limit(0, 1.0)


async def test_no_limits_never_waits() -> None:
    clock = Clock()
    paced = pacer(clock)
    for _ in range(100):
        await acquire(clock, paced, "a", is_group=True)
    assert clock.slept == []


async def test_a_group_window_applies_to_groups_only() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 1.0), Limit(3, 60.0, groups_only=True), max_wait=100)
    for _ in range(4):
        await acquire(clock, paced, "group", is_group=True)
    assert clock.slept == [1.0, 1.0, 58.0]  # the 4th waits until a minute after the 1st
    clock.slept.clear()
    for _ in range(4):
        await acquire(clock, paced, "private")
    assert clock.slept == [1.0, 1.0, 1.0]


async def test_a_wait_beyond_max_wait_asks_for_a_retry_and_reserves_nothing() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 60.0), max_wait=5)
    await acquire(clock, paced, "a")
    for _ in range(2):  # had the first refusal reserved a slot, the second would say 120 s
        with pytest.raises(RateLimited) as caught:
            await paced.acquire("a")
        assert caught.value.retry_after == pytest.approx(60.0)
    assert clock.slept == []
    await clock.advance(60.0)  # retrying after `retry_after` goes straight through
    await acquire(clock, paced, "a")
    assert clock.slept == []


async def test_a_wait_of_exactly_max_wait_still_waits() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 5.0), max_wait=5)
    await acquire(clock, paced, "a")
    await acquire(clock, paced, "a")
    assert clock.slept == [5.0]


async def test_memory_is_bounded_to_the_most_recently_used_keys() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 60.0), max_wait=5, max_keys=100)
    for key in range(1_000):
        await acquire(clock, paced, str(key))  # the clock stands still: no key waited
    assert clock.slept == []
    with pytest.raises(RateLimited):
        await paced.acquire("900")  # among the last 100: still paced
    await paced.acquire("899")  # the 101st most recent: forgotten, a fresh budget
    assert clock.slept == []


async def test_concurrent_senders_to_one_key_go_out_in_call_order() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(1, 1.0))
    sent: list[tuple[int, float]] = []

    async def send(n: int) -> None:
        await paced.acquire("a")
        sent.append((n, clock.now))

    tasks = [asyncio.create_task(send(n)) for n in range(4)]
    await clock.settle()
    assert sent == [(0, 1000.0)]
    assert sorted(clock.slept) == [1.0, 2.0, 3.0]  # each reserved its own slot before sleeping
    for _ in range(3):
        await clock.advance(1.0)
    await asyncio.gather(*tasks)
    assert sent == [(0, 1000.0), (1, 1001.0), (2, 1002.0), (3, 1003.0)]


async def test_a_later_caller_never_overtakes_an_earlier_one() -> None:
    clock = Clock()
    paced = pacer(clock, Limit(2, 60.0, groups_only=True), max_wait=100)
    await acquire(clock, paced, "chat", is_group=True)
    await acquire(clock, paced, "chat", is_group=True)
    waiting = asyncio.create_task(paced.acquire("chat", is_group=True))  # slot at +60 s
    await clock.settle()
    later = asyncio.create_task(paced.acquire("chat"))  # no limit of its own applies
    await clock.settle()
    assert clock.slept == [60.0, 60.0]  # queued behind the earlier caller's slot
    await clock.advance(60.0)
    await asyncio.gather(waiting, later)


def test_lru_dict_forgets_the_least_recently_used() -> None:
    lru: LruDict[str, int] = LruDict(2)
    lru.set("a", 1)
    lru.set("b", 2)
    assert lru.get("a") == 1
    lru.set("c", 3)
    assert "b" not in lru and "a" in lru and "c" in lru
