"""WhatsApp Cloud API adapter: verify and parse webhooks, send replies through pywa.

Inbound: the signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the app
secret) is checked here in constant time before anything is parsed, and the whole
batch is parsed by `channels.whatsapp_parse` (pywa would only see its first item).
Outbound, media and read receipts go through pywa's async client, pointed at the
configured Graph API base URL (pywa hard-codes graph.facebook.com on its httpx session;
we own that session and re-point its `base_url`, so tests and emulators work).

Recipients: a WhatsApp user is addressed by their business-scoped user id (BSUID, e.g.
`US.13491208655302741918`) in Meta's `recipient` field, or by phone number (`wa_id`) in
`to`. We decide which ourselves (digits only -> `to`, anything else -> `recipient`) and
call pywa's Graph API layer directly, because pywa's own classifier accepts only
all-digit BSUIDs while Meta documents them as alphanumeric.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from contextlib import aclosing
from typing import Any

import httpx
from pywa_async import WhatsApp
from pywa_async.errors import AuthorizationError, ThrottlingError, WhatsAppError
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from channels.base import (
    Channel,
    ChannelError,
    ConversationClosed,
    MalformedPayload,
    PermanentSendError,
    RateLimited,
    Received,
    SendError,
    TransientSendError,
    VerificationFailed,
)
from channels.envelope import Attachment, Conversation, Envelope, Kind, OutboundMessage
from channels.pacing import Pacer, average
from channels.whatsapp_format import MAX_TEXT_LENGTH, render_chunks
from channels.whatsapp_parse import parse_webhook

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-hub-signature-256"
THROTTLING_CODES = frozenset({4, 613, 80007, 130429, 131048, 131056, 131064})
"""Graph error codes that mean "slow down": retried with backoff."""
WINDOW_CLOSED = 131047
INVALID_TOKEN = 190
TRANSIENT_CODES = frozenset({1, 2, 131000, 131016})
_PHONE = re.compile(r"\+?\d{6,20}")


class WhatsAppChannel(Channel):
    """One WhatsApp business phone number on the Cloud API."""

    name = "whatsapp"
    max_text_length = MAX_TEXT_LENGTH

    def __init__(
        self,
        phone_number_id: str,
        token: str,
        app_secret: str,
        verify_token: str,
        graph_url: str = "https://graph.facebook.com",
        graph_version: str = "v26.0",
        media_max_bytes: int = 16 * 1024 * 1024,
        *,
        timeout: float = 30.0,
        pair_rate: float = 1 / 6,
        pair_burst: int = 20,
    ) -> None:
        self.phone_number_id = str(phone_number_id)
        # Meta's "pair rate limit": about one message per 6 s to one user, short bursts ok.
        self._pacer = Pacer(*average(pair_rate, pair_burst))
        self._app_secret = app_secret.encode()
        self._verify_token = verify_token.encode()
        self.media_max_bytes = media_max_bytes
        version = graph_version if graph_version.startswith("v") else f"v{graph_version}"
        self.base_url = f"{graph_url.rstrip('/')}/{version}"
        self._session = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._wa: WhatsApp | None = None
        if token:
            self._wa = WhatsApp(
                phone_id=self.phone_number_id,
                token=token,
                session=self._session,
                api_version=version.removeprefix("v"),
            )
            # pywa sets https://graph.facebook.com/v<version>; route it to the configured host.
            self._session.base_url = httpx.URL(self.base_url)

    # --- inbound ---------------------------------------------------------------------
    async def receive(self, request: Request) -> Received:
        if request.method == "GET":
            return self._handshake(request)
        body = await request.body()
        self.verify_signature(body, request.headers.get(SIGNATURE_HEADER))
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedPayload(f"webhook body is not JSON: {exc}") from None
        envelopes = parse_webhook(payload, self.phone_number_id)
        log.debug("whatsapp webhook: %d envelope(s)", len(envelopes))
        return Received(envelopes=envelopes)

    def verify_signature(self, body: bytes, header: str | None) -> None:
        """Raise VerificationFailed unless `header` is `sha256=<hex HMAC of body>`."""
        if not self._app_secret:
            raise VerificationFailed("WHATSAPP_APP_SECRET is not configured", 403)
        if not header:
            raise VerificationFailed("missing X-Hub-Signature-256 header", 401)
        scheme, _, digest = header.strip().partition("=")
        if scheme.lower() != "sha256" or not digest:
            raise VerificationFailed("malformed X-Hub-Signature-256 header", 403)
        expected = hmac.new(self._app_secret, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, digest.strip().lower().encode("utf-8", "replace")):
            raise VerificationFailed("X-Hub-Signature-256 does not match the body", 403)

    def _handshake(self, request: Request) -> Received:
        params = request.query_params
        token = params.get("hub.verify_token", "").encode("utf-8", "replace")
        token_ok = hmac.compare_digest(token, self._verify_token)
        if params.get("hub.mode") != "subscribe" or not self._verify_token or not token_ok:
            raise VerificationFailed("webhook subscription: wrong mode or verify token", 403)
        return Received(response=PlainTextResponse(params.get("hub.challenge", "")))

    # --- outbound --------------------------------------------------------------------
    def render(self, markdown: str) -> list[str]:
        return render_chunks(markdown, self.max_text_length)

    async def send(self, message: OutboundMessage) -> str:
        wa = self._client()
        target = message.private_to or message.conversation.id
        if not target:
            raise PermanentSendError("no recipient")
        if not message.text.strip():
            raise PermanentSendError("empty message")
        if len(message.text) > self.max_text_length:
            raise PermanentSendError(f"text longer than {self.max_text_length} characters")
        to, recipient = _address(target)
        await self._pacer.acquire(f"{message.account}:{target}")
        try:
            response = await wa.api.send_message(
                sender=message.account or self.phone_number_id,
                to=to,
                recipient=recipient,
                recipient_type="individual",
                typ="text",
                msg={"body": message.text, "preview_url": False},
                reply_to_message_id=message.reply_to_id,
            )
        except WhatsAppError as exc:
            raise _send_error(exc) from None
        except httpx.HTTPError as exc:
            raise TransientSendError(
                f"network error talking to the Graph API: {type(exc).__name__}"
            ) from None
        try:
            return str(response["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            # Accepted but unreadable: retrying would risk a duplicate message.
            raise PermanentSendError(
                "Graph API accepted the message without a message id"
            ) from None

    async def open_private(self, account: str, user_id: str) -> Conversation | None:
        """WhatsApp Cloud API chats are one-to-one: the user's chat is the private one."""
        return Conversation(id=user_id, is_group=False) if user_id else None

    async def typing(self, envelope: Envelope) -> None:
        """Mark the message read and show "typing..." (one call); never fails the turn."""
        if self._wa is None or envelope.kind == Kind.STATUS or not envelope.native_message_id:
            return
        try:
            await self._wa.indicate_typing(
                message_id=envelope.native_message_id,
                sender=envelope.account or self.phone_number_id,
            )
        except WhatsAppError as exc:
            log.warning("whatsapp typing indicator failed: Graph error %s", exc.code)
        except Exception as exc:  # best effort by design
            log.warning("whatsapp typing indicator failed: %s", type(exc).__name__)

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Media id -> short-lived URL -> bytes (bearer token), refusing oversize media."""
        wa = self._client()
        if not attachment.ref:
            raise ChannelError("attachment has no media id")
        limit = min(max_bytes, self.media_max_bytes)
        try:
            media = await wa.get_media_url(attachment.ref)
        except WhatsAppError as exc:
            raise ChannelError(f"media lookup failed: Graph error {exc.code}") from None
        except (httpx.HTTPError, KeyError) as exc:
            raise ChannelError(f"media lookup failed: {type(exc).__name__}") from None
        if media.file_size and media.file_size > limit:
            raise ChannelError(
                f"media is {media.file_size} bytes, over the size limit of {limit} bytes"
            )
        data = bytearray()
        try:
            async with aclosing(wa.stream_media(media.url)) as chunks:
                async for chunk in chunks:
                    data.extend(chunk)
                    if len(data) > limit:
                        raise ChannelError(f"media exceeds the size limit of {limit} bytes")
        except httpx.HTTPError as exc:
            raise ChannelError(f"media download failed: {type(exc).__name__}") from None
        return bytes(data)

    async def check(self) -> dict[str, Any]:
        """The phone number's details, proving the token and phone number id work."""
        if self._wa is None:
            raise ChannelError("WHATSAPP_TOKEN is not configured")
        try:
            return await self._wa.api.get_business_phone_number(
                phone_id=self.phone_number_id,
                fields=(
                    "verified_name",
                    "display_phone_number",
                    "quality_rating",
                    "code_verification_status",
                ),
            )
        except WhatsAppError as exc:
            hint = " (invalid or expired token)" if exc.code == INVALID_TOKEN else ""
            raise ChannelError(f"Graph API error {exc.code}{hint}: {exc.message}") from None
        except httpx.HTTPError as exc:
            raise ChannelError(
                f"cannot reach the Graph API at {self.base_url}: {type(exc).__name__}"
            ) from None

    async def stop(self) -> None:
        await self._session.aclose()

    def _client(self) -> WhatsApp:
        if self._wa is None:
            raise PermanentSendError("WHATSAPP_TOKEN is not configured")
        return self._wa


