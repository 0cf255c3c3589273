"""A bounded pool of workers fed from a leased, per-key ordered work source.

The source decides *what* may run (the head of each user's queue, or of each
conversation's); the pool decides *how much* runs at once. The pool's only state is the
set of items in flight, so memory does not grow with the number of users ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class Source(Protocol[Item]):
    async def claim(self, limit: int) -> list[Item]: ...

    async def renew(self, items: list[Item]) -> None: ...

    async def release(self) -> None: ...


class Pool(Generic[Item]):
    def __init__(
        self,
        name: str,
        source: Source[Item],
        handle: Callable[[Item], Awaitable[None]],
        *,
        concurrency: int,
        poll_interval: float,
        lease_seconds: float,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self._handle = handle
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._renew_every = max(lease_seconds / 3, 0.1)
        self._on_progress = on_progress
        self._in_flight: dict[asyncio.Task[None], Item] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = False
        self._drained = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def wake(self) -> None:
        """New work may be claimable (stored here, or a slot or a user's queue freed up)."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"pool-{self.name}")
        self._renew_task = asyncio.create_task(self._renew(), name=f"pool-{self.name}-lease")

    async def stop(self, grace: float, *, drain: bool = False) -> None:
        """Stop claiming, give in-flight work `grace` seconds, then release the rest.

        With `drain`, first keep claiming until nothing claimable is left (within `grace`):
        used for the outbox, so replies of turns that finished during shutdown still go out.
        """
        if drain and self._loop_task is not None:
            self._draining = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace or None)
        self._stopping = True
        self._wake.set()
        for task in (self._loop_task, self._renew_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._in_flight:
            _, pending = await asyncio.wait(list(self._in_flight), timeout=grace or None)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._source.release()

    async def _run(self) -> None:
        while not self._stopping:
            free = self._concurrency - len(self._in_flight)
            claimed = 0
            if free > 0:
                self._wake.clear()
                try:
                    items = await self._source.claim(free)
                except Exception:
                    log.exception("%s: claiming work failed; retrying", self.name)
                    items = []
                claimed = len(items)
                for item in items:
                    task = asyncio.create_task(self._run_one(item))
                    self._in_flight[task] = item
                if claimed and claimed == free:
                    continue
            if self._draining and not claimed and not self._in_flight:
                self._drained.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _run_one(self, item: Item) -> None:
        try:
            await self._handle(item)
        except Exception:
            log.exception(
                "%s: handler failed; the lease will expire and the work retried", self.name
            )
        finally:
            self._in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._wake.set()
            if self._on_progress is not None:
                self._on_progress()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            if self._in_flight:
                try:
                    await self._source.renew(list(self._in_flight.values()))
                except Exception:
                    log.exception("%s: renewing leases failed", self.name)
