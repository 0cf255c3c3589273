"""Tables of the identity package: unified users and the channel identities behind them."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base, UTCDateTime, utcnow


def new_entity_id() -> str:
    """An opaque random Composio entity id: never derived from a phone number or channel id."""
    return "ent_" + secrets.token_hex(16)


def new_user_id() -> str:
    return uuid.uuid4().hex


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_user_id)
    entity_id: Mapped[str] = mapped_column(String(64), unique=True, default=new_entity_id)
    display_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A retired user keeps its row (and so its entity_id, which is unique) forever, so the
    # entity is never handed to anyone else. Merged users point at the user they joined;
    # forgotten users have retired_at set and merged_into empty.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    merged_into: Mapped[str | None] = mapped_column(String(32), index=True)

    @property
    def retired(self) -> bool:
        return self.retired_at is not None


class Identity(Base):
    """One person as one channel knows them: (channel, account, channel user id)."""

    __tablename__ = "identities"
    __table_args__ = (
        UniqueConstraint("channel", "account", "channel_user_id", name="uq_identity_key"),
        Index("ix_identities_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128))
    channel_user_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    display_name: Mapped[str | None] = mapped_column(String(255))
    username: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
