"""One agent turn: history + the LLM tool loop, with tools bound to the sender's entity.

The agent is shared by every user and keeps nothing between turns; everything it needs
arrives in `TurnInput` and everything it produces leaves in `TurnResult`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from channels.envelope import Attachment, AttachmentKind, Kind, Reply
from kernel.commands import Commands, connect_replies
from kernel.llm import LLM, LLMError
from kernel.memory import Said
from kernel.turn import Tools, TurnInput, TurnResult, tool_error_text

log = logging.getLogger(__name__)

NOT_CONFIGURED = (
    "This assistant has no language model configured yet, so I can only run built-in "
    "commands (try /help). The operator needs to set LLM_MODEL (and LLM_API_KEY / "
    "LLM_API_BASE) and restart the gateway."
)
APOLOGY = "Sorry, I couldn't answer that just now: my language model did not respond. Please try again in a moment."
UNSUPPORTED = "Sorry, I can't read that kind of message yet. Could you send it as text?"
NO_VOICE = "Sorry, I can't listen to voice notes here yet. Could you type your message?"
TOO_MANY_STEPS = (
    "Sorry, that took more steps than I'm allowed. Could you break it into smaller requests?"
)
CONNECT_TOOL = "connect_account"
# Arguments a model might use to aim a tool at someone else; the entity is never the model's to choose.
_ENTITY_KEYS = frozenset({"user_id", "entity_id", "connected_account_id"})


@dataclass(frozen=True)
class AgentConfig:
    system_prompt: str
    max_steps: int = 6
    history_messages: int = 20
    vision: bool = True
    toolkits: list[str] = field(default_factory=list)
    media_max_bytes: int = 16 * 1024 * 1024


class Agent:
    def __init__(
        self, config: AgentConfig, llm: LLM | None, tools: Tools | None, commands: Commands
    ) -> None:
        self.config = config
        self.llm = llm
        self.tools = tools
        self.commands = commands

    async def run(self, turn: TurnInput) -> TurnResult:
        envelope = turn.envelope
        if envelope.kind == Kind.UNSUPPORTED:
            return TurnResult(replies=[Reply(text=UNSUPPORTED)])
        handled = await self.commands.handle(turn)
        if handled is not None:
            return handled
        if self.llm is None:
            return TurnResult(replies=[Reply(text=NOT_CONFIGURED)])
        try:
            content, said_text = await self._user_content(turn)
        except _Refusal as refusal:
            return TurnResult(replies=[Reply(text=str(refusal))])
        except LLMError as exc:
            return TurnResult(replies=[Reply(text=APOLOGY)], error=f"transcription: {exc}")
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.config.system_prompt}]
        messages += [{"role": s.role, "content": s.content} for s in turn.history]
        messages.append({"role": "user", "content": content})
        return await self._loop(turn, messages, said_text)

    async def _loop(
        self, turn: TurnInput, messages: list[dict[str, Any]], said_text: str
    ) -> TurnResult:
        assert self.llm is not None
        result = TurnResult(said=[Said("user", said_text)])
        tools = await self._tool_schemas()
        for _ in range(self.config.max_steps):
            started = time.perf_counter()
            try:
                completion = await self.llm.complete(messages, tools or None)
            except LLMError as exc:
                result.llm_seconds += time.perf_counter() - started
                log.warning("LLM call failed: %s", exc)
                result.replies.append(Reply(text=APOLOGY))
                result.error = str(exc)
                return result
            result.llm_seconds += time.perf_counter() - started
            result.prompt_tokens += completion.prompt_tokens
            result.completion_tokens += completion.completion_tokens
            if not completion.tool_calls:
                text = completion.content.strip() or "(no answer)"
                result.replies.append(Reply(text=text))
                result.said.append(Said("assistant", text))
                return result
            messages.append(completion.as_message())
            for call in completion.tool_calls:
                output = await self._run_tool(turn, call.name, call.arguments, result)
                failed = bool(output.get("error")) or output.get("successful") is False
                result.tool_outcomes.append((call.name, "error" if failed else "ok"))
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(output)}
                )
        result.replies.append(Reply(text=TOO_MANY_STEPS))
        result.error = "tool loop exceeded max steps"
        return result

    async def _tool_schemas(self) -> list[dict[str, Any]]:
        if self.tools is None:
            return []
        try:
            schemas = list(await self.tools.schemas())
        except Exception as exc:
            log.warning("tool schemas unavailable: %s", exc)
            schemas = []
        if self.config.toolkits:
            schemas.append(_connect_tool_schema(self.config.toolkits))
        return schemas

    async def _run_tool(
        self, turn: TurnInput, name: str, arguments: dict[str, Any], result: TurnResult
    ) -> dict[str, Any]:
        assert self.tools is not None
        entity_id = turn.user.entity_id  # from the resolved sender, never from the model
        arguments = {k: v for k, v in arguments.items() if k not in _ENTITY_KEYS}
        if name == CONNECT_TOOL:
            toolkit = str(arguments.get("toolkit", "")).lower()
            try:
                link = await self.tools.connect_link(entity_id, toolkit)
            except Exception as exc:
                return {"error": tool_error_text(exc)}
            result.replies.extend(connect_replies(toolkit, link))
            # The model never sees the link, so it cannot repeat it into a group.
            return {"ok": True, "note": "A private connect link was sent to the user."}
        try:
            return await self.tools.execute(entity_id, name, arguments)
        except Exception as exc:
            return {"error": tool_error_text(exc)}

    async def _user_content(self, turn: TurnInput) -> tuple[str | list[dict[str, Any]], str]:
        """The user's message for the model, and the text version kept in history."""
        envelope = turn.envelope
        text = envelope.text
        if envelope.kind == Kind.BUTTON and envelope.button_value and not text:
            text = envelope.button_value
        notes: list[str] = []
        images: list[dict[str, Any]] = []
        for attachment in envelope.attachments:
            if attachment.kind == AttachmentKind.IMAGE and self.config.vision:
                data = await self._fetch(turn, attachment)
                mime = attachment.mime or "image/jpeg"
                url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
                images.append({"type": "image_url", "image_url": {"url": url}})
                notes.append("[image]")
            elif attachment.kind in (AttachmentKind.VOICE, AttachmentKind.AUDIO):
                notes.append(await self._transcribe(turn, attachment))
            else:
                notes.append(_describe(attachment))
        said = "\n".join(part for part in [text, *notes] if part)
        if not images:
            return said, said
        parts: list[dict[str, Any]] = [{"type": "text", "text": said or "(image)"}]
        return parts + images, said

    async def _fetch(self, turn: TurnInput, attachment: Attachment) -> bytes:
        try:
            return await turn.fetch(attachment)
        except Exception as exc:
            raise _Refusal(f"Sorry, I couldn't download your {attachment.kind}: {exc}") from exc

    async def _transcribe(self, turn: TurnInput, attachment: Attachment) -> str:
        assert self.llm is not None
        if not self.llm.config.transcription_model:
            raise _Refusal(NO_VOICE)
        audio = await self._fetch(turn, attachment)
        text = await self.llm.transcribe(audio, attachment.name or "voice.ogg")
        return f"(voice note) {text}"


class _Refusal(Exception):
    """Ends the turn with a friendly explanation instead of a model call."""


def _connect_tool_schema(toolkits: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": CONNECT_TOOL,
            "description": "Send the user a private link to connect one of their accounts, "
            "when a tool needs an account they have not connected yet.",
            "parameters": {
                "type": "object",
                "properties": {"toolkit": {"type": "string", "enum": toolkits}},
                "required": ["toolkit"],
            },
        },
    }


def _describe(attachment: Attachment) -> str:
    if attachment.kind == AttachmentKind.LOCATION:
        lat, lon = attachment.data.get("latitude"), attachment.data.get("longitude")
        return f"[shared a location: {lat}, {lon}]"
    details = ", ".join(x for x in (attachment.name, attachment.mime) if x)
    return f"[sent a {attachment.kind}{f': {details}' if details else ''}]"
