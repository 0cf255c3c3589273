"""The durable inbox: every accepted envelope is a row before the platform gets its 200."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from channels.envelope import Envelope
from gateway.leases import OPEN_STATUSES, PENDING
from identity.db import Base, UTCDateTime, utcnow

DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"  # stored for the record, but no turn: edits, reactions, unaddressed group talk


class InboxItem(Base):
    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "account", "native_id", name="uq_inbox_dedupe"),
        Index("ix_inbox_status_seq", "status", "seq"),
        Index("ix_inbox_user_seq", "user_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(128))
    native_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    conversation_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def envelope(self) -> Envelope:
        return Envelope.model_validate_json(self.payload)


async def insert(
    session: AsyncSession, envelope: Envelope, user_id: str, *, needs_turn: bool
) -> bool:
    """Store one envelope; False when its dedupe key was already stored (a retry)."""
    dialect = session.bind.dialect.name
    insert_fn = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    stmt = (
        insert_fn(InboxItem)
        .values(
            id=envelope.id,
            channel=envelope.channel,
            account=envelope.account,
            native_id=envelope.native_id,
            user_id=user_id,
            conversation_key=envelope.conversation_key,
            kind=str(envelope.kind),
            payload=envelope.model_dump_json(),
            status=PENDING if needs_turn else SKIPPED,
            attempts=0,
            received_at=now,
            available_at=now,
            finished_at=None if needs_turn else now,
        )
        .on_conflict_do_nothing(index_elements=["channel", "account", "native_id"])
    )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def depth_and_oldest(session: AsyncSession) -> tuple[int, datetime | None]:
    row = (
        await session.execute(
            select(func.count(), func.min(InboxItem.received_at)).where(
                InboxItem.status.in_(OPEN_STATUSES)
            )
        )
    ).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite aggregates lose the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(row[0] or 0), oldest


async def open_count(session: AsyncSession) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(InboxItem).where(InboxItem.status.in_(OPEN_STATUSES))
        )
        or 0
    )
