"""Load generator (its own process): fires prepared requests at a fixed rate, open loop.

`python -m bench._loadgen REQUESTS.json BASE_URL RATE OUT.json` sends request i at
t0 + i / RATE whether or not earlier ones have been answered (so a slow server cannot
slow the load down and hide its own latency), and probes /healthz 20 times a second
alongside, as the reference for the HTTP stack alone. A request not answered within 10 s
counts as failed (TimeoutError): the platforms give up and retry sooner (Slack after 3 s). Writes, per request: seconds from
its scheduled time to the start of sending (the generator's own lateness), seconds from
sending to the complete response, when it completed, and the status (or the error).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

TIMEOUT = 10.0  # seconds; an answer later than this counts as a failure


async def _one(
    session: aiohttp.ClientSession, url: str, request: dict[str, Any], scheduled: float, t0: float
) -> dict[str, Any]:
    started = time.perf_counter()
    status: int | str
    try:
        async with session.post(
            url + request["path"],
            data=base64.b64decode(request["body"]),
            headers=request["headers"],
        ) as response:
            await response.read()
            status = response.status
    except Exception as exc:  # every failure is a result here
        status = type(exc).__name__
    done = time.perf_counter()
    return {
        "late": started - scheduled,
        "latency": done - started,
        "done": done - t0,
        "status": status,
    }


async def _probe(session: aiohttp.ClientSession, url: str, until: float) -> list[float]:
    samples = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            async with session.get(url + "/healthz") as response:
                await response.read()
                if response.status == 200:
                    samples.append(time.perf_counter() - started)
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - started)))
    return samples


async def main(requests: list[dict[str, Any]], url: str, rate: float) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter() + 0.2
        duration = len(requests) / rate
        probe = asyncio.create_task(_probe(session, url, t0 + duration))
        tasks = []
        for i, request in enumerate(requests):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, request, scheduled, t0)))
        sent_in = time.perf_counter() - t0
        results = await asyncio.gather(*tasks)
        health = await probe
    return {"results": results, "healthz": health, "sent_in": sent_in}


if __name__ == "__main__":
    path, base, per_second, out = sys.argv[1:5]
    prepared = json.loads(Path(path).read_text())
    Path(out).write_text(json.dumps(asyncio.run(main(prepared, base, float(per_second)))))
