"""Delivers the outbox: in order per conversation, with retries, backoff and dead letters.

Private messages (connect links) are the one place where *where* a message goes is
decided here: they are only ever delivered in a one-to-one conversation with their
owner. If the platform cannot open one, the group is told so; the message itself is
never posted there.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.base import (
    Channel,
    ConversationClosed,
    PermanentSendError,
    RateLimited,
    SendError,
)
from channels.envelope import OutboundMessage
from gateway import leases, outbox
from gateway.leases import PENDING
from gateway.logs import correlated
from gateway.metrics import Metrics
from gateway.outbox import DEAD, SENT, OutboxItem
from identity.db import utcnow

log = logging.getLogger(__name__)

SENT_PRIVATELY = "I've sent you a private message."
COULD_NOT_DM = (
    "I couldn't send you a private message. Please open a private chat with me first, "
    "then ask again there."
)


def backoff_seconds(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter between half and the whole step."""
    step = min(cap, base * 2 ** max(attempts - 1, 0))
    return random.uniform(step / 2, step)


@dataclass
class ClaimedSend:
    seq: int
    attempts: int
    inbox_id: str | None
    user_id: str | None
    created_at: datetime
    message: OutboundMessage


def outbox_source(
    sessions: async_sessionmaker[AsyncSession], owner: str, lease_seconds: float
) -> leases.LeasedSource[ClaimedSend]:
    """Claims the oldest open message of each conversation: replies leave in order."""
    return leases.LeasedSource(
        sessions,
        OutboxItem,
        order_key="conversation_key",
        owner=owner,
        lease_seconds=lease_seconds,
        to_item=lambda r: ClaimedSend(
            r.seq, r.attempts, r.inbox_id, r.user_id, r.created_at, r.message()
        ),
    )


class Deliverer:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        channels: dict[str, Channel],
        owner: str,
        max_attempts: int,
        max_age_seconds: float,
        metrics: Metrics,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._owner = owner
        self._max_attempts = max_attempts
        self._max_age = timedelta(seconds=max_age_seconds)
        self._metrics = metrics

    async def __call__(self, item: ClaimedSend) -> None:
        with correlated(item.inbox_id):
            await self._deliver(item)

    async def _deliver(self, item: ClaimedSend) -> None:
        message = item.message
        channel = self._channels.get(message.channel)
        if channel is None:
            await self._dead(item, f"channel {message.channel!r} is not enabled")
            return
        if utcnow() - item.created_at > self._max_age:
            # A days-old answer would confuse more than it helps; keep it as a dead letter.
            await self._dead(item, f"expired: not delivered within {self._max_age}")
            return
        target = message
        private_from_group = bool(message.private_to and message.conversation.is_group)
        if private_from_group:
            assert message.private_to is not None
            try:
                conversation = await channel.open_private(message.account, message.private_to)
            except SendError as exc:
                log.info("opening a private conversation failed: %s", exc)
                conversation = None
            if conversation is None or conversation.is_group:
                await self._dead(item, "no private conversation with the recipient", COULD_NOT_DM)
                return
            target = message.model_copy(
                update={"conversation": conversation, "thread_id": None, "reply_to_id": None}
            )
        try:
            platform_id = await channel.send(target)
        except RateLimited as exc:
            delay = (
                exc.retry_after if exc.retry_after is not None else backoff_seconds(item.attempts)
            )
            self._metrics.rate_limit_wait.labels(message.channel).inc(delay)
            await self._retry(item, f"rate limited: {exc}", delay)
        except ConversationClosed as exc:
            await self._dead(
                item, str(exc), COULD_NOT_DM if private_from_group else None, closed=True
            )
        except PermanentSendError as exc:
            await self._dead(item, str(exc), COULD_NOT_DM if private_from_group else None)
        except Exception as exc:  # transient errors and anything unexpected: retry, bounded
            if item.attempts >= self._max_attempts:
                await self._dead(item, f"gave up after {item.attempts} attempts: {exc}")
            else:
                await self._retry(
                    item, f"{type(exc).__name__}: {exc}", backoff_seconds(item.attempts)
                )
        else:
            await self._sent(item, platform_id, SENT_PRIVATELY if private_from_group else None)

    async def _sent(self, item: ClaimedSend, platform_id: str, notice: str | None) -> None:
        self._metrics.outbound.labels(item.message.channel, "sent").inc()
        log.info("sent %s %s (attempt %d)", item.message.channel, platform_id, item.attempts)
        async with self._sessions.begin() as session:
            if (
                await leases.finish(
                    session,
                    OutboxItem,
                    item.seq,
                    self._owner,
                    status=SENT,
                    sent_at=utcnow(),
                    platform_message_id=platform_id,
                    last_error=None,
                )
                and notice
            ):
                self._notify_group(session, item, notice)

    async def _retry(self, item: ClaimedSend, error: str, delay: float) -> None:
        log.info("send %s will be retried in %.1fs: %s", item.seq, delay, error)
        self._metrics.outbound.labels(item.message.channel, "retry").inc()
        async with self._sessions.begin() as session:
            await leases.finish(
                session,
                OutboxItem,
                item.seq,
                self._owner,
                status=PENDING,
                last_error=error,
                available_at=utcnow() + timedelta(seconds=delay),
            )

    async def _dead(
        self, item: ClaimedSend, error: str, notice: str | None = None, *, closed: bool = False
    ) -> None:
        log.warning("send %s dead-lettered: %s", item.seq, error)
        dead = self._metrics.outbound.labels(item.message.channel, "dead")
        dead.inc()
        async with self._sessions.begin() as session:
            if not await leases.finish(
                session, OutboxItem, item.seq, self._owner, status=DEAD, last_error=error
            ):
                return
            if notice:
                self._notify_group(session, item, notice)
            if closed:
                key = outbox.ordering_key(item.message)
                given_up = await outbox.close_conversation(session, key, error)
                dead.inc(given_up)
                if given_up:
                    log.warning("conversation closed: %d queued sends given up", given_up)

    def _notify_group(self, session: AsyncSession, item: ClaimedSend, text: str) -> None:
        message = item.message
        channel = self._channels[message.channel]
        for chunk in channel.render(text):  # formatted (and escaped) like any reply
            outbox.enqueue(
                session,
                OutboundMessage(
                    channel=message.channel,
                    account=message.account,
                    conversation=message.conversation,
                    text=chunk,
                    thread_id=message.thread_id,
                    reply_to_id=message.reply_to_id,
                ),
                inbox_id=item.inbox_id,
                user_id=item.user_id,
            )
