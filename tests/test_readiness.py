"""/readyz and the model provider: probed in the background, reported, a 503 only if asked."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from channels.console import ConsoleChannel
from tests.conftest import GatewayFactory
from tests.fakes.llm import FakeLLM


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


async def probed(client: httpx.AsyncClient) -> httpx.Response:
    """/readyz once the first background probe has answered (after the LLM warm-up)."""
    async with asyncio.timeout(60):
        while True:
            response = await client.get("/readyz")
            if response.json().get("llm") != "checking":
                return response
            await asyncio.sleep(0.05)


async def test_readyz_reports_a_reachable_model(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    gateway = await make_gateway([ConsoleChannel()])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        response = await probed(client)
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "llm": "reachable"}


async def test_a_failing_provider_is_reported(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    fake_llm.models_status = 503
    gateway = await make_gateway([ConsoleChannel()], readyz_requires_llm=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        response = await probed(client)
    assert response.status_code == 503
    assert response.json() == {
        "status": "llm unavailable",
        "llm": "the provider is failing (HTTP 503)",
    }


@pytest.mark.parametrize("required", [False, True])
async def test_an_unreachable_model_is_reported_and_fails_readiness_only_if_required(
    make_gateway: GatewayFactory, required: bool
) -> None:
    gateway = await make_gateway(
        [ConsoleChannel(token="ready-secret")],
        llm_api_base=closed_port_url(),
        readyz_requires_llm=required,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        response = await probed(client)
        stored = await client.post(
            "/webhooks/console",
            json={"user": "ann", "text": "are you there?", "id": "r-1"},
            headers={"Authorization": "Bearer ready-secret"},
        )
    assert response.json()["llm"].startswith("unreachable: ConnectError")
    if required:
        assert response.status_code == 503
        assert response.json()["status"] == "llm unavailable"
    else:
        assert response.status_code == 200
    assert stored.status_code == 200  # a webhook that reaches this replica is still kept


async def test_readyz_says_when_no_model_is_configured(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway([ConsoleChannel()], llm=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gw"
    ) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "llm": "not configured"}
