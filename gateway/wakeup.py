"""Prompt wake-ups across replicas: Postgres LISTEN/NOTIFY.

A replica that stores work sends NOTIFY inside the same transaction, so it is delivered
exactly when the rows become visible; every replica listening wakes its pools at once
instead of waiting for the next poll. Polling stays as the fallback (and is what picks up
work whose lease expired after a crash), so a lost listener connection only costs latency.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "gateway_work"


async def notify(session: AsyncSession) -> None:
    """Queue a wake-up for every replica; sent by Postgres when the transaction commits."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text(f"NOTIFY {CHANNEL}"))


class PostgresListener:
    def __init__(self, database_url: str, on_notify: Callable[[], None]) -> None:
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._on_notify = on_notify
        self._connection: asyncpg.Connection | None = None

    async def start(self) -> None:
        try:
            self._connection = await asyncpg.connect(self._dsn)
            await self._connection.add_listener(CHANNEL, self._received)
        except Exception as exc:  # polling still works; say so rather than fail the start
            log.warning("LISTEN %s unavailable, relying on polling: %s", CHANNEL, exc)
            self._connection = None

    def _received(self, *_: object) -> None:
        self._on_notify()

    async def stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
