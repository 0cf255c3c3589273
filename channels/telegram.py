"""Telegram through python-telegram-bot's `Bot`: webhooks or long polling, sends and files.

Only PTB's `Bot` is used (not its `Application`): the gateway owns the HTTP server,
storage and scheduling, so the adapter just verifies the webhook secret, parses updates
into envelopes (`channels.telegram_parse`), formats replies as Telegram HTML
(`channels.telegram_format`) and maps the Bot API's errors onto the typed send errors.

Polling mode deletes any webhook first (Telegram refuses `getUpdates` while one is set;
it keeps pending updates) and must run in one process only: a second poller gets 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import warnings
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import httpx
from starlette.requests import Request
from telegram import Bot, BotCommand, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.warnings import PTBDeprecationWarning

from channels.base import (
    Channel,
    ChannelError,
    ChannelState,
    ConversationClosed,
    EnvelopeSink,
    MalformedPayload,
    PermanentSendError,
    RateLimited,
    Received,
    TransientSendError,
    VerificationFailed,
)
from channels.envelope import Attachment, Conversation, Envelope, Kind, OutboundMessage
from channels.pacing import Limit, Pacer
from channels.telegram_format import MAX_MESSAGE_LENGTH, render, to_plain
from channels.telegram_parse import ALLOWED_UPDATES, BotIdentity, parse_update, reduce_update

log = logging.getLogger(__name__)

OFFICIAL_API_URL = "https://api.telegram.org"
BOT_API_FILE_LIMIT = 20 * 1024 * 1024
_TOO_BIG = (
    "Telegram's Bot API lets bots download files of at most 20 MB; this one is larger. "
    "Run a local Bot API server (TELEGRAM_API_URL) to receive bigger files."
)
_OFFSET_MAX_AGE = 6 * 24 * 3600.0  # Telegram may restart update ids after a week of silence


class _RedactTokens(logging.Filter):
    """httpx logs every request URL at INFO, and Bot API URLs contain the bot token."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(token in message for token in self.tokens):
            for token in self.tokens:
                message = message.replace(token, "<bot-token>")
            record.msg, record.args = message, ()
        return True


_redact = _RedactTokens()


def _hide_token_in_http_logs(token: str) -> None:
    _redact.tokens.add(token)
    http_logger = logging.getLogger("httpx")
    if _redact not in http_logger.filters:
        http_logger.addFilter(_redact)


SEND_LIMITS = (Limit(1, 1.0), Limit(20, 60.0, groups_only=True))
"""Telegram's send limits: about 1 message/s per chat, 20/min per group."""


