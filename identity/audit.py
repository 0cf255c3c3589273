"""The audit log: who changed which user, when, and what it looked like before and after.

Append-only: this module only inserts and reads, and the migration adds database triggers
that refuse UPDATE and DELETE on the table, so not even a bug elsewhere can rewrite it.
Snapshots hold ids, channel names and counts only (no names, phone numbers or message
text), so the log may outlive a forgotten user without keeping their personal data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base, UTCDateTime, utcnow

# Actions written by the identity features.
LINK = "link"  # an identity's user (with all its identities) joined another user
MERGE = "merge"  # an admin merged two users by user id (same policy as link)
UNLINK = "unlink"  # one identity left its user and became a fresh user
FORGET = "forget"
EXPORT = "export"

ADMIN = "admin"
USER_VIA_CODE = "user via code"
USER = "user"  # the user themself, in chat (e.g. /unlink)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_user_id", "user_id", "id"),
        Index("ix_audit_log_other_user_id", "other_user_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    via: Mapped[str] = mapped_column(String(16))  # api, console, cli, chat
    action: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(32))
    other_user_id: Mapped[str | None] = mapped_column(String(32))
    before: Mapped[str] = mapped_column(Text, default="{}")
    after: Mapped[str] = mapped_column(Text, default="{}")


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    user_id: str | None
    other_user_id: str | None
    before: dict[str, Any]
    after: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "via": self.via,
            "action": self.action,
            "user_id": self.user_id,
            "other_user_id": self.other_user_id,
            "before": self.before,
            "after": self.after,
        }


def record(
    session: AsyncSession,
    *,
    actor: str,
    via: str,
    action: str,
    user_id: str | None,
    other_user_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an entry to the caller's transaction: it commits (or not) with the change itself."""
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor,
            via=via,
            action=action,
            user_id=user_id,
            other_user_id=other_user_id,
            before=json.dumps(before or {}, sort_keys=True, default=str),
            after=json.dumps(after or {}, sort_keys=True, default=str),
        )
    )


def _record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        via=row.via,
        action=row.action,
        user_id=row.user_id,
        other_user_id=row.other_user_id,
        before=json.loads(row.before or "{}"),
        after=json.loads(row.after or "{}"),
    )


async def page(
    session: AsyncSession,
    *,
    limit: int = 50,
    offset: int = 0,
    user_id: str | None = None,
    action: str | None = None,
) -> tuple[list[AuditRecord], int]:
    """Newest first, with the total count for paging."""
    conditions = []
    if user_id:
        conditions.append(or_(AuditEntry.user_id == user_id, AuditEntry.other_user_id == user_id))
    if action:
        conditions.append(AuditEntry.action == action)
    rows = await session.scalars(
        select(AuditEntry)
        .where(*conditions)
        .order_by(AuditEntry.id.desc())
        .limit(max(1, min(limit, 500)))
        .offset(max(0, offset))
    )
    total = await session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions))
    return [_record(r) for r in rows], int(total or 0)
