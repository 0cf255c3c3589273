"""Slack payloads -> Envelopes. Pure functions of the payload plus what the adapter knows.

Kept apart from `slack.py` (which does HTTP, Bolt and the Web API) so the mapping rules can
be read and tested on their own. Rules, and why:

- account = the installation that received the event: the workspace (`team_id`), or the
  organization (`enterprise_id`) for an org-wide Enterprise Grid install, where `team_id` is
  null. The same `U...` id seen through two installs is therefore two identities.
- native_id of a message = `channel:ts`: Slack retries (X-Slack-Retry-Num) and the same message
  delivered as both `message.*` and `app_mention` collapse to one stored envelope.
- Messages from bots (`bot_id`, `bot_message`) and from our own bot user are dropped, so the
  assistant never answers itself or another bot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels.base import MalformedPayload
from channels.envelope import Attachment, AttachmentKind, Conversation, Envelope, Kind, Sender

CHANNEL = "slack"

# Message subtypes that are a person saying something; every other subtype is housekeeping
# (joins, topic changes, deletions...) and is ignored.
_USER_SUBTYPES = {None, "file_share", "thread_broadcast", "me_message"}
_SKIPPED_FILE_MODES = {"tombstone", "hidden_by_limit"}
FILE_INFO_PREFIX = "files.info:"

_ANGLE = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True)
class ParseContext:
    """What the adapter knows when parsing: our bot's user id and bot id, if learned yet."""

    bot_user_id: str | None = None
    bot_id: str | None = None


def strip_token(body: dict[str, Any]) -> dict[str, Any]:
    """The raw payload we keep, minus the (deprecated but secret) verification token."""
    return {k: v for k, v in body.items() if k != "token"}


def account_of(body: dict[str, Any]) -> str:
    """The installation: enterprise id for an org-wide install, else the workspace id."""
    auths = body.get("authorizations")
    auth = auths[0] if isinstance(auths, list) and auths and isinstance(auths[0], dict) else {}
    team = body.get("team") if isinstance(body.get("team"), dict) else {}
    enterprise = body.get("enterprise") if isinstance(body.get("enterprise"), dict) else {}
    org_wide = bool(auth.get("is_enterprise_install") or body.get("is_enterprise_install"))
    enterprise_id = auth.get("enterprise_id") or body.get("enterprise_id") or enterprise.get("id")
    team_id = auth.get("team_id") or body.get("team_id") or team.get("id")
    account = enterprise_id if org_wide and enterprise_id else team_id or enterprise_id
    if not isinstance(account, str) or not account:
        raise MalformedPayload("Slack payload without team_id or enterprise_id")
    return account


def authorized_bot_user(body: dict[str, Any]) -> str | None:
    """Our bot's user id as the event's authorization states it (at most one entry)."""
    auths = body.get("authorizations")
    if isinstance(auths, list) and auths and isinstance(auths[0], dict):
        auth = auths[0]
        if auth.get("is_bot") and isinstance(auth.get("user_id"), str):
            return auth["user_id"]
    return None


def slack_to_markdown(text: str, bot_user_id: str | None = None) -> str:
    """Slack message markup -> plain markdown the model and the command parser understand.

    `<@BOT>` mentions of our bot are removed (so "@bot /connect asana" reads "/connect asana"),
    other mentions become `@id`, links `[text](url)`, and `&amp; &lt; &gt;` are unescaped.
    """

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or target[1:])
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            if label:
                return label
            return "@" + target[1:].split("^")[0]
        if label and label != target:
            return f"[{label}]({target})"
        return target.removeprefix("mailto:") if target.startswith("mailto:") else target

    text = text or ""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^<>]*)?>[ \t]*", "", text)
    converted = _ANGLE.sub(replace, text)
    converted = converted.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return converted.strip()


def _ts_time(ts: str | None) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts or 0), UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.now(UTC)


def _attachment_kind(mime: str, subtype: str | None) -> AttachmentKind:
    if subtype == "slack_audio":
        return AttachmentKind.VOICE
    major = mime.split("/", 1)[0]
    return {
        "image": AttachmentKind.IMAGE,
        "audio": AttachmentKind.AUDIO,
        "video": AttachmentKind.VIDEO,
    }.get(major, AttachmentKind.DOCUMENT)