class TelegramChannel(Channel):
    """One Telegram bot."""

    name = "telegram"
    max_text_length = MAX_MESSAGE_LENGTH

    def __init__(
        self,
        token: str,
        webhook_secret: str,
        mode: str = "webhook",
        api_url: str = OFFICIAL_API_URL,
        commands: list[tuple[str, str]] | None = None,
        *,
        poll_timeout: int = 30,
        poll_backoff: tuple[float, float] = (1.0, 60.0),
        pacer: Pacer | None = None,
        typing_interval: float = 4.5,
        typing_max_seconds: float = 300.0,
    ) -> None:
        if mode not in ("webhook", "polling"):
            raise ValueError("mode must be 'webhook' or 'polling'")
        api_url = api_url.rstrip("/")
        self.mode = mode
        self.api_url = api_url
        self.account = token.split(":", 1)[0]
        self.commands = list(commands or [])
        self.poll_timeout = poll_timeout
        self.poll_backoff = poll_backoff
        self.pacer = pacer if pacer is not None else Pacer(*SEND_LIMITS)
        self.typing_interval = typing_interval
        self.typing_max_seconds = typing_max_seconds
        _hide_token_in_http_logs(token)
        self.bot = Bot(token, base_url=f"{api_url}/bot", base_file_url=f"{api_url}/file/bot")
        self.identity = BotIdentity(id=int(self.account) if self.account.isdigit() else 0)
        self._secret = webhook_secret
        self._warned_no_secret = False
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._typing: dict[str, asyncio.Task[None]] = {}

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self, sink: EnvelopeSink, state: ChannelState) -> None:
        """Learn the bot's username (mentions), register commands, start polling if asked."""
        if self.mode == "webhook" and not self._secret:
            self._verify_configured()
        if not await self._learn_identity():
            self._spawn(self._learn_identity_until_known())
        await self._register_commands()
        if self.mode == "polling" and self._poller is None:
            self._poller = asyncio.create_task(self._poll(sink, state), name="telegram-poll")

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._typing.values()]
        if self._poller is not None:
            tasks.append(self._poller)
            self._poller = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._typing.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.bot.shutdown()

    async def _learn_identity(self) -> bool:
        try:
            me = await self.bot.get_me()
        except TelegramError as exc:
            log.warning("telegram getMe failed (%s); mentions by @name not recognised yet",
                        type(exc).__name__)
            return False
        self.identity = BotIdentity(id=me.id, username=me.username)
        log.info("telegram bot @%s (id %s) ready, mode %s", me.username, me.id, self.mode)
        return True

    async def _learn_identity_until_known(self) -> None:
        delay = self.poll_backoff[0]
        while not await self._learn_identity():
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_backoff[1])

    async def _register_commands(self) -> None:
        if not self.commands:
            return
        commands = [BotCommand(name.lstrip("/").lower()[:32], (text or name)[:256])
                    for name, text in self.commands]
        try:
            await self.bot.set_my_commands(commands)
        except TelegramError as exc:
            log.warning("telegram setMyCommands failed: %s", exc.message)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- inbound --------------------------------------------------------------------------
    async def receive(self, request: Request) -> Received:
        self._verify(request.headers.get("x-telegram-bot-api-secret-token"))
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError:
            raise MalformedPayload("body is not JSON") from None
        update_id = payload.get("update_id") if isinstance(payload, dict) else None
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise MalformedPayload("not a Telegram update (no integer update_id)")
        envelope = self.parse(payload)
        return Received(envelopes=[envelope] if envelope else [])

    def _verify_configured(self) -> None:
        if not self._warned_no_secret:
            self._warned_no_secret = True
            log.warning("telegram webhooks are refused: set TELEGRAM_WEBHOOK_SECRET (and run "
                        "`gateway telegram set-webhook`), or use TELEGRAM_MODE=polling")

    def _verify(self, provided: str | None) -> None:
        if not self._secret:
            self._verify_configured()
            raise VerificationFailed("telegram webhook secret is not configured")
        if not provided or not hmac.compare_digest(provided.encode(), self._secret.encode()):
            raise VerificationFailed("wrong or missing X-Telegram-Bot-Api-Secret-Token")

    def parse(self, payload: dict[str, Any]) -> Envelope | None:
        """One Bot API update (as JSON) → an envelope, or None when there is nothing to answer."""
        try:
            update, dropped = Update.de_json(payload, self.bot), frozenset[str]()
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # PTB enforces each Bot API version's required fields; retry with only the
            # fields we read, so one odd sub-object (a poll, a story) costs nothing.
            reduced, dropped = reduce_update(payload)
            try:
                update = Update.de_json(reduced, self.bot)
            except (TypeError, ValueError, KeyError, AttributeError):
                raise MalformedPayload(
                    f"unparseable Telegram update: {type(exc).__name__}: {exc}"
                ) from exc
            log.info("telegram update %s parsed without fields %s (%s)", payload["update_id"],
                     sorted(dropped), exc)
        try:
            return parse_update(update, payload, channel=self.name, account=self.account,
                                bot=self.identity, dropped=dropped)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise MalformedPayload(f"unusable Telegram update: {type(exc).__name__}") from exc

    # --- long polling ---------------------------------------------------------------------
    async def _poll(self, sink: EnvelopeSink, state: ChannelState) -> None:
        """getUpdates → store → remember the offset: a restart neither loses nor repeats."""
        backoff = _Backoff(*self.poll_backoff)
        while True:
            try:
                await self.bot.delete_webhook(drop_pending_updates=False)
                break
            except TelegramError as exc:
                log.warning("telegram deleteWebhook failed (%s); retrying", exc.message)
                await backoff.wait()
        key = f"offset:{self.account}"
        offset = await _stored_offset(state, key)
        last_seen = time.monotonic()
        while True:
            if offset is not None and time.monotonic() - last_seen > _OFFSET_MAX_AGE:
                offset = None  # ids may have restarted at random after a silent week
            try:
                updates = await self.bot.get_updates(
                    offset=offset, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES
                )
            except TelegramError as exc:
                log.warning("telegram getUpdates failed (%s: %s); backing off",
                            type(exc).__name__, exc.message)
                await backoff.wait()
                continue
            if not updates:
                backoff.reset()
                continue
            envelopes = [env for env in map(self._parse_polled, updates) if env is not None]
            last = max(update.update_id for update in updates)
            try:
                if envelopes:
                    await sink(envelopes)
                await state.set(key, json.dumps({"update_id": last, "at": time.time()}))
            except Exception:
                # Not stored: keep the offset, so Telegram hands these updates out again.
                log.exception("telegram: storing polled updates failed; will fetch them again")
                await backoff.wait()
                continue
            offset, last_seen = last + 1, time.monotonic()
            backoff.reset()

    def _parse_polled(self, update: Update) -> Envelope | None:
        try:
            return self.parse(update.to_dict())
        except MalformedPayload as exc:
            log.error("telegram update %s skipped: %s", update.update_id, exc)
            return None

    # --- outbound -------------------------------------------------------------------------
    def render(self, markdown: str) -> list[str]:
        return render(markdown, self.max_text_length)

    async def send(self, message: OutboundMessage) -> str:
        conversation = message.conversation
        await self.pacer.acquire(conversation.id, conversation.is_group)
        options: dict[str, Any] = {"chat_id": _chat_id(conversation.id)}
        if message.thread_id:
            options["message_thread_id"] = int(message.thread_id)
        if message.reply_to_id:
            options["reply_parameters"] = ReplyParameters(
                message_id=int(message.reply_to_id), allow_sending_without_reply=True
            )
        try:
            return await self._send_with_fallbacks(message.text, options)
        except TelegramError as exc:
            raise _send_error(exc) from exc

    async def _send_with_fallbacks(self, text: str, options: dict[str, Any]) -> str:
        try:
            sent = await self.bot.send_message(text=text, parse_mode=ParseMode.HTML, **options)
        except BadRequest as exc:
            reason = exc.message.lower()
            if "can't parse entities" in reason:
                log.warning("telegram rejected our HTML (%s); resending as plain text", exc.message)
                sent = await self.bot.send_message(text=to_plain(text), **options)
            elif "thread not found" in reason and "message_thread_id" in options:
                options.pop("message_thread_id")  # the topic is gone: answer in the chat
                sent = await self.bot.send_message(text=text, parse_mode=ParseMode.HTML,
                                                   **options)
            else:
                raise
        except ChatMigrated as exc:
            options["chat_id"] = exc.new_chat_id  # group upgraded to a supergroup
            sent = await self.bot.send_message(text=text, parse_mode=ParseMode.HTML, **options)
        return str(sent.message_id)

    async def open_private(self, account: str, user_id: str) -> Conversation | None:
        """The user's private chat (its id is the user id), if the user has started the bot.

        A chat action is a harmless probe: it fails 403 when the bot may not message the
        user, so the gateway can tell the group to open a private chat first.
        """
        if account != self.account:
            return None
        try:
            await self.bot.send_chat_action(chat_id=_chat_id(user_id), action=ChatAction.TYPING)
        except (Forbidden, BadRequest):
            return None
        except TelegramError:
            pass  # network trouble: the send itself will retry and report
        return Conversation(id=str(user_id), is_group=False)

    async def typing(self, envelope: Envelope) -> None:
        """Answer a button press (stops its spinner) and show "typing…" while the turn runs."""
        if envelope.kind is Kind.BUTTON:
            query_id = (envelope.raw.get("callback_query") or {}).get("id")
            if query_id:
                with contextlib.suppress(TelegramError):
                    await self.bot.answer_callback_query(str(query_id))
        if not await self._chat_action(envelope):
            return
        previous = self._typing.pop(envelope.id, None)
        if previous is not None:
            previous.cancel()
        self._typing[envelope.id] = asyncio.create_task(self._keep_typing(envelope))

    async def done(self, envelope: Envelope) -> None:
        task = self._typing.pop(envelope.id, None)
        if task is not None:
            task.cancel()

    async def _keep_typing(self, envelope: Envelope) -> None:
        """Telegram shows a chat action for ~5 s: repeat it until `done` (bounded)."""
        deadline = time.monotonic() + self.typing_max_seconds
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(self.typing_interval)
                if not await self._chat_action(envelope):
                    break
        finally:
            if self._typing.get(envelope.id) is asyncio.current_task():
                self._typing.pop(envelope.id, None)

    async def _chat_action(self, envelope: Envelope) -> bool:
        try:
            await self.bot.send_chat_action(
                chat_id=_chat_id(envelope.conversation.id), action=ChatAction.TYPING,
                message_thread_id=int(envelope.thread_id) if envelope.thread_id else None,
            )
        except TelegramError as exc:
            log.debug("telegram sendChatAction failed: %s", exc.message)
            return False
        return True

    # --- media ----------------------------------------------------------------------------
    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """getFile, then stream the download, refusing more than `max_bytes`."""
        if not attachment.ref:
            raise ChannelError("this Telegram attachment has no file to download")
        _check_size(attachment.size, max_bytes)
        if self.api_url == OFFICIAL_API_URL and (attachment.size or 0) > BOT_API_FILE_LIMIT:
            raise ChannelError(_TOO_BIG)
        try:
            file = await self.bot.get_file(attachment.ref)
        except BadRequest as exc:
            if "too big" in exc.message.lower():
                raise ChannelError(_TOO_BIG) from exc
            raise ChannelError(f"Telegram refused the file: {exc.message}") from exc
        except TelegramError as exc:
            raise ChannelError(f"could not reach Telegram for the file: {exc.message}") from exc
        _check_size(file.file_size, max_bytes)
        if not file.file_path:
            raise ChannelError("Telegram gave no download path for the file")
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        data = bytearray()
        try:
            async with self._http.stream("GET", file.file_path) as response:
                if response.status_code != 200:
                    raise ChannelError(f"file download failed with HTTP {response.status_code}")
                async for piece in response.aiter_bytes():
                    data.extend(piece)
                    _check_size(len(data), max_bytes)
        except httpx.HTTPError as exc:
            raise ChannelError(f"file download failed: {type(exc).__name__}") from exc
        return bytes(data)


