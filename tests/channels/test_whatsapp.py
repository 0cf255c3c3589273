"""WhatsApp adapter: webhook verification and parsing of Meta's payloads, and sending,
typing and media through pywa's real client against a local fake Graph API."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from channels.base import (
    ChannelError,
    ConversationClosed,
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
from channels.whatsapp import WhatsAppChannel
from tests.fakes.graph_api import THROTTLING_CODES, FakeGraphAPI
from tests.fakes.server import FakeServer, serve

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
APP_SECRET = "s3cr3t-app-secret"
VERIFY_TOKEN = "verify-me-please"
PHONE_NUMBER_ID = "106540352242922"
ALICE_BSUID = "US.13491208655302741918"
ALICE_PHONE = "16505551234"
BOB_BSUID = "GB.50491208655302748812"
CAROL_BSUID = "BR.90211093857720019034"
DANA_BSUID = "US.77120394857720011111"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_server() -> Iterator[tuple[FakeGraphAPI, FakeServer]]:
    fake = FakeGraphAPI(phone_number_id=PHONE_NUMBER_ID)
    with serve(fake.app) as server:
        yield fake, server


@pytest.fixture
def graph(graph_server: tuple[FakeGraphAPI, FakeServer]) -> tuple[FakeGraphAPI, FakeServer]:
    graph_server[0].reset()
    return graph_server


@pytest.fixture
async def channel(graph: tuple[FakeGraphAPI, FakeServer]) -> AsyncIterator[WhatsAppChannel]:
    fake, server = graph
    wa = WhatsAppChannel(
        phone_number_id=PHONE_NUMBER_ID,
        token=fake.token,
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        graph_url=server.url,
        graph_version="v26.0",
        media_max_bytes=1024 * 1024,
    )
    yield wa
    await wa.stop()


@pytest.fixture
def fake(graph: tuple[FakeGraphAPI, FakeServer]) -> FakeGraphAPI:
    return graph[0]


class Webhook:
    """The gateway's contract around `receive`, in miniature: reject -> status, store nothing;
    malformed -> 400; otherwise keep the envelopes and answer `received.response` or 200."""

    def __init__(self, channel: WhatsAppChannel) -> None:
        self.channel = channel
        self.stored: list[Envelope] = []
        app = Starlette(routes=[Route("/webhooks/whatsapp", self._handle, methods=["GET", "POST"])])
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        )

    async def _handle(self, request: Request) -> Response:
        try:
            received = await self.channel.receive(request)
        except VerificationFailed as exc:
            return PlainTextResponse(str(exc), exc.status_code)
        except MalformedPayload as exc:
            return PlainTextResponse(str(exc), 400)
        self.stored.extend(received.envelopes)
        return received.response or PlainTextResponse("ok")

    async def post(
        self, payload: Any, *, headers: dict[str, Any] | None = None, raw: bytes | None = None
    ) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        hdrs: dict[str, Any] = {
            "content-type": "application/json",
            "x-hub-signature-256": sign(body),
        }
        if headers is not None:
            hdrs = {"content-type": "application/json", **headers}
        return await self.client.post("/webhooks/whatsapp", content=body, headers=hdrs)


@pytest.fixture
async def hook(channel: WhatsAppChannel) -> AsyncIterator[Webhook]:
    webhook = Webhook(channel)
    yield webhook
    await webhook.client.aclose()


async def parse(hook: Webhook, name: str) -> list[Envelope]:
    before = len(hook.stored)
    response = await hook.post(load(name))
    assert response.status_code == 200, response.text
    return hook.stored[before:]


# --- handshake -------------------------------------------------------------------------


async def test_handshake_with_right_token_echoes_challenge(hook: Webhook) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = await hook.client.get("/webhooks/whatsapp", params=params)
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN[:-1], "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {},
    ],
)
async def test_handshake_with_wrong_token_is_403(hook: Webhook, params: dict[str, str]) -> None:
    response = await hook.client.get("/webhooks/whatsapp", params=params)
    assert response.status_code == 403
    assert response.text != "1"


async def test_handshake_refused_when_no_verify_token_configured(fake: FakeGraphAPI) -> None:
    wa = WhatsAppChannel(
        PHONE_NUMBER_ID, fake.token, APP_SECRET, "", "http://127.0.0.1:9", "v26.0", 1
    )
    webhook = Webhook(wa)
    params = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "x"}
    response = await webhook.client.get("/webhooks/whatsapp", params=params)
    assert response.status_code == 403
    await wa.stop()


# --- signature ---------------------------------------------------------------------------


async def test_valid_signature_accepted(hook: Webhook) -> None:
    response = await hook.post(load("text"))
    assert response.status_code == 200
    assert len(hook.stored) == 1


async def test_missing_signature_is_401_and_nothing_stored(hook: Webhook) -> None:
    response = await hook.post(load("text"), headers={})
    assert response.status_code == 401
    assert hook.stored == []


async def test_forged_signature_is_403_and_nothing_stored(hook: Webhook) -> None:
    response = await hook.post(load("text"), headers={"x-hub-signature-256": "sha256=" + "ab" * 32})
    assert response.status_code == 403
    assert hook.stored == []


async def test_signature_with_another_secret_is_403(hook: Webhook) -> None:
    body = json.dumps(load("text")).encode()
    response = await hook.post(
        None, raw=body, headers={"x-hub-signature-256": sign(body, "other-secret")}
    )
    assert response.status_code == 403
    assert hook.stored == []


async def test_body_altered_after_signing_is_403(hook: Webhook) -> None:
    original = json.dumps(load("text")).encode()
    signature = sign(original)
    altered = original.replace(b"calendar", b"CALENDAR")
    assert altered != original
    response = await hook.post(None, raw=altered, headers={"x-hub-signature-256": signature})
    assert response.status_code == 403
    assert hook.stored == []


@pytest.mark.parametrize(
    "header",
    ["sha1=" + "ab" * 20, "sha256=", "garbage", "sha256=zz\u00e9", "sha256=" + "AB" * 31],
)
async def test_malformed_signature_headers_rejected(hook: Webhook, header: str) -> None:
    body = json.dumps(load("text")).encode()
    response = await hook.post(
        None, raw=body, headers={"x-hub-signature-256": header.encode("utf-8")}
    )
    assert response.status_code == 403
    assert hook.stored == []


async def test_uppercase_hex_signature_accepted(hook: Webhook) -> None:
    body = json.dumps(load("text")).encode()
    upper = "sha256=" + sign(body).removeprefix("sha256=").upper()
    response = await hook.post(None, raw=body, headers={"x-hub-signature-256": upper})
    assert response.status_code == 200


async def test_signature_checked_before_parsing(hook: Webhook) -> None:
    response = await hook.post(
        None, raw=b"{not json", headers={"x-hub-signature-256": "sha256=" + "00" * 32}
    )
    assert response.status_code == 403  # not 400: nothing is parsed before the signature is proven


async def test_no_app_secret_configured_refuses_everything(fake: FakeGraphAPI) -> None:
    wa = WhatsAppChannel(
        PHONE_NUMBER_ID, fake.token, "", VERIFY_TOKEN, "http://127.0.0.1:9", "v26.0", 1
    )
    webhook = Webhook(wa)
    body = json.dumps(load("text")).encode()
    empty_key_sig = "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()
    response = await webhook.post(None, raw=body, headers={"x-hub-signature-256": empty_key_sig})
    assert response.status_code == 403
    assert webhook.stored == []
    await wa.stop()


# --- parsing: every fixture ------------------------------------------------------------------


async def test_text_message(hook: Webhook) -> None:
    [env] = await parse(hook, "text")
    assert env.channel == "whatsapp"
    assert env.account == PHONE_NUMBER_ID
    assert env.kind == Kind.MESSAGE
    assert env.native_id.startswith("wamid.")
    assert env.native_message_id == env.native_id
    assert env.dedupe_key == ("whatsapp", PHONE_NUMBER_ID, env.native_id)
    assert env.sender.id == ALICE_BSUID  # keyed on the BSUID, not the phone
    assert env.sender.phone == ALICE_PHONE
    assert env.sender.display_name == "Alice Example"
    assert env.conversation == Conversation(id=ALICE_BSUID, is_group=False, title="Alice Example")
    assert env.addressed
    assert env.text == "Hello! What's on my calendar today?"
    assert env.timestamp.timestamp() == 1739321024
    assert env.raw["message"]["id"] == env.native_id


async def test_batch_every_entry_change_message_and_status(hook: Webhook) -> None:
    envelopes = await parse(hook, "batch")
    messages = [e for e in envelopes if e.kind == Kind.MESSAGE]
    statuses = [e for e in envelopes if e.kind == Kind.STATUS]
    assert [m.text for m in messages] == [
        "first from alice",
        "first from bob",
        "second from alice",
        "hi from carol",
        "second from bob",
    ]
    assert [m.sender.id for m in messages] == [
        ALICE_BSUID,
        BOB_BSUID,
        ALICE_BSUID,
        CAROL_BSUID,
        BOB_BSUID,
    ]
    assert {m.sender.display_name for m in messages} == {
        "Alice Example",
        "Bob Sample",
        "Carol Jones",
    }
    assert len({m.native_id for m in messages}) == 5
    assert [(s.status, s.sender.id) for s in statuses] == [
        ("sent", ALICE_BSUID),
        ("delivered", ALICE_BSUID),
    ]
    assert len(envelopes) == 7  # the template-status change is not a message: ignored


async def test_bsuid_only_message_without_phone(hook: Webhook) -> None:
    [env] = await parse(hook, "bsuid_only")
    assert env.sender.id == DANA_BSUID
    assert env.sender.phone is None
    assert env.sender.username == "@dana.codes"
    assert env.conversation.id == DANA_BSUID


async def test_older_payload_without_user_id_falls_back_to_wa_id(hook: Webhook) -> None:
    [env] = await parse(hook, "legacy_no_user_id")
    assert env.sender.id == "16315551181"
    assert env.sender.phone == "16315551181"
    assert env.sender.display_name == "Legacy Larry"
    assert env.text == "this is a text message"


async def test_image(hook: Webhook) -> None:
    [env] = await parse(hook, "image")
    assert env.kind == Kind.MESSAGE
    assert env.text == "What is in this picture?"
    [att] = env.attachments
    assert att.kind == AttachmentKind.IMAGE
    assert att.mime == "image/jpeg"
    assert att.ref == "2754859441498128"


async def test_voice_note_and_plain_audio(hook: Webhook) -> None:
    [env] = await parse(hook, "voice")
    [att] = env.attachments
    assert att.kind == AttachmentKind.VOICE
    assert att.mime == "audio/ogg; codecs=opus"
    assert att.ref == "1003383421387256"
    payload = load("voice")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["audio"]["voice"]
    message["id"] += "x"
    await hook.post(payload)
    assert hook.stored[-1].attachments[0].kind == AttachmentKind.AUDIO


@pytest.mark.parametrize(
    ("name", "kind", "mime", "text", "filename"),
    [
        ("video", AttachmentKind.VIDEO, "video/mp4", "look at this", None),
        (
            "document",
            AttachmentKind.DOCUMENT,
            "application/pdf",
            "the invoice",
            "invoice-2026-03.pdf",
        ),
        ("sticker", AttachmentKind.STICKER, "image/webp", "", None),
    ],
)
async def test_other_media(
    hook: Webhook, name: str, kind: AttachmentKind, mime: str, text: str, filename: str | None
) -> None:
    [env] = await parse(hook, name)
    [att] = env.attachments
    assert (att.kind, att.mime, att.name) == (kind, mime, filename)
    assert att.ref
    assert env.text == text


async def test_location(hook: Webhook) -> None:
    [env] = await parse(hook, "location")
    [att] = env.attachments
    assert att.kind == AttachmentKind.LOCATION
    assert att.data["latitude"] == pytest.approx(37.483307)
    assert att.data["longitude"] == pytest.approx(-122.148981)
    assert "Meta Headquarters" in env.text


async def test_contacts_card_is_an_attachment_not_the_sender(hook: Webhook) -> None:
    [env] = await parse(hook, "contacts_card")
    assert (
        env.sender.id == ALICE_BSUID
    )  # value.contacts is the sender; messages[].contacts the card
    [att] = env.attachments
    assert att.kind == AttachmentKind.CONTACT
    assert att.data["name"]["formatted_name"] == "Barbara J. Johnson"
    assert env.text == "Barbara J. Johnson"


@pytest.mark.parametrize(
    ("name", "value", "title"),
    [
        ("interactive_button_reply", "confirm_yes", "Yes, book it"),
        ("interactive_list_reply", "slot_2", "Tuesday 10:00"),
        ("button", "STOP_PROMOS", "Stop promotions"),
    ],
)
async def test_button_replies(hook: Webhook, name: str, value: str, title: str) -> None:
    [env] = await parse(hook, name)
    assert env.kind == Kind.BUTTON
    assert env.button_value == value
    assert env.text == title
    assert env.reply_to_id and env.reply_to_id.startswith("wamid.")


async def test_reaction(hook: Webhook) -> None:
    [env] = await parse(hook, "reaction")
    assert env.kind == Kind.REACTION
    assert env.text == "\U0001f44d"
    assert (
        env.reply_to_id
        == load("reaction")["entry"][0]["changes"][0]["value"]["messages"][0]["reaction"][
            "message_id"
        ]
    )


async def test_reply_context_kept(hook: Webhook) -> None:
    [env] = await parse(hook, "reply_context")
    context = load("reply_context")["entry"][0]["changes"][0]["value"]["messages"][0]["context"]
    assert env.reply_to_id == context["id"]
    assert env.kind == Kind.MESSAGE


async def test_unsupported_type(hook: Webhook) -> None:
    [env] = await parse(hook, "unsupported")
    assert env.kind == Kind.UNSUPPORTED
    assert env.sender.id == ALICE_BSUID


@pytest.mark.parametrize("state", ["sent", "delivered", "read"])
async def test_statuses(hook: Webhook, state: str) -> None:
    [env] = await parse(hook, f"status_{state}")
    status = load(f"status_{state}")["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert env.kind == Kind.STATUS
    assert env.status == state
    assert env.native_message_id == status["id"]
    assert env.native_id == f"status:{status['id']}:{state}"
    assert env.sender.id == ALICE_BSUID
    assert env.status_error is None


async def test_failed_status_without_contacts(hook: Webhook) -> None:
    [env] = await parse(hook, "status_failed")
    assert env.kind == Kind.STATUS
    assert env.status == "failed"
    assert env.sender.id == DANA_BSUID
    assert env.status_error and "131047" in env.status_error and "24 hours" in env.status_error


async def test_other_phone_number_id_is_ignored_with_a_log(
    hook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert await parse(hook, "other_phone_number") == []
    assert "another phone number id" in caplog.text
    assert "447700900123" not in caplog.text


async def test_same_payload_gives_same_dedupe_keys(hook: Webhook) -> None:
    first = await parse(hook, "batch")
    second = await parse(hook, "batch")
    assert [e.dedupe_key for e in first] == [e.dedupe_key for e in second]


async def test_unknown_message_type_becomes_unsupported_and_system_is_skipped(
    hook: Webhook,
) -> None:
    payload = load("text")
    value = payload["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    order = {
        **template,
        "id": "wamid.order1",
        "type": "order",
        "order": {"catalog_id": "1", "product_items": []},
    }
    del order["text"]
    system = {
        "from": ALICE_PHONE,
        "id": "wamid.sys1",
        "timestamp": "1739321024",
        "type": "system",
        "system": {
            "body": "User changed number",
            "wa_id": "16505550000",
            "type": "user_changed_number",
        },
    }
    value["messages"] = [order, system]
    response = await hook.post(payload)
    assert response.status_code == 200
    assert [(e.native_id, e.kind) for e in hook.stored] == [("wamid.order1", Kind.UNSUPPORTED)]


async def test_unknown_field_and_object_are_ignored(hook: Webhook) -> None:
    response = await hook.post({"object": "page", "entry": []})
    assert response.status_code == 200
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "account_update", "value": {"event": "X"}}]}],
    }
    response = await hook.post(payload)
    assert response.status_code == 200
    assert hook.stored == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: "not an object",
        lambda p: {**p, "entry": {"id": "1"}},
        lambda p: {**p, "entry": [{"id": "1", "changes": "x"}]},
        lambda p: (p["entry"][0]["changes"][0]["value"]["messages"][0].pop("id"), p)[1],
        lambda p: (p["entry"][0]["changes"][0]["value"].pop("metadata"), p)[1],
        lambda p: (p["entry"][0]["changes"][0]["value"].update(messages="x"), p)[1],
    ],
)
async def test_malformed_payloads_are_400(hook: Webhook, mutate: Any) -> None:
    payload = mutate(copy.deepcopy(load("text")))
    response = await hook.post(payload)
    assert response.status_code == 400
    assert hook.stored == []


async def test_non_json_body_is_400(hook: Webhook) -> None:
    body = b"\xff\xfe not json"
    response = await hook.post(None, raw=body, headers={"x-hub-signature-256": sign(body)})
    assert response.status_code == 400


async def test_message_without_any_sender_is_400(hook: Webhook) -> None:
    payload = load("text")
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"][0]["from"]
    del value["messages"][0]["from_user_id"]
    value["contacts"] = []
    assert (await hook.post(payload)).status_code == 400


async def test_receive_logs_no_phone_or_text(
    hook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for name in ("batch", "text", "unsupported", "status_failed", "bsuid_only"):
        await parse(hook, name)
    for secret in (ALICE_PHONE, "447700900123", "first from alice", "calendar", APP_SECRET):
        assert secret not in caplog.text


# --- sending ---------------------------------------------------------------------------


def out(text: str, to: str = ALICE_BSUID, **kwargs: Any) -> OutboundMessage:
    return OutboundMessage(
        channel="whatsapp",
        account=PHONE_NUMBER_ID,
        conversation=Conversation(id=to),
        text=text,
        **kwargs,
    )


async def test_send_to_bsuid_uses_recipient_field(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    message_id = await channel.send(out("hello *there*"))
    assert message_id.startswith("wamid.")
    [body] = fake.sent
    assert body["recipient"] == ALICE_BSUID
    assert "to" not in body
    assert body["recipient_type"] == "individual"
    assert body["type"] == "text"
    assert body["text"] == {"body": "hello *there*", "preview_url": False}
    assert ("POST", f"/v26.0/{PHONE_NUMBER_ID}/messages") in fake.calls


async def test_send_to_alphanumeric_bsuid_and_phone(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    await channel.send(out("a", to="DE.a8Bc72kLm0Qz"))
    await channel.send(out("b", to=ALICE_PHONE))
    await channel.send(out("c", to="+" + ALICE_PHONE))
    assert fake.sent[0]["recipient"] == "DE.a8Bc72kLm0Qz" and "to" not in fake.sent[0]
    assert fake.sent[1]["to"] == ALICE_PHONE and "recipient" not in fake.sent[1]
    assert fake.sent[2]["to"] == ALICE_PHONE


async def test_send_with_reply_context_and_private_target(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    await channel.send(out("quoted", reply_to_id="wamid.ORIGINAL"))
    await channel.send(out("secret link", to="ignored-conversation", private_to=BOB_BSUID))
    assert fake.sent[0]["context"] == {"message_id": "wamid.ORIGINAL"}
    assert fake.sent[1]["recipient"] == BOB_BSUID
    assert "context" not in fake.sent[1]


async def test_open_private_is_the_one_to_one_chat(channel: WhatsAppChannel) -> None:
    assert await channel.open_private(PHONE_NUMBER_ID, BOB_BSUID) == Conversation(
        id=BOB_BSUID, is_group=False
    )


async def test_long_reply_sent_as_ordered_formatted_chunks(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    sections = [
        f"## Part {i}\n\n" + ("This is **important** text. " * 60).strip() for i in range(12)
    ]
    chunks = channel.render("\n\n".join(sections))
    assert len(chunks) > 1
    for chunk in chunks:
        await channel.send(out(chunk))
    texts = fake.texts(ALICE_BSUID)
    assert texts == chunks
    assert all(len(t) <= 4096 for t in texts)
    assert "**" not in "".join(texts) and "*important*" in texts[0] and "*Part 0*" in texts[0]
    parts = [int(p) for t in texts for p in __import__("re").findall(r"\*Part (\d+)\*", t)]
    assert parts == list(range(12))


@pytest.mark.parametrize("code", THROTTLING_CODES)
async def test_throttling_codes_are_rate_limited(
    channel: WhatsAppChannel, fake: FakeGraphAPI, code: int
) -> None:
    fake.fail_next(code)
    with pytest.raises(RateLimited):
        await channel.send(out("hi"))
    assert fake.sent == []
    assert await channel.send(out("hi again"))  # next one goes through
    assert fake.texts() == ["hi again"]


async def test_http_429_with_retry_after(channel: WhatsAppChannel, fake: FakeGraphAPI) -> None:
    fake.fail_next(130429, http_status=429, retry_after=7)
    with pytest.raises(RateLimited) as info:
        await channel.send(out("hi"))
    assert info.value.retry_after == 7


async def test_rate_limit_estimated_time_to_regain_access(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    usage = {
        "102290129340398": [
            {"type": "whatsapp", "call_count": 100, "estimated_time_to_regain_access": 2}
        ]
    }
    fake.fail_next(80007, headers={"X-Business-Use-Case-Usage": json.dumps(usage)})
    with pytest.raises(RateLimited) as info:
        await channel.send(out("hi"))
    assert info.value.retry_after == 120


async def test_window_closed_is_permanent_and_logged(
    channel: WhatsAppChannel, fake: FakeGraphAPI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next(131047)
    with pytest.raises(ConversationClosed) as info:  # until the user writes again
        await channel.send(out("too late"))
    assert "131047" in str(info.value)
    assert "24-hour" in caplog.text
    assert ALICE_BSUID not in caplog.text and "too late" not in caplog.text


async def test_invalid_token_is_permanent_with_clear_error(
    graph: tuple[FakeGraphAPI, FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, server = graph
    wa = WhatsAppChannel(
        PHONE_NUMBER_ID, "wrong-token", APP_SECRET, VERIFY_TOKEN, server.url, "v26.0", 1024
    )
    with pytest.raises(PermanentSendError) as info:
        await wa.send(out("hi"))
    assert "token" in str(info.value)
    assert "WHATSAPP_TOKEN" in caplog.text
    assert "wrong-token" not in caplog.text
    await wa.stop()


async def test_expired_token_code_190(channel: WhatsAppChannel, fake: FakeGraphAPI) -> None:
    fake.fail_next(190)
    with pytest.raises(PermanentSendError, match="token"):
        await channel.send(out("hi"))


@pytest.mark.parametrize(("code", "status"), [(131000, None), (None, 502), (None, 503)])
async def test_server_errors_are_transient(
    channel: WhatsAppChannel, fake: FakeGraphAPI, code: int | None, status: int | None
) -> None:
    fake.fail_next(code, http_status=status)
    with pytest.raises(TransientSendError):
        await channel.send(out("hi"))


async def test_other_client_errors_are_permanent(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    fake.fail_next(100)
    with pytest.raises(PermanentSendError):
        await channel.send(out("hi"))


async def test_network_error_is_transient(fake: FakeGraphAPI) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    wa = WhatsAppChannel(
        PHONE_NUMBER_ID,
        fake.token,
        APP_SECRET,
        VERIFY_TOKEN,
        f"http://127.0.0.1:{port}",
        "v26.0",
        1,
    )
    with pytest.raises(TransientSendError):
        await wa.send(out("hi"))
    await wa.stop()


async def test_refuses_empty_or_oversize_text(channel: WhatsAppChannel, fake: FakeGraphAPI) -> None:
    with pytest.raises(PermanentSendError):
        await channel.send(out("   "))
    with pytest.raises(PermanentSendError):
        await channel.send(out("x" * 4097))
    assert fake.sent == []


async def test_concurrent_sends_all_arrive(channel: WhatsAppChannel, fake: FakeGraphAPI) -> None:
    ids = await asyncio.gather(*(channel.send(out(f"m{i}")) for i in range(20)))
    assert len(set(ids)) == 20
    assert sorted(fake.texts()) == sorted(f"m{i}" for i in range(20))


# --- typing / read ------------------------------------------------------------------------


async def test_typing_marks_read_with_indicator(
    hook: Webhook, channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    [env] = await parse(hook, "text")
    await channel.typing(env)
    assert fake.reads == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": env.native_message_id,
            "typing_indicator": {"type": "text"},
        }
    ]
    await channel.done(env)


async def test_typing_is_best_effort(
    hook: Webhook, channel: WhatsAppChannel, fake: FakeGraphAPI, caplog: pytest.LogCaptureFixture
) -> None:
    [env] = await parse(hook, "text")
    fake.fail_next_read(131000)
    await channel.typing(env)  # no exception
    assert "typing indicator failed" in caplog.text
    fake.fail_next_read(190)
    await channel.typing(env)


async def test_typing_skips_statuses(
    hook: Webhook, channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    [env] = await parse(hook, "status_read")
    await channel.typing(env)
    assert fake.reads == []


# --- media ---------------------------------------------------------------------------------


async def test_fetch_attachment_downloads_with_bearer_token(
    channel: WhatsAppChannel, graph: tuple[FakeGraphAPI, FakeServer]
) -> None:
    fake, server = graph
    data = b"\x89PNG\r\n" + bytes(range(256)) * 40
    media_id = fake.add_media(data, "image/png")
    att = Attachment(kind=AttachmentKind.IMAGE, mime="image/png", ref=media_id)
    assert await channel.fetch_attachment(att, max_bytes=1_000_000) == data
    assert ("GET", f"/v26.0/{media_id}") in fake.calls
    assert ("GET", "/whatsapp_business/attachments/") in fake.calls
    async with httpx.AsyncClient() as client:  # the fake really demands the token
        lookup = await client.get(f"{server.url}/v26.0/{media_id}")
        assert lookup.status_code == 401
        url = (
            await client.get(
                f"{server.url}/v26.0/{media_id}", headers={"Authorization": f"Bearer {fake.token}"}
            )
        ).json()["url"]
        assert (await client.get(url)).status_code == 401


async def test_fetch_attachment_refuses_oversize_by_declared_size(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    media_id = fake.add_media(b"x" * 5000, "video/mp4")
    att = Attachment(kind=AttachmentKind.VIDEO, ref=media_id)
    with pytest.raises(ChannelError, match="size limit"):
        await channel.fetch_attachment(att, max_bytes=4999)
    assert not any(path == "/whatsapp_business/attachments/" for _, path in fake.calls)


async def test_fetch_attachment_refuses_oversize_while_streaming(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    media_id = fake.add_media(b"y" * 300_000, "audio/ogg", reported_size=10)  # lies about its size
    with pytest.raises(ChannelError, match="size limit"):
        await channel.fetch_attachment(
            Attachment(kind=AttachmentKind.VOICE, ref=media_id), max_bytes=100_000
        )


async def test_fetch_attachment_respects_configured_media_max(
    channel: WhatsAppChannel, fake: FakeGraphAPI
) -> None:
    media_id = fake.add_media(b"z" * (1024 * 1024 + 1), "application/pdf")
    with pytest.raises(ChannelError, match="size limit"):
        await channel.fetch_attachment(
            Attachment(kind=AttachmentKind.DOCUMENT, ref=media_id), max_bytes=10**9
        )


async def test_fetch_unknown_media_is_a_channel_error(channel: WhatsAppChannel) -> None:
    with pytest.raises(ChannelError):
        await channel.fetch_attachment(
            Attachment(kind=AttachmentKind.IMAGE, ref="999"), max_bytes=10
        )
    with pytest.raises(ChannelError):
        await channel.fetch_attachment(Attachment(kind=AttachmentKind.IMAGE), max_bytes=10)


# --- check --------------------------------------------------------------------------------------


async def test_check_reads_the_phone_number(channel: WhatsAppChannel, fake: FakeGraphAPI) -> None:
    info = await channel.check()
    assert info["id"] == PHONE_NUMBER_ID
    assert info["verified_name"] == fake.verified_name
    assert ("GET", f"/v26.0/{PHONE_NUMBER_ID}") in fake.calls


async def test_check_reports_bad_token_and_bad_phone_id(
    graph: tuple[FakeGraphAPI, FakeServer],
) -> None:
    fake, server = graph
    bad_token = WhatsAppChannel(
        PHONE_NUMBER_ID, "nope", APP_SECRET, VERIFY_TOKEN, server.url, "v26.0", 1
    )
    with pytest.raises(ChannelError, match="190"):
        await bad_token.check()
    bad_id = WhatsAppChannel("123", fake.token, APP_SECRET, VERIFY_TOKEN, server.url, "v26.0", 1)
    with pytest.raises(ChannelError, match="100"):
        await bad_id.check()
    await bad_token.stop()
    await bad_id.stop()


# --- `gateway whatsapp check` -------------------------------------------------------------------


def _cli_env(monkeypatch: pytest.MonkeyPatch, server: FakeServer, **values: str) -> None:
    env = {
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "WHATSAPP_TOKEN": "test-token",
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_GRAPH_URL": server.url,
        "WHATSAPP_GRAPH_VERSION": "v26.0",
        "PUBLIC_BASE_URL": "https://bot.example.com",
    }
    env.update(values)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_cli_check_succeeds_against_the_graph_api(
    graph: tuple[FakeGraphAPI, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from gateway.cli_whatsapp import app

    fake, server = graph
    _cli_env(monkeypatch, server)
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert fake.display_phone_number in result.output
    assert "https://bot.example.com/webhooks/whatsapp" in result.output
    assert "test-token" not in result.output


@pytest.mark.parametrize(
    ("values", "code", "needle"),
    [
        ({"WHATSAPP_TOKEN": "expired"}, 1, "190"),
        ({"WHATSAPP_PHONE_NUMBER_ID": "42"}, 1, "100"),
        ({"WHATSAPP_TOKEN": ""}, 2, "WHATSAPP_TOKEN"),
        ({"WHATSAPP_APP_SECRET": ""}, 1, "WHATSAPP_APP_SECRET"),
    ],
)
def test_cli_check_reports_problems(
    graph: tuple[FakeGraphAPI, FakeServer],
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, str],
    code: int,
    needle: str,
) -> None:
    from typer.testing import CliRunner

    from gateway.cli_whatsapp import app

    _cli_env(monkeypatch, graph[1], **values)
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == code, result.output
    assert needle in result.output
