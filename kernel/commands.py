"""Built-in chat commands: they work without a model and never reach it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.envelope import Reply
from identity.service import IdentityService
from kernel import memory
from kernel.turn import Tools, TurnInput, TurnResult, tool_error_text

HELP = """Here is what I understand:
/help - this message
/whoami - which of your chat accounts I know as you
/connect <toolkit> - get a private link to connect an account (e.g. /connect asana)
/connections - the accounts you have connected
/reset - forget this conversation"""

Handler = Callable[[TurnInput, str], Awaitable[TurnResult]]


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
    ) -> None:
        self._identity = identity
        self._sessions = sessions
        self._tools = tools
        self._toolkits = toolkits
        self._handlers: dict[str, Handler] = {
            "help": self._help,
            "start": self._help,
            "whoami": self._whoami,
            "connect": self._connect,
            "connections": self._connections,
            "reset": self._reset,
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
        identities = await self._identity.identities(turn.user.id)
        lines = ["I know you as:"]
        for ident in identities:
            name = ident.username or ident.display_name or "(no name)"
            lines.append(f"- {ident.channel}: {name}")
        return TurnResult(replies=[Reply(text="\n".join(lines))])

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
