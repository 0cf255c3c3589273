"""Read-side queries for administration: search users, resolve what an admin typed."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.linking import get_identity
from identity.models import Identity, User


async def search_users(
    session: AsyncSession, query: str | None, *, limit: int = 25, offset: int = 0
) -> tuple[list[tuple[User, list[Identity]]], int]:
    """Live users matching a name, username, channel user id or user/entity id; newest
    first, with the total number of matches for paging."""
    conditions = [User.retired_at.is_(None)]
    query = (query or "").strip()
    if query:
        like = f"%{_escape(query.lower())}%"
        matching = select(Identity.user_id).where(
            or_(
                func.lower(Identity.display_name).like(like, escape="\\"),
                func.lower(Identity.username).like(like, escape="\\"),
                func.lower(Identity.channel_user_id).like(like, escape="\\"),
            )
        )
        conditions.append(
            or_(
                func.lower(User.display_name).like(like, escape="\\"),
                User.id == query,
                User.entity_id == query,
                User.id.in_(matching),
            )
        )
    total = await session.scalar(select(func.count()).select_from(User).where(*conditions))
    users = list(
        await session.scalars(
            select(User)
            .where(*conditions)
            .order_by(User.created_at.desc(), User.id)
            .limit(max(1, min(limit, 200)))
            .offset(max(0, offset))
        )
    )
    identities: dict[str, list[Identity]] = {u.id: [] for u in users}
    if users:
        rows = await session.scalars(
            select(Identity).where(Identity.user_id.in_(list(identities))).order_by(Identity.id)
        )
        for identity in rows:
            identities[identity.user_id].append(identity)
    return [(u, identities[u.id]) for u in users], int(total or 0)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def find_identity_ref(session: AsyncSession, ref: str) -> Identity | None:
    """An identity from what an admin typed: its number, `channel:user id` (when only
    one account of that channel knows the id) or `channel:account:user id`."""
    ref = ref.strip()
    if ref.isdigit():
        return await get_identity(session, int(ref))
    parts = ref.split(":")
    if len(parts) < 2:
        return None
    if len(parts) >= 3:
        channel, account, user = parts[0], parts[1], ":".join(parts[2:])
        exact = await session.scalar(
            select(Identity).where(
                Identity.channel == channel,
                Identity.account == account,
                Identity.channel_user_id == user,
            )
        )
        if exact is not None:
            return exact
    channel, user = parts[0], ":".join(parts[1:])
    rows = list(
        await session.scalars(
            select(Identity).where(Identity.channel == channel, Identity.channel_user_id == user)
        )
    )
    return rows[0] if len(rows) == 1 else None


async def find_user_ref(session: AsyncSession, ref: str) -> User | None:
    """A live user from a user id or anything `find_identity_ref` understands."""
    ref = ref.strip()
    if not ref:
        return None
    user = await session.get(User, ref)
    if user is None:
        identity = await find_identity_ref(session, ref)
        user = await session.get(User, identity.user_id) if identity else None
    return user if user is not None and user.retired_at is None else None


async def merged_from(session: AsyncSession, user_id: str) -> list[User]:
    return list(
        await session.scalars(
            select(User).where(User.merged_into == user_id).order_by(User.retired_at)
        )
    )
