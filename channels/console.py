"""A local channel: drives the whole pipeline from a terminal or a test, no platform needed.

Its webhook takes JSON (`{"user": "ann", "text": "hi"}`) and is closed unless a bearer
token was configured, so it can never be used to impersonate someone on a public port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request

from channels.base import Channel, ChannelError, MalformedPayload, Received, VerificationFailed
from channels.envelope import (
    Attachment,
    AttachmentKind,
    Conversation,
    Envelope,
    Kind,
    OutboundMessage,
    Sender,
)

Listener = Callable[[OutboundMessage], None]


class ConsoleChannel(Channel):
    max_text_length = 4000

    def __init__(self, name: str = "console", *, account: str = "local", token: str = "") -> None:
        self.name = name
        self.account = account
        self._token = token
        self.sent: deque[OutboundMessage] = deque(maxlen=10_000)
        self._listeners: list[Listener] = []
        self._counter = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def envelope(
        self,
        user: str,
        text: str = "",
        *,
        conversation: str | None = None,
        group: bool = False,
        mentioned: bool = False,
        native_id: str | None = None,
        attachments: list[Attachment] | None = None,
        display_name: str | None = None,
        kind: Kind = Kind.MESSAGE,
    ) -> Envelope:
        """Build an envelope as this channel would parse it (used by the CLI and tests)."""
        native = native_id or uuid.uuid4().hex
        return Envelope(
            channel=self.name,
            account=self.account,
            native_id=native,
            native_message_id=native,
            kind=kind,
            sender=Sender(id=user, display_name=display_name or user, username=user),
            conversation=Conversation(
                id=conversation or f"dm:{user}",
                is_group=group,
                title=conversation if group else None,
            ),
            text=text,
            mentioned=mentioned,
            attachments=attachments or [],
        )

    async def receive(self, request: Request) -> Received:
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        if not self._token or not hmac.compare_digest(supplied, self._token.encode()):
            raise VerificationFailed("console webhook: missing or wrong bearer token")
        try:
            body = json.loads(await request.body())
            user, text = str(body["user"]), str(body.get("text", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedPayload(f"console webhook: expected {{'user', 'text'}}: {exc}") from exc
        attachments = [
            Attachment(kind=AttachmentKind(a["kind"]), ref=a["path"], mime=a.get("mime"))
            for a in body.get("attachments", [])
        ]
        return Received(
            envelopes=[
                self.envelope(
                    user,
                    text,
                    conversation=body.get("conversation"),
                    group=bool(body.get("group", False)),
                    mentioned=bool(body.get("mentioned", False)),
                    native_id=body.get("id"),
                    attachments=attachments,
                )
            ]
        )

    async def send(self, message: OutboundMessage) -> str:
        self._counter += 1
        self.sent.append(message)
        for listener in list(self._listeners):
            listener(message)
        return f"{self.name}-{self._counter}"

    async def open_private(self, account: str, user_id: str) -> Conversation | None:
        return Conversation(id=f"dm:{user_id}", is_group=False)

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        if not attachment.ref:
            raise ChannelError("attachment has no file")
        path = Path(attachment.ref)
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > max_bytes:
            raise ChannelError(f"file is {size} bytes; the limit is {max_bytes}")
        return await asyncio.to_thread(path.read_bytes)
