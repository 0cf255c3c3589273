"""Conversation memory: what was said, per user and conversation, in the database.

Only user text and assistant answers are kept between turns. Tool calls and their results
stay inside the turn that made them, so one person's tool data never reaches another
person's turn through a shared group history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base, UTCDateTime, utcnow


class HistoryMessage(Base):
    __tablename__ = "history"
    __table_args__ = (Index("ix_history_user_conversation", "user_id", "conversation_key", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_key: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class Said:
    role: str  # "user" or "assistant"
    content: str


async def recent(
    session: AsyncSession, user_id: str, conversation_key: str, limit: int
) -> list[Said]:
    if limit <= 0:
        return []
    rows = await session.scalars(
        select(HistoryMessage)
        .where(
            HistoryMessage.user_id == user_id,
            HistoryMessage.conversation_key == conversation_key,
        )
        .order_by(HistoryMessage.id.desc())
        .limit(limit)
    )
    return [Said(m.role, m.content) for m in reversed(list(rows))]


def remember(session: AsyncSession, user_id: str, conversation_key: str, said: list[Said]) -> None:
    """Add to the session; the caller commits with the rest of the turn."""
    for item in said:
        session.add(
            HistoryMessage(
                user_id=user_id,
                conversation_key=conversation_key,
                role=item.role,
                content=item.content,
            )
        )


async def forget_conversation(session: AsyncSession, user_id: str, conversation_key: str) -> int:
    result = await session.execute(
        delete(HistoryMessage).where(
            HistoryMessage.user_id == user_id, HistoryMessage.conversation_key == conversation_key
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def move_history(session: AsyncSession, from_user_id: str, to_user_id: str) -> None:
    """Used when two users merge: the joining user's history follows them."""
    await session.execute(
        update(HistoryMessage)
        .where(HistoryMessage.user_id == from_user_id)
        .values(user_id=to_user_id)
    )
