"""Overload on the webhook path: past the in-flight bound a fast 503, and nothing lost.

The store is held up for real (the database is locked by another transaction), so the
first request stays in flight; the second is refused at once, and its platform retry
after the load is gone is answered like any message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from channels.console import ConsoleChannel
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.fakes.llm import FakeLLM

AUTH = {"Authorization": "Bearer overload-secret"}


async def metric(client: httpx.AsyncClient, name: str) -> float:
    exposition = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    )


@contextlib.asynccontextmanager
async def database_held(gateway: Gateway) -> AsyncIterator[None]:
    """Another transaction holds what the gateway's writes need, until the block ends."""
    async with gateway.sessions.begin() as blocker:
        if gateway.settings.is_sqlite:
            await blocker.execute(text("SELECT 1"))  # holds the only connection
        else:
            await blocker.execute(text("LOCK TABLE inbox IN EXCLUSIVE MODE"))
        yield


async def test_a_webhook_past_the_bound_gets_a_fast_503_and_its_retry_is_answered(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    console = ConsoleChannel(token="overload-secret")
    gateway = await make_gateway([console], webhook_max_in_flight=1)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:

        async def post(user: str, message_id: str) -> httpx.Response:
            body = {"user": user, "text": f"hi from {user}", "id": message_id}
            return await client.post("/webhooks/console", json=body, headers=AUTH)

        async with database_held(gateway):
            first = asyncio.create_task(post("ann", "a-1"))
            in_flight = gateway.metrics.registry.get_sample_value
            async with asyncio.timeout(10):
                while in_flight("gateway_webhooks_in_flight") != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            refused = await post("bob", "b-1")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert not first.done()  # still waiting on the database, not refused
        assert (await first).status_code == 200
        assert (await post("bob", "b-1")).status_code == 200  # the platform's retry
        await gateway.wait_idle()
        assert await metric(client, "gateway_webhooks_shed_total") == 1
        assert await metric(client, "gateway_webhooks_in_flight") == 0

    answered = sorted(m.conversation.id for m in console.sent)
    assert answered == ["dm:ann", "dm:bob"]
    assert sorted(fake_llm.user_texts()) == ["hi from ann", "hi from bob"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # Postgres has spare connections
async def test_readiness_survives_a_busy_database_but_not_one_that_never_answered(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway([ConsoleChannel()], llm=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        async with database_held(gateway):  # before any check answered: not ready
            never = await client.get("/readyz")
        ready = await client.get("/readyz")
        async with database_held(gateway):  # answered just now: busy, still ready
            busy = await client.get("/readyz")
    assert (never.status_code, never.json()["status"]) == (503, "database not answering")
    assert ready.status_code == 200
    assert busy.status_code == 200
