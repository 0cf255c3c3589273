"""Resolve a channel identity to its unified user, creating both on first sight."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from identity.models import Identity, User


@dataclass(frozen=True)
class Profile:
    display_name: str | None = None
    username: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class ResolvedUser:
    id: str
    entity_id: str
    display_name: str | None


@dataclass(frozen=True)
class IdentityInfo:
    channel: str
    account: str
    channel_user_id: str
    display_name: str | None
    username: str | None
    phone: str | None
    id: int = 0


def identity_info(identity: Identity) -> IdentityInfo:
    return IdentityInfo(
        channel=identity.channel,
        account=identity.account,
        channel_user_id=identity.channel_user_id,
        display_name=identity.display_name,
        username=identity.username,
        phone=identity.phone,
        id=identity.id,
    )


# Merges chain (A joined B, then B joined C); a chain longer than this is a bug, not data.
MAX_MERGE_HOPS = 16


def _resolved(user: User) -> ResolvedUser:
    return ResolvedUser(id=user.id, entity_id=user.entity_id, display_name=user.display_name)


class IdentityService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def resolve(
        self, channel: str, account: str, channel_user_id: str, profile: Profile | None = None
    ) -> ResolvedUser:
        """The user behind this identity; race-safe on first sight (one user per identity)."""
        async with self._sessions.begin() as session:
            return await resolve_in(session, channel, account, channel_user_id, profile)

    async def get(self, user_id: str) -> ResolvedUser | None:
        """The live user behind `user_id`: a merged user leads to the user it joined,
        a forgotten one to nobody (work queued for it is dropped)."""
        async with self._sessions() as session:
            return await live_user(session, user_id)

    async def identities(self, user_id: str) -> list[IdentityInfo]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Identity).where(Identity.user_id == user_id).order_by(Identity.id)
            )
            return [identity_info(i) for i in rows]

    async def list_users(
        self, *, query: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[tuple[ResolvedUser, list[IdentityInfo]]]:
        async with self._sessions() as session:
            stmt = (
                select(User)
                .where(User.retired_at.is_(None))
                .order_by(User.created_at, User.id)
                .limit(limit)
                .offset(offset)
            )
            if query:
                like = f"%{query.lower()}%"
                matching = select(Identity.user_id).where(
                    or_(
                        func.lower(Identity.display_name).like(like),
                        func.lower(Identity.username).like(like),
                        func.lower(Identity.channel_user_id).like(like),
                    )
                )
                stmt = stmt.where(
                    or_(func.lower(User.display_name).like(like), User.id.in_(matching))
                )
            users = list(await session.scalars(stmt))
        return [(_resolved(u), await self.identities(u.id)) for u in users]

    async def count_users(self) -> int:
        async with self._sessions() as session:
            return int(
                await session.scalar(
                    select(func.count()).select_from(User).where(User.retired_at.is_(None))
                )
                or 0
            )


async def resolve_in(
    session: AsyncSession,
    channel: str,
    account: str,
    channel_user_id: str,
    profile: Profile | None = None,
) -> ResolvedUser:
    """`IdentityService.resolve` inside the caller's transaction (the webhook path stores
    the message in the same one). A concurrent first sight loses the unique constraint
    in a savepoint and takes the winner's user."""
    profile = profile or Profile()
    found = await _find(session, channel, account, channel_user_id, profile)
    if found is not None:
        return found
    try:
        async with session.begin_nested():
            user = User(display_name=profile.display_name or profile.username)
            session.add(user)
            await session.flush()
            session.add(
                Identity(
                    channel=channel,
                    account=account,
                    channel_user_id=channel_user_id,
                    user_id=user.id,
                    display_name=profile.display_name,
                    username=profile.username,
                    phone=profile.phone,
                )
            )
        return _resolved(user)
    except IntegrityError:
        found = await _find(session, channel, account, channel_user_id, profile)
        if found is None:  # pragma: no cover - the unique row cannot vanish in between
            raise
        return found


async def _find(
    session: AsyncSession, channel: str, account: str, channel_user_id: str, profile: Profile
) -> ResolvedUser | None:
    row = (
        await session.execute(
            select(Identity, User)
            .join(User, User.id == Identity.user_id)
            .where(
                Identity.channel == channel,
                Identity.account == account,
                Identity.channel_user_id == channel_user_id,
            )
        )
    ).first()
    if row is None:
        return None
    identity, user = row
    _refresh_profile(identity, profile)
    return _resolved(user)


async def live_user(session: AsyncSession, user_id: str) -> ResolvedUser | None:
    """Follow `merged_into` from a (possibly retired) user id to the user that is live now."""
    for _ in range(MAX_MERGE_HOPS):
        user = await session.get(User, user_id)
        if user is None:
            return None
        if user.retired_at is None:
            return _resolved(user)
        if not user.merged_into:
            return None  # forgotten
        user_id = user.merged_into
    return None


def _refresh_profile(identity: Identity, profile: Profile) -> None:
    """Keep the latest display name / username / phone the platform gave us."""
    for field in ("display_name", "username", "phone"):
        value = getattr(profile, field)
        if value and getattr(identity, field) != value:
            setattr(identity, field, value)
