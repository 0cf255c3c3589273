"""Serve the test fakes (LLM, Composio) in a process of their own, for benchmarks.

`python -m bench._fakes llm composio --delay 1.0` prints one `<kind> <url>` line per fake
and serves until its stdin closes. The fake LLM keeps only its last 100 requests (the
test version keeps all, which would grow without bound over 100,000 turns) and answers
`GET /_stats` with its request count and the most requests it had in flight at once.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from bench import common  # noqa: F401 - puts the checkout on sys.path
from tests.fakes.llm import FakeLLM
from tests.fakes.server import FakeServer


class BenchLLM(FakeLLM):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.requests = deque(maxlen=100)  # type: ignore[assignment]
        self.count = 0

    async def _chat(self, request: Request) -> Response:
        self.count += 1
        return await super()._chat(request)

    async def stats(self, request: Request) -> Response:
        return JSONResponse({"requests": self.count, "max_in_flight": self.max_in_flight})


def build(kind: str, delay: float) -> Any:
    if kind == "llm":
        fake = BenchLLM(delay)
        return Starlette(routes=[Route("/_stats", fake.stats), Mount("/", app=fake.app)])
    if kind == "composio":
        from tests.fakes.composio_api import FakeComposio

        return FakeComposio().app
    raise SystemExit(f"unknown fake {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kinds", nargs="+")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    servers = [FakeServer(build(kind, args.delay)).start() for kind in args.kinds]
    for kind, server in zip(args.kinds, servers, strict=True):
        print(kind, server.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        sys.stdin.read()
    for server in servers:
        server.stop()


if __name__ == "__main__":
    main()
