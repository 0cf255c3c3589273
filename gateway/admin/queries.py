"""What the admin API and console show: users with their identities, activity and tools.

Phone numbers (and channel user ids that are phone numbers, as WhatsApp's older ids
are) are masked unless the caller asks for them unmasked.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.inbox import InboxItem
from gateway.outbox import SENT, OutboxItem
from identity import admin as identity_admin
from identity.models import Identity, User
from kernel.memory import HistoryMessage
from kernel.turn import Tools

log = logging.getLogger(__name__)

_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
RECENT = 12


def looks_like_phone(value: str | None) -> bool:
    return (
        bool(value)
        and bool(_PHONE.match(value or ""))
        and sum(c.isdigit() for c in value or "") >= 7
    )


def mask_phone(value: str | None) -> str | None:
    """+447700900123 -> +44•••••••23: enough to tell two numbers apart, not to call one."""
    if not value:
        return value
    digits = [c for c in value if c.isdigit()]
    if len(digits) < 4:
        return "•" * len(digits)
    prefix = ("+" if value.strip().startswith("+") else "") + "".join(digits[:2])
    return prefix + "•" * (len(digits) - 4) + "".join(digits[-2:])


def shown(value: str | None, unmask: bool) -> str | None:
    """A value as displayed: masked when it is a phone number, unless unmasked."""
    return value if unmask or not looks_like_phone(value) else mask_phone(value)


def identity_json(identity: Identity, *, unmask: bool = False) -> dict[str, Any]:
    return {
        "id": identity.id,
        "channel": identity.channel,
        "account": identity.account,
        "channel_user_id": shown(identity.channel_user_id, unmask),
        "display_name": identity.display_name,
        "username": identity.username,
        "phone": identity.phone if unmask else mask_phone(identity.phone),
        "created_at": identity.created_at.isoformat() if identity.created_at else None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _aware(value: Any) -> datetime | None:
    """SQLite aggregates come back as strings without the column's type."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value


@dataclass
class UserRow:
    user: User
    identities: list[Identity]
    received: int = 0
    last_seen: datetime | None = None

    def as_json(self, *, unmask: bool = False) -> dict[str, Any]:
        return {
            "id": self.user.id,
            "entity_id": self.user.entity_id,
            "display_name": self.user.display_name,
            "created_at": _iso(self.user.created_at),
            "identities": [identity_json(i, unmask=unmask) for i in self.identities],
            "messages_received": self.received,
            "last_seen": _iso(self.last_seen),
        }


@dataclass
class Activity:
    at: datetime
    channel: str
    kind: str
    group: bool
    status: str

    def as_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "channel": self.channel,
            "kind": self.kind,
            "conversation": "group" if self.group else "private",
            "status": self.status,
        }


@dataclass
class UserDetail(UserRow):
    merged_from: list[User] = field(default_factory=list)
    received_by_channel: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    history: int = 0
    first_seen: datetime | None = None
    recent: list[Activity] = field(default_factory=list)
    connections: list[dict[str, str]] | None = None  # None: tools not configured
    connections_error: str | None = None

    def as_json(self, *, unmask: bool = False) -> dict[str, Any]:
        data = super().as_json(unmask=unmask)
        data.update(
            {
                "merged_from": [
                    {"id": u.id, "entity_id": u.entity_id, "retired_at": _iso(u.retired_at)}
                    for u in self.merged_from
                ],
                "messages": {
                    "received": self.received,
                    "received_by_channel": self.received_by_channel,
                    "sent": self.sent,
                    "history": self.history,
                },
                "first_seen": _iso(self.first_seen),
                "recent_activity": [a.as_json() for a in self.recent],
                "connections": self.connections,
                "connections_error": self.connections_error,
            }
        )
        return data


async def search(
    session: AsyncSession, query: str | None, *, limit: int, offset: int
) -> tuple[list[UserRow], int]:
    found, total = await identity_admin.search_users(session, query, limit=limit, offset=offset)
    rows = [UserRow(user, identities) for user, identities in found]
    if rows:
        stats = await session.execute(
            select(InboxItem.user_id, func.count(), func.max(InboxItem.received_at))
            .where(InboxItem.user_id.in_([r.user.id for r in rows]))
            .group_by(InboxItem.user_id)
        )
        by_user = {user_id: (count, last) for user_id, count, last in stats}
        for row in rows:
            count, last = by_user.get(row.user.id, (0, None))
            row.received, row.last_seen = int(count), _aware(last)
    return rows, total


async def detail(session: AsyncSession, user_id: str) -> UserDetail | None:
    user = await session.get(User, user_id)
    if user is None or user.retired_at is not None:
        return None
    identities = list(
        await session.scalars(
            select(Identity).where(Identity.user_id == user_id).order_by(Identity.id)
        )
    )
    result = UserDetail(user, identities)
    result.merged_from = await identity_admin.merged_from(session, user_id)
    by_channel = await session.execute(
        select(
            InboxItem.channel,
            func.count(),
            func.min(InboxItem.received_at),
            func.max(InboxItem.received_at),
        )
        .where(InboxItem.user_id == user_id)
        .group_by(InboxItem.channel)
    )
    firsts, lasts = [], []
    for channel, count, first, last in by_channel:
        result.received_by_channel[channel] = int(count)
        firsts.append(_aware(first))
        lasts.append(_aware(last))
    result.received = sum(result.received_by_channel.values())
    result.first_seen = min((f for f in firsts if f), default=user.created_at)
    result.last_seen = max((x for x in lasts if x), default=None)
    result.sent = int(
        await session.scalar(
            select(func.count())
            .select_from(OutboxItem)
            .where(OutboxItem.user_id == user_id, OutboxItem.status == SENT)
        )
        or 0
    )
    result.history = int(
        await session.scalar(
            select(func.count())
            .select_from(HistoryMessage)
            .where(HistoryMessage.user_id == user_id)
        )
        or 0
    )
    recent = await session.scalars(
        select(InboxItem)
        .where(InboxItem.user_id == user_id)
        .order_by(InboxItem.seq.desc())
        .limit(RECENT)
    )
    for item in recent:
        group = bool(json.loads(item.payload).get("conversation", {}).get("is_group"))
        result.recent.append(
            Activity(item.received_at, item.channel, item.kind, group, item.status)
        )
    return result


async def add_connections(result: UserDetail, tools: Tools | None) -> None:
    """The user's active tool connections. Call it with no database session open: on
    SQLite an open transaction holds the write lock while Composio answers."""
    if tools is None:
        return
    try:
        result.connections = [
            {"id": c.id, "toolkit": c.toolkit, "status": c.status}
            for c in await tools.connections(result.user.entity_id)
        ]
    except Exception as exc:
        log.info("connections unavailable for the admin view: %s", exc)
        result.connections = []
        result.connections_error = str(exc) or type(exc).__name__
