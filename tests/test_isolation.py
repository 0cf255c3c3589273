"""The incident this project exists for, as tests: every tool call and every connect
link belongs to the person who asked, and never leaks into a group."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from channels.console import ConsoleChannel
from tests.conftest import GatewayFactory
from tests.fakes.llm import FakeLLM

LINK = re.compile(r"https://connect\.composio\.dev/link/lk_[A-Za-z0-9_-]+")
TASKS = "ASANA_GET_MULTIPLE_TASKS"


async def entity_of(gateway: Any, console: ConsoleChannel, user: str) -> str:
    resolved = await gateway.identity.resolve(console.name, console.account, user)
    return resolved.entity_id


def links_in(texts: list[str]) -> list[str]:
    return [m for t in texts for m in LINK.findall(t)]


async def test_two_users_connect_and_see_only_their_own_tasks(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    console = ConsoleChannel()
    gateway = await make_gateway([console], tools=True)
    await gateway.accept([console.envelope("alice", "/connect asana")])
    await gateway.accept([console.envelope("bob", "/connect asana")])
    await gateway.wait_idle()

    alice_entity = await entity_of(gateway, console, "alice")
    bob_entity = await entity_of(gateway, console, "bob")
    assert alice_entity != bob_entity
    assert "default" not in alice_entity and "default" not in bob_entity

    alice_links = links_in([m.text for m in console.sent if m.conversation.id == "dm:alice"])
    bob_links = links_in([m.text for m in console.sent if m.conversation.id == "dm:bob"])
    assert len(alice_links) == 1 and len(bob_links) == 1 and alice_links != bob_links
    assert fake_composio.link_owner(alice_links[0]) == alice_entity
    assert fake_composio.link_owner(bob_links[0]) == bob_entity
    fake_composio.complete_link(alice_links[0])
    fake_composio.complete_link(bob_links[0])
    fake_composio.seed(alice_entity, TASKS, {"tasks": ["Alice: file taxes"]})
    fake_composio.seed(bob_entity, TASKS, {"tasks": ["Bob: fix the roof"]})

    fake_llm.on("my tasks", TASKS, {"assignee": "me"})
    await gateway.accept([console.envelope("alice", "show my tasks")])
    await gateway.accept([console.envelope("bob", "show my tasks")])
    await gateway.wait_idle()

    executed = {(e["slug"], e["user_id"]) for e in fake_composio.executions}
    assert executed == {(TASKS, alice_entity), (TASKS, bob_entity)}
    alice_reply = [m.text for m in console.sent if m.conversation.id == "dm:alice"][-1]
    bob_reply = [m.text for m in console.sent if m.conversation.id == "dm:bob"][-1]
    assert "Alice: file taxes" in alice_reply and "Bob" not in alice_reply
    assert "Bob: fix the roof" in bob_reply and "Alice" not in bob_reply


async def test_model_supplied_entity_cannot_redirect_a_tool_call(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    console = ConsoleChannel()
    gateway = await make_gateway([console], tools=True)
    alice_entity = await entity_of(gateway, console, "alice")
    bob_entity = await entity_of(gateway, console, "bob")
    fake_composio.connect(alice_entity, "asana")
    fake_composio.connect(bob_entity, "asana")
    fake_llm.call_tool(
        TASKS, {"user_id": bob_entity, "entity_id": bob_entity, "connected_account_id": "ca_x"}
    )
    await gateway.accept([console.envelope("alice", "show me bob's tasks")])
    await gateway.wait_idle()
    assert [e["user_id"] for e in fake_composio.executions] == [alice_entity]
    sent_args = fake_composio.executions[0]["arguments"]
    assert bob_entity not in json.dumps(sent_args)


async def test_isolation_and_order_under_load(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    users, per_user = 50, 5
    console = ConsoleChannel()
    gateway = await make_gateway([console], tools=True, pool_concurrency=16)
    entities = {f"u{i}": await entity_of(gateway, console, f"u{i}") for i in range(users)}
    for user, entity in entities.items():
        fake_composio.connect(entity, "asana")
        fake_composio.seed(entity, TASKS, {"owner": user})
    fake_llm.on("tasks", TASKS, {})

    async def send(user: str, n: int) -> None:
        text = f"tasks #{n}" if n % 2 == 0 else f"hello #{n}"
        await gateway.accept([console.envelope(user, text)])

    for n in range(per_user):  # interleaved: every user's n-th message before anyone's n+1-th
        await asyncio.gather(*[send(user, n) for user in entities])
    await gateway.wait_idle(within=120)

    per_entity: dict[str, int] = {}
    for execution in fake_composio.executions:
        per_entity[execution["user_id"]] = per_entity.get(execution["user_id"], 0) + 1
    # Each user asked for tasks 3 times (#0, #2, #4): 3 executions under their own entity.
    assert per_entity == {entity: 3 for entity in entities.values()}
    crossovers = 0
    for user in entities:
        replies = [m.text for m in console.sent if m.conversation.id == f"dm:{user}"]
        numbers = [int(re.search(r"#(\d+)", r).group(1)) for r in replies]  # type: ignore[union-attr]
        assert numbers == list(range(per_user)), (user, replies)
        tool_replies = [r for r in replies if "Tool result" in r]
        assert len(tool_replies) == 3
        crossovers += sum(f'"owner": "{user}"' not in r for r in tool_replies)
    assert crossovers == 0
    assert fake_llm.max_in_flight <= 16


async def test_connect_link_is_never_posted_into_a_group(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, fake_composio: Any
) -> None:
    console = ConsoleChannel()
    gateway = await make_gateway([console], tools=True)
    group = "group:team"
    await gateway.accept(
        [
            console.envelope(
                "alice", "/connect asana", conversation=group, group=True, mentioned=True
            )
        ]
    )
    # The model may decide to connect on its own, too: the link still goes private.
    fake_llm.call_tool("connect_account", {"toolkit": "gmail"})
    fake_llm.reply("I've arranged that.")
    await gateway.accept(
        [
            console.envelope(
                "bob", "hook up my gmail", conversation=group, group=True, mentioned=True
            )
        ]
    )
    await gateway.wait_idle()

    in_group = [m.text for m in console.sent if m.conversation.id == group]
    assert links_in(in_group) == []
    assert "I've sent you a private message." in in_group
    assert len(links_in([m.text for m in console.sent if m.conversation.id == "dm:alice"])) == 1
    assert len(links_in([m.text for m in console.sent if m.conversation.id == "dm:bob"])) == 1
    # The model never saw the link, so it could not have repeated it anywhere.
    assert links_in([json.dumps(r) for r in fake_llm.requests]) == []
