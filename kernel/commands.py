"""Built-in chat commands: they work without a model and never reach it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.envelope import Envelope, Reply
from identity.service import IdentityService
from kernel import memory
from kernel.turn import Tools, TurnInput, TurnResult, tool_error_text

HELP = """Here is what I understand:
/help - this message
/whoami - which of your chat accounts I know as you
/link - link another chat account to you (WhatsApp, Telegram, Slack); /link CODE redeems a code
/unlink <channel> - unlink that chat account again
/connect <toolkit> - get a private link to connect an account (e.g. /connect asana)
/connections - the accounts you have connected
/reset - forget this conversation"""

Handler = Callable[[TurnInput, str], Awaitable[TurnResult]]

LINK_UNAVAILABLE = "Linking chat accounts is not available on this assistant."
LINK_IN_GROUP = (
    "For your safety I only handle /link in a private chat. Message me directly and send "
    "/link there. No code was created."
)
CODE_IN_GROUP = (
    "Link codes only work in a private chat with me. This one was posted where others can "
    "see it, so if it was valid I have cancelled it. Send /link in a private chat with me "
    "to get a new one."
)
UNLINK_IN_GROUP = "Please send /unlink in a private chat with me."


class Linker(Protocol):
    """Cross-channel identity linking (implemented by gateway/linking.py).

    Each call is one database transaction across users, identities, history and the
    inbox/outbox; each returns the text to answer with.
    """

    async def issue(self, envelope: Envelope) -> str: ...

    async def redeem(self, envelope: Envelope, code: str) -> str: ...

    async def cancel(self, envelope: Envelope, code: str) -> None: ...

    async def unlink(self, envelope: Envelope, channel: str) -> str: ...


def parse_command(text: str) -> tuple[str, str] | None:
    """'/connect@bot asana' -> ('connect', 'asana'); None when the text is not a command."""
    text = text.strip()
    if not text.startswith("/") or len(text) < 2:
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name.isidentifier():
        return None
    return name, rest.strip()


def connect_replies(toolkit: str, link: str) -> list[Reply]:
    """The link itself is private: the outbox never delivers it into a group."""
    return [
        Reply(
            text=f"Here is your private link to connect {toolkit.title()}: {link}\n"
            "It is tied to you alone; don't share it.",
            private=True,
        )
    ]


class Commands:
    def __init__(
        self,
        identity: IdentityService,
        sessions: async_sessionmaker[AsyncSession],
        tools: Tools | None,
        toolkits: list[str],
        linker: Linker | None = None,
    ) -> None:
        self._identity = identity
        self._sessions = sessions
        self._tools = tools
        self._toolkits = toolkits
        self._linker = linker
        self._handlers: dict[str, Handler] = {
            "help": self._help,
            "start": self._help,
            "whoami": self._whoami,
            "connect": self._connect,
            "connections": self._connections,
            "reset": self._reset,
            "link": self._link,
            "unlink": self._unlink,
        }

    def names(self) -> list[str]:
        return list(self._handlers)

    async def handle(self, turn: TurnInput) -> TurnResult | None:
        parsed = parse_command(turn.envelope.text)
        if parsed is None or parsed[0] not in self._handlers:
            return None
        name, argument = parsed
        return await self._handlers[name](turn, argument)

    async def _help(self, turn: TurnInput, argument: str) -> TurnResult:
        return TurnResult(replies=[Reply(text=HELP)])

    async def _whoami(self, turn: TurnInput, argument: str) -> TurnResult:
        envelope = turn.envelope
        identities = await self._identity.identities(turn.user.id)
        lines = ["I know you as:"]
        for ident in identities:
            name = ident.username or ident.display_name or "(no name)"
            here = (ident.channel, ident.account, ident.channel_user_id) == (
                envelope.channel,
                envelope.account,
                envelope.sender.id,
            )
            lines.append(f"- {ident.channel}: {name}{' (this chat)' if here else ''}")
        if self._linker is not None:
            lines.append(
                "Send /link in a private chat to add another chat account; "
                "/unlink <channel> removes one."
            )
        # Which accounts belong together is nobody else's business: groups get it privately.
        private = envelope.conversation.is_group
        return TurnResult(replies=[Reply(text="\n".join(lines), private=private)])

    async def _link(self, turn: TurnInput, argument: str) -> TurnResult:
        if self._linker is None:
            return TurnResult(replies=[Reply(text=LINK_UNAVAILABLE)])
        envelope = turn.envelope
        if envelope.conversation.is_group:
            if argument:
                await self._linker.cancel(envelope, argument)
                return TurnResult(replies=[Reply(text=CODE_IN_GROUP)])
            return TurnResult(replies=[Reply(text=LINK_IN_GROUP)])
        if not argument:
            text = await self._linker.issue(envelope)
            return TurnResult(replies=[Reply(text=text, private=True)])
        return TurnResult(replies=[Reply(text=await self._linker.redeem(envelope, argument))])

    async def _unlink(self, turn: TurnInput, argument: str) -> TurnResult:
        if self._linker is None:
            return TurnResult(replies=[Reply(text=LINK_UNAVAILABLE)])
        if turn.envelope.conversation.is_group:
            return TurnResult(replies=[Reply(text=UNLINK_IN_GROUP)])
        return TurnResult(replies=[Reply(text=await self._linker.unlink(turn.envelope, argument))])

    async def _connect(self, turn: TurnInput, argument: str) -> TurnResult:
        if self._tools is None:
            return TurnResult(replies=[Reply(text="Tools are not configured on this assistant.")])
        toolkit = argument.split()[0].lower() if argument else ""
        if not toolkit:
            available = ", ".join(self._toolkits) or "none configured"
            return TurnResult(
                replies=[Reply(text=f"Usage: /connect <toolkit>. Available: {available}.")]
            )
        try:
            link = await self._tools.connect_link(turn.user.entity_id, toolkit)
        except Exception as exc:
            return TurnResult(replies=[Reply(text=tool_error_text(exc))])
        return TurnResult(replies=connect_replies(toolkit, link))

    async def _connections(self, turn: TurnInput, argument: str) -> TurnResult:
        if self._tools is None:
            return TurnResult(replies=[Reply(text="Tools are not configured on this assistant.")])
        try:
            connections = await self._tools.connections(turn.user.entity_id)
        except Exception as exc:
            return TurnResult(replies=[Reply(text=tool_error_text(exc))])
        if not connections:
            return TurnResult(
                replies=[Reply(text="You have no connected accounts yet. Try /connect <toolkit>.")]
            )
        names = sorted({c.toolkit for c in connections})
        return TurnResult(replies=[Reply(text="Connected: " + ", ".join(names))])

    async def _reset(self, turn: TurnInput, argument: str) -> TurnResult:
        async with self._sessions.begin() as session:
            await memory.forget_conversation(session, turn.user.id, turn.envelope.conversation_key)
        return TurnResult(replies=[Reply(text="Done: I have forgotten this conversation.")])
