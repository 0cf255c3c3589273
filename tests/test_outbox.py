"""The outbox against a misbehaving platform: retries with Retry-After, dead letters,
and delivery after a restart. The platform is the fake Graph API, driven through pywa."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from channels.whatsapp import WhatsAppChannel
from gateway.cli import app as cli
from gateway.outbox import DEAD, SENT, OutboxItem
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.fakes.graph_api import FakeGraphAPI, signed_headers, text_webhook
from tests.fakes.server import FakeServer, serve

APP_SECRET = "outbox-app-secret"
PHONE_NUMBER_ID = "106540352242922"
ALICE = "US.13491208655302741918"


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraphAPI, FakeServer]]:
    fake = FakeGraphAPI(phone_number_id=PHONE_NUMBER_ID)
    with serve(fake.app) as server:
        yield fake, server


def channel_for(fake: FakeGraphAPI, url: str) -> WhatsAppChannel:
    return WhatsAppChannel(
        phone_number_id=PHONE_NUMBER_ID,
        token=fake.token,
        app_secret=APP_SECRET,
        verify_token="verify",
        graph_url=url,
        graph_version="v26.0",
        media_max_bytes=1024 * 1024,
    )


async def say(gateway: Gateway, text: str, native_id: str) -> None:
    body = text_webhook(PHONE_NUMBER_ID, ALICE, "Alice", native_id, text, int(time.time()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        response = await client.post(
            "/webhooks/whatsapp", content=body, headers=signed_headers(body, APP_SECRET)
        )
    assert response.status_code == 200


async def outbox_rows(gateway: Gateway) -> list[OutboxItem]:
    async with gateway.sessions() as session:
        return list(await session.scalars(select(OutboxItem).order_by(OutboxItem.seq)))


async def test_500_then_429_with_retry_after_then_200_is_delivered_once_after_the_wait(
    make_gateway: GatewayFactory, graph: tuple[FakeGraphAPI, FakeServer]
) -> None:
    fake, server = graph
    fake.fail_next(None, http_status=500)
    fake.fail_next(None, http_status=429, retry_after=1)
    gateway = await make_gateway([channel_for(fake, server.url)])
    started = time.monotonic()
    await say(gateway, "hello", "wamid.retry1")
    await gateway.wait_idle()
    assert fake.texts(ALICE) == ["echo: hello"]  # once
    assert len(fake.rejected) == 2
    assert time.monotonic() - started >= 1.0  # the platform's Retry-After was honoured
    (row,) = await outbox_rows(gateway)
    assert row.status == SENT and row.attempts == 3 and row.platform_message_id


async def test_permanent_error_is_dead_lettered_with_its_error_without_a_retry_loop(
    make_gateway: GatewayFactory, graph: tuple[FakeGraphAPI, FakeServer]
) -> None:
    fake, server = graph
    fake.fail_next(131047)  # the 24-hour customer service window is closed
    gateway = await make_gateway([channel_for(fake, server.url)], admin_token="admin-t0ken")
    await say(gateway, "hello", "wamid.dead1")
    await gateway.wait_idle()
    assert fake.texts(ALICE) == []
    assert len(fake.rejected) == 1  # tried once, not again
    (row,) = await outbox_rows(gateway)
    assert row.status == DEAD and "131047" in (row.last_error or "")

    # The operator sees it in the admin API ...
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        refused = await client.get("/admin/api/outbox/dead")
        listed_api = await client.get(
            "/admin/api/outbox/dead", headers={"Authorization": "Bearer admin-t0ken"}
        )
    assert refused.status_code == 401
    (item,) = listed_api.json()["items"]
    assert item["id"] == row.seq and "131047" in item["error"] and item["channel"] == "whatsapp"

    # ... and in the CLI, and once the user wrote again, retries it.
    env = {"DATABASE_URL": gateway.settings.database_url}
    listed = await asyncio.to_thread(CliRunner().invoke, cli, ["outbox", "list"], env=env)
    assert listed.exit_code == 0 and "131047" in listed.output and str(row.seq) in listed.output
    retried = await asyncio.to_thread(
        CliRunner().invoke, cli, ["outbox", "retry", str(row.seq)], env=env
    )
    assert retried.exit_code == 0 and "1 dead letter(s) queued again" in retried.output
    gateway.sends.wake()
    await gateway.wait_idle()
    assert fake.texts(ALICE) == ["echo: hello"]


async def test_replies_pending_when_the_process_stops_are_delivered_after_restart(
    make_gateway: GatewayFactory, graph: tuple[FakeGraphAPI, FakeServer]
) -> None:
    fake, server = graph
    down = FakeGraphAPI(phone_number_id=PHONE_NUMBER_ID)
    with serve(down.app) as unreachable:
        pass  # started and stopped: its port now refuses connections
    first = await make_gateway([channel_for(fake, unreachable.url)])
    await say(first, "are you there?", "wamid.restart1")
    await until_outbox_has(first, 1)  # the turn is done; its reply cannot be delivered
    await first.stop()
    assert fake.texts(ALICE) == []

    second = await make_gateway([channel_for(fake, server.url)])
    await second.wait_idle()
    assert fake.texts(ALICE) == ["echo: are you there?"]


async def until_outbox_has(gateway: Gateway, count: int) -> None:
    async with asyncio.timeout(30):
        while len(await outbox_rows(gateway)) < count:  # noqa: ASYNC110 - state in the DB
            await asyncio.sleep(0.05)