class _Backoff:
    """Exponential backoff for the polling loop, so errors never busy-loop."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, longest
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.longest)


async def _stored_offset(state: ChannelState, key: str) -> int | None:
    """The next getUpdates offset: one past the last update stored, unless that is stale."""
    value = await state.get(key)
    if not value:
        return None
    try:
        stored = json.loads(value)
        if isinstance(stored, int):  # a bare update id: no age known
            return stored + 1
        update_id, at = int(stored["update_id"]), float(stored["at"])
    except (ValueError, TypeError, KeyError):
        log.warning("telegram: ignoring unreadable stored offset")
        return None
    if time.time() - at > _OFFSET_MAX_AGE:
        return None
    return update_id + 1


def _check_size(size: int | None, max_bytes: int) -> None:
    if size is not None and size > max_bytes:
        raise ChannelError(f"file is larger than the {max_bytes} bytes allowed")


def _chat_id(value: str) -> int | str:
    """Chat ids are integers; `@channelname` stays a string."""
    try:
        return int(value)
    except ValueError:
        return value


def _send_error(exc: TelegramError) -> Exception:
    """The Bot API's error → the outbox's retry decision."""
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():  # int today, timedelta with PTB_TIMEDELTA: take both
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            retry_after = exc.retry_after
        seconds = retry_after.total_seconds() if isinstance(retry_after, timedelta) else retry_after
        return RateLimited(exc.message, retry_after=float(seconds))
    if isinstance(exc, Forbidden):
        return ConversationClosed(f"Telegram refused (bot blocked or removed): {exc.message}")
    if isinstance(exc, BadRequest | InvalidToken | ChatMigrated):
        return PermanentSendError(f"Telegram rejected the message: {exc.message}")
    return TransientSendError(f"Telegram unreachable or failing: {exc.message}")
