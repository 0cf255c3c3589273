"""Client-side pacing that keeps an adapter under a platform's per-conversation limits.

Both pieces are bounded: memory must not grow with the number of chats ever seen.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruDict(Generic[K, V]):
    """A bounded mapping that forgets the least recently used key first."""

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._maxsize = maxsize

    def get(self, key: K) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


class TokenBucket:
    """A token bucket per key (a chat, a channel, a recipient): `rate` sends per second on
    average, `burst` at once. The slot is reserved before sleeping, so concurrent sends to
    one key queue up fairly."""

    def __init__(self, rate: float, burst: int, maxsize: int = 10_000) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: LruDict[str, tuple[float, float]] = LruDict(maxsize)

    async def wait(self, key: str) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key) or (float(self._burst), now)
        tokens = min(float(self._burst), tokens + (now - last) * self._rate) - 1.0
        self._buckets.set(key, (tokens, now))
        if tokens < 0:
            await asyncio.sleep(-tokens / self._rate)
