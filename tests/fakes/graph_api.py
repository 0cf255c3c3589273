"""A local fake of the WhatsApp Cloud API (Graph API) speaking its real HTTP shapes.

Serve `FakeGraphAPI().app` with `tests.fakes.server.serve` and point pywa (or the gateway,
through `WHATSAPP_GRAPH_URL`) at `srv.url`. It records every send, mark-read and typing
call, serves media behind the bearer token like Meta's lookaside URLs, answers the phone
number lookup the `check` command uses, and can be scripted to fail the next sends with
Meta's real error bodies (throttling, re-engagement window closed, invalid token, 5xx).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

THROTTLING_CODES = (4, 80007, 130429, 131048, 131056)

_ERRORS: dict[int, tuple[int, str, str | None]] = {
    # code: (http status, message, error_data.details)
    4: (400, "(#4) Application request limit reached", None),
    80007: (
        400,
        "(#80007) Rate limit issues",
        "The WhatsApp Business Account has reached its rate limit.",
    ),
    130429: (400, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
    131048: (
        400,
        "(#131048) Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be sent "
        "from this phone number. This may be because too many previous messages were blocked or "
        "flagged as spam.",
    ),
    131056: (
        400,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone number "
        "in a short period of time.",
    ),
    131047: (
        400,
        "(#131047) Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    ),
    190: (401, "Error validating access token: Session has expired.", None),
    131000: (500, "(#131000) Something went wrong", "Something went wrong."),
    100: (400, "(#100) Invalid parameter", None),
}


def graph_error(code: int, *, message: str | None = None) -> dict[str, Any]:
    """The `{"error": {...}}` body Meta returns for `code`."""
    _, default_message, details = _ERRORS.get(code, (400, f"(#{code}) Error", None))
    error: dict[str, Any] = {
        "message": message or default_message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "A" + uuid.uuid4().hex[:22],
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if code == 190:
        error["error_subcode"] = 463
    if code == 4:
        error["is_transient"] = True
    return {"error": error}


@dataclass
class _Failure:
    code: int | None  # Graph error code; None for a bare HTTP status
    http_status: int
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class FakeGraphAPI:
    token: str = "test-token"
    phone_number_id: str = "106540352242922"
    display_phone_number: str = "15550783881"
    verified_name: str = "Test Assistant"

    sent: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of accepted message sends (text and other types), in arrival order."""
    reads: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of mark-as-read / typing-indicator calls."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every request, including rejected ones."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of sends answered with a scripted error."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._read_failures: list[_Failure] = []
        self._media: dict[str, tuple[bytes, str, int | None]] = {}
        self._counter = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/whatsapp_business/attachments/", self._download, methods=["GET"]),
                Route("/{version}/{phone_id}/messages", self._messages, methods=["POST"]),
                Route("/{version}/{object_id}", self._get_object, methods=["GET"]),
            ]
        )

    # --- scripting ----------------------------------------------------------------
    def reset(self) -> None:
        """Forget every recorded call, scripted failure and media (to share one server)."""
        with self._lock:
            for record in (self.sent, self.reads, self.calls, self.rejected):
                record.clear()
            self._failures.clear()
            self._read_failures.clear()
            self._media.clear()

    def fail_next(
        self,
        code: int | None = 130429,
        *,
        times: int = 1,
        http_status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` message sends with Graph error `code` (or a bare
        `http_status` when code is None), optionally with a Retry-After header or others
        (e.g. Meta's X-Business-Use-Case-Usage)."""
        status = http_status or _ERRORS.get(code or 0, (400, "", None))[0]
        body = graph_error(code) if code is not None else None
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = f"{retry_after:g}"
        with self._lock:
            self._failures.extend(_Failure(code, status, extra, body) for _ in range(times))

    def fail_next_read(self, code: int = 131000, *, times: int = 1) -> None:
        """Answer the next mark-read/typing calls with an error."""
        status = _ERRORS.get(code, (400, "", None))[0]
        with self._lock:
            self._read_failures.extend(
                _Failure(code, status, {}, graph_error(code)) for _ in range(times)
            )

    def add_media(
        self,
        data: bytes,
        mime_type: str,
        media_id: str | None = None,
        *,
        reported_size: int | None = None,
    ) -> str:
        """Store media to serve; `reported_size` makes the lookup lie about file_size."""
        media_id = media_id or str(10**15 + next(self._counter))
        with self._lock:
            self._media[media_id] = (data, mime_type, reported_size)
        return media_id

    def texts(self, recipient: str | None = None) -> list[str]:
        """Bodies of text messages sent (to one recipient, BSUID or phone, when given)."""
        with self._lock:
            return [
                m["text"]["body"]
                for m in self.sent
                if m.get("type") == "text"
                and (recipient is None or recipient in (m.get("to"), m.get("recipient")))
            ]

    # --- handlers -------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.token}"

    def _record(self, request: Request) -> None:
        with self._lock:
            self.calls.append((request.method, request.url.path))

    async def _messages(self, request: Request) -> Response:
        self._record(request)
        if not self._authorized(request):
            return JSONResponse(graph_error(190, message="Invalid OAuth access token."), 401)
        if request.path_params["phone_id"] != self.phone_number_id:
            return JSONResponse(_unknown_object(request.path_params["phone_id"]), 400)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(graph_error(100, message="Invalid JSON body"), 400)
        if body.get("messaging_product") != "whatsapp":
            return JSONResponse(
                graph_error(100, message="(#100) The parameter messaging_product is required."), 400
            )
        if body.get("status") == "read":
            return self._read(body)
        return self._send(body)

    def _read(self, body: dict[str, Any]) -> Response:
        with self._lock:
            failure = self._read_failures.pop(0) if self._read_failures else None
            if failure is None:
                self.reads.append(body)
        if failure is not None:
            return JSONResponse(failure.body, failure.http_status)
        if not body.get("message_id"):
            return JSONResponse(graph_error(100, message="(#100) message_id is required"), 400)
        return JSONResponse({"success": True})

    def _send(self, body: dict[str, Any]) -> Response:
        to, recipient = body.get("to"), body.get("recipient")
        if not to and not recipient:
            return JSONResponse(
                graph_error(100, message="(#100) The parameter to or recipient is required."), 400
            )
        if body.get("type") == "text":
            text = (body.get("text") or {}).get("body", "")
            if len(text) > 4096:
                return JSONResponse(
                    graph_error(
                        100,
                        message="(#100) Param text['body'] must be at most 4096 characters long.",
                    ),
                    400,
                )
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                self.rejected.append(body)
            else:
                self.sent.append(body)
                number = next(self._counter)
        if failure is not None:
            if failure.body is None:
                return Response("upstream trouble", failure.http_status, headers=failure.headers)
            return JSONResponse(failure.body, failure.http_status, headers=failure.headers)
        contact = {"input": to, "wa_id": to} if to else {"input": recipient, "user_id": recipient}
        wamid = (
            "wamid."
            + base64.b64encode(f"fake-{number:012d}-{uuid.uuid4().hex[:8]}".encode()).decode()
        )
        return JSONResponse(
            {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
        )

    async def _get_object(self, request: Request) -> Response:
        self._record(request)
        if not self._authorized(request):
            return JSONResponse(graph_error(190, message="Invalid OAuth access token."), 401)
        object_id = request.path_params["object_id"]
        if object_id == self.phone_number_id:
            return JSONResponse(
                {
                    "verified_name": self.verified_name,
                    "code_verification_status": "VERIFIED",
                    "display_phone_number": self.display_phone_number,
                    "quality_rating": "GREEN",
                    "platform_type": "CLOUD_API",
                    "throughput": {"level": "STANDARD"},
                    "id": self.phone_number_id,
                }
            )
        with self._lock:
            media = self._media.get(object_id)
        if media is None:
            return JSONResponse(_unknown_object(object_id), 400)
        data, mime, reported_size = media
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "url": f"{base}/whatsapp_business/attachments/?mid={object_id}&ext=1&hash=fake",
                "mime_type": mime,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data) if reported_size is None else reported_size,
                "id": object_id,
            }
        )

    async def _download(self, request: Request) -> Response:
        self._record(request)
        if not self._authorized(request):
            return Response("Unauthorized", 401)
        with self._lock:
            media = self._media.get(request.query_params.get("mid", ""))
        if media is None:
            return Response("Not found", 404)
        data, mime, _ = media
        return Response(data, media_type=mime)


def _unknown_object(object_id: str) -> dict[str, Any]:
    body = graph_error(
        100,
        message=(
            f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation."
        ),
    )
    body["error"]["error_subcode"] = 33
    return body


def text_webhook(
    phone_number_id: str, user_id: str, name: str, native_id: str, text: str, timestamp: int
) -> bytes:
    """The body of Meta's webhook for one text message from a BSUID-keyed user."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": name}, "user_id": user_id}],
        "messages": [
            {
                "from_user_id": user_id,
                "id": native_id,
                "timestamp": str(timestamp),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(payload).encode()


def signed_headers(body: bytes, app_secret: str) -> dict[str, str]:
    """Headers Meta sends with a webhook body: X-Hub-Signature-256 over the raw bytes."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}
