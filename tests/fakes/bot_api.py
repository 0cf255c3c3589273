"""A local fake of the Telegram Bot API speaking its real HTTP shapes.

Serve it with `serve_bot_api()` (or `tests.fakes.server.serve(fake.app)`) and point
python-telegram-bot at it with `Bot(token, base_url=f"{url}/bot", base_file_url=
f"{url}/file/bot")` — or the gateway, through `TELEGRAM_API_URL=url`.

It records every call, keeps a `getUpdates` queue with the real offset semantics
(updates below the offset are confirmed and forgotten; long polls wait on a condition,
never a sleep), refuses `getUpdates` while a webhook is set (409, like Telegram), checks
`parse_mode=HTML` text the way Telegram does (unknown tags, unbalanced tags, bare `&`
are rejected with "can't parse entities"), serves files, and can be scripted to fail
with the Bot API's real error bodies (429 with `retry_after`, 403 blocked, 400, 5xx).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import serve

TOKEN = "7000000001:AAH4kT3st-Tok3n_for_the_fake_bot_api"
BOT_ID = 7000000001
BOT_USERNAME = "gateway_test_bot"
FILE_SIZE_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit

BLOCKED = "Forbidden: bot was blocked by the user"
NOT_STARTED = "Forbidden: bot can't initiate conversation with a user"
KICKED = "Forbidden: bot was kicked from the supergroup chat"

# Parameters PTB sends JSON-encoded inside form fields.
_JSON_FIELDS = {
    "reply_parameters",
    "allowed_updates",
    "commands",
    "reply_markup",
    "link_preview_options",
    "entities",
    "caption_entities",
    "scope",
}
_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "tg-emoji",
    "code",
    "pre",
    "blockquote",
}
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class HTMLParseError(ValueError):
    """Telegram's "can't parse entities" (the text after the colon)."""


def parse_html(text: str) -> str:
    """Validate Telegram HTML like the Bot API does; return the visible text."""
    visible: list[str] = []
    stack: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        offset = len(text[:index].encode())
        if char == "<":
            end = text.find(">", index)
            if end < 0:
                raise HTMLParseError(f"Unclosed start tag at byte offset {offset}")
            tag = text[index + 1 : end]
            index = end + 1
            if tag.startswith("/"):
                name = tag[1:].strip().lower()
                if not stack:
                    raise HTMLParseError(f"Unexpected end tag at byte offset {offset}")
                if stack[-1] != name:
                    raise HTMLParseError(
                        f'Unmatched end tag at byte offset {offset}, expected "</{stack[-1]}>", '
                        f'found "</{name}>"'
                    )
                stack.pop()
                continue
            name, _, attrs = tag.partition(" ")
            name = name.lower()
            if name not in _TAGS:
                raise HTMLParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
            inside = stack[-1] if stack else ""
            if inside == "code" or (inside == "pre" and name != "code"):
                raise HTMLParseError(f"Entities can't be nested in code at byte offset {offset}")
            if name == "blockquote" and "blockquote" in stack:
                raise HTMLParseError(f"Blockquote entities can't be nested at byte offset {offset}")
            if name == "a" and not re.search(r'href="[^"]*"', attrs):
                raise HTMLParseError(f"Can't find href of the link at byte offset {offset}")
            stack.append(name)
            continue
        if char == "&":
            match = _ENTITY.match(text, index)
            if not match:
                raise HTMLParseError(
                    f"Can't find end of the entity starting at byte offset {offset}"
                )
            visible.append(html.unescape(match.group()))
            index = match.end()
            continue
        if char == ">":
            raise HTMLParseError(f"Unexpected end of name token at byte offset {offset}")
        visible.append(char)
        index += 1
    if stack:
        raise HTMLParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(visible)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str


@dataclass
class _Failure:
    error_code: int
    description: str
    parameters: dict[str, Any] | None
    times: int
    when: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class FakeFile:
    content: bytes
    path: str
    size: int
    unique_id: str


