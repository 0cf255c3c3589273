"""The admin JSON API through the real app: auth, every endpoint, and what it leaves in the
database, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from channels.console import ConsoleChannel
from channels.envelope import Sender
from gateway import admin as admin_package
from gateway.app import create_app
from gateway.inbox import InboxItem
from gateway.outbox import OutboxItem
from gateway.runtime import Gateway
from identity import audit
from identity.models import Identity, User
from kernel.memory import HistoryMessage
from tests.conftest import GatewayFactory
from tests.fakes.composio_api import FakeComposio

TOKEN = "admin-test-token-7c1f0e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE = "+447700900123"
MASKED = "+44" + "•" * 8 + "23"  # the country code and last two digits only


class World:
    """A running gateway with three people on two channels, and an admin client."""

    def __init__(self, gateway: Gateway, client: httpx.AsyncClient) -> None:
        self.gw = gateway
        self.client = client
        self.tg: ConsoleChannel = gateway.channels["telegram"]  # type: ignore[assignment]
        self.wa: ConsoleChannel = gateway.channels["whatsapp"]  # type: ignore[assignment]

    async def user_id(self, channel: str, user: str) -> str:
        return (await self.gw.identity.resolve(channel, "local", user)).id

    async def identity_id(self, channel: str, user: str) -> int:
        async with self.gw.sessions() as session:
            found = await session.scalar(
                select(Identity.id).where(
                    Identity.channel == channel, Identity.channel_user_id == user
                )
            )
        assert found is not None
        return found

    async def count(self, model: Any, *where: Any) -> int:
        async with self.gw.sessions() as session:
            return int(
                await session.scalar(select(func.count()).select_from(model).where(*where)) or 0
            )

    async def snapshot(self) -> dict[str, Any]:
        """Everything an admin change could touch."""
        async with self.gw.sessions() as session:
            identities = sorted((i.id, i.user_id) for i in await session.scalars(select(Identity)))
            users = sorted(
                (u.id, u.retired_at is None) for u in await session.scalars(select(User))
            )
        return {
            "identities": identities,
            "users": users,
            "history": await self.count(HistoryMessage),
            "inbox": await self.count(InboxItem),
            "audit": await self.count(audit.AuditEntry),
        }


@pytest.fixture
async def world(make_gateway: GatewayFactory) -> AsyncIterator[World]:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gateway = await make_gateway([tg, wa], tools=True, admin_token=TOKEN)
    phone = wa.envelope("ann-wa", "hi from whatsapp", display_name="Ann Lee")
    phone = phone.model_copy(
        update={"sender": Sender(id="ann-wa", display_name="Ann Lee", phone="+447700900123")}
    )
    await gateway.accept(
        [
            tg.envelope("ann-tg", "hello", display_name="Ann"),
            phone,
            tg.envelope("bob", "hey", display_name="Bob Stone"),
        ]
    )
    await gateway.wait_idle(within=120)
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield World(gateway, client)


async def test_without_a_token_configured_the_admin_surface_is_404(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    admin_package._told_disabled = False
    caplog.set_level(logging.WARNING, logger="gateway.admin")
    gateway = await make_gateway(llm=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        for method, path in [
            ("GET", "/admin/api/users"),
            ("GET", "/admin/login"),
            ("POST", "/admin/login"),
            ("GET", "/admin/users"),
            ("GET", "/admin/static/admin.css"),
        ]:
            response = await client.request(method, path, headers={"Authorization": "Bearer "})
            assert response.status_code == 404, path
    create_app(gateway)  # a second app: still said only once
    said = [r for r in caplog.records if "ADMIN_TOKEN" in r.getMessage()]
    assert len(said) == 1 and "disabled" in said[0].getMessage()


async def test_no_token_or_a_wrong_token_is_401_and_changes_nothing(world: World) -> None:
    ann = await world.user_id("telegram", "ann-tg")
    bob = await world.user_id("telegram", "bob")
    wa = await world.identity_id("whatsapp", "ann-wa")
    before = await world.snapshot()
    attempts = [
        ("GET", "/admin/api/users", None),
        ("GET", f"/admin/api/users/{ann}", None),
        ("POST", f"/admin/api/users/{ann}/link", {"identity": wa}),
        ("POST", f"/admin/api/users/{ann}/merge", {"user_id": bob}),
        ("POST", f"/admin/api/identities/{wa}/unlink", None),
        ("POST", f"/admin/api/users/{bob}/forget", None),
        ("GET", f"/admin/api/users/{bob}/export", None),
        ("GET", "/admin/api/audit", None),
    ]
    variants = ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN})
    for n, headers in enumerate(variants):
        # One client address per variant, so the failure limit (tested below) stays out of it.
        transport = httpx.ASGITransport(app=world.gw.app, client=(f"10.0.0.{n + 1}", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for method, path, body in attempts:
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
    assert await world.snapshot() == before


async def test_failed_attempts_are_rate_limited_per_client(world: World) -> None:
    for _ in range(10):
        response = await world.client.get("/admin/api/users", headers={"Authorization": "Bearer x"})
        assert response.status_code == 401
    limited = await world.client.get("/admin/api/users", headers={"Authorization": "Bearer y"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    # While limited, even the right token waits: guessing cannot continue at full speed.
    assert (await world.client.get("/admin/api/users", headers=AUTH)).status_code == 429
    # Another client address is not affected.
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.gw.app, client=("10.1.2.3", 4000)),
        base_url="http://gw",
    )
    async with other:
        assert (await other.get("/admin/api/users", headers=AUTH)).status_code == 200


async def test_list_search_and_page_users(world: World) -> None:
    response = await world.client.get("/admin/api/users", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 3 and len(body["items"]) == 3
    phones = [i["phone"] for u in body["items"] for i in u["identities"] if i["phone"]]
    assert phones == [MASKED]  # masked by default
    unmasked = (await world.client.get("/admin/api/users?unmask=1", headers=AUTH)).json()
    assert "+447700900123" in str(unmasked)

    found = (await world.client.get("/admin/api/users?q=stone", headers=AUTH)).json()
    assert [u["display_name"] for u in found["items"]] == ["Bob Stone"]
    by_id = (await world.client.get("/admin/api/users?q=ann-wa", headers=AUTH)).json()
    assert [i["channel"] for i in by_id["items"][0]["identities"]] == ["whatsapp"]
    assert by_id["items"][0]["messages_received"] == 1

    page1 = (await world.client.get("/admin/api/users?limit=2", headers=AUTH)).json()
    page2 = (await world.client.get("/admin/api/users?limit=2&offset=2", headers=AUTH)).json()
    assert (len(page1["items"]), len(page2["items"]), page2["total"]) == (2, 1, 3)
    assert not {u["id"] for u in page1["items"]} & {u["id"] for u in page2["items"]}
    bad = await world.client.get("/admin/api/users?limit=many", headers=AUTH)
    assert bad.status_code == 400


async def test_user_detail_shows_identities_connections_and_activity(
    world: World, fake_composio: FakeComposio
) -> None:
    ann = await world.gw.identity.resolve("whatsapp", "local", "ann-wa")
    fake_composio.connect(ann.entity_id, "gmail")
    response = await world.client.get(f"/admin/api/users/{ann.id}", headers=AUTH)
    assert response.status_code == 200
    detail = response.json()
    assert detail["entity_id"] == ann.entity_id
    assert [(i["channel"], i["phone"]) for i in detail["identities"]] == [("whatsapp", MASKED)]
    assert [c["toolkit"] for c in detail["connections"]] == ["gmail"]
    assert detail["messages"]["received"] == 1 and detail["messages"]["sent"] == 1
    assert detail["messages"]["history"] == 2
    assert detail["first_seen"] and detail["last_seen"]
    assert detail["recent_activity"][0]["conversation"] == "private"
    missing = await world.client.get("/admin/api/users/nobody", headers=AUTH)
    assert missing.status_code == 404


async def test_link_merge_unlink_and_their_audit_entries(
    world: World, fake_composio: FakeComposio
) -> None:
    ann = await world.gw.identity.resolve("telegram", "local", "ann-tg")
    ann_wa = await world.gw.identity.resolve("whatsapp", "local", "ann-wa")
    bob = await world.gw.identity.resolve("telegram", "local", "bob")
    fake_composio.connect(ann_wa.entity_id, "gmail")

    linked = await world.client.post(
        f"/admin/api/users/{ann.id}/link", json={"identity": "whatsapp:ann-wa"}, headers=AUTH
    )
    assert linked.status_code == 200, linked.text
    result = linked.json()
    assert result["entity_id"] == ann.entity_id
    assert result["retired_entity_id"] == ann_wa.entity_id
    assert result["reconnect"] == ["gmail"]
    assert (await world.gw.identity.resolve("whatsapp", "local", "ann-wa")).id == ann.id
    assert await world.count(HistoryMessage, HistoryMessage.user_id == ann.id) == 4
    assert await world.count(InboxItem, InboxItem.user_id == ann_wa.id) == 0

    again = await world.client.post(
        f"/admin/api/users/{ann.id}/link", json={"identity": "whatsapp:ann-wa"}, headers=AUTH
    )
    assert again.status_code == 409 and again.json()["reason"] == "same_user"
    unknown = await world.client.post(
        f"/admin/api/users/{ann.id}/link", json={"identity": "whatsapp:nobody"}, headers=AUTH
    )
    assert unknown.status_code == 404
    for absurd in (99999999999999, "99999999999999"):
        response = await world.client.post(
            f"/admin/api/users/{ann.id}/link", json={"identity": absurd}, headers=AUTH
        )
        assert response.status_code == 404
    huge = await world.client.post("/admin/api/identities/99999999999999/unlink", headers=AUTH)
    assert huge.status_code == 404
    malformed = await world.client.post(
        f"/admin/api/users/{ann.id}/link", content=b"{nope", headers=AUTH
    )
    assert malformed.status_code == 400

    merged = await world.client.post(
        f"/admin/api/users/{bob.id}/merge", json={"user_id": ann.id}, headers=AUTH
    )
    assert merged.status_code == 200
    assert (
        await world.gw.identity.resolve("telegram", "local", "ann-tg")
    ).entity_id == bob.entity_id
    gone = await world.client.post(
        f"/admin/api/users/{ann.id}/merge", json={"user_id": bob.id}, headers=AUTH
    )
    assert gone.status_code == 409 and gone.json()["reason"] == "retired"

    wa_identity = await world.identity_id("whatsapp", "ann-wa")
    unlinked = await world.client.post(f"/admin/api/identities/{wa_identity}/unlink", headers=AUTH)
    assert unlinked.status_code == 200
    fresh = unlinked.json()
    assert fresh["user_id"] == bob.id
    assert fresh["new_entity_id"] not in (ann.entity_id, ann_wa.entity_id, bob.entity_id)
    assert (await world.gw.identity.resolve("whatsapp", "local", "ann-wa")).id == fresh[
        "new_user_id"
    ]
    last = await world.client.post(f"/admin/api/identities/{wa_identity}/unlink", headers=AUTH)
    assert last.status_code == 409 and last.json()["reason"] == "last_identity"

    log = (await world.client.get("/admin/api/audit", headers=AUTH)).json()
    entries = list(reversed(log["items"]))
    assert [(e["action"], e["actor"], e["via"]) for e in entries] == [
        (audit.LINK, audit.ADMIN, "api"),
        (audit.MERGE, audit.ADMIN, "api"),
        (audit.UNLINK, audit.ADMIN, "api"),
    ]
    link = entries[0]
    assert link["user_id"] == ann.id and link["other_user_id"] == ann_wa.id
    assert link["before"]["joining"]["entity_id"] == ann_wa.entity_id
    assert link["after"]["joining"]["retired"] is True
    assert "+447700900123" not in str(log) and "Ann Lee" not in str(log)  # ids only
    mine = (await world.client.get(f"/admin/api/audit?user_id={ann_wa.id}", headers=AUTH)).json()
    assert mine["total"] == 1


async def test_forget_removes_the_users_rows_and_export_returns_everything(
    world: World,
) -> None:
    ann = await world.gw.identity.resolve("telegram", "local", "ann-tg")
    ann_wa = await world.gw.identity.resolve("whatsapp", "local", "ann-wa")
    bob = await world.gw.identity.resolve("telegram", "local", "bob")
    await world.client.post(
        f"/admin/api/users/{ann.id}/merge", json={"user_id": ann_wa.id}, headers=AUTH
    )

    exported = await world.client.get(f"/admin/api/users/{ann.id}/export", headers=AUTH)
    assert exported.status_code == 200
    assert "attachment" in exported.headers["content-disposition"]
    data = exported.json()
    assert data["user"]["entity_id"] == ann.entity_id
    assert {i["channel"] for i in data["identities"]} == {"telegram", "whatsapp"}
    assert "+447700900123" in str(data["identities"])  # the export is the person's own data
    assert {m["text"] for m in data["messages_received"]} == {"hello", "hi from whatsapp"}
    assert {m["content"] for m in data["history"]} >= {"hello", "echo: hello"}
    assert sorted(m["text"] for m in data["messages_sent"]) == [
        "echo: hello",
        "echo: hi from whatsapp",
    ]

    bob_before = (
        await world.count(HistoryMessage, HistoryMessage.user_id == bob.id),
        await world.count(InboxItem, InboxItem.user_id == bob.id),
    )
    forgotten = await world.client.post(f"/admin/api/users/{ann.id}/forget", headers=AUTH)
    assert forgotten.status_code == 200
    result = forgotten.json()
    assert result["deleted"] == {"identities": 2, "history": 4, "inbox": 2, "outbox": 2}
    ids = [ann.id, ann_wa.id]
    assert await world.count(Identity, Identity.user_id.in_(ids)) == 0
    assert await world.count(HistoryMessage, HistoryMessage.user_id.in_(ids)) == 0
    assert await world.count(InboxItem, InboxItem.user_id.in_(ids)) == 0
    assert await world.count(OutboxItem, OutboxItem.user_id.in_(ids)) == 0
    assert await world.count(User, User.id == ann.id, User.retired_at.is_not(None)) == 1
    assert await world.count(User, User.entity_id == ann.entity_id) == 1  # retired, kept unique
    assert bob_before == (
        await world.count(HistoryMessage, HistoryMessage.user_id == bob.id),
        await world.count(InboxItem, InboxItem.user_id == bob.id),
    )
    assert (await world.client.get(f"/admin/api/users/{ann.id}", headers=AUTH)).status_code == 404
    again = await world.client.post(f"/admin/api/users/{ann.id}/forget", headers=AUTH)
    assert again.status_code == 409
    returning = await world.gw.identity.resolve("telegram", "local", "ann-tg")
    assert returning.id != ann.id and returning.entity_id != ann.entity_id

    log = (await world.client.get("/admin/api/audit", headers=AUTH)).json()
    assert [e["action"] for e in reversed(log["items"])] == [
        audit.MERGE,
        audit.EXPORT,
        audit.FORGET,
    ]
    assert log["items"][0]["after"]["deleted"]["history"] == 4
    assert "hello" not in str(log)


async def test_concurrent_conflicting_merges_leave_the_store_consistent(world: World) -> None:
    ann = await world.user_id("telegram", "ann-tg")
    bob = await world.user_id("telegram", "bob")
    responses = await asyncio.gather(
        world.client.post(f"/admin/api/users/{ann}/merge", json={"user_id": bob}, headers=AUTH),
        world.client.post(f"/admin/api/users/{bob}/merge", json={"user_id": ann}, headers=AUTH),
    )
    assert sorted(r.status_code for r in responses) == [200, 409]
    async with world.gw.sessions() as session:
        users = {
            u.id: u for u in await session.scalars(select(User).where(User.id.in_([ann, bob])))
        }
        owners = set(
            await session.scalars(select(Identity.user_id).where(Identity.channel == "telegram"))
        )
    live = [u for u in users.values() if u.retired_at is None]
    assert len(live) == 1 and owners == {live[0].id}
    retired = next(u for u in users.values() if u.retired_at is not None)
    assert retired.merged_into == live[0].id
    assert await world.count(audit.AuditEntry) == 1