def attachments_of(message: dict[str, Any]) -> list[Attachment]:
    """Files shared in a message; Slack Connect files may need a files.info lookup first."""
    result: list[Attachment] = []
    for item in message.get("files") or []:
        if not isinstance(item, dict) or item.get("mode") in _SKIPPED_FILE_MODES:
            continue
        ref = item.get("url_private_download") or item.get("url_private")
        if not ref and item.get("id"):
            ref = FILE_INFO_PREFIX + str(item["id"])  # file_access: check_file_info
        if not ref:
            continue
        mime = str(item.get("mimetype") or "application/octet-stream")
        size = item.get("size")
        result.append(
            Attachment(
                kind=_attachment_kind(mime, item.get("subtype")),
                mime=mime,
                name=item.get("name") or item.get("title"),
                size=size if isinstance(size, int) else None,
                ref=ref,
                data={"file_id": item.get("id")} if item.get("id") else {},
            )
        )
    return result


def _sender(user: str, event: dict[str, Any], display_name: str | None) -> Sender:
    profile = event.get("user_profile") if isinstance(event.get("user_profile"), dict) else {}
    name = profile.get("display_name") or profile.get("real_name") or display_name
    return Sender(id=user, display_name=name or None, username=profile.get("name") or None)


def is_dm(event: dict[str, Any], channel: str) -> bool:
    """message.* events carry channel_type; app_mention does not, but DM ids start with D."""
    channel_type = event.get("channel_type")
    if channel_type:
        return channel_type == "im"
    return channel.startswith("D")


@dataclass
class MessageView:
    """A user message reduced to what the envelope needs, before the mention decision."""

    account: str
    channel: str
    ts: str
    thread_ts: str | None
    user: str
    text: str
    dm: bool
    mentions_bot: bool


def message_view(body: dict[str, Any], ctx: ParseContext) -> MessageView | None:
    """A person's message in this event, or None for bots, ourselves and housekeeping."""
    event = body.get("event")
    if not isinstance(event, dict):
        raise MalformedPayload("event_callback without an event object")
    if event.get("subtype") not in _USER_SUBTYPES:
        return None
    user = event.get("user")
    if event.get("bot_id") or not isinstance(user, str) or user == ctx.bot_user_id:
        return None
    channel, ts = event.get("channel"), event.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str):
        raise MalformedPayload("message event without channel or ts")
    text = event.get("text") if isinstance(event.get("text"), str) else ""
    thread_ts = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else None
    return MessageView(
        account=account_of(body),
        channel=channel,
        ts=ts,
        thread_ts=thread_ts,
        user=user,
        text=text,
        dm=is_dm(event, channel),
        mentions_bot=event.get("type") == "app_mention"
        or bool(ctx.bot_user_id and f"<@{ctx.bot_user_id}" in text),
    )


def message_envelope(
    body: dict[str, Any],
    view: MessageView,
    ctx: ParseContext,
    in_bot_thread: bool,
    display_name: str | None,
) -> Envelope:
    """The envelope of a person's message. Replies go in the thread in channels, always."""
    event = body["event"]
    mentioned = view.mentions_bot or view.dm or in_bot_thread
    thread_id = view.thread_ts or (None if view.dm else view.ts)
    return Envelope(
        channel=CHANNEL,
        account=view.account,
        native_id=f"{view.channel}:{view.ts}",
        kind=Kind.MESSAGE,
        timestamp=_ts_time(view.ts),
        sender=_sender(view.user, event, display_name),
        conversation=Conversation(id=view.channel, is_group=not view.dm),
        thread_id=thread_id,
        reply_to_id=view.thread_ts if view.thread_ts and view.thread_ts != view.ts else None,
        native_message_id=view.ts,
        text=slack_to_markdown(view.text, ctx.bot_user_id),
        mentioned=mentioned,
        attachments=attachments_of(event),
        raw=strip_token(body),
    )


