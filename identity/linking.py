"""Linking identities: one-time link codes, merges, unlinks and forgetting, on a session.

Every function here takes the caller's AsyncSession and never commits, so one
transaction can span packages (identities and users here, history in kernel.memory,
inbox/outbox in gateway); gateway/linking.py runs that transaction.

Concurrency: callers lock the users involved with `lock_users` (one at a time, in id
order, so two operations never wait on each other in a cycle) and then re-check what
they read before the lock. A code is consumed with a conditional UPDATE whose row count
decides the winner of concurrent redemptions. On SQLite every transaction is BEGIN
IMMEDIATE, which serialises all of this anyway.

Codes are short so people can type them: 8 characters from an alphabet without
look-alikes (no 0/O, 1/I/L, U), ~39 bits. They are stored as salted SHA-256 only;
what protects them is the expiry (default 10 minutes), single use, and the limit on
wrong attempts per identity (5 per hour, counted in the database so it holds across
restarts and replicas).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base, UTCDateTime, utcnow
from identity.models import Identity, User

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
CODE_TTL = timedelta(minutes=10)
MAX_WRONG_ATTEMPTS = 5
ATTEMPT_WINDOW = timedelta(hours=1)
# Used and expired codes are kept this long so a late redemption hears "expired" or
# "already used" rather than "wrong code"; then they are pruned.
KEEP_SPENT = timedelta(days=1)
_LOOKUP_CHARS = 4  # 16 bits of an unsalted hash: narrows the candidates, reveals ~nothing


class LinkCode(Base):
    __tablename__ = "link_codes"
    __table_args__ = (
        Index("ix_link_codes_lookup", "lookup"),
        Index("ix_link_codes_identity_id", "identity_id"),
        Index("ix_link_codes_user_id", "user_id"),
        Index("ix_link_codes_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    lookup: Mapped[str] = mapped_column(String(8))
    salt: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    used_by_identity_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(16))  # linked | cancelled


class LinkAttempt(Base):
    """One failed redemption; a rolling window of these limits guessing per identity."""

    __tablename__ = "link_attempts"
    __table_args__ = (Index("ix_link_attempts_identity_at", "identity_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkError(Exception):
    """A change that cannot be made; `reason` lets callers answer without parsing text.

    Reasons: not_found, retired, same_user, last_identity.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- codes ------------------------------------------------------------------------------


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    """ABCD2345 -> ABCD-2345: easier to read out and type."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_code(text: str) -> str | None:
    """What the user typed -> the canonical code, or None when it cannot be one."""
    cleaned = "".join(ch for ch in text.upper() if ch not in " -_\t")
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned


def _lookup(code: str) -> str:
    return hashlib.sha256(f"link-code:{code}".encode()).hexdigest()[:_LOOKUP_CHARS]


def _hash(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()


async def issue_code(
    session: AsyncSession,
    *,
    identity_id: int,
    user_id: str,
    conversation_id: str,
    ttl: timedelta = CODE_TTL,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    """A new code for this identity; its earlier unused codes stop working.

    Locks the user first, like every linking change, so the order of locks is the same.
    """
    now = now or utcnow()
    await lock_users(session, [user_id])
    await session.execute(
        delete(LinkCode).where(
            (LinkCode.expires_at < now - KEEP_SPENT)
            | ((LinkCode.identity_id == identity_id) & LinkCode.used_at.is_(None))
        )
    )
    code = new_code()
    salt = secrets.token_hex(16)
    expires = now + ttl
    session.add(
        LinkCode(
            lookup=_lookup(code),
            salt=salt,
            code_hash=_hash(salt, code),
            user_id=user_id,
            identity_id=identity_id,
            conversation_id=conversation_id,
            created_at=now,
            expires_at=expires,
        )
    )
    await session.flush()
    return code, expires


async def find_code(session: AsyncSession, code: str) -> LinkCode | None:
    """The stored code matching `code` (used, expired or live), compared in constant time."""
    candidates = await session.scalars(
        select(LinkCode)
        .where(LinkCode.lookup == _lookup(code))
        .execution_options(populate_existing=True)
    )
    found = None
    for row in candidates:
        if hmac.compare_digest(row.code_hash, _hash(row.salt, code)):
            found = row
    return found


async def consume_code(
    session: AsyncSession,
    code_id: int,
    *,
    by_identity_id: int | None,
    outcome: str,
    now: datetime | None = None,
) -> bool:
    """Use a code up; exactly one of any number of concurrent callers gets True."""
    now = now or utcnow()
    result = await session.execute(
        update(LinkCode)
        .where(LinkCode.id == code_id, LinkCode.used_at.is_(None), LinkCode.expires_at > now)
        .values(used_at=now, used_by_identity_id=by_identity_id, outcome=outcome)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AttemptBudget:
    used: int
    limit: int
    retry_at: datetime | None  # when the oldest failure leaves the window, if blocked

    @property
    def blocked(self) -> bool:
        return self.used >= self.limit

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


async def attempt_budget(
    session: AsyncSession, identity_id: int, *, now: datetime | None = None
) -> AttemptBudget:
    now = now or utcnow()
    since = now - ATTEMPT_WINDOW
    await session.execute(
        delete(LinkAttempt).where(LinkAttempt.identity_id == identity_id, LinkAttempt.at < since)
    )
    used, oldest = (
        await session.execute(
            select(func.count(), func.min(LinkAttempt.at)).where(
                LinkAttempt.identity_id == identity_id, LinkAttempt.at >= since
            )
        )
    ).one()
    if isinstance(oldest, str):  # SQLite aggregates lose the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    retry_at = oldest + ATTEMPT_WINDOW if oldest is not None else None
    return AttemptBudget(int(used or 0), MAX_WRONG_ATTEMPTS, retry_at)


def record_failure(session: AsyncSession, identity_id: int, *, now: datetime | None = None) -> None:
    session.add(LinkAttempt(identity_id=identity_id, at=now or utcnow()))


# --- users and identities --------------------------------------------------------------


async def find_identity(
    session: AsyncSession, channel: str, account: str, channel_user_id: str
) -> Identity | None:
    return await session.scalar(
        select(Identity)
        .where(
            Identity.channel == channel,
            Identity.account == account,
            Identity.channel_user_id == channel_user_id,
        )
        .execution_options(populate_existing=True)
    )


async def get_identity(session: AsyncSession, identity_id: int) -> Identity | None:
    if not 0 < identity_id < 2**31:  # not a 32-bit id: cannot exist (and Postgres would refuse it)
        return None
    return await session.scalar(
        select(Identity).where(Identity.id == identity_id).execution_options(populate_existing=True)
    )


async def lock_users(session: AsyncSession, user_ids: list[str]) -> dict[str, User]:
    """Lock these users' rows for this transaction, in id order (no lock cycles).

    FOR NO KEY UPDATE on Postgres: linking operations exclude each other, while inserts
    that merely reference a user (a turn writing history, a webhook storing a message)
    are not blocked, so they cannot deadlock with a merge that moves their rows.
    """
    locked: dict[str, User] = {}
    for user_id in sorted(set(user_ids)):
        user = await session.scalar(
            select(User)
            .where(User.id == user_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
        if user is not None:
            locked[user_id] = user
    return locked


async def identities_of(session: AsyncSession, user_id: str) -> list[Identity]:
    return list(
        await session.scalars(
            select(Identity)
            .where(Identity.user_id == user_id)
            .order_by(Identity.id)
            .execution_options(populate_existing=True)
        )
    )


async def snapshot(session: AsyncSession, user: User) -> dict[str, Any]:
    """A user for the audit log: ids and channel names only, nothing personal."""
    return {
        "id": user.id,
        "entity_id": user.entity_id,
        "retired": user.retired_at is not None,
        "merged_into": user.merged_into,
        "identities": [
            {"id": i.id, "channel": i.channel} for i in await identities_of(session, user.id)
        ],
    }


def _require_live(users: dict[str, User], user_id: str) -> User:
    user = users.get(user_id)
    if user is None:
        raise LinkError(f"user {user_id} does not exist", reason="not_found")
    if user.retired_at is not None:
        raise LinkError(f"user {user_id} was merged or forgotten", reason="retired")
    return user


@dataclass(frozen=True)
class Merged:
    target: User
    joining: User
    moved_identities: list[int]
    before: dict[str, Any]
    after: dict[str, Any]


async def merge_users(
    session: AsyncSession, target_id: str, joining_id: str, *, now: datetime | None = None
) -> Merged:
    """The joining user's identities move to the target, which keeps its entity; the
    joining user is retired (its entity is never used again). Locks both users.

    Moving rows of other packages (history, inbox, outbox) is the caller's part of the
    same transaction.
    """
    if target_id == joining_id:
        raise LinkError("these identities already belong to the same user", reason="same_user")
    users = await lock_users(session, [target_id, joining_id])
    target = _require_live(users, target_id)
    joining = _require_live(users, joining_id)
    before = {
        "target": await snapshot(session, target),
        "joining": await snapshot(session, joining),
    }
    moved = [i.id for i in await identities_of(session, joining_id)]
    await session.execute(
        update(Identity)
        .where(Identity.user_id == joining_id)
        .values(user_id=target_id)
        .execution_options(synchronize_session=False)
    )
    # Codes the joining user issued would link into a retired user: they die with it.
    await session.execute(
        delete(LinkCode).where(LinkCode.user_id == joining_id, LinkCode.used_at.is_(None))
    )
    # Users that once joined the joining user now lead straight to the target.
    await session.execute(
        update(User)
        .where(User.merged_into == joining_id)
        .values(merged_into=target_id)
        .execution_options(synchronize_session=False)
    )
    if not target.display_name:
        target.display_name = joining.display_name
    joining.display_name = None
    joining.retired_at = now or utcnow()
    joining.merged_into = target_id
    await session.flush()
    after = {"target": await snapshot(session, target), "joining": await snapshot(session, joining)}
    return Merged(target, joining, moved, before, after)


@dataclass(frozen=True)
class Detached:
    identity: Identity
    old_user: User
    new_user: User
    before: dict[str, Any]
    after: dict[str, Any]


async def detach_identity(session: AsyncSession, identity_id: int) -> Detached:
    """The identity leaves its user and becomes a fresh user with a fresh entity.

    The old user keeps its entity (and so its tool connections) and its history. The
    last identity of a user cannot be detached: that would leave a user nobody can reach.
    """
    identity = await get_identity(session, identity_id)
    if identity is None:
        raise LinkError(f"identity {identity_id} does not exist", reason="not_found")
    for _ in range(3):  # the identity may move while we wait for the lock; follow it
        user_id = identity.user_id
        users = await lock_users(session, [user_id])
        refreshed = await get_identity(session, identity_id)
        if refreshed is None:
            raise LinkError(f"identity {identity_id} does not exist", reason="not_found")
        identity = refreshed
        if identity.user_id == user_id:
            break
    else:  # pragma: no cover - three concurrent moves of one identity
        raise LinkError("the identity is being changed concurrently; try again", reason="busy")
    old_user = _require_live(users, user_id)
    siblings = await identities_of(session, user_id)
    if len(siblings) <= 1:
        raise LinkError(
            "this is the user's only identity; forget the user instead", reason="last_identity"
        )
    before = {"user": await snapshot(session, old_user)}
    new_user = User(display_name=identity.display_name or identity.username)
    session.add(new_user)
    await session.flush()
    identity.user_id = new_user.id
    await session.execute(
        delete(LinkCode).where(LinkCode.identity_id == identity.id, LinkCode.used_at.is_(None))
    )
    await session.flush()
    after = {
        "user": await snapshot(session, old_user),
        "new_user": await snapshot(session, new_user),
    }
    return Detached(identity, old_user, new_user, before, after)


@dataclass(frozen=True)
class Forgotten:
    user: User
    identity_ids: list[int]
    before: dict[str, Any]
    after: dict[str, Any]


async def forget_user(
    session: AsyncSession, user_id: str, *, now: datetime | None = None
) -> Forgotten:
    """Delete the user's identities and link codes and retire the user row.

    The row stays (without a name) so its entity id is never issued again; the caller
    deletes the user's rows of other packages in the same transaction.
    """
    users = await lock_users(session, [user_id])
    user = _require_live(users, user_id)
    before = {"user": await snapshot(session, user)}
    identity_ids = [i.id for i in await identities_of(session, user_id)]
    await session.execute(delete(LinkCode).where(LinkCode.user_id == user_id))
    if identity_ids:
        await session.execute(delete(LinkCode).where(LinkCode.identity_id.in_(identity_ids)))
        await session.execute(delete(LinkAttempt).where(LinkAttempt.identity_id.in_(identity_ids)))
    await session.execute(delete(Identity).where(Identity.user_id == user_id))
    user.display_name = None
    user.retired_at = now or utcnow()
    user.merged_into = None
    await session.flush()
    after = {"user": await snapshot(session, user)}
    return Forgotten(user, identity_ids, before, after)
