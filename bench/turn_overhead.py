"""Throughput and per-turn overhead of the whole pipeline with an instantly answering LLM.

Per database (SQLite file; a throwaway Postgres database on the local server):
- messages/s: N messages from U users accepted concurrently (as webhooks would store them)
  until every reply was sent: identity, inbox, claim, history, LLM call through litellm,
  commit, outbox, delivery.
- the pipeline's own time per turn (p50/p99): the turn handler's wall time minus the LLM
  calls inside it, under that load.
- accept -> reply sent, one message at a time, minus the LLM call: the latency a single
  user sees from the gateway itself.
Compared with: the LLM client alone (litellm to the same instant fake, same concurrency),
which bounds what any pipeline could do on this machine, and the LLM call's own time.
The fake LLM runs in its own process, so its CPU does not count as ours.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import common
from bench.common import Figure, fig, percentile
from bench.instrument import TurnTimes, timed_turns

BENCH = "turn_overhead"


async def _run_on(
    kind: str, llm_url: str, times: TurnTimes, *, messages: int, users: int, sequential: int
) -> dict[str, Any]:
    from gateway.runtime import Gateway

    async with common.temp_database(kind) as db_url:
        console = common.counting_console()
        gateway = Gateway(common.settings_for(db_url, llm_url), [console])
        await gateway.start()
        try:
            # Warm up: connections, litellm import, first-call caches.
            console.expect(20)
            await asyncio.gather(
                *[gateway.accept([console.envelope(f"warm{i}", "hi")]) for i in range(20)]
            )
            await asyncio.wait_for(console.reached.wait(), 120)

            # One at a time: accept -> reply sent, minus the LLM call.
            single: list[float] = []
            for i in range(sequential):
                before = len(times.llm)
                console.expect(console.count + 1)
                started = time.perf_counter()
                await gateway.accept([console.envelope(f"solo{i % 10}", f"message {i}")])
                await asyncio.wait_for(console.reached.wait(), 60)
                single.append(time.perf_counter() - started - sum(times.llm[before:]))

            # Load: many users, messages interleaved, accepted by 32 concurrent "webhooks".
            times.clear()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            for i in range(messages):
                queue.put_nowait(console.envelope(f"user{i % users}", f"message {i}"))
            target = console.count + messages

            async def webhook() -> None:
                while not queue.empty():
                    await gateway.accept([queue.get_nowait()])

            console.expect(target)
            started = time.perf_counter()
            await asyncio.gather(*[webhook() for _ in range(32)])
            accepted = time.perf_counter()
            await asyncio.wait_for(console.reached.wait(), 600)
            elapsed = time.perf_counter() - started
            return {
                "rate": messages / elapsed,
                "accept_rate": messages / (accepted - started),
                "own": list(times.own),
                "llm": list(times.llm),
                "single": single,
                "concurrency": gateway.settings.pool_concurrency,
            }
        finally:
            await gateway.stop()


async def _llm_alone(llm_url: str, calls: int, concurrency: int) -> float:
    """litellm calls/s to the same fake with the same concurrency: the ceiling."""
    from kernel.llm import LLM, LLMConfig

    llm = LLM(LLMConfig("openai/fake-model", f"{llm_url}/v1", "sk-bench", 60, 0))
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "hi"},
    ]
    await llm.complete(messages)
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            await llm.complete(messages)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return calls / (time.perf_counter() - started)


async def run(full: bool) -> list[Figure]:
    messages, users, sequential = (5000, 1000, 300) if full else (200, 50, 20)
    kinds = ["sqlite"]
    problem = await common.postgres_problem()
    if problem is None:
        kinds.append("postgres")
    figures: list[Figure] = []
    with common.fakes_process("llm") as urls, timed_turns() as times:
        results = {}
        for kind in kinds:
            times.clear()
            results[kind] = await _run_on(
                kind, urls["llm"], times, messages=messages, users=users, sequential=sequential
            )
        concurrency = results["sqlite"]["concurrency"]
        ceiling = await _llm_alone(urls["llm"], messages, concurrency)
    for kind in kinds:
        r = results[kind]
        name = "SQLite" if kind == "sqlite" else "Postgres"
        llm_p50 = percentile(r["llm"], 50) * 1000
        figures += [
            fig(
                BENCH,
                f"{name}: messages/s ({messages} msgs, {users} users)",
                r["rate"],
                "msg/s",
                f"LLM client alone, same fake, {concurrency} concurrent: {ceiling:.0f} calls/s",
            ),
            fig(
                BENCH,
                f"{name}: turn time excl. LLM, p50 / p99 (loaded)",
                f"{percentile(r['own'], 50) * 1000:.1f} / {percentile(r['own'], 99) * 1000:.1f} ms",
                compared=f"the LLM call itself (instant fake via litellm): p50 {llm_p50:.1f} ms, "
                f"p99 {percentile(r['llm'], 99) * 1000:.1f} ms",
            ),
            fig(
                BENCH,
                f"{name}: accept -> reply sent excl. LLM, p50 / p99 (one at a time)",
                f"{percentile(r['single'], 50) * 1000:.1f} / "
                f"{percentile(r['single'], 99) * 1000:.1f} ms",
                compared=f"{len(r['single'])} messages; webhooks stored at {r['accept_rate']:.0f} msg/s "
                "during the load",
            ),
        ]
    if problem is not None:
        figures.append(fig(BENCH, "Postgres", "skipped", compared=f"unreachable: {problem}"))
    return figures


def main(argv: list[str] | None = None) -> None:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    figures = asyncio.run(run(args.full))
    common.emit(figures, args, "Turn overhead")


if __name__ == "__main__":
    main()
