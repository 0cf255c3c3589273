"""Memory versus users: N distinct senders, one message each, through the whole pipeline.

N is 2,000 by default, below the 5,000 first planned: the pipeline handles about 20-30
messages/s on a 2-core machine and `make bench` has to stay near five minutes;
`--users 5000` for more, `--full` for 100,000. The LLM is left unconfigured by default,
so every turn ends in the "not configured" reply: everything else (identity, inbox,
claim, history, commit, outbox, delivery) runs as usual. `--with-llm` sends every turn
through litellm to the instant fake LLM (its own process) instead. RSS is read after a
warm-up of 200 other users (imports, connections, caches) and at every quarter of the N
users, after a garbage collection and once the gateway is idle. Per user: the growth
over the last half (bounded caches such as SQLite's page cache fill up early and stop),
and over all N. The pool's own structures (turns in flight) are reported too.
Compared with: the same users' footprint on disk (SQLite file growth per user), which is
where per-user state is meant to live.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, fig, mb

BENCH = "memory_users"


async def _through(gateway: Any, console: Any, prefix: str, first: int, count: int) -> float:
    """Users first..first+count each send one message; returns once all is processed."""
    numbers = iter(range(first, first + count))
    console.expect(console.count + count)

    async def webhook() -> None:
        for i in numbers:
            await gateway.accept([console.envelope(f"{prefix}{i}", "hello")])

    started = time.perf_counter()
    await asyncio.gather(*[webhook() for _ in range(32)])
    await asyncio.wait_for(console.reached.wait(), 3600)
    await gateway.wait_idle(within=600)
    return time.perf_counter() - started


async def run(full: bool, with_llm: bool = False, users: int | None = None) -> list[Figure]:
    from gateway.runtime import Gateway

    users = users or (100_000 if full else 2_000)
    quarter = users // 4
    points: list[int] = []
    elapsed = 0.0
    with common.fakes_process("llm") as urls:
        async with common.temp_database("sqlite") as db_url:
            db_file = Path(db_url.split("///", 1)[1])
            console = common.counting_console()
            llm_url = urls["llm"] if with_llm else None
            gateway = Gateway(common.settings_for(db_url, llm_url), [console])
            await gateway.start()
            try:
                await _through(gateway, console, "warm", 0, 200)
                gc.collect()
                points.append(common.rss())
                disk_before = _db_bytes(db_file)
                for part in range(4):
                    elapsed += await _through(gateway, console, "user", part * quarter, quarter)
                    gc.collect()
                    points.append(common.rss())
                disk_after = _db_bytes(db_file)
                in_flight = gateway.turns.in_flight + gateway.sends.in_flight
            finally:
                await gateway.stop()
    before, half, after = points[0], points[2], points[4]
    last_half = (after - half) / (users - 2 * quarter)
    overall = (after - before) / users
    disk_per_user = (disk_after - disk_before) / users
    llm = "instant fake LLM" if with_llm else "LLM unconfigured"
    return [
        fig(
            BENCH,
            f"RSS before -> after {users:,} distinct users ({llm})",
            f"{mb(before):.0f} -> {mb(after):.0f} MB",
            compared="at each quarter: "
            + " / ".join(f"{mb(p):.0f}" for p in points[1:])
            + f" MB; {users / elapsed:.0f} users/s; pool in flight after: {in_flight}",
        ),
        fig(
            BENCH,
            "RSS growth per user: last half / all users",
            f"{last_half:,.0f} / {overall:,.0f} bytes",
            compared=f"on disk (SQLite growth) {disk_per_user:,.0f} bytes/user",
        ),
    ]


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.exists())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--with-llm", action="store_true", help="turns go through the fake LLM")
    parser.add_argument("--users", type=int, help="how many (default 2,000; --full 100,000)")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.full, args.with_llm, args.users))
    common.emit(figures, args, "Memory versus users")


if __name__ == "__main__":
    main()
