"""Durability and scale-out with real processes: several replicas on one Postgres,
kill -9 in the middle of turns, SIGTERM during a slow turn, and SQLite's one-process rule.

Replicas are `gateway run` subprocesses; WhatsApp webhooks are signed and posted to them;
replies go through pywa to one local fake Graph API, which records every send in order.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.graph_api import FakeGraphAPI, signed_headers, text_webhook
from tests.fakes.llm import FakeLLM
from tests.fakes.server import FakeServer, serve
from tests.processes import ROOT, GatewayProcess

APP_SECRET = "replica-app-secret"
PHONE_NUMBER_ID = "106540352242922"


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraphAPI, FakeServer]]:
    fake = FakeGraphAPI(phone_number_id=PHONE_NUMBER_ID)
    with serve(fake.app) as server:
        yield fake, server


def make_llm() -> tuple[FakeLLM, Any]:
    fake = FakeLLM()
    return fake, serve(fake.app)


def env_for(
    database_url: str, llm_url: str, graph_url: str, graph_token: str, **extra: str
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "LLM_MODEL": "openai/fake-model",
        "LLM_API_BASE": f"{llm_url}/v1",
        "LLM_API_KEY": "sk-test",
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "WHATSAPP_TOKEN": graph_token,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": "verify",
        "WHATSAPP_GRAPH_URL": graph_url,
        "POLL_INTERVAL_SECONDS": "0.2",
        "LOG_LEVEL": "warning",
        **extra,
    }


def user_id(n: int) -> str:
    return f"US.{7000000000000 + n}"


def webhook(user: int, seq: int) -> bytes:
    return text_webhook(
        PHONE_NUMBER_ID,
        user_id(user),
        f"User {user}",
        f"wamid.replica.{user}.{seq}",
        f"u{user} #{seq}",
        1760000000 + seq,
    )


async def post(client: httpx.AsyncClient, url: str, body: bytes) -> int:
    response = await client.post(
        f"{url}/webhooks/whatsapp", content=body, headers=signed_headers(body, APP_SECRET)
    )
    return response.status_code


async def until(condition: Any, within: float, what: str, *processes: GatewayProcess) -> None:
    """Wait for a condition observed in the fakes (not a timing assumption).

    On timeout the replicas' logs go into the failure, since they say why.
    """
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - the state lives in fakes in other threads
                await asyncio.sleep(0.05)
    except TimeoutError:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in processes)
        raise AssertionError(f"{what}: not within {within}s\n{logs}") from None


def answered(fake: FakeGraphAPI) -> Counter[str]:
    return Counter(fake.texts())


async def test_two_replicas_answer_every_message_once_in_order(
    pg_url: str, graph: tuple[FakeGraphAPI, FakeServer], tmp_path: Path
) -> None:
    fake, server = graph
    llm, llm_server = make_llm()
    users, per_user = 20, 10
    with llm_server as llm_srv:
        env = env_for(pg_url, llm_srv.url, server.url, fake.token)
        with (
            GatewayProcess(env, log=tmp_path / "a.log") as a,
            GatewayProcess(env, log=tmp_path / "b.log") as b,
        ):
            a.wait_ready()
            b.wait_ready()
            async with httpx.AsyncClient(timeout=30) as client:
                statuses = []
                for seq in range(per_user):
                    for user in range(users):
                        target = (a, b)[(seq * users + user) % 2]
                        statuses.append(await post(client, target.url, webhook(user, seq)))
            assert set(statuses) == {200}
            await until(lambda: len(fake.texts()) >= users * per_user, 120, "all answered", a, b)

    counts = answered(fake)
    assert len(counts) == users * per_user and set(counts.values()) == {1}  # exactly once
    for user in range(users):
        assert fake.texts(user_id(user)) == [f"echo: u{user} #{seq}" for seq in range(per_user)]
    assert llm.requests  # both replicas worked through the same fake model


async def test_kill_9_in_the_middle_of_turns_loses_nothing(
    pg_url: str, graph: tuple[FakeGraphAPI, FakeServer], tmp_path: Path
) -> None:
    fake, server = graph
    stuck, stuck_server = make_llm()
    stuck.delay = 120  # replica A's model never answers: A dies holding claimed turns
    _, healthy_server = make_llm()
    users, per_user = 8, 3
    with stuck_server as stuck_srv, healthy_server as healthy_srv:
        lease = {"LEASE_SECONDS": "3"}
        a = GatewayProcess(
            env_for(
                pg_url, stuck_srv.url, server.url, fake.token, LLM_TIMEOUT_SECONDS="600", **lease
            ),
            log=tmp_path / "a.log",
        )
        with a:
            a.wait_ready()
            async with httpx.AsyncClient(timeout=30) as client:
                for seq in range(per_user):
                    for user in range(users):
                        assert await post(client, a.url, webhook(user, seq)) == 200
            # A holds the head of every user's queue, waiting on its model and renewing
            # its leases. Only then does B start (a process starts when it is created), so
            # B can take nothing until A is gone and its leases have run out.
            await until(lambda: stuck.in_flight >= users, 90, "replica A mid-turn", a)
            b = GatewayProcess(
                env_for(pg_url, healthy_srv.url, server.url, fake.token, **lease),
                log=tmp_path / "b.log",
            )
            with b:
                b.wait_ready()
                a.kill()
                await until(lambda: len(fake.texts()) >= users * per_user, 120, "all answered", b)
                # More than one reply to a message would show up as a count above 1.
                counts = answered(fake)
    assert len(counts) == users * per_user
    assert max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]
    for user in range(users):
        assert fake.texts(user_id(user)) == [f"echo: u{user} #{seq}" for seq in range(per_user)]


async def test_sigterm_during_a_slow_turn_finishes_it_and_replies_once(
    pg_url: str, graph: tuple[FakeGraphAPI, FakeServer], tmp_path: Path
) -> None:
    fake, server = graph
    llm, llm_server = make_llm()
    llm.delay = 2
    with llm_server as llm_srv:
        env = env_for(
            pg_url,
            llm_srv.url,
            server.url,
            fake.token,
            SHUTDOWN_TIMEOUT_SECONDS="20",
            LOG_LEVEL="info",
        )
        with GatewayProcess(env, log=tmp_path / "a.log") as a:
            a.wait_ready()
            async with httpx.AsyncClient(timeout=30) as client:
                assert await post(client, a.url, webhook(1, 0)) == 200
            await until(lambda: llm.in_flight > 0, 60, "turn running", a)
            assert a.terminate() == 0, a.log()
    assert fake.texts(user_id(1)) == ["echo: u1 #0"]


def test_a_second_process_on_the_same_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db", "LOG_LEVEL": "warning"}
    with GatewayProcess(env, log=tmp_path / "first.log") as first:
        first.wait_ready()
        second = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--port", "0"],
            cwd=ROOT,
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 3
    assert "another gateway process" in second.stderr and "Postgres" in second.stderr
