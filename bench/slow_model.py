"""Slow model, many users: concurrent in-flight turns with a fake LLM that takes seconds.

N users' messages are stored first (a gateway with processing off, stopped), then a
gateway starts on that database and works through them, as after a restart with a
backlog; the fake LLM (its own process) waits DELAY seconds before each answer, and
POOL_CONCURRENCY bounds the turns in flight (default: N, i.e. all of them at once).
litellm is imported and warmed before, so the figures are the steady state. Figures:
time from that start until every reply was sent versus the ideal (DELAY x N /
concurrency, at least DELAY), peak RSS, and the event loop's lag (a ticker asking to
wake every 5 ms records how late it woke: p99 and max) while the turns wait.
Compared with: RSS before the burst, and the most requests the fake LLM had in flight at
once (it should reach the bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request

from bench import common
from bench.common import Figure, fig, mb, percentile

BENCH = "slow_model"
TICK = 0.005


async def run(full: bool, concurrency: int | None = None) -> list[Figure]:
    from gateway.runtime import Gateway
    from kernel.llm import warm_up

    turns, delay = (1000, 2.0) if full else (200, 1.0)
    concurrency = concurrency or turns
    await asyncio.to_thread(warm_up)
    with common.fakes_process("llm", delay=delay) as urls:
        async with common.temp_database("sqlite") as db_url:
            console = common.counting_console()
            settings = common.settings_for(db_url, urls["llm"], pool_concurrency=concurrency)
            loader = Gateway(settings, [console])
            await loader.start(process=False)
            try:
                numbers = iter(range(turns))

                async def webhook() -> None:
                    for i in numbers:
                        await loader.accept([console.envelope(f"user{i}", "hello")])

                began = time.perf_counter()
                await asyncio.gather(*[webhook() for _ in range(32)])
                stored = time.perf_counter() - began
            finally:
                await loader.stop()

            before = common.rss()
            reset = common.reset_peak_rss()
            lags: list[float] = []
            peak = [before]
            stop = asyncio.Event()

            async def ticker() -> None:
                expected = time.perf_counter() + TICK
                while not stop.is_set():
                    await asyncio.sleep(max(0.0, expected - time.perf_counter()))
                    now = time.perf_counter()
                    lags.append(now - expected)
                    peak[0] = max(peak[0], common.rss())
                    expected = now + TICK

            tick = asyncio.create_task(ticker())
            console.expect(turns)
            gateway = Gateway(settings, [console])
            started = time.perf_counter()
            await gateway.start()
            try:
                await asyncio.wait_for(console.reached.wait(), 3600)
                elapsed = time.perf_counter() - started
            finally:
                stop.set()
                await tick
                await gateway.stop()
            hwm = common.peak_rss() if reset else 0
        stats = await asyncio.to_thread(_stats, urls["llm"])
    ideal = max(delay, delay * turns / concurrency)
    top = max(peak[0], hwm)
    return [
        fig(
            BENCH,
            f"{turns} turns, {delay:g} s model, concurrency {concurrency}: all replied in",
            elapsed,
            "s",
            f"ideal {ideal:.2f} s ({elapsed / ideal:.2f}x); max in flight at the LLM "
            f"{stats['max_in_flight']}; (storing them first took {stored:.1f} s)",
        ),
        fig(
            BENCH,
            "peak RSS during the burst",
            mb(top),
            "MB",
            f"before the burst {mb(before):.0f} MB "
            f"(+{(top - before) / turns / 1024:.0f} KiB per in-flight turn)",
        ),
        fig(
            BENCH,
            "event-loop lag p99 / max",
            f"{percentile(lags, 99) * 1000:.1f} / {max(lags) * 1000:.0f} ms",
            compared=f"ticker asks every {TICK * 1000:.0f} ms; p50 "
            f"{percentile(lags, 50) * 1000:.1f} ms",
        ),
    ]


def _stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_stats") as response:  # the local fake LLM
        return json.load(response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--concurrency", type=int, help="POOL_CONCURRENCY (default: all turns)")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.full, args.concurrency))
    common.emit(figures, args, "Slow model, many users")


if __name__ == "__main__":
    main()
