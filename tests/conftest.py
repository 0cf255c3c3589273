"""Shared fixtures: a fresh database per test (SQLite and the real local Postgres), the
fake LLM and Composio servers, and a factory for running gateways wired to them.

Under CI=true a missing Postgres fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from channels.base import Channel
from channels.console import ConsoleChannel
from gateway.runtime import Gateway
from gateway.settings import Settings
from tests.fakes.llm import FakeLLM
from tests.fakes.server import FakeServer, serve

POSTGRES_ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Tests must never reach the internet; these keep litellm and friends offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _postgres_reachable() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_PG_PROBLEM: str | None = _postgres_reachable()


def pytest_configure(config: pytest.Config) -> None:
    if _PG_PROBLEM and IN_CI:
        raise pytest.UsageError(
            f"CI=true but Postgres at {POSTGRES_ADMIN_DSN} is unreachable: {_PG_PROBLEM}"
        )


async def _create_pg_database() -> str:
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _pg_url(name: str) -> str:
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty Postgres database on the local server, dropped afterwards."""
    if _PG_PROBLEM:
        pytest.skip(f"Postgres unreachable: {_PG_PROBLEM}")
    name = await _create_pg_database()
    try:
        yield _pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh, empty database for this test (SQLite, then Postgres); migrated on start."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    with serve(fake.app) as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def fake_composio() -> Iterator[Any]:
    from tests.fakes.composio_api import FakeComposio

    fake = FakeComposio()
    with serve(fake.app) as server:
        fake.url = server.url
        yield fake


def gateway_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "poll_interval_seconds": 0.2,
        "lease_seconds": 30,
        "shutdown_timeout_seconds": 10,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    db_url: str, fake_llm: FakeLLM, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayFactory]:
    """Build and start gateways on this test's database, talking to the fake LLM.

    `make_gateway(channels=[...], tools=True, process=True, **settings)`; with
    `tools=True` Composio points at the `fake_composio` server (asana and gmail enabled).
    `llm=False` leaves the model unconfigured.
    """
    started: list[Gateway] = []

    async def factory(
        channels: list[Channel] | None = None,
        *,
        tools: bool = False,
        llm: bool = True,
        process: bool = True,
        **overrides: Any,
    ) -> Gateway:
        values: dict[str, Any] = {}
        if llm:
            values.update(
                llm_model="openai/fake-model",
                llm_api_base=f"{fake_llm.url}/v1",  # type: ignore[attr-defined]
                llm_api_key="sk-test-not-a-real-key",
                llm_timeout_seconds=10,
            )
        if tools:
            composio = request.getfixturevalue("fake_composio")
            values.update(
                composio_api_key="test-composio-key",
                composio_base_url=composio.url,
                composio_toolkits=["asana", "gmail"],
                composio_auth_configs={"asana": "ac_asana_test", "gmail": "ac_gmail_test"},
                composio_toolkit_versions={"asana": "20250101_00", "gmail": "20250101_00"},
            )
        values.update(overrides)
        gateway = Gateway(gateway_settings(db_url, **values), channels or [ConsoleChannel()])
        await gateway.start(process=process)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in reversed(started):
        await gateway.stop()


__all__ = ["FakeServer", "GatewayFactory", "gateway_settings"]
