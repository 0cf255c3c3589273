"""Attachments reach the model: images as image content, voice notes as transcripts."""

from __future__ import annotations

import base64
from pathlib import Path

from channels.console import ConsoleChannel
from channels.envelope import Attachment, AttachmentKind
from tests.conftest import GatewayFactory
from tests.fakes.llm import FakeLLM

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


async def test_image_reaches_the_model_as_image_content(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG)
    console = ConsoleChannel()
    gateway = await make_gateway([console])
    attachment = Attachment(kind=AttachmentKind.IMAGE, mime="image/png", ref=str(image))
    await gateway.accept([console.envelope("ann", "what is this?", attachments=[attachment])])
    await gateway.wait_idle()
    content = fake_llm.requests[0]["messages"][-1]["content"]
    image_parts = [p for p in content if p["type"] == "image_url"]
    assert image_parts[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert [m.text for m in console.sent] == ["echo: what is this?\n[image] (+1 image)"]


async def test_voice_note_is_transcribed_when_a_model_is_configured(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    voice = tmp_path / "note.ogg"
    voice.write_bytes(b"OggS" + b"\x00" * 200)
    console = ConsoleChannel()
    gateway = await make_gateway([console], transcription_model="openai/whisper-1")
    attachment = Attachment(kind=AttachmentKind.VOICE, mime="audio/ogg", ref=str(voice), name="note.ogg")
    await gateway.accept([console.envelope("ann", "", attachments=[attachment])])
    await gateway.wait_idle()
    assert fake_llm.transcriptions == [{"model": "whisper-1", "bytes": 204}]
    assert [m.text for m in console.sent] == [f"echo: (voice note) {fake_llm.transcript}"]


async def test_voice_note_without_transcription_gets_a_clear_reply(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    voice = tmp_path / "note.ogg"
    voice.write_bytes(b"OggS")
    console = ConsoleChannel()
    gateway = await make_gateway([console])
    attachment = Attachment(kind=AttachmentKind.VOICE, mime="audio/ogg", ref=str(voice))
    await gateway.accept([console.envelope("ann", "", attachments=[attachment])])
    await gateway.wait_idle()
    assert fake_llm.requests == []
    assert "voice notes" in console.sent[0].text


async def test_too_large_attachment_is_refused_politely(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    image = tmp_path / "huge.png"
    image.write_bytes(PNG * 100)
    console = ConsoleChannel()
    gateway = await make_gateway([console], media_max_bytes=100)
    attachment = Attachment(kind=AttachmentKind.IMAGE, mime="image/png", ref=str(image))
    await gateway.accept([console.envelope("ann", "look", attachments=[attachment])])
    await gateway.wait_idle()
    assert fake_llm.requests == []
    assert "couldn't download" in console.sent[0].text and "limit" in console.sent[0].text
