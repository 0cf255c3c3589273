"""A fake Slack Web API (and Socket Mode websocket) speaking Slack's real HTTP shapes.

Serve it with `tests.fakes.server.serve(fake.app)` and point slack_sdk at
`f"{srv.url}/api/"`. Every call is recorded (method, params, headers). Script failures
per method with `fail(method, error=..., status=..., retry_after=...)`: each scripted
failure answers one call, in order, then normal service resumes.

Slack's client is aiohttp and sends form-encoded or JSON bodies: both are accepted.
Socket Mode: `await fake.socket.start()` (an aiohttp websocket server in the test's loop);
`apps.connections.open` then returns its URL, and `fake.socket.push(payload)` delivers an
envelope and waits for the client's acknowledgement.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM_ID = "T0001"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slack"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def encode(payload: dict[str, Any]) -> tuple[bytes, str]:
    """Body and content type as Slack sends them: interactions form-encoded, events JSON."""
    if payload.get("type") in ("block_actions", "view_submission", "shortcut", "message_action"):
        return urlencode(
            {"payload": json.dumps(payload)}
        ).encode(), "application/x-www-form-urlencoded"
    return json.dumps(payload).encode(), "application/json"


def signed_headers(
    body: bytes,
    content_type: str,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    retry: int | None = None,
) -> dict[str, str]:
    """Headers with Slack's v0 signature (HMAC-SHA256 of `v0:{timestamp}:{body}`)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    try:
        signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    except UnicodeDecodeError:  # slack_sdk decodes first; sign raw bytes like Slack would
        base = b"v0:" + ts.encode() + b":" + body
        signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    headers = {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": signature or "",
    }
    if retry is not None:
        headers["x-slack-retry-num"] = str(retry)
        headers["x-slack-retry-reason"] = "http_timeout"
    return headers


