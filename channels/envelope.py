"""The common message types every channel speaks.

`Envelope` is what arrives (modelled on Bot Framework's Activity); `Reply` is what the
assistant wants to say, in markdown; `OutboundMessage` is one platform-formatted chunk of
a reply, the unit the outbox sends and retries. Channel ids are opaque strings.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Kind(StrEnum):
    MESSAGE = "message"
    EDIT = "edit"
    REACTION = "reaction"
    BUTTON = "button"
    STATUS = "status"
    UNSUPPORTED = "unsupported"


class AttachmentKind(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"
    VOICE = "voice"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACT = "contact"


class Sender(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    display_name: str | None = None
    username: str | None = None
    phone: str | None = None
    is_bot: bool = False


class Conversation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    is_group: bool = False
    title: str | None = None


class Attachment(BaseModel):
    kind: AttachmentKind
    mime: str | None = None
    name: str | None = None
    size: int | None = None
    ref: str | None = Field(None, description="Platform file reference the channel can fetch.")
    data: dict[str, Any] = Field(
        default_factory=dict, description="Inline data: location, contact card."
    )


class Envelope(BaseModel):
    """One inbound event from a platform, normalized."""

    id: str = Field(default_factory=new_id)
    channel: str
    account: str = Field(description="The bot/business account that received it.")
    native_id: str = Field(
        description="The platform's id of this event, the dedupe key's last part."
    )
    kind: Kind = Kind.MESSAGE
    timestamp: datetime = Field(default_factory=utcnow)
    sender: Sender
    conversation: Conversation
    thread_id: str | None = None
    reply_to_id: str | None = None
    native_message_id: str | None = Field(
        None, description="The platform's id of the message itself, to react, reply or mark read."
    )
    text: str = Field("", description="Markdown.")
    mentioned: bool = Field(False, description="The bot was mentioned, replied to or addressed.")
    attachments: list[Attachment] = Field(default_factory=list)
    button_value: str | None = None
    status: str | None = Field(
        None, description="For status events: sent, delivered, read, failed."
    )
    status_error: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @property
    def dedupe_key(self) -> tuple[str, str, str]:
        return (self.channel, self.account, self.native_id)

    @property
    def conversation_key(self) -> str:
        """Names one conversation across all channels and accounts."""
        return f"{self.channel}:{self.account}:{self.conversation.id}"

    @property
    def addressed(self) -> bool:
        """Direct conversations are always addressed to the bot; groups only when mentioned."""
        return self.mentioned or not self.conversation.is_group


class Reply(BaseModel):
    """What the assistant says, in markdown, before any platform formatting."""

    text: str
    private: bool = Field(
        False,
        description="Only for the sender's eyes (connect links): never delivered into a group.",
    )


class OutboundMessage(BaseModel):
    """One platform message to send: the unit of delivery, ordering and retry."""

    channel: str
    account: str
    conversation: Conversation
    text: str = Field(description="Already formatted for the platform and within its size limit.")
    thread_id: str | None = None
    reply_to_id: str | None = None
    private_to: str | None = Field(
        None, description="Channel user id: deliver in a private conversation with this user only."
    )
    meta: dict[str, Any] = Field(default_factory=dict)