def edit_envelope(
    body: dict[str, Any], ctx: ParseContext, display_name: str | None
) -> Envelope | None:
    """message_changed -> an EDIT envelope; unfurls and other text-less changes -> None."""
    event = body["event"]
    new = event.get("message") if isinstance(event.get("message"), dict) else {}
    old = event.get("previous_message") if isinstance(event.get("previous_message"), dict) else {}
    user = new.get("user")
    if new.get("bot_id") or not isinstance(user, str) or user == ctx.bot_user_id:
        return None
    if new.get("text") == old.get("text"):
        return None  # link unfurls, reactions on attachments: no edit by the person
    channel, ts = event.get("channel"), new.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str):
        raise MalformedPayload("message_changed without channel or message.ts")
    edited = new.get("edited") if isinstance(new.get("edited"), dict) else {}
    edited_ts = edited.get("ts") or event.get("event_ts") or event.get("ts")
    dm = is_dm(event, channel)
    thread_ts = new.get("thread_ts") if isinstance(new.get("thread_ts"), str) else None
    return Envelope(
        channel=CHANNEL,
        account=account_of(body),
        native_id=f"edit:{channel}:{ts}:{edited_ts}",
        kind=Kind.EDIT,
        timestamp=_ts_time(edited_ts),
        sender=_sender(user, new, display_name),
        conversation=Conversation(id=channel, is_group=not dm),
        thread_id=thread_ts or (None if dm else ts),
        native_message_id=ts,
        text=slack_to_markdown(str(new.get("text") or ""), ctx.bot_user_id),
        mentioned=dm or bool(ctx.bot_user_id and f"<@{ctx.bot_user_id}" in str(new.get("text"))),
        attachments=attachments_of(new),
        raw=strip_token(body),
    )


def _action_value(action: dict[str, Any]) -> str | None:
    if isinstance(action.get("value"), str):
        return action["value"]
    option = action.get("selected_option")
    if isinstance(option, dict) and isinstance(option.get("value"), str):
        return option["value"]
    for key in ("selected_date", "selected_time", "selected_user", "selected_channel"):
        if isinstance(action.get(key), str):
            return action[key]
    return None


def action_envelope(body: dict[str, Any], display_name: str | None) -> Envelope | None:
    """block_actions (a button or menu on a message) -> a BUTTON envelope.

    Actions outside a conversation (App Home, modals) have nowhere to answer: ignored.
    """
    actions = body.get("actions")
    user = body.get("user") if isinstance(body.get("user"), dict) else {}
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise MalformedPayload("block_actions without actions")
    if not isinstance(user.get("id"), str):
        raise MalformedPayload("block_actions without user.id")
    container = body.get("container") if isinstance(body.get("container"), dict) else {}
    channel_obj = body.get("channel") if isinstance(body.get("channel"), dict) else {}
    channel = channel_obj.get("id") or container.get("channel_id")
    if not isinstance(channel, str):
        return None
    action = actions[0]
    message_ts = container.get("message_ts")
    message = body.get("message") if isinstance(body.get("message"), dict) else {}
    thread_ts = container.get("thread_ts") or message.get("thread_ts")
    dm = channel.startswith("D") or channel_obj.get("name") == "directmessage"
    key = body.get("trigger_id") or action.get("action_ts")
    if not key:
        raise MalformedPayload("block_actions without trigger_id or action_ts")
    return Envelope(
        channel=CHANNEL,
        account=account_of(body),
        native_id=f"action:{key}",
        kind=Kind.BUTTON,
        timestamp=_ts_time(action.get("action_ts")),
        sender=Sender(
            id=user["id"],
            display_name=user.get("name") or display_name,
            username=user.get("username"),
        ),
        conversation=Conversation(id=channel, is_group=not dm),
        thread_id=thread_ts or (None if dm else message_ts),
        native_message_id=message_ts,
        text=_action_text(action),
        mentioned=True,
        button_value=_action_value(action),
        raw=strip_token(body),
    )


def _action_text(action: dict[str, Any]) -> str:
    text = action.get("text")
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        return text["text"]
    option = action.get("selected_option")
    if isinstance(option, dict) and isinstance(option.get("text"), dict):
        return str(option["text"].get("text") or "")
    return ""
