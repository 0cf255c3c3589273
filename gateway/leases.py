"""Leased, ordered work queues in the database (the inbox and the outbox share this).

A row is claimable when it is the oldest open row of its ordering key (a user for the
inbox, a conversation for the outbox) and it is either pending and due, or claimed by a
worker whose lease ran out (that worker crashed). On Postgres the claim uses
`FOR UPDATE SKIP LOCKED`, so any number of replicas can claim concurrently and each row
goes to one of them; on SQLite every transaction is BEGIN IMMEDIATE, which serialises
claims within the single process that may use the file.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.db import utcnow

PENDING = "pending"
PROCESSING = "processing"
OPEN_STATUSES = (PENDING, PROCESSING)

Row = TypeVar("Row", bound=Any)


def worker_id() -> str:
    """Names this process in lease columns, so a crash can be told apart from a live claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def claim(
    session: AsyncSession,
    model: type[Row],
    *,
    order_key: str,
    owner: str,
    lease_seconds: float,
    limit: int,
    now: datetime | None = None,
) -> list[Row]:
    now = now or utcnow()
    table = model.__table__
    earlier = table.alias("earlier")
    earlier_open = (
        select(earlier.c.seq)
        .where(
            earlier.c[order_key] == table.c[order_key],
            earlier.c.seq < table.c.seq,
            earlier.c.status.in_(OPEN_STATUSES),
        )
        .exists()
    )
    due = or_(
        and_(table.c.status == PENDING, table.c.available_at <= now),
        and_(table.c.status == PROCESSING, table.c.lease_until < now),
    )
    rows = list(
        await session.scalars(
            select(model)
            .where(due, ~earlier_open)
            .order_by(table.c.seq)
            .limit(limit)
            .with_for_update(skip_locked=True, of=table)
        )
    )
    until = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.status = PROCESSING
        row.lease_owner = owner
        row.lease_until = until
        row.attempts = (row.attempts or 0) + 1
    await session.flush()
    return rows


async def renew(
    session: AsyncSession, model: type[Row], seqs: list[int], owner: str, lease_seconds: float
) -> None:
    if not seqs:
        return
    table = model.__table__
    await session.execute(
        update(table)
        .where(table.c.seq.in_(seqs), table.c.lease_owner == owner, table.c.status == PROCESSING)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
    )


async def release_all(session: AsyncSession, model: type[Row], owner: str | None) -> int:
    """Give back everything this worker still holds (graceful shutdown).

    `owner=None` releases every claim: only for a single-process database, at start, when
    any claim left over belongs to a process that is gone.
    """
    table = model.__table__
    stmt = update(table).where(table.c.status == PROCESSING)
    if owner is not None:
        stmt = stmt.where(table.c.lease_owner == owner)
    result = await session.execute(stmt.values(status=PENDING, lease_owner=None, lease_until=None))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def finish(
    session: AsyncSession, model: type[Row], seq: int, owner: str, **values: Any
) -> bool:
    """Close a claimed row, only if this worker still holds it (else another took over)."""
    table = model.__table__
    result = await session.execute(
        update(table)
        .where(table.c.seq == seq, table.c.lease_owner == owner, table.c.status == PROCESSING)
        .values(lease_owner=None, lease_until=None, **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


class Claimed(Protocol):
    seq: int


Item = TypeVar("Item", bound=Claimed)


class LeasedSource(Generic[Item]):
    """A pool's work source over one leased table (`kernel.pool.Source`)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        model: type[Any],
        *,
        order_key: str,
        owner: str,
        lease_seconds: float,
        to_item: Callable[[Any], Item],
    ) -> None:
        self._sessions = sessions
        self._model = model
        self._order_key = order_key
        self._owner = owner
        self._lease = lease_seconds
        self._to_item = to_item

    async def claim(self, limit: int) -> list[Item]:
        async with self._sessions.begin() as session:
            rows = await claim(
                session,
                self._model,
                order_key=self._order_key,
                owner=self._owner,
                lease_seconds=self._lease,
                limit=limit,
            )
            return [self._to_item(row) for row in rows]

    async def renew(self, items: list[Item]) -> None:
        async with self._sessions.begin() as session:
            await renew(session, self._model, [i.seq for i in items], self._owner, self._lease)

    async def release(self) -> None:
        async with self._sessions.begin() as session:
            await release_all(session, self._model, self._owner)
