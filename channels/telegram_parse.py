"""Telegram `Update` → `Envelope`: what the gateway needs to know about one update.

Kept apart from the adapter so the rules about who addressed the bot (mentions,
replies, `/command@bot`, the implicit reply every forum-topic message carries) live in
one small, testable place. Updates that are not a person talking to the bot (channel
posts, other bots, service messages, kinds this code does not know) give no envelope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from telegram import CallbackQuery, Chat, Location, Message, MessageEntity, Update, User

from channels.envelope import (
    Attachment,
    AttachmentKind,
    Conversation,
    Envelope,
    Kind,
    Sender,
    utcnow,
)

ALLOWED_UPDATES: tuple[str, ...] = ("message", "edited_message", "callback_query")
"""The update kinds subscribed to (webhook and polling); anything else is ignored anyway."""

_GROUP_TYPES = {Chat.GROUP, Chat.SUPERGROUP}
# Content this adapter recognises but cannot hand to the assistant: answered "can't read that".
_UNSUPPORTED_CONTENT = (
    "poll", "dice", "game", "story", "invoice", "paid_media", "giveaway", "checklist",
)


# The message fields this module reads; `reduce_update` keeps only these when PTB cannot
# build some other part of a message (its classes enforce each Bot API version's
# required fields, and one odd sub-object must not cost the whole message).
_MESSAGE_FIELDS = frozenset({
    "message_id", "message_thread_id", "from", "sender_chat", "chat", "date", "edit_date",
    "is_topic_message", "reply_to_message", "text", "entities", "caption", "caption_entities",
    "photo", "voice", "audio", "document", "animation", "video", "video_note", "sticker",
    "location", "venue", "contact", "forum_topic_created",
})


@dataclass(frozen=True)
class BotIdentity:
    """Who "the bot" is, for mention and reply detection."""

    id: int
    username: str | None = None


def reduce_update(payload: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """A copy of `payload` whose messages keep only the fields this module reads.

    Returns the copy and the names of the message fields dropped.
    """
    dropped: set[str] = set()

    def reduce(message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        kept = {key: value for key, value in message.items() if key in _MESSAGE_FIELDS}
        dropped.update(key for key in message if key not in _MESSAGE_FIELDS)
        if "reply_to_message" in kept:
            kept["reply_to_message"] = reduce(kept["reply_to_message"])
        return kept

    reduced = dict(payload)
    for kind in ("message", "edited_message"):
        if kind in reduced:
            reduced[kind] = reduce(reduced[kind])
    if isinstance(reduced.get("callback_query"), dict):
        query = dict(reduced["callback_query"])
        query["message"] = reduce(query.get("message"))
        if query["message"] is None:
            query.pop("message")
        reduced["callback_query"] = query
    return reduced, frozenset(dropped)


def parse_update(
    update: Update, raw: dict[str, Any], *, channel: str, account: str, bot: BotIdentity,
    dropped: frozenset[str] = frozenset(),
) -> Envelope | None:
    """One update → one envelope, or None when nobody is talking to the bot.

    The native id starts with `update_id` (what Telegram repeats on a retry) and adds the
    message (or callback) id: Telegram may restart update ids at random after a week of
    silence, and an old stored key must never swallow a new message as a "duplicate".
    """
    common: dict[str, Any] = {"channel": channel, "account": account, "raw": raw}
    message = update.message or update.edited_message
    if message is not None:
        common["native_id"] = f"{update.update_id}:{message.chat.id}:{message.message_id}"
        kind = Kind.MESSAGE if update.message is not None else Kind.EDIT
        return _from_message(message, kind, bot, common, dropped)
    if update.callback_query is not None:
        common["native_id"] = f"{update.update_id}:{update.callback_query.id}"
        return _from_callback(update.callback_query, common)
    return None  # channel posts, member updates, reactions, kinds newer than this code


def _from_message(
    message: Message, kind: Kind, bot: BotIdentity, common: dict[str, Any],
    dropped: frozenset[str],
) -> Envelope | None:
    user = message.from_user
    if user is None or user.is_bot or message.chat.type not in (*_GROUP_TYPES, Chat.PRIVATE):
        # Bots (including ourselves and GroupAnonymousBot) and channels are not people.
        return None
    attachments = _attachments(message)
    text = message.text or message.caption or ""
    if not text and not attachments:
        unsupported = dropped.intersection(_UNSUPPORTED_CONTENT) or any(
            getattr(message, name, None) for name in _UNSUPPORTED_CONTENT
        )
        if kind is Kind.MESSAGE and unsupported:
            kind = Kind.UNSUPPORTED
        else:
            return None  # service messages: joins, pins, topic edits...
    reply = message.reply_to_message
    if reply is not None and reply.forum_topic_created is not None:
        reply = None  # the implicit "reply" every forum-topic message carries
    timestamp = (message.edit_date if kind is Kind.EDIT else None) or message.date or utcnow()
    return Envelope(
        **common,
        kind=kind,
        timestamp=timestamp,
        sender=_sender(user),
        conversation=_conversation(message.chat),
        thread_id=str(message.message_thread_id)
        if message.is_topic_message and message.message_thread_id
        else None,
        reply_to_id=str(reply.message_id) if reply is not None else None,
        native_message_id=str(message.message_id),
        text=strip_address(text, bot.username),
        mentioned=_mentioned(message, reply, bot),
        attachments=attachments,
    )


def _from_callback(query: CallbackQuery, common: dict[str, Any]) -> Envelope | None:
    user = query.from_user
    if user.is_bot:
        return None
    message = query.message
    if message is not None:
        conversation = _conversation(message.chat)
        native_message_id: str | None = str(message.message_id)
        thread_id = (
            str(message.message_thread_id)
            if isinstance(message, Message) and message.is_topic_message
            and message.message_thread_id
            else None
        )
    else:  # a button under an inline-mode message: we can only answer privately
        conversation = Conversation(id=str(user.id), is_group=False)
        native_message_id, thread_id = None, None
    value = query.data or query.game_short_name or ""
    return Envelope(
        **common,
        kind=Kind.BUTTON,
        timestamp=utcnow(),
        sender=_sender(user),
        conversation=conversation,
        thread_id=thread_id,
        native_message_id=native_message_id,
        text=value,
        mentioned=True,  # pressing the bot's own button addresses the bot
        button_value=value,
    )


def _sender(user: User) -> Sender:
    return Sender(
        id=str(user.id), display_name=user.full_name or None, username=user.username,
        is_bot=bool(user.is_bot),
    )


def _conversation(chat: Chat) -> Conversation:
    is_group = chat.type in _GROUP_TYPES
    return Conversation(id=str(chat.id), is_group=is_group, title=chat.title if is_group else None)


def _mentioned(message: Message, reply: Message | None, bot: BotIdentity) -> bool:
    """@bot in the text or caption, a real reply to the bot, or `/command@bot`."""
    if reply is not None and reply.from_user is not None and reply.from_user.id == bot.id:
        return True
    handle = f"@{bot.username}".lower() if bot.username else None
    for entities in (message.parse_entities(), message.parse_caption_entities()):
        for entity, text in entities.items():
            if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot.id:
                return True
            if handle is None:
                continue
            if entity.type == MessageEntity.MENTION and text.lower() == handle:
                return True
            if entity.type == MessageEntity.BOT_COMMAND and text.lower().endswith(handle):
                return True
    return False


def strip_address(text: str, username: str | None) -> str:
    """Drop a leading "@bot" and turn "/cmd@bot" into "/cmd" so commands parse."""
    if not username:
        return text
    name = re.escape(username)
    text = re.sub(rf"^\s*@{name}\b[\s,:]*", "", text, flags=re.IGNORECASE)
    return re.sub(rf"^/(\w+)@{name}\b", r"/\1", text, flags=re.IGNORECASE)


def _attachments(message: Message) -> list[Attachment]:
    found: list[Attachment] = []
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        found.append(_file(AttachmentKind.IMAGE, largest, "image/jpeg"))
    if message.voice:
        found.append(_file(AttachmentKind.VOICE, message.voice, message.voice.mime_type
                           or "audio/ogg"))
    if message.audio:
        audio = message.audio
        found.append(_file(AttachmentKind.AUDIO, audio, audio.mime_type, audio.file_name))
    if message.animation:
        animation = message.animation
        found.append(_file(AttachmentKind.VIDEO, animation, animation.mime_type,
                           animation.file_name))
    elif message.document:  # an animation also fills `document`, for old clients
        document = message.document
        found.append(_file(AttachmentKind.DOCUMENT, document, document.mime_type,
                           document.file_name))
    if message.video:
        video = message.video
        found.append(_file(AttachmentKind.VIDEO, video, video.mime_type, video.file_name))
    if message.video_note:
        found.append(_file(AttachmentKind.VIDEO, message.video_note, "video/mp4"))
    if message.sticker:
        sticker = message.sticker
        mime = ("video/webm" if sticker.is_video
                else "application/x-tgsticker" if sticker.is_animated else "image/webp")
        attachment = _file(AttachmentKind.STICKER, sticker, mime)
        attachment.data = {"emoji": sticker.emoji} if sticker.emoji else {}
        found.append(attachment)
    if message.location:
        found.append(_location(message, message.location))
    if message.contact:
        contact = message.contact
        found.append(Attachment(kind=AttachmentKind.CONTACT, data={
            key: value for key, value in {
                "phone_number": contact.phone_number, "first_name": contact.first_name,
                "last_name": contact.last_name,
                "user_id": str(contact.user_id) if contact.user_id else None,
            }.items() if value
        }))
    return found


def _file(kind: AttachmentKind, media: Any, mime: str | None, name: str | None = None
          ) -> Attachment:
    return Attachment(kind=kind, mime=mime, name=name, size=media.file_size, ref=media.file_id)


def _location(message: Message, location: Location) -> Attachment:
    data: dict[str, Any] = {"latitude": location.latitude, "longitude": location.longitude}
    if message.venue:
        data.update(title=message.venue.title, address=message.venue.address)
    return Attachment(kind=AttachmentKind.LOCATION, data=data)
