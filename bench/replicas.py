"""Scale-out on Postgres: 1 versus 2 gateway replicas, and how fast a crash is recovered.

- messages/s: N console webhooks from U users, posted round-robin to the replicas by 32
  concurrent clients, until every reply was delivered (read from the database's outbox);
  the fake LLM answers instantly and runs in its own process.
- the pipeline's own time per turn: (turn seconds - LLM seconds) / turns, from each
  replica's own /metrics, averaged over the replicas.
- crash pickup: replica A's model never answers; A claims M messages and is killed with
  SIGKILL; B (instant model) finishes them. Time from the kill to B's first claim and to
  the last reply, with LEASE_SECONDS as the comparison (the ideal is one lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench import common
from bench.common import Figure, fig

BENCH = "replicas"
TOKEN = "bench-console-token"
LEASE = 5.0


@contextlib.contextmanager
def replicas(db_url: str, llm_urls: list[str], **settings: str) -> Iterator[list[tuple[str, Any]]]:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for llm_url in llm_urls:
            port = common.free_port()
            env = common.gateway_env(
                db_url,
                llm_model="openai/fake-model",
                llm_api_base=f"{llm_url}/v1",
                llm_api_key="sk-bench",
                llm_retries="0",
                console_token=TOKEN,
                poll_interval_seconds="0.5",
                **settings,
            )
            proc = subprocess.Popen(
                [*common.gateway_command(), "run", "--port", str(port)],
                cwd=common.ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append((f"http://127.0.0.1:{port}", proc))
        for url, _ in procs:
            common.wait_http(f"{url}/readyz", within=120)
        yield procs
    finally:
        for _, proc in procs:
            common.stop_process(proc)


async def _count(db_url: str, sql: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _until(db_url: str, sql: str, target: int, within: float) -> float:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if await _count(db_url, sql) >= target:
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{sql!r} did not reach {target} within {within}s")


async def _post_all(urls: list[str], messages: int, users: int, first_id: int = 0) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(first_id, first_id + messages):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"user": f"user{i % users}", "text": f"message {i}", "id": f"m{i}"}
            response = await client.post(
                f"{urls[i % len(urls)]}/webhooks/console",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*[worker(client) for _ in range(32)])


def _pipeline_seconds(urls: list[str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    per_turn = []
    for url in urls:
        wanted = (
            "gateway_llm_seconds_sum",
            "gateway_turn_seconds_sum",
            "gateway_turn_seconds_count",
        )
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[sample.name] = values.get(sample.name, 0) + sample.value
        turns = values.get("gateway_turn_seconds_count", 0)
        if turns:
            busy = values["gateway_turn_seconds_sum"] - values.get("gateway_llm_seconds_sum", 0)
            per_turn.append(busy / turns)
    return sum(per_turn) / len(per_turn) if per_turn else float("nan")


async def throughput(n: int, llm_url: str, messages: int, users: int) -> tuple[float, float]:
    async with common.temp_database("postgres") as db_url:
        with replicas(db_url, [llm_url] * n) as procs:
            urls = [url for url, _ in procs]
            started = time.perf_counter()
            await _post_all(urls, messages, users)
            done = await _until(
                db_url, "SELECT count(*) FROM outbox WHERE status = 'sent'", messages, 600
            )
            return messages / (done - started), _pipeline_seconds(urls)


async def crash_pickup(stuck_url: str, llm_url: str, messages: int) -> tuple[float, float]:
    async with common.temp_database("postgres") as db_url:
        lease = {"lease_seconds": str(LEASE)}
        # A's model never answers, A must not give up on it before it is killed, and A has
        # exactly one slot per message, so it cannot also take B's warm-up message.
        a_settings = {"llm_timeout_seconds": "3600", "pool_concurrency": str(messages), **lease}
        with replicas(db_url, [stuck_url], **a_settings) as [(a_url, a_proc)]:
            await _post_all([a_url], messages, messages)
            # A claims every message and hangs on its model, renewing its leases.
            await _until(
                db_url, "SELECT count(*) FROM inbox WHERE status = 'processing'", messages, 60
            )
            with replicas(db_url, [llm_url], **lease) as [(b_url, _)]:
                # B finds nothing of A's claimable; one message of its own proves it is warm.
                await _post_all(
                    [b_url], 1, messages + 1, first_id=messages
                )  # user "user{messages}"
                warm = f"SELECT count(*) FROM inbox WHERE native_id = 'm{messages}' AND status = 'done'"
                await _until(db_url, warm, 1, 120)
                a_proc.send_signal(signal.SIGKILL)
                a_proc.wait()
                killed = time.perf_counter()
                # A never finishes anything (its model never answers): done rows are B's.
                first = await _until(
                    db_url, "SELECT count(*) FROM inbox WHERE status = 'done'", 2, 120
                )
                sent = "SELECT count(*) FROM outbox WHERE status = 'sent'"
                last = await _until(db_url, sent, messages + 1, 120)
                return first - killed, last - killed


async def run(args: Any) -> list[Figure]:
    problem = await common.postgres_problem()
    if problem:
        return [fig(BENCH, "skipped", f"Postgres unreachable: {problem}")]
    messages = common.scale(args, 400, 4000)
    users = common.scale(args, 20, 200)
    figures: list[Figure] = []
    with common.fakes_process("llm") as fast, common.fakes_process("llm", delay=3600) as stuck:
        rates = {}
        for n in (1, 2):
            rate, pipeline = await throughput(n, fast["llm"], messages, users)
            rates[n] = rate
            figures.append(
                fig(
                    BENCH,
                    f"{n} replica(s): messages/s ({messages} msgs, {users} users)",
                    rate,
                    "msg/s",
                )
            )
            figures.append(
                fig(
                    BENCH,
                    f"{n} replica(s): pipeline time per turn (mean, excl. LLM)",
                    pipeline * 1000,
                    "ms",
                )
            )
        figures.append(
            fig(
                BENCH,
                "2 replicas vs 1: throughput ratio",
                rates[2] / rates[1],
                "x",
                "2 cores shared by both",
            )
        )
        first, last = await crash_pickup(stuck["llm"], fast["llm"], 10)
        figures.append(
            fig(
                BENCH,
                "kill -9: crash to first pickup by the other replica",
                first,
                "s",
                f"lease {LEASE:g} s",
            )
        )
        figures.append(fig(BENCH, "kill -9: crash to all 10 claimed messages answered", last, "s"))
    return figures


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    figures = asyncio.run(run(args))
    common.emit(figures, args, "Replicas on Postgres")


if __name__ == "__main__":
    main()