def _address(target: str) -> tuple[str | None, str | None]:
    """(to, recipient): phone numbers go in `to`, BSUIDs (`CC.xxxx`) in `recipient`."""
    if _PHONE.fullmatch(target):
        return target.lstrip("+"), None
    return None, target


def _send_error(exc: WhatsAppError) -> SendError:
    code, status = exc.code, exc.status_code or 0
    label = f"Graph API error {code} (HTTP {status or '?'}): {exc.message}"
    if (
        status == 429
        or code in THROTTLING_CODES
        or (isinstance(exc, ThrottlingError) and code != 133016)
    ):
        return RateLimited(label, retry_after=_retry_after(exc.raw_response))
    if code == WINDOW_CLOSED:
        log.warning(
            "whatsapp: the 24-hour customer service window is closed for this user; "
            "free-form replies are refused until they write again (a template message is "
            "needed to re-engage). Marked failed, not retried."
        )
        return ConversationClosed(f"re-engagement window closed: {label}")
    if code == INVALID_TOKEN or isinstance(exc, AuthorizationError):
        log.error(
            "whatsapp: the Graph API rejected the access token; check WHATSAPP_TOKEN (%s)", code
        )
        return PermanentSendError(f"invalid or expired access token: {label}")
    if status >= 500 or exc.is_transient or code in TRANSIENT_CODES:
        return TransientSendError(label)
    return PermanentSendError(label)


def _retry_after(response: httpx.Response | None) -> float | None:
    """Seconds to wait: `Retry-After`, else Meta's `estimated_time_to_regain_access` (minutes)."""
    if response is None:
        return None
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(float(header), 0.0)
        except ValueError:
            pass
    usage = response.headers.get("x-business-use-case-usage")
    if usage:
        try:
            minutes = [
                float(item.get("estimated_time_to_regain_access") or 0)
                for items in json.loads(usage).values()
                for item in items
            ]
        except (ValueError, AttributeError, TypeError):
            return None
        if minutes and max(minutes) > 0:
            return max(minutes) * 60.0
    return None
