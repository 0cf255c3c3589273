"""Client-side pacing: bursts pass, the rest waits for its slot; memory stays bounded."""

from __future__ import annotations

import asyncio
import time

from channels.pacing import LruDict, TokenBucket


async def test_a_burst_passes_then_sends_are_spaced_by_the_rate() -> None:
    bucket = TokenBucket(rate=20, burst=2)
    started = time.monotonic()
    await bucket.wait("chat")
    await bucket.wait("chat")
    burst_done = time.monotonic()
    await asyncio.gather(bucket.wait("chat"), bucket.wait("chat"))  # two over the burst
    finished = time.monotonic()
    assert finished - burst_done >= 2 / 20 - 0.01  # each waited for its own slot
    assert finished - started >= 0.09


async def test_keys_are_paced_independently_and_memory_is_bounded() -> None:
    bucket = TokenBucket(rate=0.001, burst=1, maxsize=100)
    for i in range(1_000):
        await bucket.wait(f"chat-{i}")  # every first send of a key is within its burst
    assert len(bucket._buckets) == 100


def test_lru_dict_forgets_the_least_recently_used() -> None:
    lru: LruDict[str, int] = LruDict(2)
    lru.set("a", 1)
    lru.set("b", 2)
    assert lru.get("a") == 1
    lru.set("c", 3)
    assert "b" not in lru and "a" in lru and "c" in lru
