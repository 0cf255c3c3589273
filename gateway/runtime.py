"""The running gateway: storage, identity, the kernel pool and the outbox, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from channels.base import Channel
from channels.envelope import Envelope, Kind
from gateway import inbox, leases, migrate, outbox
from gateway.channel_state import DatabaseChannelState
from gateway.delivery import Deliverer, outbox_source
from gateway.inbox import InboxItem
from gateway.leases import worker_id
from gateway.llm_health import LLMHealth
from gateway.logs import correlated
from gateway.metrics import Metrics
from gateway.outbox import OutboxItem
from gateway.process_lock import ProcessLock, sqlite_path
from gateway.registry import build_tools
from gateway.settings import Settings
from gateway.turns import TurnRunner, inbox_source
from gateway.wakeup import PostgresListener, notify
from identity.db import create_engine, session_factory, utcnow
from identity.service import IdentityService, Profile, resolve_in
from kernel.agent import Agent, AgentConfig
from kernel.commands import Commands
from kernel.llm import LLM, LLMConfig, warm_up
from kernel.pool import Pool
from kernel.turn import Tools

log = logging.getLogger(__name__)

ANSWERED_KINDS = frozenset({Kind.MESSAGE, Kind.BUTTON, Kind.UNSUPPORTED})


@dataclass
class Accepted:
    stored: int = 0
    turns: int = 0  # stored rows that start a turn
    duplicates: int = 0
    statuses: int = 0


class Gateway:
    """Owns every long-lived resource; `start()` and `stop()` bracket its life."""

    def __init__(self, settings: Settings, channels: list[Channel]) -> None:
        self.settings = settings
        self.channels: dict[str, Channel] = {c.name: c for c in channels}
        self.owner = worker_id()
        self.metrics = Metrics()
        self.engine: AsyncEngine | None = None
        self.sessions: async_sessionmaker[AsyncSession]
        self.identity: IdentityService
        self.tools: Tools | None = None
        self.agent: Agent
        self.llm_health = LLMHealth(None)
        self.turns: Pool[object]
        self.sends: Pool[object]
        self._progress = asyncio.Event()
        self._started_channels: list[Channel] = []
        self._app: Starlette | None = None
        self._lock: ProcessLock | None = None
        self._listener: PostgresListener | None = None
        self._processing: asyncio.Task[None] | None = None

    @property
    def app(self) -> Starlette:
        """The Starlette app for this gateway, when its life is managed by the caller."""
        if self._app is None:
            from gateway.app import create_app

            self._app = create_app(self)
        return self._app

    # --- life cycle ---------------------------------------------------------------
    async def start(self, *, process: bool = True) -> None:
        """Open the database (migrating it), then start processing and the channels."""
        settings = self.settings
        path = sqlite_path(settings.database_url) if settings.is_sqlite else None
        if path is not None and process:
            self._lock = ProcessLock(path)
            self._lock.acquire()
        self.engine = create_engine(settings.database_url, pool_size=settings.pool_concurrency)
        await migrate.upgrade(self.engine)
        self.sessions = session_factory(self.engine)
        if self._lock is not None:
            # We hold the SQLite file alone: claims left over are from a process that died,
            # so take them back now instead of waiting for their leases to run out.
            async with self.sessions.begin() as session:
                for model in (InboxItem, OutboxItem):
                    await leases.release_all(session, model, None)
        self.identity = IdentityService(self.sessions)
        self.tools = build_tools(settings)
        self.agent = self._build_agent()
        self.llm_health = LLMHealth(self.agent.llm)
        lease = settings.lease_seconds
        runner = TurnRunner(
            sessions=self.sessions,
            agent=self.agent,
            channels=self.channels,
            owner=self.owner,
            max_attempts=settings.max_attempts,
            history_messages=settings.history_messages,
            media_max_bytes=settings.media_max_bytes,
            metrics=self.metrics,
            on_committed=lambda: self.sends.wake(),
        )
        deliverer = Deliverer(
            sessions=self.sessions,
            channels=self.channels,
            owner=self.owner,
            max_attempts=settings.max_attempts,
            max_age_seconds=settings.outbox_max_age_seconds,
            metrics=self.metrics,
        )
        self.turns = Pool(
            "turns",
            inbox_source(self.sessions, self.owner, lease),
            runner,
            concurrency=settings.pool_concurrency,
            poll_interval=settings.poll_interval_seconds,
            lease_seconds=lease,
            on_progress=self._progress.set,
        )
        self.sends = Pool(
            "sends",
            outbox_source(self.sessions, self.owner, lease),
            deliverer,
            concurrency=max(4, settings.pool_concurrency // 2),
            poll_interval=settings.poll_interval_seconds,
            lease_seconds=lease,
            on_progress=self._progress.set,
        )
        if process:
            self._processing = asyncio.create_task(self._start_processing(), name="warm-up")
        for channel in self.channels.values():
            await channel.start(self.accept, DatabaseChannelState(self.sessions, channel.name))
            self._started_channels.append(channel)

    async def stop(self) -> None:
        """Finish (or release) in-flight turns, send their replies, then close everything.

        Channels close last: draining turns still need their clients to send replies.
        """
        timeout = self.settings.shutdown_timeout_seconds
        if self.engine is not None:
            if self._processing is not None:
                await self._processing  # pools started (or never will): safe to stop them
                self._processing = None
            if self._listener is not None:
                await self._listener.stop()
                self._listener = None
            await self.llm_health.stop()
            with contextlib.suppress(Exception):
                await self.turns.stop(timeout)
            with contextlib.suppress(Exception):  # replies of turns finished just now go out
                await self.sends.stop(timeout, drain=True)
        for channel in reversed(self._started_channels):
            try:
                await channel.stop()
            except Exception:
                log.exception("stopping channel %s failed", channel.name)
        self._started_channels.clear()
        if self.engine is None:
            return
        aclose = getattr(self.tools, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.engine.dispose()
        self.engine = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _start_processing(self) -> None:
        """Warm the heavy clients off the event loop, then start the pools.

        Webhooks are accepted (stored) meanwhile: the ack path never waits for these imports.
        """
        warming = []
        if self.agent.llm is not None:
            warming.append(asyncio.to_thread(warm_up))
        if self.tools is not None:
            warming.append(self.tools.schemas())  # imports composio in a worker thread
        for outcome in await asyncio.gather(*warming, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("warm-up: %s (the first turn will try again)", outcome)
        self.sends.start()
        self.turns.start()
        self.llm_health.start()
        if not self.settings.is_sqlite:
            self._listener = PostgresListener(self.settings.database_url, self._wake_all)
            await self._listener.start()

    def _wake_all(self) -> None:
        self.turns.wake()
        self.sends.wake()

    # --- the webhook path -----------------------------------------------------------
    async def accept(self, envelopes: list[Envelope]) -> Accepted:
        """Store envelopes durably (deduplicated); returns only after the commit.

        One transaction for the whole batch: who sent it (creating the user on first
        sight), the inbox rows and delivery statuses. It is the ack path's only cost
        that grows with load, so it does as little as it can.
        """
        accepted = Accepted()
        async with self.sessions.begin() as session:
            for envelope in envelopes:
                with correlated(envelope.id):
                    await self._store(session, envelope, accepted)
            if accepted.turns:
                await notify(session)
        if accepted.turns:
            self.turns.wake()
        return accepted

    async def _store(self, session: AsyncSession, envelope: Envelope, accepted: Accepted) -> None:
        self.metrics.inbound.labels(envelope.channel, str(envelope.kind)).inc()
        if envelope.kind == Kind.STATUS:
            accepted.statuses += 1
            if envelope.native_message_id and envelope.status:
                await outbox.record_delivery(
                    session,
                    envelope.channel,
                    envelope.native_message_id,
                    envelope.status,
                    envelope.status_error,
                )
            return
        sender = envelope.sender
        user = await resolve_in(
            session,
            envelope.channel,
            envelope.account,
            sender.id,
            Profile(sender.display_name, sender.username, sender.phone),
        )
        needs_turn = self._needs_turn(envelope)
        if await inbox.insert(session, envelope, user.id, needs_turn=needs_turn):
            accepted.stored += 1
            accepted.turns += needs_turn
            log.info(
                "stored %s %s%s",
                envelope.channel,
                envelope.kind,
                "" if needs_turn else " (no turn)",
            )
        else:
            accepted.duplicates += 1
            self.metrics.duplicates.labels(envelope.channel).inc()
            log.info("duplicate %s %s dropped", envelope.channel, envelope.kind)

    def _needs_turn(self, envelope: Envelope) -> bool:
        if envelope.kind not in ANSWERED_KINDS or envelope.sender.is_bot:
            return False
        if not envelope.conversation.is_group:
            return True
        policy = self.settings.group_reply_policy
        return policy == "always" or (policy == "mention" and envelope.mentioned)

    # --- observation ------------------------------------------------------------------
    async def observe_inbox(self) -> None:
        """Refresh the inbox gauges (called when /metrics is scraped)."""
        async with self.sessions() as session:
            depth, oldest = await inbox.depth_and_oldest(session)
        self.metrics.inbox_depth.set(depth)
        self.metrics.inbox_oldest.set(
            (utcnow() - oldest).total_seconds() if oldest is not None else 0
        )

    async def pending_work(self) -> int:
        async with self.sessions() as session:
            return await inbox.open_count(session) + await outbox.open_count(session)

    async def wait_idle(self, within: float = 30.0) -> None:
        """Return once everything stored has been processed and sent (or dead-lettered)."""
        async with asyncio.timeout(within):
            while True:
                self._progress.clear()
                if await self.pending_work() == 0:
                    return
                # Woken by any finished turn or send; the short bound covers work that is
                # waiting for its retry time, which completes no task until it is due.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 0.25)

    # --- composition --------------------------------------------------------------------
    def _build_agent(self) -> Agent:
        settings = self.settings
        llm = None
        if settings.llm_configured:
            llm = LLM(
                LLMConfig(
                    model=settings.llm_model,
                    api_base=settings.llm_api_base,
                    api_key=settings.llm_api_key.get_secret_value(),
                    timeout=settings.llm_timeout_seconds,
                    retries=settings.llm_retries,
                    transcription_model=settings.transcription_model,
                )
            )
        toolkits = settings.composio_toolkits if self.tools is not None else []
        from gateway.linking import Linking

        self.linking = Linking(self.sessions, self.channels, self.tools)
        commands = Commands(self.identity, self.sessions, self.tools, toolkits, self.linking)
        return Agent(
            AgentConfig(
                system_prompt=settings.system_prompt,
                max_steps=settings.llm_max_steps,
                history_messages=settings.history_messages,
                vision=settings.llm_vision,
                toolkits=toolkits,
            ),
            llm,
            self.tools,
            commands,
        )
