"""A fake OpenAI-compatible LLM server: chat completions and audio transcriptions.

By default it echoes the user, answers a tool result by quoting it, and turns messages
matching a rule into a tool call, so tests read like conversations. Tests can also
queue exact responses, failures and latency.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class ToolRule:
    """When the latest user text contains `contains`, call `tool` with `arguments`."""

    contains: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scripted:
    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.transcriptions: list[dict[str, Any]] = []
        self.rules: list[ToolRule] = []
        self.queue: deque[Scripted] = deque()
        self.delay = 0.0
        self.fail_status: int | None = None
        self.models_status = 200  # what GET /v1/models answers (readiness probes)
        self.transcript = "this is the transcribed voice note"
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # --- scripting ---------------------------------------------------------------
    def reply(self, content: str, *, delay: float = 0.0) -> None:
        self.queue.append(Scripted(content=content, delay=delay))

    def call_tool(self, tool: str, arguments: dict[str, Any]) -> None:
        self.queue.append(Scripted(tool_calls=[(tool, arguments)]))

    def fail(self, status: int = 500) -> None:
        self.queue.append(Scripted(status=status))

    def on(self, contains: str, tool: str, arguments: dict[str, Any] | None = None) -> None:
        self.rules.append(ToolRule(contains, tool, arguments or {}))

    # --- HTTP -------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        if self.models_status != 200:
            return JSONResponse({"error": {"message": "overloaded"}}, self.models_status)
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.queue.popleft() if self.queue else None
        try:
            delay = scripted.delay if scripted and scripted.delay else self.delay
            if delay:
                await asyncio.sleep(delay)
            status = scripted.status if scripted else (self.fail_status or 200)
            if status != 200:
                return JSONResponse(
                    {"error": {"message": "fake failure", "type": "server_error", "code": status}},
                    status_code=status,
                )
            if scripted is not None:
                content, calls = scripted.content, scripted.tool_calls
            else:
                content, calls = self._default(body["messages"])
            return JSONResponse(_completion(body.get("model", "fake"), content, calls))
        finally:
            with self._lock:
                self.in_flight -= 1

    def _default(
        self, messages: list[dict[str, Any]]
    ) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
        last = messages[-1]
        if last["role"] == "tool":
            asked = next(
                _text_of(m.get("content")) for m in reversed(messages) if m["role"] == "user"
            )
            return f"Tool result for {asked!r}: {last['content']}", []
        text = _text_of(last.get("content"))
        for rule in self.rules:
            if rule.contains in text:
                return None, [(rule.tool, rule.arguments)]
        images = _image_count(last.get("content"))
        suffix = f" (+{images} image)" if images else ""
        return f"echo: {text}{suffix}", []

    async def _transcribe(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        self.transcriptions.append({"model": form.get("model"), "bytes": len(data)})
        return JSONResponse({"text": self.transcript})

    # --- reading what was asked -----------------------------------------------------
    def user_texts(self) -> list[str]:
        return [
            _text_of(r["messages"][-1].get("content"))
            for r in self.requests
            if r["messages"][-1]["role"] == "user"
        ]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _image_count(content: Any) -> int:
    if isinstance(content, list):
        return sum(1 for p in content if p.get("type") == "image_url")
    return 0


def _completion(
    model: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
