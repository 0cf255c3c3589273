"""The Telegram adapter against a local fake Bot API, through python-telegram-bot's `Bot`."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from typer.testing import CliRunner

from channels.base import (
    ChannelError,
    MalformedPayload,
    PermanentSendError,
    RateLimited,
    TransientSendError,
    VerificationFailed,
)
from channels.envelope import (
    Attachment,
    AttachmentKind,
    Conversation,
    Envelope,
    Kind,
    OutboundMessage,
)
from channels.pacing import Pacer
from channels.telegram import SEND_LIMITS, TelegramChannel
from tests.fakes.bot_api import BOT_ID, NOT_STARTED, TOKEN, FakeBotAPI, serve_bot_api

FIXTURES = Path(__file__).parent.parent / "fixtures" / "telegram"
SECRET = "s3cret-Token_for_tests"
ALICE, BOB = "111111111", "222222222"
GROUP, FORUM = "-1001234567890", "-1009876543210"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def webhook_request(body: bytes, headers: dict[str, str] | None = None) -> Request:
    """A Starlette request exactly as the gateway's route hands it to `receive`."""
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/webhooks/telegram",
             "headers": raw_headers, "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def signed(payload: dict[str, Any]) -> Request:
    return webhook_request(json.dumps(payload).encode(), {"X-Telegram-Bot-Api-Secret-Token": SECRET})


