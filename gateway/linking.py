"""Cross-channel identity linking: each change is ONE transaction across every package.

A merge touches identities and users (identity/), conversation history (kernel.memory)
and the inbox/outbox (gateway/). The identity package supplies the pieces as functions
on a session; this module runs them together, audits them in the same transaction, and
is what the kernel's /link and /unlink commands call (it implements kernel.commands.Linker)
and what the admin API, console and CLI call.

Merge policy (the README's "Identity linking" section says the same):
- The user who issued the code (or the user an admin links into) keeps its entity_id.
- The joining user's identities, conversation history and inbox/outbox rows move over.
- The joining user's row is retired (merged_into set); its entity_id stays in that row,
  which is unique, so it is never issued to anyone again.
- Tool connections that exist only on the joining user's old entity are listed to the
  user with /connect hints: nothing is silently lost and nothing silently shared.
- Unlink: the identity becomes a fresh user with a fresh entity; history and tool
  connections stay with the remaining user; messages of that identity still waiting in
  the inbox move with it. The last identity of a user cannot be unlinked.
- Forget: identities, history, inbox and outbox rows are deleted; the entity is retired.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.base import Channel
from channels.envelope import Conversation, Envelope, OutboundMessage
from gateway import outbox
from gateway.inbox import InboxItem
from gateway.leases import OPEN_STATUSES
from gateway.outbox import OutboxItem
from identity import audit
from identity import linking as links
from identity.db import utcnow
from identity.linking import LinkError
from identity.models import Identity, User
from kernel import memory
from kernel.memory import HistoryMessage
from kernel.turn import Tools

log = logging.getLogger(__name__)

NOT_KNOWN = "I don't know this chat account yet. Send me a message first, then try again."
NEW_CODE = "Send /link on your other account for a new one."
USED = f"That code has already been used. {NEW_CODE}"
EXPIRED = f"That code has expired. {NEW_CODE}"
INVALID = f"That code is no longer valid. {NEW_CODE}"


@dataclass
class MergeResult:
    user_id: str  # the user that stayed
    entity_id: str
    retired_user_id: str
    retired_entity_id: str
    moved_identities: list[int]
    # Toolkits connected only on the retired entity: to be connected again (None: unknown).
    reconnect: list[str] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "entity_id": self.entity_id,
            "retired_user_id": self.retired_user_id,
            "retired_entity_id": self.retired_entity_id,
            "moved_identities": self.moved_identities,
            "reconnect": self.reconnect,
        }


@dataclass
class UnlinkResult:
    identity_id: int
    channel: str
    user_id: str  # the user that keeps entity, history and connections
    new_user_id: str
    new_entity_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "channel": self.channel,
            "user_id": self.user_id,
            "new_user_id": self.new_user_id,
            "new_entity_id": self.new_entity_id,
        }


@dataclass
class ForgetResult:
    user_id: str
    retired_entity_id: str
    deleted: dict[str, int] = field(default_factory=dict)
    # Connections still active at Composio under the retired entity (revoke them there).
    connections_left: list[str] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "retired_entity_id": self.retired_entity_id,
            "deleted": self.deleted,
            "connections_left": self.connections_left,
        }


class Linking:
    """Implements kernel.commands.Linker, plus the admin operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        tools: Tools | None,
        *,
        code_ttl: timedelta = links.CODE_TTL,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._tools = tools
        self._code_ttl = code_ttl

    @property
    def tools(self) -> Tools | None:
        return self._tools

    # --- in chat ---------------------------------------------------------------------------

    async def issue(self, envelope: Envelope) -> str:
        async with self._sessions.begin() as session:
            me = await _me(session, envelope)
            if me is None:
                return NOT_KNOWN
            code, _ = await links.issue_code(
                session,
                identity_id=me.id,
                user_id=me.user_id,
                conversation_id=envelope.conversation.id,
                ttl=self._code_ttl,
            )
        shown = links.format_code(code)
        minutes = max(1, int(self._code_ttl.total_seconds() // 60))
        return (
            f"Your link code is {shown}\n"
            f"Within {minutes} minutes, send\n/link {shown}\nto me from the other chat account "
            "(WhatsApp, Telegram or Slack) that you want to link to this one. It works once.\n"
            "Don't share it: whoever sends it gets linked to you and can use your connected "
            "tools."
        )

    async def redeem(self, envelope: Envelope, code_text: str) -> str:
        code = links.normalize_code(code_text)
        if code is None:  # not even shaped like a code: a slip, not a guess
            return (
                "Link codes look like ABCD-2345. Send /link alone to get one, then send "
                "/link with the code from your other chat account."
            )
        try:
            merged, text = await self._redeem(envelope, code)
        except LinkError as exc:  # lost a race the checks above could not see; rolled back
            return f"Sorry, I couldn't link these accounts: {exc}. Please try again."
        if merged is None:
            return text
        merged.reconnect = await self._reconnect(merged.retired_entity_id, merged.entity_id)
        return "\n".join(line for line in (text, _reconnect_text(merged.reconnect)) if line)

    async def _redeem(self, envelope: Envelope, code: str) -> tuple[MergeResult | None, str]:
        """One transaction; failures worth counting are committed with their refusal."""
        async with self._sessions.begin() as session:
            me = await _me(session, envelope)
            if me is None:
                return None, NOT_KNOWN
            # Peek (no locks) to learn which users to lock, then lock and re-read.
            peek = await links.find_code(session, code)
            locked = await links.lock_users(
                session, [me.user_id] + ([peek.user_id] if peek else [])
            )
            me = await links.get_identity(session, me.id)
            if me is None or me.user_id not in locked:
                return None, "Your account is being changed right now; please try again."
            budget = await links.attempt_budget(session, me.id)
            if budget.blocked:
                return None, _too_many(budget.retry_at)
            row = await links.find_code(session, code)
            if row is None:
                links.record_failure(session, me.id)
                return None, _wrong(budget.left - 1)
            if row.identity_id == me.id:
                return None, (
                    "That is the code you asked for from this very chat. Send it from your "
                    "other chat account (on WhatsApp, Telegram or Slack) instead."
                )
            now = utcnow()
            if row.used_at is not None:
                links.record_failure(session, me.id)
                return None, USED
            if row.expires_at <= now:
                links.record_failure(session, me.id)
                return None, EXPIRED
            if row.user_id == me.user_id:
                return None, "These chat accounts are already linked. /whoami lists them."
            target = locked.get(row.user_id)
            if target is None or target.retired_at is not None:
                links.record_failure(session, me.id)
                return None, INVALID
            if not await links.consume_code(
                session, row.id, by_identity_id=me.id, outcome="linked", now=now
            ):
                return None, USED
            issuer = await links.get_identity(session, row.identity_id)
            merged = await self._merge(
                session,
                target_id=row.user_id,
                joining_id=me.user_id,
                actor=audit.USER_VIA_CODE,
                via="chat",
                action=audit.LINK,
                extra={"code_issued_by_identity": row.identity_id, "redeemed_by_identity": me.id},
            )
            if issuer is not None:
                notices = self._notify(
                    issuer,
                    row.conversation_id,
                    f"Your {_label(me)} account is now linked to you: I know you there "
                    f"too, with the same tools and memory. If this wasn't you, send "
                    f"/unlink {me.channel} right away.",
                )
                for message in notices:
                    outbox.enqueue(session, message, user_id=row.user_id)
            issuer_label = _label(issuer) if issuer else "other"
        return merged, (
            f"Done: this chat account is now linked with your {issuer_label} account. "
            "Your tools and conversation memory are shared between them now."
        )

    async def cancel(self, envelope: Envelope, code_text: str) -> None:
        """A code posted where others can read it is burnt, so nobody else can use it."""
        code = links.normalize_code(code_text)
        if code is None:
            return
        async with self._sessions.begin() as session:
            row = await links.find_code(session, code)
            if row is not None and row.used_at is None:
                await links.consume_code(session, row.id, by_identity_id=None, outcome="cancelled")

    async def unlink(self, envelope: Envelope, channel: str) -> str:
        try:
            return await self._unlink_channel(envelope, channel.strip().lower())
        except LinkError as exc:  # lost a race with another change; rolled back
            return f"Sorry, I couldn't unlink that: {exc}. Please try again."

    async def _unlink_channel(self, envelope: Envelope, name: str) -> str:
        async with self._sessions.begin() as session:
            me = await _me(session, envelope)
            if me is None:
                return NOT_KNOWN
            mine = await links.identities_of(session, me.user_id)
            channels = sorted({i.channel for i in mine})
            if not name:
                return f"Usage: /unlink <channel>. Your linked channels: {', '.join(channels)}."
            targets = [i for i in mine if i.channel.lower() == name]
            if not targets:
                return (
                    f"No {name} account is linked to you. Your linked channels: "
                    f"{', '.join(channels)}."
                )
            if len(targets) == len(mine):
                return (
                    f"Your {name} account is the only one I know you by, so there is "
                    "nothing to unlink it from."
                )
            for identity in targets:
                await self._unlink(session, identity.id, actor=audit.USER, via="chat")
        return (
            f"Done: your {name} account is no longer linked to you. From now on it is a "
            "separate user with its own memory and tool connections; the tools you "
            "connected stay with your other accounts."
        )

    # --- admin ----------------------------------------------------------------------------

    async def merge_users(
        self, target_id: str, joining_id: str, *, via: str, actor: str = audit.ADMIN
    ) -> MergeResult:
        async with self._sessions.begin() as session:
            merged = await self._merge(
                session,
                target_id=target_id,
                joining_id=joining_id,
                actor=actor,
                via=via,
                action=audit.MERGE,
            )
        merged.reconnect = await self._reconnect(merged.retired_entity_id, merged.entity_id)
        return merged

    async def link_identity(
        self, identity_id: int, user_id: str, *, via: str, actor: str = audit.ADMIN
    ) -> MergeResult:
        """The identity's user (with all its identities) joins `user_id`."""
        async with self._sessions.begin() as session:
            identity = await links.get_identity(session, identity_id)
            if identity is None:
                raise LinkError(f"identity {identity_id} does not exist", reason="not_found")
            joining = identity.user_id
            await links.lock_users(session, [user_id, joining])
            identity = await links.get_identity(session, identity_id)
            if identity is None or identity.user_id != joining:
                raise LinkError("the identity changed while linking; try again", reason="conflict")
            merged = await self._merge(
                session,
                target_id=user_id,
                joining_id=joining,
                actor=actor,
                via=via,
                action=audit.LINK,
                extra={"identity_id": identity_id},
            )
        merged.reconnect = await self._reconnect(merged.retired_entity_id, merged.entity_id)
        return merged

    async def unlink_identity(
        self, identity_id: int, *, via: str, actor: str = audit.ADMIN
    ) -> UnlinkResult:
        async with self._sessions.begin() as session:
            return await self._unlink(session, identity_id, actor=actor, via=via)

    async def forget(self, user_id: str, *, via: str, actor: str = audit.ADMIN) -> ForgetResult:
        async with self._sessions.begin() as session:
            ids = await _all_ids(session, user_id)
            forgotten = await links.forget_user(session, user_id)
            deleted = {"identities": len(forgotten.identity_ids)}
            for name, model in (
                ("history", HistoryMessage),
                ("inbox", InboxItem),
                ("outbox", OutboxItem),
            ):
                result = await session.execute(delete(model).where(model.user_id.in_(ids)))
                deleted[name] = int(result.rowcount or 0)  # type: ignore[attr-defined]
            audit.record(
                session,
                actor=actor,
                via=via,
                action=audit.FORGET,
                user_id=user_id,
                before=forgotten.before,
                after={**forgotten.after, "deleted": deleted},
            )
            entity = forgotten.user.entity_id
        result = ForgetResult(user_id, entity, deleted)
        if self._tools is not None:
            try:
                result.connections_left = sorted(
                    {c.toolkit for c in await self._tools.connections(entity)}
                )
            except Exception as exc:
                log.warning("connections of a forgotten entity unavailable: %s", exc)
        return result

    async def export(self, user_id: str, *, via: str, actor: str = audit.ADMIN) -> dict[str, Any]:
        """Everything stored about a user, as JSON-ready data (the export is audited)."""
        async with self._sessions.begin() as session:
            user = await session.get(User, user_id)
            if user is None or user.retired_at is not None:
                raise LinkError(f"user {user_id} does not exist", reason="not_found")
            ids = await _all_ids(session, user_id)
            data = await _export(session, user, ids)
            audit.record(
                session,
                actor=actor,
                via=via,
                action=audit.EXPORT,
                user_id=user_id,
                after={"counts": {k: len(v) for k, v in data.items() if isinstance(v, list)}},
            )
        return data

    # --- the shared parts of one transaction ---------------------------------------------

    async def _merge(
        self,
        session: AsyncSession,
        *,
        target_id: str,
        joining_id: str,
        actor: str,
        via: str,
        action: str,
        extra: dict[str, Any] | None = None,
    ) -> MergeResult:
        merged = await links.merge_users(session, target_id, joining_id)
        moved = await _move_rows(session, joining_id, target_id)
        audit.record(
            session,
            actor=actor,
            via=via,
            action=action,
            user_id=target_id,
            other_user_id=joining_id,
            before=merged.before,
            after={**merged.after, "moved": moved, **(extra or {})},
        )
        return MergeResult(
            user_id=target_id,
            entity_id=merged.target.entity_id,
            retired_user_id=joining_id,
            retired_entity_id=merged.joining.entity_id,
            moved_identities=merged.moved_identities,
        )

    async def _unlink(
        self, session: AsyncSession, identity_id: int, *, actor: str, via: str
    ) -> UnlinkResult:
        detached = await links.detach_identity(session, identity_id)
        identity = detached.identity
        moved = await _move_waiting_messages(
            session, identity, detached.old_user.id, detached.new_user.id
        )
        audit.record(
            session,
            actor=actor,
            via=via,
            action=audit.UNLINK,
            user_id=detached.old_user.id,
            other_user_id=detached.new_user.id,
            before=detached.before,
            after={**detached.after, "identity_id": identity.id, "moved_inbox": moved},
        )
        return UnlinkResult(
            identity_id=identity.id,
            channel=identity.channel,
            user_id=detached.old_user.id,
            new_user_id=detached.new_user.id,
            new_entity_id=detached.new_user.entity_id,
        )

    def _notify(
        self, identity: Identity, conversation_id: str, text: str
    ) -> tuple[OutboundMessage, ...]:
        """Messages to an identity's private chat (where it asked for the code)."""
        channel = self._channels.get(identity.channel)
        if channel is None:
            return ()
        return tuple(
            OutboundMessage(
                channel=identity.channel,
                account=identity.account,
                conversation=Conversation(id=conversation_id, is_group=False),
                text=chunk,
                private_to=identity.channel_user_id,
            )
            for chunk in channel.render(text)
        )

    async def _reconnect(self, old_entity: str, new_entity: str) -> list[str] | None:
        """Toolkits connected on the retired entity but not on the one that stays."""
        if self._tools is None:
            return []
        try:
            old = {c.toolkit for c in await self._tools.connections(old_entity)}
            if not old:
                return []
            kept = {c.toolkit for c in await self._tools.connections(new_entity)}
        except Exception as exc:
            log.warning("could not compare tool connections after a merge: %s", exc)
            return None
        return sorted(old - kept)


# --- helpers -----------------------------------------------------------------------------


async def _me(session: AsyncSession, envelope: Envelope) -> Identity | None:
    return await links.find_identity(
        session, envelope.channel, envelope.account, envelope.sender.id
    )


def _label(identity: Identity | None) -> str:
    if identity is None:
        return "other"
    name = identity.username or identity.display_name
    return f"{identity.channel} ({name})" if name else identity.channel


def _wrong(left: int) -> str:
    if left <= 0:
        return (
            "That code is not valid, and that was the last try for now. You can try again "
            "in an hour."
        )
    tries = "try" if left == 1 else "tries"
    return (
        f"That code is not valid. Check it and try again ({left} {tries} left this hour), "
        "or send /link on your other account for a new one."
    )


def _too_many(retry_at: datetime | None) -> str:
    wait = ""
    if retry_at is not None:
        minutes = max(1, int((retry_at - utcnow()).total_seconds() // 60) + 1)
        wait = f" Try again in about {minutes} minutes."
    return f"Too many wrong link codes from this account, so I am not checking codes for now.{wait}"


def _reconnect_text(reconnect: list[str] | None) -> str:
    if reconnect is None:
        return (
            "I couldn't check whether accounts you connected from here need connecting "
            "again; /connections shows what you have now."
        )
    if not reconnect:
        return ""
    hints = ", ".join(f"/connect {t}" for t in reconnect)
    return (
        f"Accounts you had connected from this chat ({', '.join(reconnect)}) belonged to "
        f"your old profile and were not carried over. To use them here, connect them "
        f"again: {hints}"
    )


async def _all_ids(session: AsyncSession, user_id: str) -> list[str]:
    """The user and every retired user that was merged into it (their rows moved here,
    but a turn that was in flight during the merge may still have written under them)."""
    merged = await session.scalars(select(User.id).where(User.merged_into == user_id))
    return [user_id, *merged]


async def _move_rows(session: AsyncSession, from_user: str, to_user: str) -> dict[str, int]:
    history = await session.scalar(
        select(func.count()).select_from(HistoryMessage).where(HistoryMessage.user_id == from_user)
    )
    await memory.move_history(session, from_user, to_user)
    counts: dict[str, int] = {"history": int(history or 0)}
    for name, model in (("inbox", InboxItem), ("outbox", OutboxItem)):
        result = await session.execute(
            update(model)
            .where(model.user_id == from_user)
            .values(user_id=to_user)
            .execution_options(synchronize_session=False)
        )
        counts[name] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return counts


async def _move_waiting_messages(
    session: AsyncSession, identity: Identity, old_user: str, new_user: str
) -> int:
    """Unprocessed messages the unlinked identity sent go with it, so they never run
    under the old user's entity."""
    rows = await session.scalars(
        select(InboxItem).where(
            InboxItem.user_id == old_user,
            InboxItem.channel == identity.channel,
            InboxItem.account == identity.account,
            InboxItem.status.in_(OPEN_STATUSES),
        )
    )
    moved = 0
    for row in rows:
        if row.envelope().sender.id == identity.channel_user_id:
            row.user_id = new_user
            moved += 1
    await session.flush()
    return moved


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def _export(session: AsyncSession, user: User, ids: list[str]) -> dict[str, Any]:
    identities = await links.identities_of(session, user.id)
    history = await session.scalars(
        select(HistoryMessage).where(HistoryMessage.user_id.in_(ids)).order_by(HistoryMessage.id)
    )
    inbox = await session.scalars(
        select(InboxItem).where(InboxItem.user_id.in_(ids)).order_by(InboxItem.seq)
    )
    sent = await session.scalars(
        select(OutboxItem).where(OutboxItem.user_id.in_(ids)).order_by(OutboxItem.seq)
    )
    entries, _ = await audit.page(session, user_id=user.id, limit=500)
    return {
        "exported_at": utcnow().isoformat(),
        "user": {
            "id": user.id,
            "entity_id": user.entity_id,
            "display_name": user.display_name,
            "created_at": _iso(user.created_at),
            "merged_from": ids[1:],
        },
        "identities": [
            {
                "id": i.id,
                "channel": i.channel,
                "account": i.account,
                "channel_user_id": i.channel_user_id,
                "display_name": i.display_name,
                "username": i.username,
                "phone": i.phone,
                "created_at": _iso(i.created_at),
            }
            for i in identities
        ],
        "history": [
            {
                "conversation": m.conversation_key,
                "role": m.role,
                "content": m.content,
                "at": _iso(m.created_at),
            }
            for m in history
        ],
        "messages_received": [
            {
                "id": m.id,
                "channel": m.channel,
                "conversation": m.conversation_key,
                "kind": m.kind,
                "status": m.status,
                "received_at": _iso(m.received_at),
                "text": m.envelope().text,
            }
            for m in inbox
        ],
        "messages_sent": [
            {
                "channel": m.channel,
                "status": m.status,
                "created_at": _iso(m.created_at),
                "sent_at": _iso(m.sent_at),
                "text": m.message().text,
            }
            for m in sent
        ],
        "audit": [e.as_json() for e in entries],
    }
