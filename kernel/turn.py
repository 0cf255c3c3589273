"""What a turn gets and gives: plain data, so kernels hold nothing between turns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.envelope import Attachment, Envelope, Reply
from identity.service import ResolvedUser
from kernel.memory import Said

FetchAttachment = Callable[[Attachment], Awaitable[bytes]]


@dataclass
class TurnInput:
    envelope: Envelope
    user: ResolvedUser
    history: list[Said]
    fetch: FetchAttachment


@dataclass
class TurnResult:
    replies: list[Reply] = field(default_factory=list)
    said: list[Said] = field(default_factory=list)
    error: str | None = None
    llm_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_outcomes: list[tuple[str, str]] = field(default_factory=list)  # (tool name, ok|error)


class Connection(Protocol):
    id: str
    toolkit: str
    status: str


class Tools(Protocol):
    """Per-user tool execution (kernel/tools.py); the entity is always an explicit argument."""

    async def schemas(self) -> list[dict[str, Any]]: ...

    async def execute(
        self, entity_id: str, name: str, arguments: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def connect_link(self, entity_id: str, toolkit: str) -> str: ...

    async def connections(self, entity_id: str) -> list[Any]: ...


def tool_error_text(exc: Exception) -> str:
    """A message about a tool failure that is safe to show the user."""
    from kernel.tools import ToolError  # light: kernel.tools imports composio lazily

    if isinstance(exc, ToolError):
        return str(exc)
    return "Sorry, the tool service is not reachable right now. Please try again later."
