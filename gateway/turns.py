"""Runs claimed inbox messages through the agent and commits the outcome atomically.

One transaction closes the inbox row, remembers what was said and writes the replies
to the outbox, so a crash either loses the whole turn (it is claimed again after the
lease expires) or keeps all of it; never a reply without its record or the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.base import Channel
from channels.envelope import Attachment, Envelope, OutboundMessage, Reply
from gateway import leases, outbox
from gateway.inbox import DONE, FAILED, InboxItem
from gateway.logs import correlated
from gateway.metrics import Metrics
from identity.db import utcnow
from identity.service import live_user
from kernel import memory
from kernel.agent import APOLOGY, Agent
from kernel.turn import TurnInput, TurnResult

log = logging.getLogger(__name__)


@dataclass
class ClaimedMessage:
    seq: int
    id: str
    user_id: str
    attempts: int
    envelope: Envelope


def inbox_source(
    sessions: async_sessionmaker[AsyncSession], owner: str, lease_seconds: float
) -> leases.LeasedSource[ClaimedMessage]:
    """Claims the oldest open message of each user: one at a time per user, in order."""
    return leases.LeasedSource(
        sessions,
        InboxItem,
        order_key="user_id",
        owner=owner,
        lease_seconds=lease_seconds,
        to_item=lambda r: ClaimedMessage(r.seq, r.id, r.user_id, r.attempts, r.envelope()),
    )


class TurnRunner:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        agent: Agent,
        channels: dict[str, Channel],
        owner: str,
        max_attempts: int,
        history_messages: int,
        media_max_bytes: int,
        metrics: Metrics,
        on_committed: Callable[[], None],
    ) -> None:
        self._sessions = sessions
        self._agent = agent
        self._channels = channels
        self._owner = owner
        self._max_attempts = max_attempts
        self._history = history_messages
        self._media_max_bytes = media_max_bytes
        self._metrics = metrics
        self._on_committed = on_committed

    async def __call__(self, item: ClaimedMessage) -> None:
        with correlated(item.envelope.id):
            await self._turn(item)

    async def _turn(self, item: ClaimedMessage) -> None:
        envelope = item.envelope
        channel = self._channels.get(envelope.channel)
        if channel is None:
            await self._commit(
                item, TurnResult(error=f"channel {envelope.channel!r} is not enabled")
            )
            return
        if item.attempts > self._max_attempts:
            await self._commit(
                item,
                TurnResult(replies=[Reply(text=APOLOGY)], error="gave up after repeated crashes"),
                channel,
            )
            return
        async with self._sessions() as session:  # one read for who and what was said
            user = await live_user(session, item.user_id)
            if user is not None:
                history = await memory.recent(
                    session, user.id, envelope.conversation_key, self._history
                )
        if user is None:  # forgotten while queued
            await self._commit(item, TurnResult(error="user no longer exists"))
            return

        async def fetch(attachment: Attachment) -> bytes:
            return await channel.fetch_attachment(attachment, self._media_max_bytes)

        started = time.perf_counter()
        await _best_effort(channel.typing(envelope), "typing indicator")
        try:
            result = await self._agent.run(TurnInput(envelope, user, history, fetch))
        except Exception as exc:
            log.exception("turn %s crashed", envelope.id)
            result = TurnResult(replies=[Reply(text=APOLOGY)], error=f"{type(exc).__name__}: {exc}")
        await self._commit(item, result, channel, user.id)
        await _best_effort(channel.done(envelope), "progress indicator removal")
        seconds = time.perf_counter() - started
        self._observe(result, seconds)
        log.info(
            "turn done in %.0f ms (model %.0f ms): %d replies",
            seconds * 1000,
            result.llm_seconds * 1000,
            len(result.replies),
        )

    def _observe(self, result: TurnResult, seconds: float) -> None:
        metrics = self._metrics
        metrics.turn_seconds.labels("failed" if result.error else "ok").observe(seconds)
        if result.llm_seconds:
            metrics.llm_seconds.observe(result.llm_seconds)
        metrics.llm_tokens.labels("prompt").inc(result.prompt_tokens)
        metrics.llm_tokens.labels("completion").inc(result.completion_tokens)
        for name, outcome in result.tool_outcomes:
            metrics.tool_calls.labels(toolkit_of(name), outcome).inc()

    async def _commit(
        self,
        item: ClaimedMessage,
        result: TurnResult,
        channel: Channel | None = None,
        user_id: str | None = None,
    ) -> None:
        """`user_id` is who the sender is *now*: a merge during the turn moves them."""
        envelope = item.envelope
        user_id = user_id or item.user_id
        async with self._sessions.begin() as session:
            still_ours = await leases.finish(
                session,
                InboxItem,
                item.seq,
                self._owner,
                status=FAILED if result.error else DONE,
                last_error=result.error,
                finished_at=utcnow(),
            )
            if not still_ours:
                # Our lease ran out and another worker owns the message now: its turn counts.
                log.warning("turn %s lost its lease; dropping this worker's outcome", envelope.id)
                await session.rollback()
                return
            memory.remember(session, user_id, envelope.conversation_key, result.said)
            if channel is not None:
                for reply in result.replies:
                    for message in render(channel, envelope, reply):
                        outbox.enqueue(session, message, inbox_id=item.id, user_id=user_id)
        self._on_committed()
        if result.error:
            log.warning("turn %s failed: %s", envelope.id, result.error)


def render(channel: Channel, envelope: Envelope, reply: Reply) -> list[OutboundMessage]:
    """A reply as platform messages, addressed where the envelope came from."""
    group = envelope.conversation.is_group
    return [
        OutboundMessage(
            channel=envelope.channel,
            account=envelope.account,
            conversation=envelope.conversation,
            text=chunk,
            thread_id=envelope.thread_id,
            reply_to_id=envelope.native_message_id if group else None,
            private_to=envelope.sender.id if reply.private else None,
        )
        for chunk in channel.render(reply.text)
    ]


def toolkit_of(tool_name: str) -> str:
    """ASANA_GET_TASKS -> asana; our own connect tool counts as "connect"."""
    if tool_name == "connect_account":
        return "connect"
    return tool_name.split("_", 1)[0].lower()


async def _best_effort(awaitable: object, what: str) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:
        log.info("%s failed: %s", what, exc)
