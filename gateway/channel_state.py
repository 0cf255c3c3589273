"""Durable key-value state for channels (e.g. the Telegram long-polling offset)."""

from __future__ import annotations

from sqlalchemy import String, Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base


class ChannelStateRow(Base):
    __tablename__ = "channel_state"

    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DatabaseChannelState:
    """Implements `channels.ChannelState` for one channel."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], channel: str) -> None:
        self._sessions = sessions
        self._channel = channel

    async def get(self, key: str) -> str | None:
        async with self._sessions() as session:
            row = await session.get(ChannelStateRow, (self._channel, key))
            return row.value if row else None

    async def set(self, key: str, value: str) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(ChannelStateRow, (self._channel, key))
            if row is None:
                session.add(ChannelStateRow(channel=self._channel, key=key, value=value))
            else:
                row.value = value
