"""Slack adapter against signed requests and a local fake Web API, through slack-bolt/slack_sdk."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

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
from channels.slack import SlackChannel
from tests.fakes.server import serve
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    SocketModeFake,
    encode,
    fixture,
    make_request,
    signed_headers,
    signed_request,
)


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    api = FakeSlack()
    with serve(api.app) as srv:
        api.base_url = srv.url
        yield api


@pytest.fixture
async def slack(fake: FakeSlack) -> AsyncIterator[SlackChannel]:
    channel = SlackChannel(
        BOT_TOKEN, SIGNING_SECRET, "", "http", f"{fake.base_url}/api/", messages_per_second=0
    )
    yield channel
    await channel.stop()


async def receive(
    slack: SlackChannel, name_or_payload: str | dict[str, Any], **kw: Any
) -> list[Envelope]:
    payload = fixture(name_or_payload) if isinstance(name_or_payload, str) else name_or_payload
    received = await slack.receive(signed_request(payload, **kw))
    assert received.response is not None and received.response.status_code == 200
    return received.envelopes


def one(envelopes: list[Envelope]) -> Envelope:
    assert len(envelopes) == 1, envelopes
    return envelopes[0]


# ---------------------------------------------------------------- verification


async def test_url_verification_is_answered_with_the_challenge(slack: SlackChannel) -> None:
    payload = fixture("url_verification")
    received = await slack.receive(signed_request(payload))
    assert received.envelopes == []
    assert received.response is not None and received.response.status_code == 200
    assert payload["challenge"] in received.response.body.decode()


@pytest.mark.parametrize(
    "tamper",
    ["wrong_secret", "stale", "future", "missing", "body_changed", "no_timestamp"],
)
async def test_forged_stale_or_missing_signatures_are_rejected(
    slack: SlackChannel, fake: FakeSlack, tamper: str
) -> None:
    body, content_type = encode(fixture("message_im"))
    now = int(time.time())
    if tamper == "wrong_secret":
        headers = signed_headers(body, content_type, secret="not-the-secret")
    elif tamper == "stale":  # a correctly signed request replayed after 5 minutes
        headers = signed_headers(body, content_type, timestamp=now - 5 * 60 - 5)
    elif tamper == "future":
        headers = signed_headers(body, content_type, timestamp=now + 5 * 60 + 5)
    elif tamper == "missing":
        headers = {"content-type": content_type}
    elif tamper == "no_timestamp":
        headers = signed_headers(body, content_type)
        del headers["x-slack-request-timestamp"]
    else:
        headers = signed_headers(body, content_type)
        body = body.replace(b"hello", b"HELLO")
    with pytest.raises(VerificationFailed) as caught:
        await slack.receive(make_request(body, headers))
    assert caught.value.status_code == 401
    assert fake.calls == []


async def test_a_request_just_inside_the_window_is_accepted(slack: SlackChannel) -> None:
    envelopes = await receive(slack, "message_im", timestamp=int(time.time()) - 4 * 60)
    assert len(envelopes) == 1


async def test_unsigned_garbage_is_401_and_signed_garbage_is_400(slack: SlackChannel) -> None:
    junk = b"{not json"
    with pytest.raises(VerificationFailed):
        await slack.receive(make_request(junk, {"content-type": "application/json"}))
    with pytest.raises(MalformedPayload):
        await slack.receive(make_request(junk, signed_headers(junk, "application/json")))
    invalid_utf8 = b"\xff\xfe{}"
    with pytest.raises(VerificationFailed):
        await slack.receive(make_request(invalid_utf8, {"content-type": "application/json"}))
    with pytest.raises(MalformedPayload):
        await slack.receive(make_request(invalid_utf8, signed_headers(invalid_utf8, "x/y")))


async def test_signed_but_malformed_events_are_400(slack: SlackChannel) -> None:
    no_event = {"type": "event_callback", "team_id": "T0001", "event_id": "Ev1"}
    with pytest.raises(MalformedPayload):
        await slack.receive(signed_request(no_event))
    no_ts = fixture("message_im")
    del no_ts["event"]["ts"]
    with pytest.raises(MalformedPayload):
        await slack.receive(signed_request(no_ts))
    no_team = fixture("message_im")
    for key in ("team_id", "authorizations", "context_team_id"):
        no_team.pop(key)
    with pytest.raises(MalformedPayload):
        await slack.receive(signed_request(no_team))


async def test_unknown_events_and_payload_types_are_acknowledged_and_ignored(
    slack: SlackChannel,
) -> None:
    assert await receive(slack, "member_joined_channel") == []
    rate_limited = {
        "token": "x",
        "type": "app_rate_limited",
        "team_id": "T0001",
        "minute_rate_limited": 1518467820,
        "api_app_id": "A0001",
    }
    assert await receive(slack, rate_limited) == []


async def test_the_ack_path_never_calls_slack(slack: SlackChannel, fake: FakeSlack) -> None:
    for name in ("message_im", "app_mention_channel", "file_share", "block_actions"):
        await receive(slack, name)
    assert fake.calls == []


async def test_webhooks_refused_without_signing_secret_in_socket_mode(fake: FakeSlack) -> None:
    channel = SlackChannel(BOT_TOKEN, "", APP_TOKEN, "socket", f"{fake.base_url}/api/")
    body, content_type = encode(fixture("message_im"))
    with pytest.raises(VerificationFailed):
        await channel.receive(make_request(body, signed_headers(body, content_type)))


def test_constructor_refuses_unsafe_configurations() -> None:
    with pytest.raises(ValueError):
        SlackChannel(BOT_TOKEN, "", "", "http", "http://127.0.0.1/api/")
    with pytest.raises(ValueError):
        SlackChannel("", SIGNING_SECRET, "", "http", "http://127.0.0.1/api/")
    with pytest.raises(ValueError):
        SlackChannel(BOT_TOKEN, SIGNING_SECRET, "", "socket", "http://127.0.0.1/api/")


# ---------------------------------------------------------------- parsing


async def test_direct_message(slack: SlackChannel) -> None:
    env = one(await receive(slack, "message_im"))
    assert env.kind == Kind.MESSAGE
    assert env.dedupe_key == ("slack", "T0001", "D0DM1:1700000000.000100")
    assert env.sender.id == "U0USER1" and not env.sender.is_bot
    assert env.conversation == Conversation(id="D0DM1", is_group=False)
    assert env.mentioned and env.addressed
    assert env.thread_id is None and env.reply_to_id is None
    assert env.native_message_id == "1700000000.000100"
    assert env.text == "hello, what can you do? a < b && c > d"
    assert env.timestamp.timestamp() == pytest.approx(1700000000.0001)
    assert "token" not in env.raw and env.raw["event_id"] == "Ev0MSGIM001"


async def test_channel_mention_replies_in_the_mentions_thread(slack: SlackChannel) -> None:
    env = one(await receive(slack, "app_mention_channel"))
    assert env.conversation == Conversation(id="C0GENERAL", is_group=True)
    assert env.mentioned
    assert env.thread_id == "1700000100.000200"  # the mention's own ts
    assert env.text == "what's on my plate today? see [this page](https://example.com/x?a=1&b=2)"


async def test_same_message_as_message_and_app_mention_is_one_dedupe_key(
    slack: SlackChannel,
) -> None:
    by_mention = one(await receive(slack, "app_mention_channel"))
    by_message = one(await receive(slack, "message_channel_mention"))
    assert by_mention.dedupe_key == by_message.dedupe_key
    assert (by_message.mentioned, by_message.thread_id, by_message.text) == (
        by_mention.mentioned,
        by_mention.thread_id,
        by_mention.text,
    )
    dm = one(await receive(slack, "message_im"))
    dm_mention = one(await receive(slack, "app_mention_dm"))
    assert dm.dedupe_key == dm_mention.dedupe_key
    assert not dm_mention.conversation.is_group and dm_mention.thread_id is None


async def test_retries_keep_the_dedupe_key(slack: SlackChannel) -> None:
    keys = {one(await receive(slack, "message_im", retry=n)).dedupe_key for n in (None, 1, 2, 3)}
    assert keys == {("slack", "T0001", "D0DM1:1700000000.000100")}


async def test_thread_reply_counts_as_addressed_only_in_the_bots_threads(
    fake: FakeSlack,
) -> None:
    fresh = SlackChannel(BOT_TOKEN, SIGNING_SECRET, "", "http", f"{fake.base_url}/api/")
    reply = one(await receive(fresh, "thread_reply"))
    assert not reply.mentioned  # nobody asked the bot in that thread (as far as we know)
    await receive(fresh, "app_mention_channel")  # the thread's parent mentions the bot
    reply = one(await receive(fresh, "thread_reply"))
    assert reply.mentioned
    assert reply.thread_id == "1700000100.000200"
    assert reply.reply_to_id == "1700000100.000200"
    chatter = one(await receive(fresh, "channel_chatter"))
    assert not chatter.mentioned and chatter.conversation.is_group


async def test_bot_messages_are_ignored_but_our_threads_are_noted(slack: SlackChannel) -> None:
    assert await receive(slack, "bot_message") == []
    before = one(await receive(slack, "thread_reply_in_bot_thread"))
    assert not before.mentioned
    assert await receive(slack, "own_bot_message") == []  # our reply in that thread
    after = one(await receive(slack, "thread_reply_in_bot_thread"))
    assert after.mentioned and after.thread_id == "1700000450.000650"


async def test_parent_by_the_bot_makes_a_thread_the_bots(slack: SlackChannel) -> None:
    payload = fixture("thread_reply")
    payload["event"]["parent_user_id"] = "U0BOT"
    assert one(await receive(slack, payload)).mentioned


async def test_bot_user_from_auth_test_filters_own_messages_without_authorizations(
    slack: SlackChannel, fake: FakeSlack
) -> None:
    await slack.start(_no_sink, _NoState())
    assert len(fake.calls_of("auth.test")) == 1
    own = fixture("own_bot_message")
    own["authorizations"] = []
    del own["event"]["bot_id"]  # only the user id says it is us
    assert await receive(slack, own) == []
    mention = fixture("message_channel_mention")
    mention["authorizations"] = []
    assert one(await receive(slack, mention)).mentioned  # <@U0BOT> in text


async def test_start_fails_fast_on_a_revoked_token(slack: SlackChannel, fake: FakeSlack) -> None:
    fake.fail("auth.test", "token_revoked")
    with pytest.raises(ChannelError):
        await slack.start(_no_sink, _NoState())


async def test_message_changed_becomes_an_edit_and_unfurls_are_ignored(
    slack: SlackChannel,
) -> None:
    edit = one(await receive(slack, "message_changed"))
    assert edit.kind == Kind.EDIT
    assert edit.native_id == "edit:D0DM1:1700000000.000100:1700000700.000000"
    assert edit.native_message_id == "1700000000.000100"
    assert edit.text == "hello, what can you do for me?"
    assert await receive(slack, "message_changed_unfurl") == []
    assert await receive(slack, "message_deleted") == []


async def test_file_share_becomes_attachments(slack: SlackChannel) -> None:
    env = one(await receive(slack, "file_share"))
    assert env.kind == Kind.MESSAGE and env.text == "what is in this report?"
    pdf, png = env.attachments
    assert (pdf.kind, pdf.mime, pdf.name, pdf.size) == (
        AttachmentKind.DOCUMENT,
        "application/pdf",
        "report.pdf",
        18432,
    )
    assert pdf.ref == "https://files.slack.com/files-pri/T0001-F0REPORT1/download/report.pdf"
    assert (png.kind, png.mime) == (AttachmentKind.IMAGE, "image/png")


async def test_block_action_becomes_a_button(slack: SlackChannel) -> None:
    env = one(await receive(slack, "block_actions"))
    assert env.kind == Kind.BUTTON
    assert env.button_value == "connect:asana"
    assert env.native_id == "action:1234567890123.1234567890.abcdef0123456789abcdef0123456789"
    assert env.account == "T0001" and env.sender.id == "U0USER1"
    assert env.sender.username == "alice"
    assert env.conversation == Conversation(id="C0GENERAL", is_group=True)
    assert env.thread_id == "1700000100.000200" and env.mentioned
    assert "token" not in env.raw


async def test_block_action_outside_a_conversation_is_ignored(slack: SlackChannel) -> None:
    payload = fixture("block_actions")
    payload["channel"] = None
    payload["container"] = {"type": "view", "view_id": "V0HOME"}
    assert await receive(slack, payload) == []


async def test_enterprise_grid_org_install_keys_on_the_enterprise(slack: SlackChannel) -> None:
    env = one(await receive(slack, "enterprise_grid"))
    assert env.account == "E0ORG"
    assert env.sender.id == "W0USER1"
    own = fixture("enterprise_grid")
    own["event"]["user"] = "W0BOT"  # the bot user named in authorizations[0]
    assert await receive(slack, own) == []


async def test_same_user_id_in_two_teams_is_two_accounts(slack: SlackChannel) -> None:
    first = one(await receive(slack, "message_im"))
    second = one(await receive(slack, "message_im_team2"))
    assert first.sender.id == second.sender.id == "U0USER1"
    assert (first.account, second.account) == ("T0001", "T0002")
    assert first.dedupe_key != second.dedupe_key


async def test_user_profile_in_the_event_names_the_sender(slack: SlackChannel) -> None:
    payload = fixture("message_channel_mention")
    payload["event"]["user_profile"] = {
        "display_name": "Alice",
        "real_name": "Alice Liddell",
        "name": "alice",
    }
    env = one(await receive(slack, payload))
    assert (env.sender.display_name, env.sender.username) == ("Alice", "alice")


# ---------------------------------------------------------------- sending


def outbound(text: str = "hi", channel: str = "D0DM1", **kw: Any) -> OutboundMessage:
    is_group = not channel.startswith("D")
    return OutboundMessage(
        channel="slack",
        account="T0001",
        conversation=Conversation(id=channel, is_group=is_group),
        text=text,
        **kw,
    )


async def test_send_posts_in_the_thread_and_returns_ts(
    slack: SlackChannel, fake: FakeSlack
) -> None:
    ts = await slack.send(outbound("*hello*", "C0GENERAL", thread_id="1700000100.000200"))
    (posted,) = fake.posted
    assert ts == posted.ts
    assert (posted.channel, posted.text, posted.thread_ts) == (
        "C0GENERAL",
        "*hello*",
        "1700000100.000200",
    )
    (call,) = fake.calls_of("chat.postMessage")
    assert call.token == BOT_TOKEN
    assert call.params["mrkdwn"] is True and call.params["unfurl_links"] is False


async def test_sending_into_a_thread_makes_it_the_bots(fake: FakeSlack) -> None:
    channel = SlackChannel(BOT_TOKEN, SIGNING_SECRET, "", "http", f"{fake.base_url}/api/")
    await channel.send(outbound("on it", "C0GENERAL", thread_id="1700000100.000200"))
    assert one(await receive(channel, "thread_reply")).mentioned
    await channel.stop()


async def test_rate_limited_send_reports_retry_after(slack: SlackChannel, fake: FakeSlack) -> None:
    fake.fail("chat.postMessage", "ratelimited", status=429, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        await slack.send(outbound())
    assert caught.value.retry_after == 3.0
    assert fake.posted == []
    await slack.send(outbound())
    assert len(fake.posted) == 1


@pytest.mark.parametrize(
    "error", ["channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "msg_too_long"]
)
async def test_permanent_errors(slack: SlackChannel, fake: FakeSlack, error: str) -> None:
    fake.fail("chat.postMessage", error)
    with pytest.raises(PermanentSendError, match=error) as info:
        await slack.send(outbound())
    # Removed from the channel, or it is gone: what is queued there is given up together.
    closed = error in ("channel_not_found", "not_in_channel", "is_archived")
    assert isinstance(info.value, ConversationClosed) == closed


async def test_server_errors_are_transient(slack: SlackChannel, fake: FakeSlack) -> None:
    fake.fail("chat.postMessage", "service_unavailable", status=503)
    with pytest.raises(TransientSendError):
        await slack.send(outbound())
    fake.fail("chat.postMessage", "internal_error")
    with pytest.raises(TransientSendError):
        await slack.send(outbound())


async def test_network_errors_are_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = SlackChannel(BOT_TOKEN, SIGNING_SECRET, "", "http", f"http://127.0.0.1:{port}/api/")
    with pytest.raises(TransientSendError):
        await channel.send(outbound())
    await channel.stop()


async def test_private_message_is_never_posted_into_a_group(
    slack: SlackChannel, fake: FakeSlack
) -> None:
    await slack.send(outbound("your link", "C0GENERAL", private_to="U0USER1"))
    assert fake.calls_of("chat.postMessage") == []
    (posted,) = fake.posted
    assert posted.ephemeral and posted.user == "U0USER1" and posted.channel == "C0GENERAL"


async def test_open_private_opens_the_dm(slack: SlackChannel, fake: FakeSlack) -> None:
    conversation = await slack.open_private("T0001", "U0USER1")
    assert conversation is not None and not conversation.is_group
    assert conversation.id.startswith("D")
    assert fake.calls_of("conversations.open")[0].params["users"] == "U0USER1"
    fake.fail("conversations.open", "user_not_found")
    assert await slack.open_private("T0001", "U0GONE") is None
    fake.fail("conversations.open", "ratelimited", status=429, retry_after=1)
    with pytest.raises(RateLimited):
        await slack.open_private("T0001", "U0USER1")


async def test_pacing_spaces_messages_per_channel(fake: FakeSlack) -> None:
    channel = SlackChannel(
        BOT_TOKEN,
        SIGNING_SECRET,
        "",
        "http",
        f"{fake.base_url}/api/",
        messages_per_second=20,
        burst=1,
    )
    started = time.monotonic()
    for _ in range(3):
        await channel.send(outbound("x", "C0PACED"))
    paced = time.monotonic() - started
    started = time.monotonic()
    await channel.send(outbound("x", "C0OTHER"))  # another channel has its own budget
    other = time.monotonic() - started
    await channel.stop()
    assert paced >= 0.09  # two waits of 1/20 s
    assert other < paced


# ---------------------------------------------------------------- progress, profiles, files


async def test_typing_reacts_and_done_removes(slack: SlackChannel, fake: FakeSlack) -> None:
    fake.add_user("U0USER1", "Alice", "Alice Liddell")
    env = one(await receive(slack, "message_im"))
    assert env.sender.display_name is None  # nothing cached, and the ack did not ask Slack
    await slack.typing(env)
    assert fake.reactions[("D0DM1", "1700000000.000100")] == {"eyes"}
    await slack.done(env)
    assert fake.reactions[("D0DM1", "1700000000.000100")] == set()
    again = one(await receive(slack, "message_im"))
    assert again.sender.display_name == "Alice"  # warmed by typing(), now from the cache
    assert len(fake.calls_of("users.info")) == 1
    await slack.typing(again)
    assert len(fake.calls_of("users.info")) == 1


async def test_progress_is_best_effort(slack: SlackChannel, fake: FakeSlack) -> None:
    env = one(await receive(slack, "message_im"))
    fake.fail("reactions.add", "missing_scope")
    fake.fail("users.info", "ratelimited", status=429, retry_after=1)
    await slack.typing(env)
    fake.fail("reactions.remove", "no_reaction")
    await slack.done(env)


async def test_profile_cache_is_bounded(fake: FakeSlack) -> None:
    channel = SlackChannel(
        BOT_TOKEN, SIGNING_SECRET, "", "http", f"{fake.base_url}/api/", cache_size=2
    )
    for user in ("U1", "U2", "U3"):
        fake.add_user(user, user.lower())
        assert await channel.profile_name("T0001", user) == user.lower()
    assert len(channel._profiles) == 2
    await channel.stop()


def attachment(ref: str, size: int | None = None, mime: str = "text/plain") -> Attachment:
    return Attachment(kind=AttachmentKind.DOCUMENT, mime=mime, size=size, ref=ref)


async def test_fetch_attachment_with_bearer_token(slack: SlackChannel, fake: FakeSlack) -> None:
    url = fake.add_file("notes.txt", b"meeting notes", "text/plain")
    assert await slack.fetch_attachment(attachment(url), 1000) == b"meeting notes"
    (download,) = fake.calls_of("files.download")
    assert download.headers["authorization"] == f"Bearer {BOT_TOKEN}"


async def test_fetch_attachment_enforces_max_bytes(slack: SlackChannel, fake: FakeSlack) -> None:
    url = fake.add_file("big.bin", b"x" * 5000)
    with pytest.raises(ChannelError):  # the size Slack told us
        await slack.fetch_attachment(attachment(url, size=5000), 1000)
    assert fake.calls_of("files.download") == []
    with pytest.raises(ChannelError):  # the size the payload did not tell
        await slack.fetch_attachment(attachment(url), 1000)


async def test_fetch_attachment_never_sends_the_token_elsewhere(
    slack: SlackChannel, fake: FakeSlack
) -> None:
    other = FakeSlack()
    with serve(other.app) as srv:
        evil = srv.url.replace("127.0.0.1", "localhost") + "/files-pri/T0001-F0/x.txt"
        other.add_file("x.txt", b"secret")
        with pytest.raises(ChannelError):
            await slack.fetch_attachment(attachment(evil), 1000)
        assert other.calls == []


async def test_fetch_attachment_detects_the_login_page(
    slack: SlackChannel, fake: FakeSlack
) -> None:
    url = fake.add_file("a.pdf", b"%PDF", "application/pdf")
    fake.bot_token = "xoxb-rotated"  # our token no longer works for files
    with pytest.raises(ChannelError, match="login page"):
        await slack.fetch_attachment(attachment(url, mime="application/pdf"), 1000)


async def test_fetch_attachment_via_files_info(slack: SlackChannel, fake: FakeSlack) -> None:
    url = fake.add_file("shared.txt", b"from another org")
    fake.file_infos["F0SHARED"] = {"id": "F0SHARED", "url_private_download": url}
    payload = fixture("file_share")
    payload["event"]["files"] = [
        {"id": "F0SHARED", "file_access": "check_file_info", "mimetype": "text/plain"}
    ]
    env = one(await receive(slack, payload))
    assert await slack.fetch_attachment(env.attachments[0], 1000) == b"from another org"


# ---------------------------------------------------------------- socket mode


class _NoState:
    async def get(self, key: str) -> str | None:
        return None

    async def set(self, key: str, value: str) -> None:
        return None


async def _no_sink(envelopes: list[Envelope]) -> None:
    return None


async def test_socket_mode_stores_before_acknowledging(fake: FakeSlack) -> None:
    fake.socket = SocketModeFake()
    await fake.socket.start()
    stored: list[Envelope] = []
    release = asyncio.Event()
    entered = asyncio.Event()

    async def sink(envelopes: list[Envelope]) -> None:
        entered.set()
        await release.wait()
        stored.extend(envelopes)

    channel = SlackChannel(BOT_TOKEN, "", APP_TOKEN, "socket", f"{fake.base_url}/api/")
    try:
        await channel.start(sink, _NoState())
        await fake.socket.wait_connected()
        (opened,) = fake.calls_of("apps.connections.open")
        assert opened.token == APP_TOKEN
        envelope_id = await fake.socket.push(fixture("message_im"))
        async with asyncio.timeout(10):
            await entered.wait()
        assert not fake.socket.acked(envelope_id)  # not before the sink returned
        release.set()
        ack = await fake.socket.wait_ack(envelope_id)
        assert ack["envelope_id"] == envelope_id
        assert [e.native_id for e in stored] == ["D0DM1:1700000000.000100"]

        action_id = await fake.socket.push(fixture("block_actions"), kind="interactive")
        await fake.socket.wait_ack(action_id)
        assert stored[-1].kind == Kind.BUTTON
    finally:
        await channel.stop()
        await fake.socket.stop()


async def test_socket_mode_does_not_ack_when_storing_fails(fake: FakeSlack) -> None:
    fake.socket = SocketModeFake()
    await fake.socket.start()
    attempts: list[int] = []
    failed = asyncio.Event()

    async def sink(envelopes: list[Envelope]) -> None:
        attempts.append(len(envelopes))
        if len(attempts) == 1:
            failed.set()
            raise RuntimeError("database down")

    channel = SlackChannel(BOT_TOKEN, "", APP_TOKEN, "socket", f"{fake.base_url}/api/")
    try:
        await channel.start(sink, _NoState())
        await fake.socket.wait_connected()
        first = await fake.socket.push(fixture("message_im"))
        async with asyncio.timeout(10):
            await failed.wait()
        retry = await fake.socket.push(fixture("message_im"), retry=1)  # Slack redelivers
        await fake.socket.wait_ack(retry)
        assert attempts == [1, 1]
        assert not fake.socket.acked(first)
    finally:
        await channel.stop()
        await fake.socket.stop()


# ---------------------------------------------------------------- cost of the ack path


async def test_bolt_request_path_is_cheap(slack: SlackChannel) -> None:
    """Measures receive() (signature check, Bolt middleware, parsing) per request."""
    body, content_type = encode(fixture("app_mention_channel"))
    headers = signed_headers(body, content_type)
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        await slack.receive(make_request(body, headers))
    per_request_ms = (time.perf_counter() - started) / rounds * 1000
    print(f"slack receive(): {per_request_ms:.2f} ms per request")
    assert per_request_ms < 50


def test_fixture_bodies_round_trip() -> None:
    body, content_type = encode(fixture("block_actions"))
    assert content_type == "application/x-www-form-urlencoded" and body.startswith(b"payload=")
    assert json.loads(encode(fixture("message_im"))[0])["type"] == "event_callback"


# ---------------------------------------------------------------- `gateway slack manifest`


def test_manifest_for_the_events_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from gateway.cli_slack import app

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://gw.example.com/")
    monkeypatch.setenv("SLACK_MODE", "http")
    result = CliRunner().invoke(app, ["manifest", "--format", "json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    settings = manifest["settings"]
    url = "https://gw.example.com/webhooks/slack"
    assert settings["event_subscriptions"]["request_url"] == url
    assert settings["interactivity"] == {"is_enabled": True, "request_url": url}
    assert settings["socket_mode_enabled"] is False
    assert {"app_mention", "message.im", "message.channels"} <= set(
        settings["event_subscriptions"]["bot_events"]
    )
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"chat:write", "im:write", "reactions:write", "users:read", "files:read"} <= scopes


def test_manifest_for_socket_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import yaml
    from typer.testing import CliRunner

    from gateway.cli_slack import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLACK_MODE", "socket")
    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    result = CliRunner().invoke(app, ["manifest", "--mentions-only"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert "request_url" not in settings["event_subscriptions"]
    assert settings["event_subscriptions"]["bot_events"] == ["app_mention", "message.im"]
    assert "channels:history" not in manifest["oauth_config"]["scopes"]["bot"]


def test_manifest_refuses_a_missing_public_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from gateway.cli_slack import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLACK_MODE", "http")
    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    result = CliRunner().invoke(app, ["manifest"])
    assert result.exit_code == 2
