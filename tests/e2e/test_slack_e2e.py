"""Slack end to end: signed Events API requests into the real gateway (SQLite and Postgres),
replies out through slack_sdk to the local fake Web API, with the fake LLM and Composio."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from channels.slack import SlackChannel
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.fakes.composio_api import CONNECT_LINK_PREFIX
from tests.fakes.llm import FakeLLM
from tests.fakes.server import serve
from tests.fakes.slack_api import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    encode,
    fixture,
    signed_headers,
)

LINK = re.compile(re.escape(CONNECT_LINK_PREFIX) + r"[^\s>|]+")
DM, CHANNEL, MENTION_TS = "D0DM1", "C0GENERAL", "1700000100.000200"
ECHO_DM = "echo: hello, what can you do? a &lt; b &amp;&amp; c &gt; d"


@pytest.fixture
def slack_api() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    with serve(fake.app) as server:
        fake.base_url = server.url
        yield fake


class SlackGateway:
    """A running gateway with the Slack channel, and a client that signs like Slack."""

    def __init__(self, gateway: Gateway, fake: FakeSlack) -> None:
        self.gateway = gateway
        self.fake = fake
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
        )

    async def post(self, payload: dict[str, Any], retry: int | None = None) -> httpx.Response:
        body, content_type = encode(payload)
        headers = signed_headers(body, content_type, retry=retry)
        return await self.client.post("/webhooks/slack", content=body, headers=headers)


@pytest.fixture
async def start(make_gateway: GatewayFactory, slack_api: FakeSlack) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> SlackGateway:
        channel = SlackChannel(BOT_TOKEN, SIGNING_SECRET, "", "http", f"{slack_api.base_url}/api/")
        gateway = await make_gateway([channel], **overrides)
        sg = SlackGateway(gateway, slack_api)
        clients.append(sg.client)
        return sg

    yield factory
    for client in clients:
        await client.aclose()


async def test_retries_one_to_three_give_one_reply(start: Any) -> None:
    sg = await start()
    payload = fixture("message_im")
    responses = [await sg.post(payload, retry=n) for n in (None, 1, 2, 3)]
    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    await sg.gateway.wait_idle()
    assert sg.fake.texts(DM) == [ECHO_DM]
    assert sg.fake.posted[0].thread_ts is None  # a DM is answered in the DM, not a thread
    assert sg.fake.reactions[(DM, "1700000000.000100")] == set()  # :eyes: added, then removed
    assert len(sg.fake.calls_of("reactions.add")) == 1


async def test_dm_as_message_im_and_app_mention_gives_one_reply(start: Any) -> None:
    sg = await start()
    await sg.post(fixture("message_im"))
    await sg.post(fixture("app_mention_dm"))
    await sg.post(fixture("message_channel_mention"))  # same for a channel message
    await sg.post(fixture("app_mention_channel"))
    await sg.gateway.wait_idle()
    assert sg.fake.texts(DM) == [ECHO_DM]
    (in_channel,) = [p for p in sg.fake.posted if p.channel == CHANNEL]
    assert in_channel.thread_ts == MENTION_TS
    assert in_channel.text.startswith("echo: what's on my plate today?")


async def test_ack_returns_while_a_slow_turn_is_still_running(
    start: Any, fake_llm: FakeLLM
) -> None:
    sg = await start()
    fake_llm.reply("finally, an answer", delay=1.5)
    started = time.monotonic()
    response = await sg.post(fixture("message_im"))
    acked_after = time.monotonic() - started
    assert response.status_code == 200
    assert sg.fake.posted == []  # the answer does not exist yet
    await sg.gateway.wait_idle()
    answered_after = time.monotonic() - started
    assert sg.fake.texts(DM) == ["finally, an answer"]
    assert acked_after < 1.0 <= 1.5 <= answered_after
    print(f"ack {acked_after * 1000:.0f} ms, answer {answered_after * 1000:.0f} ms")


async def test_long_reply_is_ordered_mrkdwn_chunks_in_the_mentions_thread(
    start: Any, fake_llm: FakeLLM
) -> None:
    sg = await start()
    paragraphs = [f"**Part {i}.** " + "Some words of the long answer. " * 40 for i in range(8)]
    fake_llm.reply("\n\n".join(paragraphs))
    await sg.post(fixture("app_mention_channel"))
    await sg.gateway.wait_idle()
    chunks = [p for p in sg.fake.posted if p.channel == CHANNEL]
    assert len(chunks) >= 3
    assert all(p.thread_ts == MENTION_TS for p in chunks)
    assert all(len(p.text) <= 4000 for p in chunks)
    joined = "\n\n".join(p.text for p in chunks)
    assert [int(n) for n in re.findall(r"\*Part (\d+)\.\*", joined)] == list(range(8))
    assert "**" not in joined  # converted to Slack's *bold*


async def test_429_is_waited_for_and_the_reply_sent_once(start: Any) -> None:
    sg = await start()
    sg.fake.fail("chat.postMessage", "ratelimited", status=429, retry_after=1)
    await sg.post(fixture("message_im"))
    await sg.gateway.wait_idle()
    assert sg.fake.texts(DM) == [ECHO_DM]
    limited, sent = sg.fake.calls_of("chat.postMessage")
    assert sent.at - limited.at >= 0.9  # Retry-After: 1 was respected


async def test_connect_typed_in_a_channel_sends_the_link_only_to_the_dm(
    start: Any, fake_composio: Any
) -> None:
    sg = await start(tools=True)
    response = await sg.post(fixture("connect_in_channel"))
    assert response.status_code == 200
    await sg.gateway.wait_idle()
    (opened,) = sg.fake.calls_of("conversations.open")
    assert opened.params["users"] == "U0USER1"
    in_channel = [p for p in sg.fake.posted if p.channel == CHANNEL]
    in_dm = [p for p in sg.fake.posted if p.channel.startswith("D")]
    assert not any(LINK.search(p.text) for p in in_channel)
    assert not any(p.ephemeral for p in sg.fake.posted)
    links = [m for p in in_dm for m in LINK.findall(p.text)]
    assert len(links) == 1 and in_dm[0].thread_ts is None
    assert [p.text for p in in_channel] == ["I've sent you a private message."]
    assert in_channel[0].thread_ts == "1700000300.000300"
    ((user, _),) = await sg.gateway.identity.list_users(limit=10)
    assert fake_composio.link_owner(links[0]) == user.entity_id


async def test_same_user_id_in_two_teams_is_two_identities(start: Any) -> None:
    sg = await start()
    await sg.post(fixture("message_im"))
    await sg.post(fixture("message_im_team2"))
    await sg.gateway.wait_idle()
    users = await sg.gateway.identity.list_users(limit=10)
    assert len(users) == 2
    keys = sorted((i.account, i.channel_user_id) for _, identities in users for i in identities)
    assert keys == [("T0001", "U0USER1"), ("T0002", "U0USER1")]
    assert users[0][0].entity_id != users[1][0].entity_id
    assert sg.fake.texts("D0DM2") == ["echo: hello from another workspace"]


async def test_forged_request_stores_nothing(start: Any) -> None:
    sg = await start(process=False)
    body, content_type = encode(fixture("message_im"))
    forged = signed_headers(body, content_type, secret="guessed-secret")
    stale = signed_headers(body, content_type, timestamp=int(time.time()) - 600)
    for headers in (forged, stale, {"content-type": content_type}):
        response = await sg.client.post("/webhooks/slack", content=body, headers=headers)
        assert response.status_code == 401
    assert await sg.gateway.pending_work() == 0
    challenge = fixture("url_verification")
    ok = await sg.post(challenge)
    assert ok.status_code == 200 and challenge["challenge"] in ok.text


async def test_bot_and_own_messages_and_edits_start_no_turn(start: Any) -> None:
    sg = await start()
    for name in ("bot_message", "own_bot_message", "message_deleted", "message_changed"):
        assert (await sg.post(fixture(name))).status_code == 200
    await sg.gateway.wait_idle()
    assert sg.fake.posted == []


async def test_button_press_is_answered_in_its_thread(start: Any) -> None:
    sg = await start()
    await sg.post(fixture("block_actions"))
    await sg.gateway.wait_idle()
    (posted,) = sg.fake.posted
    assert posted.channel == CHANNEL and posted.thread_ts == MENTION_TS
