"""Run an ASGI app on 127.0.0.1 with an ephemeral port, in a background thread.

A thread (not the test's event loop) so that synchronous clients such as Composio's
can call the fake too, and so a blocked test loop never stalls the fake.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


class FakeServer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Keep idle connections open longer than clients do, as real APIs do; otherwise a
        # client may reuse a connection the fake is just closing ("connection error").
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=75
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"fake-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> FakeServer:
        self._thread.start()
        started = threading.Event()

        def _wait() -> None:
            while not self._server.started and self._thread.is_alive():
                threading.Event().wait(0.005)
            started.set()

        _wait()
        if not self._server.started:
            raise RuntimeError("fake server failed to start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextmanager
def serve(app: ASGIApp) -> Iterator[FakeServer]:
    server = FakeServer(app).start()
    try:
        yield server
    finally:
        server.stop()
