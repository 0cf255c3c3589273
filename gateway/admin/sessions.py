"""Admin console sessions: a signed cookie naming a row in the database.

The cookie is signed with a key derived from ADMIN_TOKEN (itsdangerous), so rotating
the token logs every console out, and tampered cookies are refused before any query.
The row makes logout real (a copied cookie stops working once its row is gone), works
across replicas, and holds the session's CSRF token. Only a hash of the session secret is
stored, so reading the table does not let anyone log in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Index, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from identity.db import Base, UTCDateTime, utcnow

COOKIE = "gw_admin"
LOGIN_COOKIE = "gw_admin_login"  # double-submit CSRF token of the login form
SESSION_TTL = timedelta(hours=8)


class AdminSession(Base):
    __tablename__ = "admin_sessions"
    __table_args__ = (Index("ix_admin_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the secret
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionStore:
    def __init__(
        self, admin_token: str, sessions: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        """`sessions` is called per use: the database opens when the gateway starts."""
        key = hmac.new(admin_token.encode(), b"gateway-admin-session-v1", "sha256").hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt="admin-session")
        self._sessions = sessions

    async def create(self) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        row = AdminSession(
            id=_digest(secret),
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_TTL,
        )
        async with self._sessions().begin() as db:
            await db.execute(delete(AdminSession).where(AdminSession.expires_at < now))
            db.add(row)
        return self._serializer.dumps(secret), Session(row.id, row.csrf)

    def _secret(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            secret = self._serializer.loads(cookie, max_age=int(SESSION_TTL.total_seconds()))
        except BadSignature:  # also covers expired signatures
            return None
        return secret if isinstance(secret, str) else None

    async def load(self, cookie: str | None) -> Session | None:
        secret = self._secret(cookie)
        if secret is None:
            return None
        async with self._sessions()() as db:
            row = await db.scalar(
                select(AdminSession).where(
                    AdminSession.id == _digest(secret), AdminSession.expires_at > utcnow()
                )
            )
        return Session(row.id, row.csrf) if row else None

    async def destroy(self, session_id: str) -> None:
        async with self._sessions().begin() as db:
            await db.execute(delete(AdminSession).where(AdminSession.id == session_id))
