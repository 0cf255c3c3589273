"""Turn one WhatsApp Cloud API webhook body into envelopes, every item of the batch.

Meta batches: one POST can hold several `entry` x `changes` x `messages`/`statuses`;
pywa handles only the first, so the batch is walked here over plain dicts. Identity
follows Meta's business-scoped user ids (BSUID, `contacts[].user_id` /
`messages[].from_user_id` / `statuses[].recipient_user_id`), falling back to `wa_id` /
`from` / `recipient_id` in older payloads; the phone number is profile data only.
Structure that cannot be read raises `MalformedPayload`; kinds we do not know are
skipped (non-message fields) or become UNSUPPORTED envelopes (user messages).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from channels.base import MalformedPayload
from channels.envelope import (
    Attachment,
    AttachmentKind,
    Conversation,
    Envelope,
    Kind,
    Sender,
)

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"

_MEDIA_KINDS: dict[str, AttachmentKind] = {
    "image": AttachmentKind.IMAGE,
    "video": AttachmentKind.VIDEO,
    "document": AttachmentKind.DOCUMENT,
    "sticker": AttachmentKind.STICKER,
    "audio": AttachmentKind.AUDIO,
}
_SKIPPED_MESSAGE_TYPES = {"system", "request_welcome", "ephemeral"}
"""Not something the user said to us: stored nowhere, answered never."""


def parse_webhook(payload: Any, phone_number_id: str) -> list[Envelope]:
    """Every message and status of the batch addressed to `phone_number_id`, in order."""
    if not isinstance(payload, dict):
        raise MalformedPayload("webhook body is not a JSON object")
    obj = payload.get("object")
    if obj is not None and obj != "whatsapp_business_account":
        log.info("whatsapp webhook for object %r ignored", obj)
        return []
    entries = _list(payload.get("entry"), "entry")
    envelopes: list[Envelope] = []
    for entry in entries:
        entry = _dict(entry, "entry[]")
        for change in _list(entry.get("changes"), "entry[].changes"):
            change = _dict(change, "changes[]")
            field = change.get("field")
            if field != "messages":
                log.info("whatsapp webhook field %r ignored", field)
                continue
            envelopes.extend(
                _parse_value(_dict(change.get("value"), "changes[].value"), phone_number_id)
            )
    return envelopes


def _parse_value(value: dict[str, Any], phone_number_id: str) -> list[Envelope]:
    metadata = _dict(value.get("metadata"), "value.metadata")
    account = str(metadata.get("phone_number_id") or "")
    if not account:
        raise MalformedPayload("value.metadata.phone_number_id is missing")
    messages = _list(value.get("messages", []), "value.messages")
    statuses = _list(value.get("statuses", []), "value.statuses")
    if account != phone_number_id:
        if messages or statuses:
            log.info(
                "whatsapp: %d item(s) for another phone number id ignored",
                len(messages) + len(statuses),
            )
        return []
    for error in _list(value.get("errors", []), "value.errors"):
        log.warning("whatsapp webhook reports an error: %s", _error_text(error))
    contacts = [
        _dict(c, "value.contacts[]") for c in _list(value.get("contacts", []), "value.contacts")
    ]
    out: list[Envelope] = []
    for message in messages:
        envelope = _message(_dict(message, "value.messages[]"), contacts, account, metadata)
        if envelope is not None:
            out.append(envelope)
    for status in statuses:
        out.append(_status(_dict(status, "value.statuses[]"), contacts, account, metadata))
    return out


# --- messages -------------------------------------------------------------------------


def _message(
    message: dict[str, Any], contacts: list[dict[str, Any]], account: str, metadata: dict[str, Any]
) -> Envelope | None:
    native_id = _str(message.get("id"))
    if not native_id:
        raise MalformedPayload("a message has no id")
    msg_type = _str(message.get("type")) or "unknown"
    if msg_type in _SKIPPED_MESSAGE_TYPES:
        log.info("whatsapp %s message ignored", msg_type)
        return None
    user_id = _str(message.get("from_user_id"))
    phone = _str(message.get("from"))
    contact = _match_contact(contacts, user_id=user_id, phone=phone, only_if_single=True)
    sender = _sender(contact, user_id=user_id, phone=phone)
    if not sender.id:
        raise MalformedPayload(f"message {native_id} has no sender (from / from_user_id)")

    kind = Kind.MESSAGE
    text = ""
    attachments: list[Attachment] = []
    button_value: str | None = None
    context = message.get("context") if isinstance(message.get("context"), dict) else {}
    reply_to_id = _str(context.get("id")) or None
    body = message.get(msg_type) if isinstance(message.get(msg_type), dict) else {}

    if msg_type == "text":
        text = _str(body.get("body"))
    elif msg_type in _MEDIA_KINDS:
        attachments.append(_media(msg_type, body))
        text = _str(body.get("caption"))
    elif msg_type == "location":
        attachments.append(Attachment(kind=AttachmentKind.LOCATION, data=dict(body)))
        text = _location_text(body)
    elif msg_type == "contacts":
        for card in message.get("contacts") or []:
            if isinstance(card, dict):
                attachments.append(Attachment(kind=AttachmentKind.CONTACT, data=dict(card)))
        text = ", ".join(_card_name(a.data) for a in attachments if _card_name(a.data))
    elif msg_type == "interactive" and _str(body.get("type")) in ("button_reply", "list_reply"):
        reply = body.get(_str(body.get("type"))) or {}
        kind = Kind.BUTTON
        button_value = _str(reply.get("id")) or None
        text = _str(reply.get("title"))
    elif msg_type == "button":
        kind = Kind.BUTTON
        button_value = _str(body.get("payload")) or None
        text = _str(body.get("text"))
    elif msg_type == "reaction":
        kind = Kind.REACTION
        text = _str(body.get("emoji"))  # empty: the reaction was removed
        reply_to_id = _str(body.get("message_id")) or reply_to_id
    else:
        kind = Kind.UNSUPPORTED
        log.info("whatsapp message of type %r is not supported", msg_type)

    return Envelope(
        channel=CHANNEL,
        account=account,
        native_id=native_id,
        native_message_id=native_id,
        kind=kind,
        timestamp=_timestamp(message.get("timestamp")),
        sender=sender,
        conversation=Conversation(id=sender.id, is_group=False, title=sender.display_name),
        reply_to_id=reply_to_id,
        text=text,
        attachments=attachments,
        button_value=button_value,
        raw={"metadata": metadata, "contact": contact or {}, "message": message},
    )


def _media(msg_type: str, body: dict[str, Any]) -> Attachment:
    kind = _MEDIA_KINDS[msg_type]
    if msg_type == "audio" and body.get("voice") is True:
        kind = AttachmentKind.VOICE
    size = body.get("file_size")
    return Attachment(
        kind=kind,
        mime=_str(body.get("mime_type")) or None,
        name=_str(body.get("filename")) or None,
        size=size if isinstance(size, int) else None,
        ref=_str(body.get("id")) or None,
        data={k: v for k, v in body.items() if k in ("sha256", "animated", "voice", "url")},
    )


def _location_text(body: dict[str, Any]) -> str:
    parts = [_str(body.get("name")), _str(body.get("address"))]
    label = ", ".join(p for p in parts if p)
    coords = f"{body.get('latitude')}, {body.get('longitude')}"
    return f"Location: {label} ({coords})" if label else f"Location: {coords}"


def _card_name(card: dict[str, Any]) -> str:
    name = card.get("name")
    return _str(name.get("formatted_name")) if isinstance(name, dict) else ""


# --- statuses -------------------------------------------------------------------------


def _status(
    status: dict[str, Any], contacts: list[dict[str, Any]], account: str, metadata: dict[str, Any]
) -> Envelope:
    message_id = _str(status.get("id"))
    state = _str(status.get("status"))
    if not message_id or not state:
        raise MalformedPayload("a status has no id or status")
    user_id = _str(status.get("recipient_user_id"))
    phone = _str(status.get("recipient_id"))
    contact = _match_contact(contacts, user_id=user_id, phone=phone, only_if_single=False)
    sender = _sender(contact, user_id=user_id, phone=phone)
    errors = [e for e in status.get("errors") or [] if isinstance(e, dict)]
    return Envelope(
        channel=CHANNEL,
        account=account,
        native_id=f"status:{message_id}:{state}",
        native_message_id=message_id,
        kind=Kind.STATUS,
        timestamp=_timestamp(status.get("timestamp")),
        sender=sender,
        conversation=Conversation(id=sender.id, is_group=False),
        status=state,
        status_error="; ".join(_error_text(e) for e in errors) or None,
        raw={"metadata": metadata, "contact": contact or {}, "status": status},
    )


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    details = (
        error.get("error_data", {}).get("details")
        if isinstance(error.get("error_data"), dict)
        else None
    )
    title = _str(error.get("title")) or _str(error.get("message"))
    text = f"{error.get('code', '?')} {title}".strip()
    return f"{text}: {details}" if details else text


# --- identity --------------------------------------------------------------------------


def _match_contact(
    contacts: list[dict[str, Any]], *, user_id: str, phone: str, only_if_single: bool
) -> dict[str, Any] | None:
    """The `value.contacts[]` entry describing this item's user.

    Matched by BSUID, then by phone; with neither on the item, a lone contact is the
    sender (Meta sends one contact per message-bearing value).
    """
    for contact in contacts:
        if user_id and _str(contact.get("user_id")) == user_id:
            return contact
    for contact in contacts:
        if phone and _str(contact.get("wa_id")) == phone:
            return contact
    if only_if_single and not user_id and not phone and len(contacts) == 1:
        return contacts[0]
    return None


def _sender(contact: dict[str, Any] | None, *, user_id: str, phone: str) -> Sender:
    contact = contact or {}
    profile = contact.get("profile") if isinstance(contact.get("profile"), dict) else {}
    bsuid = user_id or _str(contact.get("user_id"))
    wa_id = phone or _str(contact.get("wa_id"))
    return Sender(
        id=bsuid or wa_id,
        display_name=_str(profile.get("name")) or None,
        username=_str(profile.get("username")) or None,
        phone=wa_id or None,
    )


# --- helpers ---------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return ""


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedPayload(f"{where} is not a list")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where} is not an object")
    return value