class MemoryState:
    """An in-memory ChannelState (the gateway's is a database table)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.fail_sets = 0

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def set(self, key: str, value: str) -> None:
        if self.fail_sets:
            self.fail_sets -= 1
            raise RuntimeError("database unavailable")
        self.values[key] = value


class Sink:
    """Collects what the poller hands over; can fail like a database that is down."""

    def __init__(self) -> None:
        self.batches: list[list[Envelope]] = []
        self.fail_next = 0
        self.changed = asyncio.Event()

    async def __call__(self, envelopes: list[Envelope]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("database unavailable")
        self.batches.append(envelopes)
        self.changed.set()

    @property
    def native_ids(self) -> list[str]:
        return [env.native_id for batch in self.batches for env in batch]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.native_ids) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    with serve_bot_api() as api:
        yield api


def make_channel(fake: FakeBotAPI, **kwargs: Any) -> TelegramChannel:
    options: dict[str, Any] = {
        "commands": [("help", "What I can do"), ("connect", "Connect an app")],
        "pacer": Pacer(), "poll_timeout": 1, "poll_backoff": (0.01, 0.05),
    }
    options.update(kwargs)
    return TelegramChannel(TOKEN, options.pop("secret", SECRET), options.pop("mode", "webhook"),
                           fake.url, **options)


@pytest.fixture
async def channel(fake: FakeBotAPI) -> AsyncIterator[TelegramChannel]:
    tg = make_channel(fake)
    await tg.start(Sink(), MemoryState())
    yield tg
    await tg.stop()


# --- start -----------------------------------------------------------------------------------
async def test_start_learns_the_bot_and_registers_commands(channel: TelegramChannel,
                                                           fake: FakeBotAPI) -> None:
    assert channel.account == str(BOT_ID)
    assert channel.identity.username == "gateway_test_bot"
    assert fake.commands == [{"command": "help", "description": "What I can do"},
                             {"command": "connect", "description": "Connect an app"}]
    assert not fake.calls_to("getUpdates") and not fake.calls_to("deleteWebhook")


# --- parsing every fixture -------------------------------------------------------------------
# name: (kind, sender, conversation, is_group, thread_id, reply_to_id, text, mentioned)
EXPECTED: dict[str, tuple[Any, ...]] = {
    "private_text": (Kind.MESSAGE, ALICE, ALICE, False, None, None,
                     "Hello there! What's on my calendar?", False),
    "group_text": (Kind.MESSAGE, BOB, GROUP, True, None, None, "lunch anyone?", False),
    "group_mention": (Kind.MESSAGE, ALICE, GROUP, True, None, None, "what is the weather?", True),
    "group_reply_to_bot": (Kind.MESSAGE, ALICE, "-4012345678", True, None, "40", "and tomorrow?",
                           True),
    "group_command_botname": (Kind.MESSAGE, ALICE, GROUP, True, None, None, "/connect asana",
                              True),
    "group_command_other_bot": (Kind.MESSAGE, ALICE, GROUP, True, None, None, "/help@other_bot",
                                False),
    "edited_message": (Kind.EDIT, ALICE, ALICE, False, None, None,
                       "Hello there! What's on my calendar tomorrow?", False),
    "callback_query": (Kind.BUTTON, ALICE, GROUP, True, None, None, "confirm:yes", True),
    "photo": (Kind.MESSAGE, ALICE, ALICE, False, None, None, "What is this?", False),
    "voice": (Kind.MESSAGE, ALICE, ALICE, False, None, None, "", False),
    "audio": (Kind.MESSAGE, ALICE, ALICE, False, None, None, "", False),
    "document": (Kind.MESSAGE, ALICE, GROUP, True, None, None, "summarize this", True),
    "sticker": (Kind.MESSAGE, ALICE, ALICE, False, None, None, "", False),
    "location": (Kind.MESSAGE, ALICE, ALICE, False, None, None, "", False),
    # The topic was created by the bot: its implicit reply is NOT a reply to the bot.
    "forum_topic_message": (Kind.MESSAGE, ALICE, FORUM, True, "118", None,
                            "Can you check invoice 42?", False),
    "forum_topic_reply_to_bot": (Kind.MESSAGE, ALICE, FORUM, True, "118", "121",
                                 "Thanks, and invoice 43?", True),
    # message_thread_id without is_topic_message: a reply thread, not a forum topic.
    "supergroup_reply_thread": (Kind.MESSAGE, ALICE, GROUP, True, None, "299", "agreed", False),
    "poll": (Kind.UNSUPPORTED, ALICE, ALICE, False, None, None, "", False),
}
IGNORED = ["from_bot", "channel_post", "unknown_update", "member_joined"]


def test_every_fixture_is_covered() -> None:
    assert {path.stem for path in FIXTURES.glob("*.json")} == set(EXPECTED) | set(IGNORED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_fixture_parses(channel: TelegramChannel, name: str) -> None:
    payload = fixture(name)
    received = await channel.receive(signed(payload))
    assert len(received.envelopes) == 1
    env = received.envelopes[0]
    kind, sender, conversation, is_group, thread_id, reply_to_id, text, mentioned = EXPECTED[name]
    assert (env.kind, env.sender.id, env.conversation.id, env.conversation.is_group) == (
        kind, sender, conversation, is_group)
    assert (env.thread_id, env.reply_to_id, env.text, env.mentioned) == (
        thread_id, reply_to_id, text, mentioned)
    assert env.channel == "telegram" and env.account == str(BOT_ID)
    assert env.native_id.startswith(f"{payload['update_id']}:")
    assert env.raw == payload
    assert received.response is None


@pytest.mark.parametrize("name", IGNORED)
async def test_ignored_updates_give_no_envelope(channel: TelegramChannel, name: str) -> None:
    assert (await channel.receive(signed(fixture(name)))).envelopes == []


async def test_profile_and_message_ids(channel: TelegramChannel) -> None:
    env = channel.parse(fixture("group_mention"))
    assert env is not None
    assert (env.sender.display_name, env.sender.username, env.sender.is_bot) == (
        "Alice Liddell", "alice", False)
    assert env.conversation.title == "Team Chat"
    assert env.native_message_id == "21"
    assert env.timestamp.timestamp() == fixture("group_mention")["message"]["date"]


async def test_attachments(channel: TelegramChannel) -> None:
    def only(name: str) -> Attachment:
        env = channel.parse(fixture(name))
        assert env is not None and len(env.attachments) == 1
        return env.attachments[0]

    photo = only("photo")
    assert (photo.kind, photo.ref, photo.size, photo.mime) == (
        AttachmentKind.IMAGE, "AgACAgQAAxkBAAIBs_large", 98765, "image/jpeg")
    voice = only("voice")
    assert (voice.kind, voice.mime, voice.size) == (AttachmentKind.VOICE, "audio/ogg", 7420)
    audio = only("audio")
    assert (audio.kind, audio.name, audio.mime) == (AttachmentKind.AUDIO, "song.mp3", "audio/mpeg")
    document = only("document")
    assert (document.kind, document.name, document.mime, document.ref) == (
        AttachmentKind.DOCUMENT, "report.pdf", "application/pdf", "BQACAgQAAxkBAAIBd_doc")
    sticker = only("sticker")
    assert (sticker.kind, sticker.mime, sticker.data) == (
        AttachmentKind.STICKER, "image/webp", {"emoji": "👍"})
    location = only("location")
    assert location.kind is AttachmentKind.LOCATION and location.ref is None
    assert location.data == {"latitude": 52.520008, "longitude": 13.404954}


async def test_callback_keeps_button_and_message(channel: TelegramChannel) -> None:
    env = channel.parse(fixture("callback_query"))
    assert env is not None
    assert env.button_value == "confirm:yes"
    assert env.native_message_id == "77"
    assert env.native_id == "900000008:4382bfdwdsb323b2d9"


async def test_edit_and_original_have_different_native_ids(channel: TelegramChannel) -> None:
    original, edit = channel.parse(fixture("private_text")), channel.parse(fixture("edited_message"))
    assert original is not None and edit is not None
    assert original.native_message_id == edit.native_message_id == "10"
    assert original.native_id != edit.native_id
    assert edit.timestamp.timestamp() == fixture("edited_message")["edited_message"]["edit_date"]


async def test_same_update_twice_has_the_same_dedupe_key(channel: TelegramChannel) -> None:
    first = (await channel.receive(signed(fixture("group_mention")))).envelopes[0]
    again = (await channel.receive(signed(fixture("group_mention")))).envelopes[0]
    assert first.dedupe_key == again.dedupe_key
    assert first.id != again.id


async def test_mention_by_text_mention_entity_and_case(channel: TelegramChannel) -> None:
    payload = fixture("group_text")
    payload["message"]["text"] = "hey Gateway, help"
    payload["message"]["entities"] = [{"offset": 4, "length": 7, "type": "text_mention",
                                       "user": {"id": BOT_ID, "is_bot": True, "first_name": "G"}}]
    env = channel.parse(payload)
    assert env is not None and env.mentioned
    payload = fixture("group_mention")
    payload["message"]["text"] = "@Gateway_Test_Bot hi"
    env = channel.parse(payload)
    assert env is not None and env.mentioned and env.text == "hi"


async def test_mention_of_another_user_is_not_a_mention(channel: TelegramChannel) -> None:
    payload = fixture("group_mention")
    payload["message"]["text"] = "@gateway_test_bot_fan what is the weather?"
    payload["message"]["entities"] = [{"offset": 0, "length": 21, "type": "mention"}]
    env = channel.parse(payload)
    assert env is not None and not env.mentioned
    assert env.text == "@gateway_test_bot_fan what is the weather?"


async def test_newer_sub_objects_ptb_cannot_build_degrade_to_unsupported(
    channel: TelegramChannel,
) -> None:
    """A poll shaped by an older/newer Bot API must not make the whole update a 400."""
    payload = fixture("poll")
    for option in payload["message"]["poll"]["options"]:
        del option["persistent_id"]
    env = channel.parse(payload)
    assert env is not None and env.kind is Kind.UNSUPPORTED
    assert env.raw == payload


async def test_mentions_need_the_username_learned_at_start(fake: FakeBotAPI) -> None:
    tg = make_channel(fake)
    try:
        env = tg.parse(fixture("group_mention"))
        assert env is not None and not env.mentioned  # before getMe: unknown @name
        reply = tg.parse(fixture("group_reply_to_bot"))
        assert reply is not None and reply.mentioned  # the bot id is in the token
        await tg.start(Sink(), MemoryState())
        env = tg.parse(fixture("group_mention"))
        assert env is not None and env.mentioned
    finally:
        await tg.stop()


async def test_start_survives_telegram_being_down_and_learns_the_name_later(
    fake: FakeBotAPI,
) -> None:
    fake.fail("getMe", 502, "Bad Gateway", times=2)
    tg = make_channel(fake)
    try:
        await tg.start(Sink(), MemoryState())
        assert tg.identity.username is None
        async with asyncio.timeout(10):
            await asyncio.gather(*tg._tasks)
        assert tg.identity.username == "gateway_test_bot"
        assert len(fake.calls_to("getMe")) == 3
    finally:
        await tg.stop()


# --- webhook secret ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "", "wrong", SECRET[:-1], SECRET + "x", SECRET.upper(),
                                    f" {SECRET}"])
async def test_wrong_or_missing_secret_is_rejected(channel: TelegramChannel,
                                                   header: str | None) -> None:
    headers = {} if header is None else {"X-Telegram-Bot-Api-Secret-Token": header}
    request = webhook_request(json.dumps(fixture("private_text")).encode(), headers)
    with pytest.raises(VerificationFailed) as caught:
        await channel.receive(request)
    assert caught.value.status_code == 401


async def test_secret_is_checked_before_the_body_is_read(channel: TelegramChannel) -> None:
    with pytest.raises(VerificationFailed):
        await channel.receive(webhook_request(b"not json at all", {}))


async def test_without_a_configured_secret_every_webhook_is_refused(
    fake: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    tg = make_channel(fake, secret="")
    try:
        with caplog.at_level(logging.WARNING, logger="channels.telegram"):
            for header in ({}, {"X-Telegram-Bot-Api-Secret-Token": ""},
                           {"X-Telegram-Bot-Api-Secret-Token": "anything"}):
                with pytest.raises(VerificationFailed):
                    await tg.receive(webhook_request(json.dumps(fixture("private_text")).encode(),
                                                     header))
        warnings = [r for r in caplog.records if "TELEGRAM_WEBHOOK_SECRET" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await tg.stop()


@pytest.mark.parametrize("body", [b"", b"{not json", b"[]", b'"text"', b'{"message": {}}',
                                  b'{"update_id": "1"}', b'{"update_id": true}',
                                  b'{"update_id": 5, "message": {"message_id": 1, "chat": 7}}',
                                  b'{"update_id": 5, "message": "hello"}'])
async def test_malformed_bodies_raise_malformed_payload(channel: TelegramChannel,
                                                        body: bytes) -> None:
    request = webhook_request(body, {"X-Telegram-Bot-Api-Secret-Token": SECRET})
    with pytest.raises(MalformedPayload):
        await channel.receive(request)


async def test_tokens_and_text_are_not_logged_at_info(
    fake: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    tg = make_channel(fake)
    with caplog.at_level(logging.INFO):
        await tg.start(Sink(), MemoryState())
        await tg.receive(signed(fixture("private_text")))
        await tg.send(OutboundMessage(channel="telegram", account=tg.account,
                                      conversation=Conversation(id=ALICE), text="secret reply"))
        await tg.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert TOKEN.split(":")[1] not in logged
    assert "calendar" not in logged and "secret reply" not in logged


# --- sending -----------------------------------------------------------------------------------
def outbound(text: str, conversation: str = ALICE, *, is_group: bool = False,
             thread_id: str | None = None, reply_to_id: str | None = None) -> OutboundMessage:
    return OutboundMessage(channel="telegram", account=str(BOT_ID),
                           conversation=Conversation(id=conversation, is_group=is_group),
                           text=text, thread_id=thread_id, reply_to_id=reply_to_id)


async def test_send_html_threaded_reply(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    message_id = await channel.send(outbound("<b>hi</b> &amp; bye", FORUM, is_group=True,
                                             thread_id="118", reply_to_id="120"))
    [sent] = fake.sent
    assert message_id == str(sent["message_id"])
    assert sent["chat_id"] == int(FORUM)
    assert (sent["parse_mode"], sent["text"]) == ("HTML", "hi & bye")
    assert (sent["message_thread_id"], sent["reply_to_message_id"]) == (118, 120)
    assert sent["allow_sending_without_reply"] is True


async def test_rendered_chunks_are_all_accepted_in_order(channel: TelegramChannel,
                                                         fake: FakeBotAPI) -> None:
    markdown = "\n\n".join(
        f"## Part {n}\nUse `a<b` & **bold** here.\n\n```sql\nSELECT * FROM t WHERE x < {n} & y;\n```"
        + "\n\n" + " filler text" * 40
        for n in range(40)
    )
    chunks = channel.render(markdown)
    assert len(chunks) > 2
    for chunk in chunks:
        await channel.send(outbound(chunk))
    assert [s["html"] for s in fake.sent] == chunks
    assert all(s["parse_mode"] == "HTML" for s in fake.sent)
    parts = [int(line.split()[1]) for s in fake.sent for line in s["text"].splitlines()
             if line.startswith("Part ")]
    assert parts == list(range(40))


async def test_parse_error_is_resent_once_as_plain_text(channel: TelegramChannel,
                                                        fake: FakeBotAPI) -> None:
    fake.fail_parse_entities()
    await channel.send(outbound("<b>a &lt; b</b> &amp; c"))
    calls = fake.calls_to("sendMessage")
    assert len(calls) == 2
    assert calls[0].params["parse_mode"] == "HTML"
    assert "parse_mode" not in calls[1].params
    assert fake.sent[0]["text"] == "a < b & c" and fake.sent[0]["parse_mode"] is None


async def test_rate_limit_raises_retry_after(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    fake.rate_limit(retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await channel.send(outbound("hello"))
    assert caught.value.retry_after == 7.0
    assert len(fake.calls_to("sendMessage")) == 1
    await channel.send(outbound("hello"))
    assert len(fake.sent) == 1


@pytest.mark.parametrize("description", [
    "Forbidden: bot was blocked by the user", NOT_STARTED,
    "Forbidden: bot was kicked from the supergroup chat",
])
async def test_forbidden_is_permanent_without_retry(channel: TelegramChannel, fake: FakeBotAPI,
                                                    description: str) -> None:
    fake.block(ALICE, description)
    with pytest.raises(PermanentSendError, match="blocked or removed"):
        await channel.send(outbound("hello"))
    assert len(fake.calls_to("sendMessage")) == 1


async def test_other_bad_requests_are_permanent(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    fake.fail("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(PermanentSendError, match=r"(?i)chat not found"):
        await channel.send(outbound("hello"))
    assert len(fake.calls_to("sendMessage")) == 1


@pytest.mark.parametrize("code,description", [(500, "Internal Server Error"),
                                              (502, "Bad Gateway")])
async def test_server_errors_are_transient(channel: TelegramChannel, fake: FakeBotAPI,
                                           code: int, description: str) -> None:
    fake.fail("sendMessage", code, description)
    with pytest.raises(TransientSendError):
        await channel.send(outbound("hello"))


async def test_network_failure_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tg = TelegramChannel(TOKEN, SECRET, "webhook", f"http://127.0.0.1:{port}", pacer=Pacer())
    try:
        with pytest.raises(TransientSendError):
            await tg.send(outbound("hello"))
    finally:
        await tg.stop()


async def test_group_upgraded_to_supergroup_is_followed(channel: TelegramChannel,
                                                        fake: FakeBotAPI) -> None:
    fake.fail("sendMessage", 400, "Bad Request: group chat was upgraded to a supergroup chat",
              parameters={"migrate_to_chat_id": -1009999999999})
    await channel.send(outbound("hello", "-4012345678", is_group=True))
    assert fake.sent[0]["chat_id"] == -1009999999999


async def test_deleted_topic_falls_back_to_the_chat(channel: TelegramChannel,
                                                    fake: FakeBotAPI) -> None:
    fake.fail("sendMessage", 400, "Bad Request: message thread not found")
    await channel.send(outbound("hello", FORUM, is_group=True, thread_id="118"))
    assert fake.sent[0]["message_thread_id"] is None


# --- typing, buttons, private chats --------------------------------------------------------------
async def test_typing_shows_action_in_topic_and_answers_buttons(channel: TelegramChannel,
                                                                fake: FakeBotAPI) -> None:
    topic = channel.parse(fixture("forum_topic_message"))
    assert topic is not None
    await channel.typing(topic)
    [action] = fake.calls_to("sendChatAction")
    assert action.params["action"] == "typing"
    assert (action.params["chat_id"], action.params["message_thread_id"]) == (FORUM, "118")
    await channel.done(topic)

    button = channel.parse(fixture("callback_query"))
    assert button is not None
    await channel.typing(button)
    [answer] = fake.calls_to("answerCallbackQuery")
    assert answer.params["callback_query_id"] == "4382bfdwdsb323b2d9"
    await channel.done(button)


async def test_typing_repeats_until_done(fake: FakeBotAPI) -> None:
    tg = make_channel(fake, typing_interval=0.01)
    env = tg.parse(fixture("private_text"))
    assert env is not None
    try:
        await tg.typing(env)
        await fake.wait_for(lambda: len(fake.calls_to("sendChatAction")) >= 3)
        await tg.done(env)
        settled = len(fake.calls_to("sendChatAction"))
        # After done(), no task is left that could send another action.
        assert env.id not in tg._typing
        assert len(fake.calls_to("sendChatAction")) <= settled + 1
    finally:
        await tg.stop()


async def test_typing_is_best_effort(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    fake.block(ALICE)
    env = channel.parse(fixture("private_text"))
    assert env is not None
    await channel.typing(env)  # no exception
    await channel.done(env)


async def test_open_private(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    conversation = await channel.open_private(channel.account, ALICE)
    assert conversation == Conversation(id=ALICE, is_group=False)
    fake.block(BOB, NOT_STARTED)
    assert await channel.open_private(channel.account, BOB) is None
    assert await channel.open_private("123", ALICE) is None


# --- media -----------------------------------------------------------------------------------------
async def test_fetch_attachment(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    content = bytes(range(256)) * 400
    fake.add_file("BQACAgQAAxkBAAIBd_doc", content, path="documents/file_7.pdf")
    env = channel.parse(fixture("document"))
    assert env is not None
    assert await channel.fetch_attachment(env.attachments[0], max_bytes=1_000_000) == content


async def test_fetch_attachment_limits(channel: TelegramChannel, fake: FakeBotAPI) -> None:
    fake.add_file("small", b"x" * 100)
    fake.add_file("lying", b"x" * 5000, size=10)
    fake.add_file("huge", b"", size=25 * 1024 * 1024)
    doc = AttachmentKind.DOCUMENT
    with pytest.raises(ChannelError, match="larger than the 50 bytes"):
        await channel.fetch_attachment(Attachment(kind=doc, ref="small", size=100), 50)
    with pytest.raises(ChannelError, match="larger than the 50 bytes"):
        await channel.fetch_attachment(Attachment(kind=doc, ref="small"), 50)
    with pytest.raises(ChannelError, match="larger than the 1000 bytes"):
        await channel.fetch_attachment(Attachment(kind=doc, ref="lying"), 1000)
    with pytest.raises(ChannelError, match="20 MB"):
        await channel.fetch_attachment(Attachment(kind=doc, ref="huge"), 100 * 1024 * 1024)
    with pytest.raises(ChannelError, match=r"(?i)invalid file_id"):
        await channel.fetch_attachment(Attachment(kind=doc, ref="nope"), 1000)
    with pytest.raises(ChannelError):
        await channel.fetch_attachment(Attachment(kind=AttachmentKind.LOCATION), 1000)


# --- long polling ------------------------------------------------------------------------------------
def numbered(name: str, update_id: int, message_id: int) -> dict[str, Any]:
    payload = fixture(name)
    payload["update_id"] = update_id
    payload["message"]["message_id"] = message_id
    return payload


async def test_polling_advances_the_offset_and_survives_a_restart(fake: FakeBotAPI) -> None:
    fake.webhook = {"url": "https://old.example.com/hook"}  # polling must remove it first
    state, sink = MemoryState(), Sink()
    fake.push_update(numbered("private_text", 100, 1), numbered("group_mention", 101, 2))
    tg = make_channel(fake, mode="polling")
    await tg.start(sink, state)
    await sink.wait_for(2)
    await fake.wait_for(lambda: len(fake.calls_to("getUpdates")) >= 2)
    await tg.stop()
    assert fake.calls_to("deleteWebhook")[0].params.get("drop_pending_updates") == "false"
    assert sink.native_ids == ["100:111111111:1", "101:-1001234567890:2"]
    assert json.loads(state.values[f"offset:{BOT_ID}"])["update_id"] == 101
    polls = fake.calls_to("getUpdates")
    assert "offset" not in polls[0].params
    assert polls[1].params["offset"] == "102"
    assert polls[0].params["allowed_updates"] == ["message", "edited_message", "callback_query"]

    # While stopped, more updates arrive; the 2 already stored are still unconfirmed.
    fake.push_update(numbered("private_text", 100, 1), numbered("group_text", 102, 3),
                     numbered("private_text", 103, 4))
    restarted, sink2 = make_channel(fake, mode="polling"), Sink()
    await restarted.start(sink2, state)
    await sink2.wait_for(2)
    await fake.wait_for(lambda: any(c.params.get("offset") == "104"
                                    for c in fake.calls_to("getUpdates")))
    await restarted.stop()
    assert restarted.identity.username == "gateway_test_bot"
    assert fake.calls_to("getUpdates")[len(polls)].params["offset"] == "102"
    assert sink2.native_ids == ["102:-1001234567890:3", "103:111111111:4"]  # none repeated or lost
    assert fake.pending == []  # all confirmed


async def test_polling_keeps_updates_when_storing_fails(fake: FakeBotAPI) -> None:
    state, sink = MemoryState(), Sink()
    sink.fail_next = 1
    fake.push_update(numbered("private_text", 200, 1))
    tg = make_channel(fake, mode="polling")
    await tg.start(sink, state)
    await sink.wait_for(1)
    await tg.stop()
    assert sink.native_ids == ["200:111111111:1"]
    offsets = [call.params.get("offset") for call in fake.calls_to("getUpdates")]
    assert offsets[:2] == [None, None]  # the failed batch was fetched again, not confirmed


async def test_polling_crash_before_saving_offset_repeats_with_same_dedupe_key(
    fake: FakeBotAPI,
) -> None:
    state, sink = MemoryState(), Sink()
    state.fail_sets = 1  # stored, but the offset could not be saved
    fake.push_update(numbered("private_text", 300, 1))
    tg = make_channel(fake, mode="polling")
    await tg.start(sink, state)
    await sink.wait_for(2)
    await tg.stop()
    # Handed over twice, with one dedupe key: the gateway's inbox stores it once.
    assert sink.native_ids == ["300:111111111:1", "300:111111111:1"]
    assert json.loads(state.values[f"offset:{BOT_ID}"])["update_id"] == 300


async def test_polling_backs_off_on_errors_and_recovers(fake: FakeBotAPI) -> None:
    fake.fail("getUpdates", 502, "Bad Gateway", times=2)
    fake.fail("getUpdates", 409, "Conflict: terminated by other getUpdates request; make sure "
                                 "that only one bot instance is running")
    fake.push_update(numbered("private_text", 400, 1))
    state, sink = MemoryState(), Sink()
    tg = make_channel(fake, mode="polling")
    await tg.start(sink, state)
    await sink.wait_for(1)
    await tg.stop()
    assert len(fake.calls_to("getUpdates")) >= 4
    assert sink.native_ids == ["400:111111111:1"]


async def test_stale_or_unreadable_offset_is_not_trusted(fake: FakeBotAPI) -> None:
    state = MemoryState()
    state.values[f"offset:{BOT_ID}"] = json.dumps({"update_id": 999999, "at": 0})
    fake.push_update(numbered("private_text", 10, 1))
    tg, sink = make_channel(fake, mode="polling"), Sink()
    await tg.start(sink, state)
    await sink.wait_for(1)
    await tg.stop()
    assert "offset" not in fake.calls_to("getUpdates")[0].params
    assert sink.native_ids == ["10:111111111:1"]


async def test_stop_ends_a_pending_long_poll(fake: FakeBotAPI) -> None:
    tg = make_channel(fake, mode="polling", poll_timeout=30)
    await tg.start(Sink(), MemoryState())
    await fake.wait_for(lambda: bool(fake.calls_to("getUpdates")))
    async with asyncio.timeout(5):
        await tg.stop()


# --- pacing ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self, advance: bool = True) -> None:
        self.now = 1000.0
        self.advance = advance
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        if self.advance:
            self.now += seconds


async def test_pacer_spaces_messages_per_chat() -> None:
    clock = Clock()
    pacer = Pacer(*SEND_LIMITS, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await pacer.acquire("1", is_group=False)
    await pacer.acquire("2", is_group=False)
    assert clock.slept == [1.0, 1.0]


async def test_pacer_keeps_groups_under_twenty_per_minute() -> None:
    clock = Clock()
    pacer = Pacer(*SEND_LIMITS, max_wait=100, clock=clock, sleep=clock.sleep)
    for _ in range(21):
        await pacer.acquire("-1", is_group=True)
    assert clock.slept[:19] == [1.0] * 19
    assert clock.slept[19] == 41.0  # the 21st waits until a minute after the 1st
    clock.slept.clear()
    for _ in range(21):
        await pacer.acquire("1", is_group=False)  # private chats have no minute window
    assert clock.slept == [1.0] * 20


async def test_pacer_asks_for_a_retry_instead_of_a_long_wait() -> None:
    clock = Clock()
    pacer = Pacer(*SEND_LIMITS, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        await pacer.acquire("-1", is_group=True)
    with pytest.raises(RateLimited) as caught:
        await pacer.acquire("-1", is_group=True)
    assert caught.value.retry_after == pytest.approx(41.0)


async def test_concurrent_sends_to_one_chat_are_spaced(channel: TelegramChannel,
                                                       fake: FakeBotAPI) -> None:
    clock = Clock(advance=False)  # all three reserve their slot at the same instant
    channel.pacer = Pacer(*SEND_LIMITS, clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(channel.send(outbound(f"m{n}")) for n in range(3)))
    assert sorted(clock.slept) == [1.0, 2.0]
    assert len(fake.sent) == 3


# --- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBotAPI:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TELEGRAM_API_URL", fake.url)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://gw.example.com/")
    return fake


def test_cli_set_webhook_and_info(cli_env: FakeBotAPI) -> None:
    from gateway.cli_telegram import app

    runner = CliRunner()
    result = runner.invoke(app, ["set-webhook"])
    assert result.exit_code == 0, result.output
    assert cli_env.webhook == {"url": "https://gw.example.com/webhooks/telegram",
                               "secret_token": SECRET,
                               "allowed_updates": ["message", "edited_message", "callback_query"]}
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "@gateway_test_bot" in result.output
    assert "https://gw.example.com/webhooks/telegram" in result.output
    assert SECRET not in result.output and TOKEN not in result.output


def test_cli_set_webhook_explicit_url_and_errors(cli_env: FakeBotAPI,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli_telegram import app

    runner = CliRunner()
    result = runner.invoke(app, ["set-webhook", "http://insecure.example.com/hook"])
    assert result.exit_code == 1
    assert "https" in result.output.lower()
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "has spaces!")
    result = runner.invoke(app, ["set-webhook", "https://gw.example.com/webhooks/telegram"])
    assert result.exit_code == 1
    assert "TELEGRAM_WEBHOOK_SECRET" in result.output
    assert not cli_env.calls_to("setWebhook")[1:]
