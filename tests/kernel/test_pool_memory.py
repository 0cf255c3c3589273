"""Invariant 5: kernels hold no per-user state; the pool's memory does not grow with users."""

from __future__ import annotations

import asyncio

from channels.console import ConsoleChannel
from tests.conftest import GatewayFactory

USERS = int(__import__("os").environ.get("POOL_TEST_USERS", "5000"))


async def test_pool_keeps_nothing_per_user_after_thousands_of_users(
    make_gateway: GatewayFactory,
) -> None:
    console = ConsoleChannel()
    gateway = await make_gateway([console], llm=False, pool_concurrency=32)
    peak_in_flight = 0

    def watch() -> None:
        nonlocal peak_in_flight
        peak_in_flight = max(peak_in_flight, gateway.turns.in_flight)

    async def sender(start: int) -> None:
        for i in range(start, USERS, 50):
            await gateway.accept([console.envelope(f"user-{i}", "/help")])
            watch()

    await asyncio.gather(*[sender(s) for s in range(50)])
    await gateway.wait_idle(within=300)

    assert len({m.conversation.id for m in console.sent}) == USERS  # everyone was answered
    assert peak_in_flight <= 32
    for pool in (gateway.turns, gateway.sends):
        # The pool's only containers hold in-flight work, and there is none left.
        containers = {k: v for k, v in vars(pool).items() if isinstance(v, (dict, list, set))}
        assert containers and all(len(v) == 0 for v in containers.values()), containers
    assert await gateway.identity.count_users() == USERS
