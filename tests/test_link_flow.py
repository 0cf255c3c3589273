"""Self-service linking end to end: /link on one channel, /link CODE on another, through
the whole pipeline (store, turn, outbox, send), with tools running against fake Composio.

The console channel stands in under two channel names ("telegram" and "whatsapp") so the
test exercises two channels without depending on any platform adapter.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

from sqlalchemy import func, select, update

from channels.console import ConsoleChannel
from gateway.inbox import InboxItem
from gateway.runtime import Gateway
from identity import audit
from identity.db import utcnow
from identity.linking import LinkAttempt, LinkCode
from identity.models import Identity, User
from kernel.memory import HistoryMessage
from tests.conftest import GatewayFactory
from tests.fakes.composio_api import FakeComposio
from tests.fakes.llm import FakeLLM

CODE = re.compile(r"Your link code is ([2-9A-Z]{4}-[2-9A-Z]{4})")


def last_text(channel: ConsoleChannel, user: str) -> str:
    return [m.text for m in channel.sent if m.conversation.id == f"dm:{user}"][-1]


def texts_to(channel: ConsoleChannel, user: str) -> list[str]:
    return [m.text for m in channel.sent if m.conversation.id == f"dm:{user}"]


async def say(gateway: Gateway, channel: ConsoleChannel, user: str, text: str, **kw: object) -> str:
    await gateway.accept([channel.envelope(user, text, **kw)])  # type: ignore[arg-type]
    # Generous bound: the first turn of a process imports litellm and composio, which takes
    # tens of seconds on a busy machine. It returns as soon as the work is done.
    await gateway.wait_idle(within=120)
    return last_text(channel, user) if not kw.get("group") else channel.sent[-1].text


async def get_code(gateway: Gateway, channel: ConsoleChannel, user: str) -> str:
    reply = await say(gateway, channel, user, "/link")
    match = CODE.search(reply)
    assert match, reply
    return match.group(1)


async def entity_of(gateway: Gateway, channel: str, user: str) -> str:
    resolved = await gateway.identity.resolve(channel, "local", user)
    return resolved.entity_id


async def audit_actions(gateway: Gateway) -> list[tuple[str, str]]:
    async with gateway.sessions() as session:
        entries, _ = await audit.page(session, limit=100)
    return [(e.action, e.actor) for e in reversed(entries)]


async def test_link_then_tools_share_one_entity_and_unlink_separates_them(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: FakeComposio
) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], tools=True)
    fake_llm.on("my tasks", "ASANA_GET_MULTIPLE_TASKS", {"assignee": "me"})

    await say(gw, wa, "ann-wa", "remember: my cat is Tom")  # history on the joining side
    ann_entity = await entity_of(gw, "telegram", "ann-tg")
    wa_entity = await entity_of(gw, "whatsapp", "ann-wa")
    assert ann_entity != wa_entity
    fake_composio.connect(ann_entity, "asana")
    fake_composio.connect(wa_entity, "gmail")  # exists only on the joining entity

    code = await get_code(gw, tg, "ann-tg")
    reply = await say(gw, wa, "ann-wa", f"/link {code.lower()}")
    assert reply.startswith(
        "Done: this chat account is now linked with your telegram (ann-tg) account"
    )
    assert "gmail" in reply and "/connect gmail" in reply  # listed, not silently lost
    assert "asana" not in reply
    notice = last_text(tg, "ann-tg")  # the issuer hears about it on its own channel
    assert "whatsapp" in notice and "/unlink whatsapp" in notice

    # One user, one entity: tools from either channel run as the issuer's entity.
    assert await entity_of(gw, "whatsapp", "ann-wa") == ann_entity
    await say(gw, wa, "ann-wa", "show my tasks")
    await say(gw, tg, "ann-tg", "show my tasks")
    runs = [e for e in fake_composio.executions if e["slug"] == "ASANA_GET_MULTIPLE_TASKS"]
    assert [r["user_id"] for r in runs] == [ann_entity, ann_entity]
    assert all(r["outcome"] == "completed" for r in runs)
    assert all(e["user_id"] != wa_entity for e in fake_composio.executions)

    # History followed the joining user; /whoami lists both accounts.
    async with gw.sessions() as session:
        owner = await session.scalar(
            select(HistoryMessage.user_id).where(
                HistoryMessage.content == "remember: my cat is Tom"
            )
        )
        retired = await session.scalar(select(User).where(User.entity_id == wa_entity))
    ann_user = (await gw.identity.resolve("telegram", "local", "ann-tg")).id
    assert owner == ann_user
    assert retired is not None and retired.merged_into == ann_user and retired.retired_at
    whoami = await say(gw, wa, "ann-wa", "/whoami")
    assert "- telegram: ann-tg" in whoami and "- whatsapp: ann-wa (this chat)" in whoami

    # Unlink: WhatsApp becomes a fresh user; its tool calls never reach the old entity.
    reply = await say(gw, tg, "ann-tg", "/unlink whatsapp")
    assert reply.startswith("Done: your whatsapp account is no longer linked")
    fresh = await entity_of(gw, "whatsapp", "ann-wa")
    assert fresh not in (ann_entity, wa_entity)
    before = len(fake_composio.executions)
    await say(gw, wa, "ann-wa", "show my tasks again")
    after = fake_composio.executions[before:]
    assert [e["user_id"] for e in after] == [fresh]
    assert after[0]["outcome"] == "no_connection"  # the connections stayed with Ann
    await say(gw, tg, "ann-tg", "show my tasks")
    assert fake_composio.executions[-1]["user_id"] == ann_entity
    assert fake_composio.executions[-1]["outcome"] == "completed"

    assert await audit_actions(gw) == [
        (audit.LINK, audit.USER_VIA_CODE),
        (audit.UNLINK, audit.USER),
    ]


async def test_refusals_have_clear_replies(make_gateway: GatewayFactory) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], llm=False)

    # In a group: no code is issued at all.
    reply = await say(gw, tg, "ann", "/link", group=True, conversation="team", mentioned=True)
    assert "only handle /link in a private chat" in reply and "No code was created" in reply
    async with gw.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(LinkCode)) == 0

    # From the same identity that asked for it.
    code = await get_code(gw, tg, "ann")
    reply = await say(gw, tg, "ann", f"/link {code}")
    assert "from this very chat" in reply

    # Expired.
    async with gw.sessions.begin() as session:
        await session.execute(update(LinkCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    reply = await say(gw, wa, "bob", f"/link {code}")
    assert "expired" in reply

    # Reused: the first redemption links, the second is refused.
    code = await get_code(gw, tg, "ann")
    assert (await say(gw, wa, "ann-wa", f"/link {code}")).startswith("Done")
    reply = await say(gw, wa, "carol", f"/link {code}")
    assert "already been used" in reply
    assert (await gw.identity.resolve("whatsapp", "local", "carol")).id != (
        await gw.identity.resolve("telegram", "local", "ann")
    ).id

    # Already linked.
    code = await get_code(gw, tg, "ann")
    assert "already linked" in await say(gw, wa, "ann-wa", f"/link {code}")

    # A code posted in a group is cancelled, so nobody there can use it.
    code = await get_code(gw, tg, "ann")
    reply = await say(gw, wa, "dave", f"/link {code}", group=True, conversation="g", mentioned=True)
    assert "cancelled" in reply
    assert "already been used" in await say(gw, wa, "erin", f"/link {code}")

    # Not shaped like a code at all: a hint, and it does not count as a wrong guess.
    assert "look like ABCD-2345" in await say(gw, wa, "frank", "/link please")
    async with gw.sessions() as session:  # bob, carol and erin each failed once
        assert await session.scalar(select(func.count()).select_from(LinkAttempt)) == 3

    # Unlinking the only account there is.
    assert "only one" in await say(gw, wa, "frank", "/unlink whatsapp")
    assert "No telegram account" in await say(gw, wa, "frank", "/unlink telegram")


async def test_wrong_codes_are_limited_even_when_the_right_one_follows(
    make_gateway: GatewayFactory,
) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], llm=False)
    code = await get_code(gw, tg, "ann")
    wrong = "2222-2222" if code != "2222-2222" else "3333-3333"
    replies = [await say(gw, wa, "mallory", f"/link {wrong}") for _ in range(5)]
    assert "4 tries left this hour" in replies[0]
    assert "1 try left" in replies[3]
    assert "last try for now" in replies[4]
    blocked = await say(gw, wa, "mallory", f"/link {code}")
    assert "Too many wrong link codes" in blocked and "minutes" in blocked
    ann = (await gw.identity.resolve("telegram", "local", "ann")).id
    assert (await gw.identity.resolve("whatsapp", "local", "mallory")).id != ann
    # The limit is per identity: the code still works from another account.
    assert (await say(gw, wa, "ann-wa", f"/link {code}")).startswith("Done")
    assert (await gw.identity.resolve("whatsapp", "local", "ann-wa")).id == ann


async def test_concurrent_redemptions_link_exactly_once(make_gateway: GatewayFactory) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], llm=False, pool_concurrency=8)
    code = await get_code(gw, tg, "ann")
    redeemers = [f"r{i}" for i in range(6)]
    for user in redeemers:  # known first, so the race is only about the code
        await say(gw, wa, user, "/help")
    # Through the pipeline: different users' turns run in parallel.
    await gw.accept([wa.envelope(user, f"/link {code}") for user in redeemers])
    await gw.wait_idle(within=120)
    replies = [last_text(wa, user) for user in redeemers]
    assert sum(r.startswith("Done") for r in replies) == 1
    assert sum("already been used" in r for r in replies) == 5
    ann = (await gw.identity.resolve("telegram", "local", "ann")).id
    async with gw.sessions() as session:
        linked = await session.scalar(
            select(func.count()).select_from(Identity).where(Identity.user_id == ann)
        )
    assert linked == 2

    # And directly, many redemptions at once through the linker.
    code = await get_code(gw, tg, "ann")
    others = [wa.envelope(f"s{i}", f"/link {code}") for i in range(5)]
    for envelope in others:
        await gw.identity.resolve("whatsapp", "local", envelope.sender.id)
    results = await asyncio.gather(*[gw.linking.redeem(e, code) for e in others])
    assert sum(r.startswith("Done") for r in results) == 1
    assert await audit_actions(gw) == [(audit.LINK, audit.USER_VIA_CODE)] * 2


async def test_unlinked_identitys_waiting_messages_leave_with_it(
    make_gateway: GatewayFactory,
) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], llm=False)
    code = await get_code(gw, tg, "ann")
    await say(gw, wa, "ann-wa", f"/link {code}")
    ann = (await gw.identity.resolve("telegram", "local", "ann")).id
    await gw.turns.stop(0)  # hold processing so the next message waits in the inbox
    await gw.accept([wa.envelope("ann-wa", "queued while linked")])
    async with gw.sessions() as session:
        identity = await session.scalar(
            select(Identity).where(Identity.channel_user_id == "ann-wa")
        )
        assert identity is not None
    result = await gw.linking.unlink_identity(identity.id, via="cli")
    async with gw.sessions() as session:
        waiting = await session.scalar(
            select(InboxItem).where(InboxItem.payload.contains("queued while linked"))
        )
    assert waiting is not None and waiting.user_id == result.new_user_id != ann
    assert texts_to(tg, "ann")  # the issuer was told when the link happened
