"""WhatsApp end to end: signed webhooks into the real gateway (SQLite and Postgres), replies
out through pywa to the local fake Graph API, the fake LLM and the fake Composio."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from channels.whatsapp import WhatsAppChannel
from gateway.outbox import OutboxItem
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.fakes.composio_api import CONNECT_LINK_PREFIX
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.llm import FakeLLM
from tests.fakes.server import FakeServer, serve

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify-token"
PHONE_NUMBER_ID = "106540352242922"
ALICE = "US.13491208655302741918"
BOB = "GB.50491208655302748812"
CAROL = "BR.90211093857720019034"
LINK = re.compile(re.escape(CONNECT_LINK_PREFIX) + r"\S+")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraphAPI, FakeServer]]:
    fake = FakeGraphAPI(phone_number_id=PHONE_NUMBER_ID)
    with serve(fake.app) as server:
        yield fake, server


class WhatsAppGateway:
    """A running gateway with the WhatsApp channel, and a signed-webhook client for it."""

    def __init__(self, gateway: Gateway, fake: FakeGraphAPI) -> None:
        self.gateway = gateway
        self.fake = fake
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
        )

    async def post(self, payload: dict[str, Any]) -> httpx.Response:
        body = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return await self.client.post(
            "/webhooks/whatsapp",
            content=body,
            headers={"content-type": "application/json", "x-hub-signature-256": signature},
        )

    async def entity_of(self, bsuid: str) -> str:
        for user, identities in await self.gateway.identity.list_users(limit=1000):
            if any(i.channel == "whatsapp" and i.channel_user_id == bsuid for i in identities):
                return user.entity_id
        raise KeyError(bsuid)


@pytest.fixture
async def start(
    make_gateway: GatewayFactory, graph: tuple[FakeGraphAPI, FakeServer]
) -> AsyncIterator[Any]:
    fake, server = graph
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> WhatsAppGateway:
        channel = WhatsAppChannel(
            phone_number_id=PHONE_NUMBER_ID,
            token=fake.token,
            app_secret=APP_SECRET,
            verify_token=VERIFY_TOKEN,
            graph_url=server.url,
            graph_version="v26.0",
            media_max_bytes=5 * 1024 * 1024,
        )
        gateway = await make_gateway([channel], **overrides)
        wa = WhatsAppGateway(gateway, fake)
        clients.append(wa.client)
        return wa

    yield factory
    for client in clients:
        await client.aclose()


def text_message(sender: dict[str, str], native_id: str, text: str, ts: int) -> dict[str, Any]:
    return {
        "from": sender["wa_id"],
        "from_user_id": sender["user_id"],
        "id": native_id,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
    }


def change(senders: list[dict[str, str]], messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [
                {"profile": {"name": s["name"]}, "wa_id": s["wa_id"], "user_id": s["user_id"]}
                for s in senders
            ],
            "messages": messages,
        },
    }


# --- batches, duplicates, retries -------------------------------------------------------------


async def test_batch_of_n_messages_from_m_senders_each_answered_in_order(start: Any) -> None:
    wa = await start()
    senders = [
        {"name": f"User {i}", "wa_id": f"1650555{i:04d}", "user_id": f"US.{9000000000000 + i}"}
        for i in range(4)
    ]
    sent: dict[str, list[str]] = {s["user_id"]: [] for s in senders}
    entries = []
    n = 0
    for entry_no in range(2):
        changes = []
        for _ in range(2):
            messages = []
            for _ in range(3):
                sender = senders[n % len(senders)]
                text = f"message {n} from {sender['name']}"
                sent[sender["user_id"]].append(text)
                messages.append(text_message(sender, f"wamid.batch{n:03d}", text, 1739321000 + n))
                n += 1
            changes.append(change(senders, messages))
        entries.append({"id": f"10229012934039{entry_no}", "changes": changes})
    response = await wa.post({"object": "whatsapp_business_account", "entry": entries})
    assert response.status_code == 200
    await wa.gateway.wait_idle()

    assert n == 12
    assert await wa.gateway.identity.count_users() == len(senders)
    for user_id, texts in sent.items():
        assert wa.fake.texts(user_id) == [f"echo: {t}" for t in texts]  # all, in order
    assert {r["message_id"] for r in wa.fake.reads} == {f"wamid.batch{i:03d}" for i in range(n)}
    assert all(r["typing_indicator"] == {"type": "text"} for r in wa.fake.reads)


async def test_same_post_three_times_also_concurrently_gives_one_reply_per_message(
    start: Any,
) -> None:
    wa = await start()
    payload = load("batch")
    first = await wa.post(payload)
    again = await asyncio.gather(wa.post(payload), wa.post(payload))
    assert [r.status_code for r in (first, *again)] == [200, 200, 200]
    await wa.gateway.wait_idle()
    assert wa.fake.texts(ALICE) == ["echo: first from alice", "echo: second from alice"]
    assert wa.fake.texts(BOB) == ["echo: first from bob", "echo: second from bob"]
    assert wa.fake.texts(CAROL) == ["echo: hi from carol"]
    assert len(wa.fake.sent) == 5


async def test_http_429_is_retried_and_the_reply_arrives_once(start: Any) -> None:
    wa = await start()
    wa.fake.fail_next(130429, http_status=429, retry_after=0)
    wa.fake.fail_next(131056, retry_after=0)
    await wa.post(load("text"))
    await wa.gateway.wait_idle()
    assert len(wa.fake.rejected) == 2
    assert wa.fake.texts(ALICE) == ["echo: Hello! What's on my calendar today?"]


async def test_window_closed_is_dead_lettered_not_retried(start: Any) -> None:
    wa = await start()
    wa.fake.fail_next(131047, times=5)
    await wa.post(load("text"))
    await wa.gateway.wait_idle()
    assert len(wa.fake.rejected) == 1  # permanent: one try, no retry loop
    async with wa.gateway.sessions() as session:
        [row] = list(await session.scalars(select(OutboxItem)))
    assert "131047" in (row.last_error or "")


async def test_long_reply_arrives_as_ordered_formatted_chunks(
    start: Any, fake_llm: FakeLLM
) -> None:
    wa = await start()
    sections = [
        f"## Part {i}\n\n" + ("This is **important** text. " * 70).strip() for i in range(10)
    ]
    fake_llm.reply("\n\n".join(sections))
    await wa.post(load("text"))
    await wa.gateway.wait_idle()
    texts = wa.fake.texts(ALICE)
    assert len(texts) > 1
    assert all(len(t) <= 4096 for t in texts)
    assert "**" not in "".join(texts)
    assert [int(p) for t in texts for p in re.findall(r"\*Part (\d+)\*", t)] == list(range(10))


# --- kinds ---------------------------------------------------------------------------------------


async def test_image_reaches_the_vision_model_as_image_content(
    start: Any, fake_llm: FakeLLM
) -> None:
    wa = await start()
    image = b"\xff\xd8\xff\xe0fake-jpeg-bytes" + bytes(range(200))
    wa.fake.add_media(image, "image/jpeg", media_id="2754859441498128")
    await wa.post(load("image"))
    await wa.gateway.wait_idle()
    content = fake_llm.requests[-1]["messages"][-1]["content"]
    assert isinstance(content, list)
    urls = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert urls == ["data:image/jpeg;base64," + base64.b64encode(image).decode()]
    assert any("What is in this picture?" in part.get("text", "") for part in content)
    assert wa.fake.texts(ALICE) == ["echo: What is in this picture?\n[image] (+1 image)"]


async def test_voice_note_is_transcribed(start: Any, fake_llm: FakeLLM) -> None:
    wa = await start(transcription_model="openai/whisper-1")
    audio = b"OggS" + b"\x00" * 2048
    wa.fake.add_media(audio, "audio/ogg; codecs=opus", media_id="1003383421387256")
    await wa.post(load("voice"))
    await wa.gateway.wait_idle()
    assert fake_llm.transcriptions == [{"model": "whisper-1", "bytes": len(audio)}]
    assert wa.fake.texts(ALICE) == [f"echo: (voice note) {fake_llm.transcript}"]


async def test_unsupported_gets_a_polite_reply_and_reactions_statuses_none(start: Any) -> None:
    wa = await start()
    for name in ("unsupported", "reaction", "status_read", "status_failed"):
        assert (await wa.post(load(name))).status_code == 200
    await wa.gateway.wait_idle()
    [reply] = wa.fake.texts(ALICE)
    assert "can't read" in reply


async def test_button_reply_is_answered(start: Any) -> None:
    wa = await start()
    await wa.post(load("interactive_button_reply"))
    await wa.gateway.wait_idle()
    assert wa.fake.texts(ALICE) == ["echo: Yes, book it"]


async def test_status_updates_the_outbound_delivery_state(start: Any) -> None:
    wa = await start()
    await wa.post(load("text"))
    await wa.gateway.wait_idle()
    async with wa.gateway.sessions() as session:
        [row] = list(await session.scalars(select(OutboxItem)))
    assert row.platform_message_id and row.platform_message_id.startswith("wamid.")
    for state in ("delivered", "read"):
        payload = load(f"status_{state}")
        payload["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = row.platform_message_id
        assert (await wa.post(payload)).status_code == 200
        async with wa.gateway.sessions() as session:
            fresh = await session.get(OutboxItem, row.seq)
            assert fresh is not None and fresh.delivery_status == state
    assert wa.fake.texts(ALICE) == ["echo: Hello! What's on my calendar today?"]  # no turn


async def test_forged_webhook_stores_nothing(start: Any) -> None:
    wa = await start(process=False)
    body = json.dumps(load("text")).encode()
    response = await wa.client.post(
        "/webhooks/whatsapp", content=body, headers={"x-hub-signature-256": "sha256=" + "0" * 64}
    )
    missing = await wa.client.post("/webhooks/whatsapp", content=body)
    assert (response.status_code, missing.status_code) == (403, 401)
    assert await wa.gateway.pending_work() == 0


async def test_handshake_through_the_gateway(start: Any) -> None:
    wa = await start(process=False)
    ok = await wa.client.get(
        "/webhooks/whatsapp",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "8675309",
        },
    )
    wrong = await wa.client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "8675309"},
    )
    assert (ok.status_code, ok.text) == (200, "8675309")
    assert wrong.status_code == 403


# --- per-user tools -------------------------------------------------------------------------------


async def test_two_users_connect_asana_and_tools_run_under_their_own_entity(
    start: Any, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    wa = await start(tools=True)
    alice = {"name": "Alice Example", "wa_id": "16505551234", "user_id": ALICE}
    bob = {"name": "Bob Sample", "wa_id": "447700900123", "user_id": BOB}
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    change(
                        [alice, bob],
                        [
                            text_message(alice, "wamid.c1", "/connect asana", 1739321000),
                            text_message(bob, "wamid.c2", "/connect asana", 1739321001),
                        ],
                    )
                ],
            }
        ],
    }
    await wa.post(payload)
    await wa.gateway.wait_idle()

    alice_entity, bob_entity = await wa.entity_of(ALICE), await wa.entity_of(BOB)
    assert alice_entity != bob_entity
    alice_links = LINK.findall("\n".join(wa.fake.texts(ALICE)))
    bob_links = LINK.findall("\n".join(wa.fake.texts(BOB)))
    assert len(alice_links) == 1 and len(bob_links) == 1
    assert alice_links != bob_links
    assert fake_composio.link_owner(alice_links[0]) == alice_entity
    assert fake_composio.link_owner(bob_links[0]) == bob_entity
    for body in wa.fake.sent:  # each link went only to its owner's one-to-one chat
        text = body["text"]["body"]
        if alice_links[0] in text:
            assert body.get("recipient") == ALICE
        if bob_links[0] in text:
            assert body.get("recipient") == BOB

    fake_composio.complete_link(alice_links[0])
    fake_composio.complete_link(bob_links[0])
    fake_llm.on("my tasks", "ASANA_GET_MULTIPLE_TASKS", {})
    payload["entry"][0]["changes"][0]["value"]["messages"] = [
        text_message(alice, "wamid.t1", "show my tasks", 1739321010),
        text_message(bob, "wamid.t2", "show my tasks", 1739321011),
    ]
    await wa.post(payload)
    await wa.gateway.wait_idle()
    runs = fake_composio.executions
    assert sorted((run["slug"], run["user_id"]) for run in runs) == sorted(
        [("ASANA_GET_MULTIPLE_TASKS", alice_entity), ("ASANA_GET_MULTIPLE_TASKS", bob_entity)]
    )
    assert all(run["outcome"] == "completed" for run in runs)
