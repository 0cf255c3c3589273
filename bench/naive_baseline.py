"""The design this project replaces, side by side with ours, at N users: RSS of each.

Naive: one long-lived kernel object per user in an unbounded dict, each with its own
Composio client (`composio.Composio(api_key, base_url)`), its own LLM router
(`litellm.Router`), its own copy of the tool schemas and its own history — which is what
"isolate users by giving each one a kernel" amounts to. Ours: the gateway with the
shared, stateless kernel pool. Both are built with the same pinned libraries, both talk
to the same local fakes (LLM answering instantly, Composio serving asana and gmail tools),
and each user sends one message that gets one model answer with the tools offered. Each
side serves 20 users first (first-call caches), then RSS is read before and after N more.

Each side runs in its own subprocess so its RSS is its own. Both install a guard that
refuses any non-loopback connection and count what it refused; Composio telemetry is
off on both (kernel/telemetry.py), and the naive side checks that constructing the
Composio client and the router opens no connection at all.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, fig, mb

BENCH = "naive_baseline"
TOOLKITS = ["asana", "gmail"]
VERSIONS = {"asana": "20250101_00", "gmail": "20250101_00"}
WARM = 20  # users served before the first RSS reading, on both sides (first-call caches)


# --- the naive design ------------------------------------------------------------------------
class NaiveKernel:
    """Everything a per-user kernel holds, for as long as the process lives."""

    def __init__(self, user_id: str, llm_url: str, composio_url: str) -> None:
        import litellm
        from composio import Composio

        self.user_id = user_id
        self.composio = Composio(
            api_key="bench-composio-key", base_url=composio_url, toolkit_versions=VERSIONS
        )
        self.router = litellm.Router(
            model_list=[
                {
                    "model_name": "assistant",
                    "litellm_params": {
                        "model": "openai/fake-model",
                        "api_base": f"{llm_url}/v1",
                        "api_key": "sk-bench-not-a-real-key",
                    },
                }
            ],
            num_retries=0,
        )
        self.tools: list[dict[str, Any]] | None = None
        self.history: list[dict[str, Any]] = []

    async def turn(self, text: str) -> str:
        if self.tools is None:
            self.tools = await asyncio.to_thread(
                self.composio.tools.get, user_id=self.user_id, toolkits=TOOLKITS
            )
        self.history.append({"role": "user", "content": text})
        response = await self.router.acompletion(
            model="assistant",
            messages=[{"role": "system", "content": "You are helpful."}, *self.history],
            tools=self.tools,
        )
        answer = response.choices[0].message.content or ""
        self.history.append({"role": "assistant", "content": answer})
        return answer


class _ConnectionCounter:
    """Counts every socket connect (loopback too) while active."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> _ConnectionCounter:
        self._real = socket.socket.connect
        counter = self

        def connect(sock: socket.socket, address: Any) -> Any:
            counter.count += 1
            return counter._real(sock, address)

        socket.socket.connect = connect  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        socket.socket.connect = self._real  # type: ignore[method-assign]


