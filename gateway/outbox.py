"""The outbox: replies written in the turn's transaction, delivered in order per conversation."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from channels.envelope import OutboundMessage
from gateway.leases import OPEN_STATUSES, PENDING
from identity.db import Base, UTCDateTime, utcnow

SENT = "sent"
DEAD = "dead"
DROPPED = "dropped"  # a dead letter an operator decided not to retry


class OutboxItem(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_seq", "status", "seq"),
        Index("ix_outbox_conversation_seq", "conversation_key", "seq"),
        Index("ix_outbox_platform_message", "channel", "platform_message_id"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inbox_id: Mapped[str | None] = mapped_column(String(32), index=True)
    user_id: Mapped[str | None] = mapped_column(String(32), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128))
    conversation_key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    platform_message_id: Mapped[str | None] = mapped_column(String(255))
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def message(self) -> OutboundMessage:
        return OutboundMessage.model_validate_json(self.payload)


def ordering_key(message: OutboundMessage) -> str:
    """Messages to one place go out in order; a private message orders with its recipient."""
    if message.private_to:
        return f"{message.channel}:{message.account}:private:{message.private_to}"
    return f"{message.channel}:{message.account}:{message.conversation.id}"


def enqueue(
    session: AsyncSession,
    message: OutboundMessage,
    *,
    inbox_id: str | None = None,
    user_id: str | None = None,
) -> None:
    now = utcnow()
    session.add(
        OutboxItem(
            inbox_id=inbox_id,
            user_id=user_id,
            channel=message.channel,
            account=message.account,
            conversation_key=ordering_key(message),
            payload=message.model_dump_json(),
            status=PENDING,
            attempts=0,
            created_at=now,
            available_at=now,
        )
    )


async def record_delivery(
    session: AsyncSession, channel: str, platform_message_id: str, status: str, error: str | None
) -> bool:
    """A platform's delivery receipt (sent/delivered/read/failed) for one of our messages."""
    values: dict[str, object] = {"delivery_status": status}
    if error:
        values["last_error"] = error
    result = await session.execute(
        update(OutboxItem)
        .where(OutboxItem.channel == channel, OutboxItem.platform_message_id == platform_message_id)
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def close_conversation(session: AsyncSession, conversation_key: str, reason: str) -> int:
    """Dead-letter what is still queued for a conversation the platform closed: each
    message would fail the same way. Replies to a later message go out as usual."""
    result = await session.execute(
        update(OutboxItem)
        .where(OutboxItem.conversation_key == conversation_key, OutboxItem.status == PENDING)
        .values(status=DEAD, last_error=f"conversation closed: {reason}")
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def listing(
    session: AsyncSession, *, status: str | None = DEAD, limit: int = 50, offset: int = 0
) -> list[OutboxItem]:
    stmt = select(OutboxItem).order_by(OutboxItem.seq.desc()).limit(limit).offset(offset)
    if status:
        stmt = stmt.where(OutboxItem.status == status)
    return list(await session.scalars(stmt))


async def retry_dead(session: AsyncSession, seqs: list[int] | None = None) -> int:
    """Give dead letters a fresh set of attempts (all of them when `seqs` is None)."""
    stmt = update(OutboxItem).where(OutboxItem.status == DEAD)
    if seqs is not None:
        stmt = stmt.where(OutboxItem.seq.in_(seqs))
    now = utcnow()
    result = await session.execute(
        stmt.values(status=PENDING, attempts=0, available_at=now, created_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def drop_dead(session: AsyncSession, seqs: list[int] | None = None) -> int:
    stmt = update(OutboxItem).where(OutboxItem.status == DEAD)
    if seqs is not None:
        stmt = stmt.where(OutboxItem.seq.in_(seqs))
    result = await session.execute(stmt.values(status=DROPPED))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def open_count(session: AsyncSession) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(OutboxItem).where(OutboxItem.status.in_(OPEN_STATUSES))
        )
        or 0
    )
