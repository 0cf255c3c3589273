"""The LLM client: litellm, imported only when the first turn needs it (it costs ~2 s)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import httpx


class LLMError(Exception):
    """The model could not answer (timeout, provider error, bad response)."""


@dataclass(frozen=True)
class LLMConfig:
    model: str
    api_base: str = ""
    api_key: str = ""
    timeout: float = 60.0
    retries: int = 1
    transcription_model: str = ""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str


@dataclass
class Completion:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.raw_arguments},
                }
                for call in self.tool_calls
            ]
        return message


@cache
def _litellm() -> ModuleType:
    # Offline-safe: no price-map download, no model-hub lookups, no telemetry.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def warm_up() -> None:
    """Import litellm and what its first call imports lazily (the OpenAI SDK's resources).

    Run in a worker thread at start: on the event loop these imports stall every other
    request (webhook acks included) for seconds.
    """
    _litellm()
    import openai.resources  # noqa: F401


class LLM:
    def __init__(self, config: LLMConfig) -> None:
        self.config = config

    def _common(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.config.timeout, "max_retries": 0}
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        if self.config.api_key:
            kwargs["api_key"] = self.config.api_key
        return kwargs

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        litellm = _litellm()
        kwargs = self._common()
        kwargs["num_retries"] = self.config.retries
        if tools:
            kwargs["tools"] = tools
        try:
            response = await litellm.acompletion(
                model=self.config.model, messages=messages, **kwargs
            )
        except Exception as exc:  # litellm maps every provider failure to its own exceptions
            raise LLMError(f"{type(exc).__name__}: {exc}") from exc
        try:
            message = response.choices[0].message
            calls = []
            for call in message.tool_calls or []:
                raw = call.function.arguments or "{}"
                try:
                    arguments = json.loads(raw)
                except json.JSONDecodeError:
                    arguments = {}
                if not isinstance(arguments, dict):
                    arguments = {}
                calls.append(ToolCall(call.id, call.function.name, arguments, raw))
            usage = getattr(response, "usage", None)
            return Completion(
                content=message.content or "",
                tool_calls=calls,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        except (AttributeError, IndexError, TypeError) as exc:
            raise LLMError(f"malformed model response: {exc}") from exc

    async def transcribe(self, audio: bytes, filename: str) -> str:
        litellm = _litellm()
        try:
            response = await litellm.atranscription(
                model=self.config.transcription_model, file=(filename, audio), **self._common()
            )
        except Exception as exc:
            raise LLMError(f"{type(exc).__name__}: {exc}") from exc
        return str(getattr(response, "text", "") or "")

    async def probe(self, client: httpx.AsyncClient) -> tuple[bool, str]:
        """Can the provider be reached? One cheap `GET {api base}/models`, no tokens spent.

        Reachability only: any answer below 500 counts (providers differ in how they
        authenticate and in whether they list models). Whether the key works is what
        `gateway doctor --llm` checks, with one real completion.
        """
        base = self.config.api_base or await asyncio.to_thread(self._default_api_base)
        if not base:
            return True, f"{self.config.model}: no API base to probe (assumed reachable)"
        try:
            response = await client.get(f"{base.rstrip('/')}/models")
        except httpx.HTTPError as exc:
            return False, f"unreachable: {type(exc).__name__}"
        if response.status_code >= 500:
            return False, f"the provider is failing (HTTP {response.status_code})"
        return True, "reachable"

    def _default_api_base(self) -> str:
        """The provider's own base URL for the model, as litellm would call it."""
        return _litellm().get_api_base(self.config.model, {}) or ""
