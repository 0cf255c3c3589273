"""Channel adapters: verify and parse platform traffic into Envelopes, send Replies."""

from channels.base import (
    Channel,
    ChannelError,
    ChannelState,
    EnvelopeSink,
    MalformedPayload,
    PermanentSendError,
    RateLimited,
    Received,
    SendError,
    TransientSendError,
    VerificationFailed,
)
from channels.envelope import (
    Attachment,
    AttachmentKind,
    Conversation,
    Envelope,
    Kind,
    OutboundMessage,
    Reply,
    Sender,
)

__all__ = [
    "Attachment",
    "AttachmentKind",
    "Channel",
    "ChannelError",
    "ChannelState",
    "Conversation",
    "Envelope",
    "EnvelopeSink",
    "Kind",
    "MalformedPayload",
    "OutboundMessage",
    "PermanentSendError",
    "RateLimited",
    "Received",
    "Reply",
    "SendError",
    "Sender",
    "TransientSendError",
    "VerificationFailed",
]
