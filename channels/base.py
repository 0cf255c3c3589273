"""The contract every channel adapter implements, in the spirit of httpx's transports.

An adapter verifies and parses platform HTTP traffic into `Envelope`s and sends
`OutboundMessage`s, reporting the platform's message id or a typed error. It knows
nothing of users, storage or the LLM. Adding a platform is one module implementing this
class and one registration line in `gateway/registry.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from channels.chunking import split_text
from channels.envelope import Attachment, Conversation, Envelope, OutboundMessage

EnvelopeSink = Callable[[list[Envelope]], Awaitable[None]]
"""Stores envelopes durably; adapters that pull (long polling, sockets) hand them here."""


class ChannelState(Protocol):
    """A small durable key-value store per channel (e.g. the long-polling offset)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...


class ChannelError(Exception):
    """Base of every error an adapter raises on purpose."""


class VerificationFailed(ChannelError):
    """The request is not provably from the platform (signature, secret, timestamp)."""

    def __init__(self, reason: str, status_code: int = 401) -> None:
        super().__init__(reason)
        self.status_code = status_code


class MalformedPayload(ChannelError):
    """The request is authentic but cannot be understood; answered 400."""


class SendError(ChannelError):
    """Sending failed; the subclass says whether and when to retry."""


class RateLimited(SendError):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TransientSendError(SendError):
    """Network trouble or a 5xx: retry with backoff."""


class PermanentSendError(SendError):
    """Retrying cannot help (blocked by the user, invalid recipient, bad token)."""


class ConversationClosed(PermanentSendError):
    """Nothing more can be delivered to this conversation until its people write again
    (the bot was blocked or removed, the channel archived, WhatsApp's 24-hour window
    closed): what is queued for it is given up together, not tried one message at a time."""


@dataclass
class Received:
    """What a webhook request carried: envelopes to store, and the answer to give."""

    envelopes: list[Envelope] = field(default_factory=list)
    response: Response | None = None


class Channel(ABC):
    """One platform, one account (bot / phone number / workspace install)."""

    name: str
    max_text_length: int = 4096

    async def start(self, sink: EnvelopeSink, state: ChannelState) -> None:
        """Start background work (long polling, sockets). Webhook-only adapters do nothing."""

    async def stop(self) -> None:
        """Stop background work and close clients."""

    @abstractmethod
    async def receive(self, request: Request) -> Received:
        """Verify and parse one webhook request.

        Raises `VerificationFailed` (nothing may be stored) or `MalformedPayload`.
        """

    def render(self, markdown: str) -> list[str]:
        """Format markdown for the platform and split it into sendable chunks, in order."""
        return split_text(markdown, self.max_text_length)

    @abstractmethod
    async def send(self, message: OutboundMessage) -> str:
        """Deliver one message; return the platform's message id or raise a `SendError`."""

    async def open_private(self, account: str, user_id: str) -> Conversation | None:
        """The private conversation with a user, or None when the platform cannot open one."""
        return None

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Download an attachment's bytes, refusing anything larger than `max_bytes`."""
        raise ChannelError(f"{self.name} cannot download attachments")

    async def typing(self, envelope: Envelope) -> None:
        """Show that a turn is running (typing indicator, read receipt, reaction)."""

    async def done(self, envelope: Envelope) -> None:
        """Remove what `typing` showed, if the platform needs that."""