@dataclass
class FakeBotAPI:
    token: str = TOKEN
    username: str = BOT_USERNAME
    first_name: str = "Gateway Test Bot"
    long_poll: bool = True
    """With False, an empty getUpdates returns at once whatever its timeout."""
    url: str = ""

    calls: list[Call] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    forbidden: dict[int, str] = field(default_factory=dict)
    files: dict[str, FakeFile] = field(default_factory=dict)
    webhook: dict[str, Any] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bot_id = int(self.token.split(":")[0])
        self._updates: list[dict[str, Any]] = []
        self._failures: dict[str, list[_Failure]] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._message_ids = itertools.count(5000)
        self.app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._method, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"]),
            ]
        )

    # --- scripting ----------------------------------------------------------------------
    def push_update(self, *updates: dict[str, Any]) -> None:
        """Queue updates for getUpdates (as Telegram would, in update_id order)."""
        with self._cond:
            self._updates.extend(updates)
            self._updates.sort(key=lambda update: update["update_id"])
            self._cond.notify_all()

    @property
    def pending(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._updates)

    def fail(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        parameters: dict[str, Any] | None = None,
        times: int = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Make the next `times` calls of `method` (matching `when`) fail like Telegram."""
        failure = _Failure(error_code, description, parameters, times, when)
        with self._cond:
            self._failures.setdefault(method.lower(), []).append(failure)

    def rate_limit(self, method: str = "sendMessage", retry_after: int = 1, times: int = 1) -> None:
        self.fail(
            method,
            429,
            f"Too Many Requests: retry after {retry_after}",
            parameters={"retry_after": retry_after},
            times=times,
        )

    def fail_parse_entities(self, times: int = 1) -> None:
        """Reject the next HTML sends as Telegram does when it cannot parse the markup."""
        self.fail(
            "sendMessage",
            400,
            'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 0',
            times=times,
            when=lambda params: params.get("parse_mode") == "HTML",
        )

    def block(self, chat_id: int | str, description: str = BLOCKED) -> None:
        """This chat answers 403 from now on (blocked, never started, kicked)."""
        self.forbidden[int(chat_id)] = description

    def add_file(
        self, file_id: str, content: bytes, *, path: str | None = None, size: int | None = None
    ) -> FakeFile:
        fake = FakeFile(
            content,
            path or f"documents/{file_id}.bin",
            len(content) if size is None else size,
            f"u_{file_id}",
        )
        self.files[file_id] = fake
        return fake

    def close(self) -> None:
        """Release pending long polls so the server can stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # --- inspection ---------------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [call for call in self.calls if call.method.lower() == method.lower()]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (without polling sleeps) until `predicate()` holds after some call."""

        def _wait() -> bool:
            with self._cond:
                return self._cond.wait_for(predicate, within)

        if not await asyncio.to_thread(_wait):
            raise TimeoutError("condition not reached on the fake Bot API")

    @property
    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # --- HTTP -----------------------------------------------------------------------------
    async def _method(self, request: Request) -> Response:
        token = request.path_params["token"]
        method = request.path_params["method"]
        params = await _params(request)
        with self._cond:
            self.calls.append(Call(method, params, token))
            self._cond.notify_all()
        if token != self.token:
            return _error(401, "Unauthorized")
        failure = self._next_failure(method, params)
        if failure is not None:
            return _error(failure.error_code, failure.description, failure.parameters)
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return _error(404, "Not Found")
        result = await handler(params)
        if isinstance(result, Response):
            return result
        return JSONResponse({"ok": True, "result": result})

    def _next_failure(self, method: str, params: dict[str, Any]) -> _Failure | None:
        with self._cond:
            queue = self._failures.get(method.lower(), [])
            for failure in queue:
                if failure.when is None or failure.when(params):
                    failure.times -= 1
                    if failure.times <= 0:
                        queue.remove(failure)
                    return failure
        return None

    async def _download(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return _error(404, "Not Found")
        path = request.path_params["path"]
        for fake in self.files.values():
            if fake.path == path:
                return Response(fake.content, media_type="application/octet-stream")
        return _error(404, "Not Found")

    # --- methods ----------------------------------------------------------------------------
    async def _m_getme(self, params: dict[str, Any]) -> Any:
        return self.bot_user

    async def _m_setmycommands(self, params: dict[str, Any]) -> Any:
        self.commands = list(params.get("commands") or [])
        return True

    async def _m_sendchataction(self, params: dict[str, Any]) -> Any:
        chat_id = _int(params.get("chat_id"))
        if chat_id in self.forbidden:
            return _error(403, self.forbidden[chat_id])
        return True

    async def _m_answercallbackquery(self, params: dict[str, Any]) -> Any:
        if not params.get("callback_query_id"):
            return _error(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        return True

    async def _m_sendmessage(self, params: dict[str, Any]) -> Any:
        chat_id = _int(params.get("chat_id"))
        if chat_id in self.forbidden:
            return _error(403, self.forbidden[chat_id])
        text = str(params.get("text") or "")
        parse_mode = params.get("parse_mode")
        if parse_mode == "HTML":
            try:
                visible = parse_html(text)
            except HTMLParseError as exc:
                return _error(400, f"Bad Request: can't parse entities: {exc}")
        else:
            visible = text
        if not visible.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(visible) > 4096:
            return _error(400, "Bad Request: message is too long")
        reply = params.get("reply_parameters") or {}
        reply_to = reply.get("message_id") or params.get("reply_to_message_id")
        thread_id = params.get("message_thread_id")
        message_id = next(self._message_ids)
        record = {
            "message_id": message_id,
            "chat_id": chat_id,
            "text": visible,
            "html": text,
            "parse_mode": parse_mode,
            "message_thread_id": _int(thread_id) if thread_id else None,
            "reply_to_message_id": _int(reply_to) if reply_to else None,
            "allow_sending_without_reply": reply.get("allow_sending_without_reply"),
        }
        with self._cond:
            self.sent.append(record)
            self._cond.notify_all()
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.bot_user,
            "date": int(time.time()),
            "chat": _chat(chat_id),
            "text": visible,
        }
        if thread_id:
            message.update(message_thread_id=_int(thread_id), is_topic_message=True)
        return message

    async def _m_getfile(self, params: dict[str, Any]) -> Any:
        fake = self.files.get(str(params.get("file_id")))
        if fake is None:
            return _error(400, "Bad Request: invalid file_id")
        if fake.size > FILE_SIZE_LIMIT:
            return _error(400, "Bad Request: file is too big")
        return {
            "file_id": params["file_id"],
            "file_unique_id": fake.unique_id,
            "file_size": fake.size,
            "file_path": fake.path,
        }

    async def _m_setwebhook(self, params: dict[str, Any]) -> Any:
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(str(secret)):
            return _error(400, "Bad Request: secret token contains unallowed characters")
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            return _error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
        }
        if _true(params.get("drop_pending_updates")):
            with self._cond:
                self._updates.clear()
        return True

    async def _m_deletewebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = {}
        if _true(params.get("drop_pending_updates")):
            with self._cond:
                self._updates.clear()
        return True

    async def _m_getwebhookinfo(self, params: dict[str, Any]) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }
        if self.webhook.get("url"):
            info["max_connections"] = 40
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _m_getupdates(self, params: dict[str, Any]) -> Any:
        if self.webhook.get("url"):
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int(params.get("offset") or 0)
        limit = _int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        allowed = params.get("allowed_updates") or None
        batch = self._take(offset, limit, allowed)
        if not batch and timeout > 0 and self.long_poll:

            def _wait() -> None:
                with self._cond:
                    self._cond.wait_for(lambda: bool(self._updates) or self._closing, timeout)

            await asyncio.to_thread(_wait)
            batch = self._take(offset, limit, allowed)
        return batch

    def _take(self, offset: int, limit: int, allowed: list[str] | None) -> list[dict[str, Any]]:
        with self._cond:
            if offset < 0:
                self._updates = self._updates[offset:]
            elif offset:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if allowed:
                self._updates = [u for u in self._updates if set(u) & set(allowed)]
            return list(self._updates[:limit])


@contextmanager
def serve_bot_api(fake: FakeBotAPI | None = None) -> Iterator[FakeBotAPI]:
    """Run a fake Bot API on 127.0.0.1 (ephemeral port); `fake.url` is its base URL."""
    fake = fake or FakeBotAPI()
    with serve(fake.app) as server:
        fake.url = server.url
        try:
            yield fake
        finally:
            fake.close()


async def _params(request: Request) -> dict[str, Any]:
    """Query string, JSON body, urlencoded or multipart form — all as PTB may send them."""
    params: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if "application/json" in content_type:
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
        return params
    if "form" in content_type:
        form = await request.form()
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                params[key] = await value.read()
            elif key in _JSON_FIELDS:
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    params[key] = value
            else:
                params[key] = value
    return params


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=code)


def _chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "User"}
    return {"id": chat_id, "type": "supergroup", "title": "Group"}


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"
