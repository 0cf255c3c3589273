"""Telegram end to end: webhooks (and long polling) into the real gateway (SQLite and
Postgres), replies out through python-telegram-bot to the local fake Bot API, the fake LLM
and the fake Composio."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from channels.pacing import Pacer
from channels.telegram import TelegramChannel
from gateway.delivery import COULD_NOT_DM, SENT_PRIVATELY
from gateway.inbox import InboxItem
from gateway.outbox import OutboxItem
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.fakes.bot_api import NOT_STARTED, TOKEN, FakeBotAPI, parse_html, serve_bot_api
from tests.fakes.composio_api import CONNECT_LINK_PREFIX
from tests.fakes.llm import FakeLLM

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "telegram"
SECRET = "e2e-webhook-secret_1"
ALICE, BOB = 111111111, 222222222
GROUP, BASIC_GROUP, FORUM = -1001234567890, -4012345678, -1009876543210
LINK = re.compile(re.escape(CONNECT_LINK_PREFIX) + r"\S+")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def renumbered(name: str, update_id: int, message_id: int | None = None) -> dict[str, Any]:
    payload = copy.deepcopy(load(name))
    payload["update_id"] = update_id
    if message_id is not None:
        payload["message"]["message_id"] = message_id
    return payload


@pytest.fixture
def bot_api() -> Iterator[FakeBotAPI]:
    with serve_bot_api() as fake:
        yield fake


class TelegramGateway:
    """A running gateway with the Telegram channel, and a webhook client for it."""

    def __init__(self, gateway: Gateway, fake: FakeBotAPI) -> None:
        self.gateway = gateway
        self.fake = fake
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
        )

    async def post(self, payload: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        return await self.client.post("/webhooks/telegram", content=json.dumps(payload),
                                      headers=headers)

    def texts(self, chat_id: int) -> list[str]:
        return [s["text"] for s in self.fake.sent if s["chat_id"] == chat_id]


@pytest.fixture
async def start(make_gateway: GatewayFactory, bot_api: FakeBotAPI) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def factory(*, mode: str = "webhook", pacer: Pacer | None = None,
                      **overrides: Any) -> TelegramGateway:
        channel = TelegramChannel(
            TOKEN, SECRET, mode, bot_api.url,
            commands=[("help", "What I can do"), ("connect", "Connect an app")],
            pacer=pacer or Pacer(), poll_timeout=1, poll_backoff=(0.01, 0.05),
        )
        gateway = await make_gateway([channel], **overrides)
        tg = TelegramGateway(gateway, bot_api)
        clients.append(tg.client)
        return tg

    yield factory
    for client in clients:
        await client.aclose()


# --- basics ------------------------------------------------------------------------------------
async def test_private_message_is_answered_with_typing(start: Any) -> None:
    tg = await start()
    assert tg.fake.commands[0] == {"command": "help", "description": "What I can do"}
    response = await tg.post(load("private_text"))
    assert response.status_code == 200
    await tg.gateway.wait_idle()
    assert tg.texts(ALICE) == ["echo: Hello there! What's on my calendar?"]
    [sent] = tg.fake.sent
    assert sent["parse_mode"] == "HTML" and sent["reply_to_message_id"] is None
    assert tg.fake.calls_to("sendChatAction")[0].params["chat_id"] == str(ALICE)


async def test_forged_webhook_stores_nothing(start: Any) -> None:
    tg = await start(process=False)
    for secret in (None, "", "wrong", SECRET.upper()):
        assert (await tg.post(load("private_text"), secret=secret)).status_code == 401
    assert await tg.gateway.pending_work() == 0
    assert (await tg.post(load("private_text"))).status_code == 200
    assert await tg.gateway.pending_work() == 1


async def test_malformed_and_unknown_updates(start: Any) -> None:
    tg = await start(process=False)
    response = await tg.client.post("/webhooks/telegram", content=b"{nope",
                                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert response.status_code == 400
    for name in ("unknown_update", "channel_post", "from_bot", "member_joined"):
        assert (await tg.post(load(name))).status_code == 200
    assert await tg.gateway.pending_work() == 0


# --- groups ---------------------------------------------------------------------------------------
async def test_group_gating_and_threaded_replies(start: Any) -> None:
    tg = await start()
    for name in ("group_text", "forum_topic_message", "supergroup_reply_thread",
                 "group_command_other_bot"):
        assert (await tg.post(load(name))).status_code == 200
    await tg.gateway.wait_idle()
    assert tg.fake.sent == []  # stored for context, not answered

    for name in ("group_mention", "group_reply_to_bot", "forum_topic_reply_to_bot"):
        await tg.post(load(name))
    await tg.gateway.wait_idle()
    by_chat = {s["chat_id"]: s for s in tg.fake.sent}
    assert set(by_chat) == {GROUP, BASIC_GROUP, FORUM}
    assert by_chat[GROUP]["text"] == "echo: what is the weather?"
    assert by_chat[GROUP]["reply_to_message_id"] == 21
    assert by_chat[GROUP]["message_thread_id"] is None
    assert by_chat[BASIC_GROUP]["reply_to_message_id"] == 41
    assert (by_chat[FORUM]["message_thread_id"], by_chat[FORUM]["reply_to_message_id"]) == (118, 122)
    assert all(s["allow_sending_without_reply"] for s in tg.fake.sent)
    async with tg.gateway.sessions() as session:
        stored = len(list(await session.scalars(select(InboxItem))))
    assert stored == 7


async def test_group_policy_always_answers_unmentioned(start: Any) -> None:
    tg = await start(group_reply_policy="always")
    await tg.post(load("group_text"))
    await tg.gateway.wait_idle()
    assert tg.texts(GROUP) == ["echo: lunch anyone?"]


# --- duplicates -------------------------------------------------------------------------------------
async def test_duplicate_update_sequential_and_concurrent_gives_one_reply(start: Any) -> None:
    tg = await start()
    first = await tg.post(load("private_text"))
    again = await tg.post(load("private_text"))
    concurrent = await asyncio.gather(*(tg.post(load("group_mention")) for _ in range(5)))
    assert {r.status_code for r in (first, again, *concurrent)} == {200}
    await tg.gateway.wait_idle()
    assert tg.texts(ALICE) == ["echo: Hello there! What's on my calendar?"]
    assert tg.texts(GROUP) == ["echo: what is the weather?"]


# --- kinds ----------------------------------------------------------------------------------------------
async def test_edit_is_stored_not_answered_and_button_is(start: Any) -> None:
    tg = await start()
    await tg.post(load("edited_message"))
    await tg.post(load("callback_query"))
    await tg.post(load("poll"))
    await tg.gateway.wait_idle()
    assert tg.texts(GROUP) == ["echo: confirm:yes"]
    [answer] = tg.fake.calls_to("answerCallbackQuery")
    assert answer.params["callback_query_id"] == "4382bfdwdsb323b2d9"
    [unsupported] = tg.texts(ALICE)
    assert "can't read" in unsupported


async def test_photo_is_fetched_for_the_model(start: Any, bot_api: FakeBotAPI,
                                              fake_llm: FakeLLM) -> None:
    tg = await start()
    image = b"\xff\xd8\xff\xe0fake-jpeg" + bytes(range(100))
    bot_api.add_file("AgACAgQAAxkBAAIBs_large", image, path="photos/file_1.jpg")
    await tg.post(load("photo"))
    await tg.gateway.wait_idle()
    [get_file] = bot_api.calls_to("getFile")
    assert get_file.params["file_id"] == "AgACAgQAAxkBAAIBs_large"
    content = fake_llm.requests[-1]["messages"][-1]["content"]
    assert isinstance(content, list) and any(p["type"] == "image_url" for p in content)


async def test_long_reply_arrives_as_valid_ordered_html_chunks(start: Any,
                                                               fake_llm: FakeLLM) -> None:
    tg = await start()
    sections = [f"## Part {i}\n\nCompare `a<b` & c > d in **bold**.\n\n```python\nx = {i} < 10\n```"
                + "\n\n" + "More words & symbols <here>. " * 60 for i in range(12)]
    fake_llm.reply("\n\n".join(sections))
    await tg.post(load("private_text"))
    await tg.gateway.wait_idle()
    sent = [s for s in tg.fake.sent if s["chat_id"] == ALICE]
    assert len(sent) > 2
    assert all(s["parse_mode"] == "HTML" and len(s["html"]) <= 4096 for s in sent)
    for s in sent:
        parse_html(s["html"])  # the fake accepted it; re-check for the record
    parts = [int(n) for s in sent for n in re.findall(r"^Part (\d+)$", s["text"], re.M)]
    assert parts == list(range(12))


# --- errors ------------------------------------------------------------------------------------------------
async def test_429_is_waited_and_resent_once(start: Any) -> None:
    tg = await start()
    tg.fake.rate_limit(retry_after=1)
    await tg.post(load("private_text"))
    await tg.gateway.wait_idle()
    assert len(tg.fake.calls_to("sendMessage")) == 2
    assert tg.texts(ALICE) == ["echo: Hello there! What's on my calendar?"]


async def test_403_is_dead_lettered_without_a_retry_loop(start: Any) -> None:
    tg = await start()
    tg.fake.block(ALICE)
    await tg.post(load("private_text"))
    await tg.gateway.wait_idle()
    assert len(tg.fake.calls_to("sendMessage")) == 1
    async with tg.gateway.sessions() as session:
        [row] = list(await session.scalars(select(OutboxItem)))
    assert row.status == "dead" and "blocked" in (row.last_error or "")


async def test_a_blocked_chat_gives_up_its_queue_at_once_and_reopens_when_the_user_writes(
    start: Any, fake_llm: FakeLLM
) -> None:
    tg = await start()
    tg.fake.block(ALICE)
    fake_llm.reply("All the details. " * 600)  # ~10,000 characters: three messages
    await tg.post(load("private_text"))
    await tg.gateway.wait_idle()
    assert len(tg.fake.calls_to("sendMessage")) == 1  # the rest were not tried one by one
    async with tg.gateway.sessions() as session:
        rows = list(await session.scalars(select(OutboxItem).order_by(OutboxItem.seq)))
    assert len(rows) == 3 and {r.status for r in rows} == {"dead"}
    assert all((r.last_error or "").startswith("conversation closed") for r in rows[1:])

    tg.fake.forbidden.pop(ALICE)  # Alice unblocks the bot and writes again
    await tg.post(renumbered("private_text", update_id=900000001, message_id=9001))
    await tg.gateway.wait_idle()
    assert tg.texts(ALICE) == ["echo: Hello there! What's on my calendar?"]


async def test_parse_error_is_resent_as_plain_text(start: Any, fake_llm: FakeLLM) -> None:
    tg = await start()
    fake_llm.reply("**Total:** 3 < 5 & done")
    tg.fake.fail_parse_entities()
    await tg.post(load("private_text"))
    await tg.gateway.wait_idle()
    assert tg.texts(ALICE) == ["Total: 3 < 5 & done"]
    assert [c.params.get("parse_mode") for c in tg.fake.calls_to("sendMessage")] == ["HTML", None]


# --- connect links never go into a group ---------------------------------------------------------------------
async def test_connect_in_a_group_sends_the_link_privately(start: Any,
                                                           fake_composio: Any) -> None:
    tg = await start(tools=True)
    await tg.post(load("private_text"))  # Alice has a private chat with the bot
    await tg.gateway.wait_idle()
    await tg.post(load("group_command_botname"))  # "/connect@gateway_test_bot asana"
    await tg.gateway.wait_idle()
    group_texts = tg.texts(GROUP)
    assert group_texts == [SENT_PRIVATELY]
    assert not any(LINK.search(s["text"]) for s in tg.fake.sent if s["chat_id"] < 0)
    [link] = LINK.findall("\n".join(tg.texts(ALICE)))
    assert fake_composio.link_owner(link)


async def test_connect_in_a_group_without_a_private_chat_posts_no_link(start: Any) -> None:
    tg = await start(tools=True)
    tg.fake.block(ALICE, NOT_STARTED)  # Alice never started the bot
    await tg.post(load("group_command_botname"))
    await tg.gateway.wait_idle()
    assert tg.texts(GROUP) == [COULD_NOT_DM]
    assert not any(LINK.search(s["text"]) for s in tg.fake.sent)
    assert not [c for c in tg.fake.calls_to("sendMessage")
                if c.params.get("chat_id") == str(ALICE)]


# --- long polling ----------------------------------------------------------------------------------------------
async def test_polling_restart_neither_repeats_nor_loses(start: Any, bot_api: FakeBotAPI) -> None:
    bot_api.webhook = {"url": "https://old.example.com/webhooks/telegram"}
    bot_api.push_update(renumbered("private_text", 500, 1), renumbered("group_mention", 501, 2))
    first = await start(mode="polling")
    await bot_api.wait_for(lambda: len(bot_api.sent) >= 2)
    await first.gateway.wait_idle()
    await first.gateway.stop()
    assert bot_api.webhook == {}  # polling removed the webhook (keeping pending updates)

    # While down, Telegram offers the first batch again (as if never confirmed) and two new
    # updates: the stored offset (and, behind it, the inbox's dedupe) keeps the old ones out.
    bot_api.push_update(renumbered("private_text", 500, 1), renumbered("group_mention", 501, 2),
                        renumbered("private_text", 502, 3), renumbered("group_mention", 503, 4))
    second = await start(mode="polling")
    await bot_api.wait_for(lambda: len(bot_api.sent) >= 4)
    await bot_api.wait_for(lambda: any(c.params.get("offset") == "504"
                                       for c in bot_api.calls_to("getUpdates")))
    await second.gateway.wait_idle()
    assert [(s["chat_id"], s["text"]) for s in bot_api.sent] == [
        (ALICE, "echo: Hello there! What's on my calendar?"),
        (GROUP, "echo: what is the weather?"),
        (ALICE, "echo: Hello there! What's on my calendar?"),
        (GROUP, "echo: what is the weather?"),
    ]
    offsets = [c.params.get("offset") for c in bot_api.calls_to("getUpdates")]
    assert "502" in offsets  # the restarted poller resumed from the stored offset
    async with second.gateway.sessions() as session:
        native_ids = sorted(r.native_id for r in await session.scalars(select(InboxItem)))
    assert [n.split(":")[0] for n in native_ids] == ["500", "501", "502", "503"]
