"""Client-side pacing that keeps an adapter under a platform's per-conversation limits.

One pacer for every adapter, so fairness, bounded memory and the hand-off of long waits to
the outbox (`RateLimited`) behave the same everywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from channels.base import RateLimited

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


@dataclass(frozen=True)
class Limit:
    """At most `count` sends to one key in any `per` seconds (only to groups if `groups_only`).

    A sliding window, not a token bucket: a bucket with the same burst and rate lets up to
    twice `count` through within `per` (the burst, then the refill), breaking "N per
    minute" rules like Telegram's.
    """

    count: int
    per: float
    groups_only: bool = False

    def __post_init__(self) -> None:
        if self.count < 1 or self.per <= 0:
            raise ValueError("a limit needs count >= 1 and per > 0")


def average(per_second: float, burst: int) -> tuple[Limit, ...]:
    """`per_second` sends on average with bursts of `burst`; no limit if `per_second` <= 0."""
    return (Limit(burst, burst / per_second),) if per_second > 0 else ()


class Pacer:
    """Spaces sends per key (a chat, a channel, a recipient) under every applicable `Limit`.

    The slot is reserved before sleeping, so concurrent senders to one key go out in call
    order. A wait longer than `max_wait` raises `RateLimited(retry_after=wait)` and reserves
    nothing, so the outbox reschedules instead of holding a worker. Only the `max_keys`
    most recently used keys are remembered; a forgotten key starts with a fresh budget.
    """

    def __init__(
        self,
        *limits: Limit,
        max_wait: float = 10.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limits = limits
        self._max_wait = max_wait
        self._history = max((limit.count for limit in limits), default=0)
        self._slots: LruDict[str, deque[float]] = LruDict(max_keys)
        self._clock = clock
        self._sleep = sleep

    async def acquire(self, key: str, is_group: bool = False) -> None:
        """Wait for this key's next free slot, or raise `RateLimited` if it is too far off."""
        if not self._history:
            return
        now = self._clock()
        slots = self._slots.get(key) or deque(maxlen=self._history)
        start = max(now, slots[-1]) if slots else now  # never ahead of an earlier caller
        for limit in self._limits:
            if (is_group or not limit.groups_only) and len(slots) >= limit.count:
                start = max(start, slots[-limit.count] + limit.per)
        wait = start - now
        if wait > self._max_wait:
            raise RateLimited(f"pacing sends to {key}", retry_after=wait)
        slots.append(start)
        self._slots.set(key, slots)
        if wait > 0:
            await self._sleep(wait)