def make_request(body: bytes, headers: dict[str, str], method: str = "POST") -> Request:
    """A Starlette request exactly as the gateway's route hands it to `receive()`."""
    scope = {
        "type": "http",
        "method": method,
        "path": "/webhooks/slack",
        "raw_path": b"/webhooks/slack",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
        "scheme": "http",
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def signed_request(payload: dict[str, Any], **kwargs: Any) -> Request:
    body, content_type = encode(payload)
    return make_request(body, signed_headers(body, content_type, **kwargs))


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def token(self) -> str:
        return self.headers.get("authorization", "").removeprefix("Bearer ").strip()


@dataclass
class _Failure:
    error: str
    status: int = 200
    retry_after: float | None = None


@dataclass
class Posted:
    channel: str
    text: str
    ts: str
    thread_ts: str | None
    user: str | None = None  # set for ephemeral messages
    ephemeral: bool = False


@dataclass
class FakeSlack:
    """State of the fake workspace; the ASGI app is `self.app`."""

    bot_token: str = BOT_TOKEN
    app_token: str = APP_TOKEN
    team_id: str = TEAM_ID
    bot_user_id: str = BOT_USER_ID
    bot_id: str = BOT_ID
    calls: list[Call] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    reactions: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    file_infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_url: str = ""  # set by the test once served, for file URLs
    socket: SocketModeFake | None = None
    _failures: dict[str, list[_Failure]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clock: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["GET", "POST"]),
                Route("/files-pri/{team}/{name:path}", self._download, methods=["GET"]),
            ]
        )

    # ---------------------------------------------------------------- scripting

    def fail(
        self, method: str, error: str, status: int = 200, retry_after: float | None = None
    ) -> None:
        """The next call of `method` answers {"ok": false, "error": error} (HTTP `status`)."""
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(error, status, retry_after))

    def add_user(self, user_id: str, display_name: str, real_name: str = "") -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": display_name.lower(),
            "real_name": real_name or display_name,
            "profile": {"display_name": display_name, "real_name": real_name or display_name},
        }

    def add_file(self, name: str, content: bytes, mime: str = "application/octet-stream") -> str:
        """Host a file; returns its url_private_download (needs the bot token)."""
        self.files[name] = (content, mime)
        return f"{self.base_url}/files-pri/{self.team_id}-F0/{name}"

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def texts(self, channel: str) -> list[str]:
        """What was posted (not ephemerally) into one channel, in order."""
        return [p.text for p in self.posted if p.channel == channel and not p.ephemeral]

    # ---------------------------------------------------------------- HTTP

    async def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query_params)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        elif request.method == "POST":
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await self._params(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = Call(method, params, headers)
        with self._lock:
            self.calls.append(call)
            failures = self._failures.get(method)
            failure = failures.pop(0) if failures else None
        if failure is not None:
            extra = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after else {}
            return JSONResponse(
                {"ok": False, "error": failure.error}, status_code=failure.status, headers=extra
            )
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if call.token != expected:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return JSONResponse({"ok": False, "error": "unknown_method"})
        return JSONResponse(await handler(params))

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    async def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake Team",
            "user": "gateway",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    async def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, text = params.get("channel"), params.get("text")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not text:
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        thread_ts = params.get("thread_ts") or None
        with self._lock:
            self.posted.append(Posted(channel, text, ts, thread_ts))
        message = {"type": "message", "text": text, "user": self.bot_user_id, "ts": ts}
        if thread_ts:
            message["thread_ts"] = thread_ts
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    async def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, user = params.get("channel"), params.get("user")
        if not channel or not user:
            return {"ok": False, "error": "user_not_in_channel"}
        ts = self._next_ts()
        with self._lock:
            self.posted.append(
                Posted(
                    channel, params.get("text", ""), ts, params.get("thread_ts") or None, user, True
                )
            )
        return {"ok": True, "message_ts": ts}

    async def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users") or "")
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        if "," in users:
            return {"ok": True, "channel": {"id": "G" + users.replace(",", "")[:9]}}
        return {"ok": True, "channel": {"id": "D" + users.lstrip("UW")[:9] + "DM"}}

    async def _m_reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (str(params.get("channel")), str(params.get("timestamp")))
        with self._lock:
            names = self.reactions.setdefault(key, set())
            if params.get("name") in names:
                return {"ok": False, "error": "already_reacted"}
            names.add(str(params.get("name")))
        return {"ok": True}

    async def _m_reactions_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (str(params.get("channel")), str(params.get("timestamp")))
        with self._lock:
            names = self.reactions.get(key, set())
            if params.get("name") not in names:
                return {"ok": False, "error": "no_reaction"}
            names.discard(str(params.get("name")))
        return {"ok": True}

    async def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user")))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    async def _m_files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        info = self.file_infos.get(str(params.get("file")))
        return {"ok": True, "file": info} if info else {"ok": False, "error": "file_not_found"}

    async def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.socket is None or not self.socket.url:
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"ok": True, "url": self.socket.url}

    async def _download(self, request: Request) -> Response:
        with self._lock:
            self.calls.append(Call("files.download", {}, dict(request.headers.items())))
        if request.headers.get("authorization") != f"Bearer {self.bot_token}":
            # Real Slack answers an HTML login page with 200 when the token is missing.
            return Response("<html>sign in</html>", media_type="text/html")
        item = self.files.get(request.path_params["name"])
        if item is None:
            return Response("not found", status_code=404)
        return Response(item[0], media_type=item[1])


class SocketModeFake:
    """Slack's Socket Mode websocket: hello, envelopes, and the client's acks.

    An aiohttp server in the test's own loop (uvicorn here has no websocket library).
    """

    def __init__(self) -> None:
        self.url = ""
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self._ws: web.WebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._ack_events: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/link", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/link"

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_connected(self) -> None:
        async with asyncio.timeout(10):
            await self._connected.wait()

    async def push(self, payload: dict[str, Any], kind: str = "events_api", retry: int = 0) -> str:
        """Send one envelope; returns its envelope_id."""
        assert self._ws is not None, "no client connected"
        envelope_id = str(uuid.uuid4())
        self._ack_events[envelope_id] = asyncio.Event()
        await self._ws.send_str(
            json.dumps(
                {
                    "envelope_id": envelope_id,
                    "type": kind,
                    "accepts_response_payload": kind != "events_api",
                    "retry_attempt": retry,
                    "retry_reason": "timeout" if retry else "",
                    "payload": payload,
                }
            )
        )
        return envelope_id

    async def wait_ack(self, envelope_id: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            await self._ack_events[envelope_id].wait()
        return self.acks[envelope_id]

    def acked(self, envelope_id: str) -> bool:
        return envelope_id in self.acks

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        self.connections += 1
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A0001"},
                }
            )
        )
        self._connected.set()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                envelope_id = data.get("envelope_id")
                if envelope_id in self._ack_events:
                    self.acks[envelope_id] = data
                    self._ack_events[envelope_id].set()
        return ws