class _Refusals(logging.Handler):
    """Counts litellm's "would exceed MAX_CALLBACKS" warnings: every Router registers
    process-global callbacks, and litellm stops accepting them at 100."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "MAX_CALLBACKS" in record.getMessage():
            self.count += 1


async def _naive(users: int, llm_url: str, composio_url: str) -> dict[str, Any]:
    import composio  # noqa: F401 - imported before the first RSS reading, like the pool side
    import litellm

    refusals = _Refusals()
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        logger.addHandler(refusals)
        logger.propagate = False
        for handler in list(logger.handlers):
            if handler is not refusals:
                logger.removeHandler(handler)

    from kernel.telemetry import disable_composio_telemetry

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    disable_composio_telemetry()
    kernels: dict[str, NaiveKernel] = {}
    with _ConnectionCounter() as construction:
        kernels["warm0"] = NaiveKernel("warm0", llm_url, composio_url)
    for i in range(1, WARM):
        kernels[f"warm{i}"] = NaiveKernel(f"warm{i}", llm_url, composio_url)
    await asyncio.gather(*[kernel.turn("hello") for kernel in kernels.values()])
    gc.collect()
    base = common.rss()
    started = time.perf_counter()
    numbers = iter(range(users))

    async def worker() -> None:
        for i in numbers:
            user = f"user{i}"
            kernel = kernels.setdefault(user, NaiveKernel(user, llm_url, composio_url))
            await kernel.turn("hello")

    await asyncio.gather(*[worker() for _ in range(16)])
    elapsed = time.perf_counter() - started
    gc.collect()
    return {
        "base": base,
        "after": common.rss(),
        "elapsed": elapsed,
        "construction_connects": construction.count,
        "objects": len(kernels),
        "callback_refusals": refusals.count,
    }


# --- ours ---------------------------------------------------------------------------------------------
async def _pool(users: int, llm_url: str, composio_url: str) -> dict[str, Any]:
    import composio  # noqa: F401 - both heavy libraries loaded up front on both sides
    import litellm  # noqa: F401

    from gateway.runtime import Gateway

    with tempfile.TemporaryDirectory(prefix="bench-naive-") as tmp:
        settings = common.settings_for(
            f"sqlite+aiosqlite:///{tmp}/gateway.db",
            llm_url,
            composio_api_key="bench-composio-key",
            composio_base_url=composio_url,
            composio_toolkits=TOOLKITS,
            composio_auth_configs={"asana": "ac_asana_test", "gmail": "ac_gmail_test"},
            composio_toolkit_versions=VERSIONS,
        )
        console = common.counting_console()
        gateway = Gateway(settings, [console])
        await gateway.start()
        try:
            console.expect(WARM)
            for i in range(WARM):
                await gateway.accept([console.envelope(f"warm{i}", "hello")])
            await asyncio.wait_for(console.reached.wait(), 120)
            await gateway.wait_idle()
            gc.collect()
            base = common.rss()
            started = time.perf_counter()
            numbers = iter(range(users))
            console.expect(console.count + users)

            async def webhook() -> None:
                for i in numbers:
                    await gateway.accept([console.envelope(f"user{i}", "hello")])

            await asyncio.gather(*[webhook() for _ in range(16)])
            await asyncio.wait_for(console.reached.wait(), 3600)
            await gateway.wait_idle()
            elapsed = time.perf_counter() - started
            gc.collect()
            after = common.rss()
            objects = gateway.turns.in_flight
        finally:
            await gateway.stop()
    return {"base": base, "after": after, "elapsed": elapsed, "objects": objects}


def _side(side: str, users: int, llm_url: str, composio_url: str, out: str) -> None:
    common.OfflineGuard.install()
    start = common.rss()
    runner = _naive if side == "naive" else _pool
    result = asyncio.run(runner(users, llm_url, composio_url))
    result.update(start=start, refused=list(common.OfflineGuard.attempts))
    Path(out).write_text(json.dumps(result))


# --- the comparison ------------------------------------------------------------------------------------
def run(full: bool) -> list[Figure]:
    users = 1000 if full else 200
    results: dict[str, dict[str, Any]] = {}
    with common.fakes_process("llm", "composio") as urls, tempfile.TemporaryDirectory() as tmp:
        for side in ("naive", "pool"):
            out = Path(tmp) / f"{side}.json"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.naive_baseline",
                    "--side",
                    side,
                    "--users",
                    str(users),
                    "--llm",
                    urls["llm"],
                    "--composio",
                    urls["composio"],
                    "--out",
                    str(out),
                ],
                cwd=common.ROOT,
                check=True,
            )
            results[side] = json.loads(out.read_text())
    naive, pool = results["naive"], results["pool"]
    naive_per = (naive["after"] - naive["base"]) / users
    pool_per = (pool["after"] - pool["base"]) / users
    refused = naive["refused"] + pool["refused"]
    return [
        fig(
            BENCH,
            f"naive: one kernel per user, RSS at {users:,} users",
            mb(naive["after"]),
            "MB",
            f"ours (shared pool): {mb(pool['after']):.0f} MB -> naive/ours = "
            f"{naive['after'] / pool['after']:.2f}x",
        ),
        fig(
            BENCH,
            "naive: RSS growth per user",
            naive_per / 1024,
            "KiB",
            f"ours: {pool_per / 1024:,.1f} KiB per user -> "
            + (f"{naive_per / pool_per:,.0f}x" if pool_per > 1024 else "ours ~0 (within noise)"),
        ),
        fig(
            BENCH,
            "objects kept after the users left",
            f"naive {naive['objects']:,} kernels",
            compared=f"ours: {pool['objects']} turns in flight (nothing per user); naive: litellm "
            f"refused {naive['callback_refusals']:,} global callbacks (its limit is 100 per process)",
        ),
        fig(
            BENCH,
            "network at Composio()/Router() construction; non-loopback attempts",
            f"{naive['construction_connects']} connects; {len(refused)} refused",
            compared=f"time for {users} users: naive {naive['elapsed']:.1f} s, "
            f"ours {pool['elapsed']:.1f} s",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--side", choices=["naive", "pool"], help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--llm", help=argparse.SUPPRESS)
    parser.add_argument("--composio", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        _side(args.side, args.users, args.llm, args.composio, args.out)
        return
    figures = run(args.full)
    common.emit(figures, args, "Naive baseline versus the pool")


if __name__ == "__main__":
    main()
