"""Slack: Events API (HTTP) or Socket Mode in, Web API out, through slack-bolt and slack_sdk.

Inbound goes through Bolt's `AsyncApp.async_dispatch` so Bolt enforces the v0 signature and
its 5-minute window and answers `url_verification`; our listeners only *collect* envelopes
(the gateway stores them and acks; the turn runs later, never inside the request). Parsing
rules live in `channels/slack_parse.py`.

Choices worth knowing:
- `authorize=` is ours, so Bolt never calls `auth.test` on the hot path; `start()` calls it
  once to learn the bot user id, and until then the event's `authorizations[0]` says it.
  The token is looked up per account (`_token_for`), the one seam an OAuth installation
  store (one token per workspace) would replace.
- Profiles: the ack path never waits on Slack. Envelopes carry a display name only when the
  event has `user_profile` or the name is already cached; `typing()` (turn start) warms the
  bounded cache with `users.info` for the next message.
- "A thread the bot is in" is approximated per process: threads where the bot was mentioned,
  where it posted (sent or seen), or whose parent is the bot's (`parent_user_id`).
- Sending paces itself to about one message per second per channel (burst of 4), and maps
  Slack errors to `RateLimited` / `TransientSendError` / `PermanentSendError`. A message
  meant for one person (`private_to`) is never posted into a group: it becomes ephemeral.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from slack_bolt.adapter.starlette.async_handler import to_starlette_response
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import Response

from channels import slack_format
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
    SendError,
    TransientSendError,
    VerificationFailed,
)
from channels.envelope import Attachment, Conversation, Envelope, Kind, OutboundMessage
from channels.pacing import LruDict, Pacer, average
from channels.slack_parse import (
    FILE_INFO_PREFIX,
    ParseContext,
    account_of,
    action_envelope,
    authorized_bot_user,
    edit_envelope,
    message_envelope,
    message_view,
)

log = logging.getLogger(__name__)

_BATCH = "gateway_batch"
_AUTHZ_USER = "gateway_authz_bot_user"
_PERMANENT = {
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "no_permission", "missing_scope", "channel_not_found", "not_in_channel", "is_archived",
    "user_not_found", "user_not_visible", "cannot_dm_bot", "msg_too_long", "no_text",
    "restricted_action", "invalid_arguments", "ekm_access_denied", "team_access_not_granted",
}  # fmt: skip
_TRANSIENT = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
# The bot can no longer post there (removed, archived, deleted) until invited back.
_CLOSED = {"channel_not_found", "is_archived", "not_in_channel"}
_FATAL_AUTH = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}


@dataclass
class _Batch:
    """What the Bolt listeners found in one request."""

    envelopes: list[Envelope] = field(default_factory=list)
    error: MalformedPayload | None = None


def _bolt_logger() -> logging.Logger:
    # Bolt logs the whole body of a request with a bad signature at INFO: keep message text
    # out of our logs (privacy) by letting only its warnings through.
    logger = logging.getLogger("channels.slack.bolt")
    logger.setLevel(logging.WARNING)
    return logger


def _map_error(exc: SlackApiError) -> SendError:
    response = exc.response
    status = getattr(response, "status_code", 0) or 0
    data = getattr(response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    if status == 429 or error == "ratelimited":
        retry_after: float | None = None
        header = response.headers.get("Retry-After") if response.headers else None
        try:
            retry_after = float(header) if header is not None else None
        except ValueError:
            retry_after = None
        return RateLimited(f"slack: {error or 'ratelimited'}", retry_after)
    if status >= 500 or error in _TRANSIENT:
        return TransientSendError(f"slack: HTTP {status} {error or ''}".strip())
    if error in _CLOSED:
        return ConversationClosed(f"slack: {error}")
    return PermanentSendError(f"slack: {error or f'HTTP {status}'}")


class SlackChannel(Channel):
    """One Slack app: a bot token (one workspace or org install), HTTP or Socket Mode."""

    name = "slack"
    max_text_length = slack_format.SLACK_TEXT_LIMIT

    def __init__(
        self,
        bot_token: str,
        signing_secret: str,
        app_token: str = "",
        mode: Literal["http", "socket"] = "http",
        api_url: str = "https://slack.com/api/",
        *,
        progress_reaction: str = "eyes",
        messages_per_second: float = 1.0,
        burst: int = 4,
        cache_size: int = 10_000,
        timeout_seconds: float = 30.0,
    ) -> None:
        if not bot_token:
            raise ValueError("Slack needs a bot token (xoxb-...)")
        if mode not in ("http", "socket"):
            raise ValueError("Slack mode must be 'http' or 'socket'")
        if mode == "http" and not signing_secret:
            raise ValueError("Slack HTTP mode needs the signing secret")
        if mode == "socket" and not app_token:
            raise ValueError("Slack Socket Mode needs an app-level token (xapp-...)")
        self._bot_token = bot_token
        self._signing_secret = signing_secret
        self._app_token = app_token
        self._mode = mode
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._reaction = progress_reaction
        self._timeout = timeout_seconds
        self._pacer = Pacer(*average(messages_per_second, burst))
        self._profiles: LruDict[tuple[str, str], str] = LruDict(cache_size)
        self._threads: LruDict[str, bool] = LruDict(cache_size)
        self._bot_user_id: str | None = None
        self._bot_id: str | None = None
        self._team_id: str | None = None
        self._clients: dict[str, AsyncWebClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._socket: Any = None
        self._sink: EnvelopeSink | None = None
        self._app = self._build_app()

    # ------------------------------------------------------------------ Bolt wiring

    def _build_app(self) -> AsyncApp:
        # Bolt injects listener arguments by parameter name (and would pass `self` twice to
        # a bound method), so the listeners are closures over this adapter.
        async def authorize(
            enterprise_id: str | None, team_id: str | None, context: dict[str, Any]
        ) -> AuthorizeResult:
            """Authorization without a network call: the token we hold for this install."""
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id,
                bot_token=self._token_for(team_id or enterprise_id or ""),
                bot_user_id=self._bot_user_id or context.get(_AUTHZ_USER),
                bot_id=self._bot_id,
            )

        async def on_event(ack: Any, body: dict[str, Any], context: dict[str, Any]) -> None:
            self._collect(context, lambda: self._parse_event(body))
            await ack()

        async def on_action(ack: Any, body: dict[str, Any], context: dict[str, Any]) -> None:
            self._collect(context, lambda: self._parse_action(body))
            await ack()

        async def on_other(ack: Any) -> None:
            """Kinds we do not use: acknowledged so Slack does not retry them."""
            await ack()

        app = AsyncApp(
            name="gateway-slack",
            logger=_bolt_logger(),
            signing_secret=self._signing_secret,
            # A token-less client: Bolt only builds per-request clients from it; we send
            # with our own clients. The token comes from `authorize`.
            client=AsyncWebClient(base_url=self._api_url),
            authorize=authorize,
            process_before_response=True,
            # We drop our own messages ourselves, after noting the threads they are in.
            ignoring_self_events_enabled=False,
        )
        app.event("message")(on_event)
        app.event("app_mention")(on_event)
        app.event(re.compile(".*"))(on_other)
        app.block_action(re.compile(".*"))(on_action)
        for register in (app.action, app.shortcut, app.view, app.options, app.command):
            register(re.compile(".*"))(on_other)
        return app

    def _token_for(self, account: str) -> str:
        """The bot token of an installation. One token today; an OAuth store plugs in here."""
        return self._bot_token

    def _context(self, body: dict[str, Any]) -> ParseContext:
        return ParseContext(
            bot_user_id=self._bot_user_id or authorized_bot_user(body), bot_id=self._bot_id
        )

    def _parse_action(self, body: dict[str, Any]) -> list[Envelope]:
        user = (body.get("user") or {}).get("id", "")
        envelope = action_envelope(body, self._cached_name(account_of(body), user))
        return [envelope] if envelope else []

    def _collect(self, context: dict[str, Any], parse: Callable[[], list[Envelope]]) -> None:
        batch: _Batch | None = context.get(_BATCH)
        if batch is None:  # not our dispatch (cannot happen through receive/socket)
            return
        try:
            batch.envelopes.extend(parse())
        except MalformedPayload as exc:
            batch.error = exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            batch.error = MalformedPayload(f"unreadable Slack payload ({type(exc).__name__})")

    def _parse_event(self, body: dict[str, Any]) -> list[Envelope]:
        event = body.get("event")
        if not isinstance(event, dict):
            raise MalformedPayload("event_callback without an event object")
        ctx = self._context(body)
        if event.get("subtype") == "message_changed":
            new = event.get("message") if isinstance(event.get("message"), dict) else {}
            name = self._cached_name(account_of(body), str(new.get("user") or ""))
            edit = edit_envelope(body, ctx, name)
            return [edit] if edit else []
        view = message_view(body, ctx)
        if view is None:
            self._note_bot_thread(body, ctx)
            return []
        thread_key = self._thread_key(view.account, view.channel, view.thread_ts or view.ts)
        in_bot_thread = bool(view.thread_ts) and (
            thread_key in self._threads
            or bool(ctx.bot_user_id and event.get("parent_user_id") == ctx.bot_user_id)
        )
        envelope = message_envelope(
            body, view, ctx, in_bot_thread, self._cached_name(view.account, view.user)
        )
        if envelope.mentioned and envelope.conversation.is_group and envelope.thread_id:
            self._threads.set(
                self._thread_key(view.account, view.channel, envelope.thread_id), True
            )
        return [envelope]

    def _note_bot_thread(self, body: dict[str, Any], ctx: ParseContext) -> None:
        """Our own messages are dropped, but the threads they are in are the bot's threads."""
        event = body.get("event") or {}
        ours = (ctx.bot_user_id and event.get("user") == ctx.bot_user_id) or (
            self._bot_id and event.get("bot_id") == self._bot_id
        )
        if (
            ours
            and isinstance(event.get("thread_ts"), str)
            and isinstance(event.get("channel"), str)
        ):
            key = self._thread_key(account_of(body), event["channel"], event["thread_ts"])
            self._threads.set(key, True)

    @staticmethod
    def _thread_key(account: str, channel: str, thread_ts: str) -> str:
        return f"{account}:{channel}:{thread_ts}"

    def _cached_name(self, account: str, user: str) -> str | None:
        return self._profiles.get((account, user)) if user else None

    async def _dispatch(self, request: AsyncBoltRequest) -> tuple[_Batch, BoltResponse]:
        batch = _Batch()
        request.context[_BATCH] = batch
        request.context[_AUTHZ_USER] = authorized_bot_user(request.body)
        response = await self._app.async_dispatch(request)
        return batch, response

    # ------------------------------------------------------------------ inbound (HTTP)

    async def receive(self, request: Request) -> Received:
        if not self._signing_secret:
            raise VerificationFailed("Slack webhooks are off (no signing secret)", 403)
        if request.method != "POST":
            return Received(response=Response(status_code=405))
        raw = await request.body()
        try:
            bolt_request = AsyncBoltRequest(
                body=raw.decode("utf-8"),
                query=request.url.query,
                headers=dict(request.headers.items()),
            )
        except Exception as exc:  # undecodable body: authentic junk is 400, the rest 401
            self._verify_or_raise(raw, request)
            raise MalformedPayload(f"unreadable Slack body ({type(exc).__name__})") from None
        batch, response = await self._dispatch(bolt_request)
        if response.status == 401:
            raise VerificationFailed("bad Slack signature or stale timestamp")
        if batch.error is not None:
            raise batch.error
        if response.status >= 500:
            raise MalformedPayload("Slack payload could not be handled")
        if response.status == 404:  # no listener matched: not an event or interaction we know
            if bolt_request.body.get("type") == "event_callback":
                raise MalformedPayload("event_callback without a usable event")
            return Received(response=Response(status_code=200))  # unknown kinds: ignore
        return Received(envelopes=batch.envelopes, response=to_starlette_response(response))

    def _verify_or_raise(self, raw: bytes, request: Request) -> None:
        """Slack's v0 check on raw bytes, for bodies Bolt cannot even parse.

        (slack_sdk's verifier decodes the body as UTF-8 first and would raise instead.)
        """
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        try:
            fresh = abs(time.time() - int(timestamp)) <= 5 * 60
        except ValueError:
            fresh = False
        base = b"v0:" + timestamp.encode() + b":" + raw
        expected = "v0=" + hmac.new(self._signing_secret.encode(), base, hashlib.sha256).hexdigest()
        if not fresh or not hmac.compare_digest(expected, signature):
            raise VerificationFailed("bad Slack signature or stale timestamp")

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: EnvelopeSink, state: ChannelState) -> None:
        """Learn who we are (one auth.test), and in Socket Mode connect the websocket."""
        await self._learn_identity()
        if self._mode != "socket":
            return
        from slack_sdk.socket_mode.aiohttp import SocketModeClient

        self._sink = sink
        self._socket = SocketModeClient(
            app_token=self._app_token,
            web_client=AsyncWebClient(base_url=self._api_url),
            logger=logging.getLogger("channels.slack.socket"),
        )
        self._socket.socket_mode_request_listeners.append(self._on_socket_request)
        await self._socket.connect()

    async def _learn_identity(self) -> None:
        client = await self._web()
        try:
            result = await client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            if error in _FATAL_AUTH:
                raise ChannelError(f"Slack rejected the bot token: {error}") from None
            log.warning("slack auth.test failed (%s); bot id comes from events", error)
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("slack auth.test unreachable (%s); bot id comes from events", exc)
            return
        self._bot_user_id = result.get("user_id")
        self._bot_id = result.get("bot_id")
        self._team_id = result.get("team_id")

    async def _on_socket_request(self, client: Any, req: Any) -> None:
        """One Socket Mode envelope: parse, store durably, and only then acknowledge.

        If storing fails we do not ack, so Slack delivers the event again.
        """
        from slack_bolt.adapter.socket_mode.async_internals import build_headers
        from slack_sdk.socket_mode.response import SocketModeResponse

        bolt_request = AsyncBoltRequest(
            mode="socket_mode", body=req.payload, headers=build_headers(req)
        )
        batch, response = await self._dispatch(bolt_request)
        if batch.error is not None:
            log.warning("slack socket mode: malformed %s payload: %s", req.type, batch.error)
        elif batch.envelopes and self._sink is not None:
            try:
                await self._sink(batch.envelopes)
            except Exception:
                log.exception("slack socket mode: storing failed; not acknowledging")
                return
        payload: dict[str, Any] | None = None
        body = response.body
        if response.status == 200 and body and body.startswith("{"):
            payload = json.loads(body)
        await client.send_socket_mode_response(
            SocketModeResponse(envelope_id=req.envelope_id, payload=payload)
        )

    async def stop(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            try:
                await socket.close()
            except Exception:  # closing a broken socket must not block shutdown
                log.debug("slack socket close failed", exc_info=True)
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def _web(self, account: str = "") -> AsyncWebClient:
        """The Web API client for an installation's token, on one pooled aiohttp session."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
            self._session_loop = loop
            self._clients.clear()
        token = self._token_for(account)
        client = self._clients.get(token)
        if client is None:
            client = AsyncWebClient(
                token=token,
                base_url=self._api_url,
                session=self._session,
                timeout=int(self._timeout),
                retry_handlers=[],  # the outbox retries with backoff; no hidden 1 s retry here
            )
            self._clients[token] = client
        return client

    # ------------------------------------------------------------------ outbound

    def render(self, markdown: str) -> list[str]:
        return slack_format.render(markdown, self.max_text_length)

    async def send(self, message: OutboundMessage) -> str:
        client = await self._web(message.account)
        channel = message.conversation.id
        await self._pacer.acquire(f"{message.account}:{channel}")
        try:
            if message.private_to and message.conversation.is_group:
                # Never into the group: visible to its owner only (Invariant 2).
                result = await client.chat_postEphemeral(
                    channel=channel,
                    user=message.private_to,
                    text=message.text,
                    thread_ts=message.thread_id,
                    mrkdwn=True,
                )
                return str(result.get("message_ts") or "")
            result = await client.chat_postMessage(
                channel=channel,
                text=message.text,
                thread_ts=message.thread_id,
                mrkdwn=True,
                unfurl_links=False,  # crawlers must not open one-time connect links
            )
        except SlackApiError as exc:
            raise _map_error(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientSendError(f"slack: network ({type(exc).__name__})") from None
        if message.thread_id:
            self._threads.set(self._thread_key(message.account, channel, message.thread_id), True)
        return str(result.get("ts") or "")

    async def open_private(self, account: str, user_id: str) -> Conversation | None:
        client = await self._web(account)
        try:
            result = await client.conversations_open(users=user_id)
        except SlackApiError as exc:
            error = _map_error(exc)
            if isinstance(error, PermanentSendError):
                log.info("slack: cannot open a DM (%s)", error)
                return None
            raise error from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientSendError(f"slack: network ({type(exc).__name__})") from None
        channel = result.get("channel") or {}
        return Conversation(id=str(channel["id"]), is_group=False) if channel.get("id") else None

    async def typing(self, envelope: Envelope) -> None:
        """An :eyes: reaction on the message while the turn runs; warm the profile cache."""
        work = [self._warm_profile(envelope.account, envelope.sender.id)]
        if envelope.kind == Kind.MESSAGE and envelope.native_message_id:
            work.append(self._react("reactions_add", envelope))
        await asyncio.gather(*work)

    async def done(self, envelope: Envelope) -> None:
        if envelope.kind == Kind.MESSAGE and envelope.native_message_id:
            await self._react("reactions_remove", envelope)

    async def _react(self, method: str, envelope: Envelope) -> None:
        client = await self._web(envelope.account)
        try:
            await getattr(client, method)(
                channel=envelope.conversation.id,
                timestamp=envelope.native_message_id,
                name=self._reaction,
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("slack %s failed: %s", method, type(exc).__name__)  # best effort

    async def _warm_profile(self, account: str, user_id: str) -> None:
        if not user_id or self._profiles.get((account, user_id)) is not None:
            return
        client = await self._web(account)
        try:
            result = await client.users_info(user=user_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("slack users.info failed: %s", type(exc).__name__)
            return
        user = result.get("user") or {}
        profile = user.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or user.get("real_name")
        if name:
            self._profiles.set((account, user_id), str(name))

    async def profile_name(self, account: str, user_id: str) -> str | None:
        """The user's display name (cached; one users.info call the first time)."""
        await self._warm_profile(account, user_id)
        return self._cached_name(account, user_id)

    # ------------------------------------------------------------------ media

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        if attachment.size is not None and attachment.size > max_bytes:
            raise ChannelError(f"attachment is {attachment.size} bytes, limit {max_bytes}")
        url = attachment.ref or ""
        if url.startswith(FILE_INFO_PREFIX):
            url = await self._file_url(url.removeprefix(FILE_INFO_PREFIX))
        await self._web()
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._bot_token}"}
        for _ in range(4):  # follow a few redirects by hand, each to a Slack host only
            if not self._is_slack_host(url):
                raise ChannelError("refusing to send the Slack token to a non-Slack host")
            try:
                async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise ChannelError(f"slack file download failed: HTTP {resp.status}")
                    if resp.content_type == "text/html" and attachment.mime != "text/html":
                        raise ChannelError("slack answered with a login page (files:read scope?)")
                    return await self._read_capped(resp, max_bytes)
            except aiohttp.ClientError as exc:
                raise ChannelError(f"slack file download failed: {type(exc).__name__}") from None
        raise ChannelError("slack file download: too many redirects")

    @staticmethod
    async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise ChannelError(f"attachment is {resp.content_length} bytes, limit {max_bytes}")
        data = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            data.extend(chunk)
            if len(data) > max_bytes:
                raise ChannelError(f"attachment exceeds {max_bytes} bytes")
        return bytes(data)

    async def _file_url(self, file_id: str) -> str:
        client = await self._web()
        try:
            result = await client.files_info(file=file_id)
        except SlackApiError as exc:
            raise ChannelError(f"slack files.info failed: {_map_error(exc)}") from None
        info = result.get("file") or {}
        url = info.get("url_private_download") or info.get("url_private")
        if not url:
            raise ChannelError("slack file has no download URL")
        return str(url)

    def _is_slack_host(self, url: str) -> bool:
        """Files live on the API's domain or its subdomains (files.slack.com, GovSlack...)."""
        parts, api = urlsplit(url), urlsplit(self._api_url)
        host, api_host = (parts.hostname or "").lower(), (api.hostname or "").lower()
        if parts.scheme not in ("https", api.scheme) or not host:
            return False
        return host == api_host or host.endswith("." + api_host.removeprefix("api."))
