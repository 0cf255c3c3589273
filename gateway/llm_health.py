"""Whether the model provider can be reached, probed in the background for /readyz.

Readiness must not call the provider per request (probes come every few seconds from
every load balancer), so one task probes every `interval` seconds and /readyz reads the
last answer. The probe starts after the LLM client's warm-up, off the ack path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from kernel.llm import LLM

log = logging.getLogger(__name__)


class LLMHealth:
    def __init__(self, llm: LLM | None, *, interval: float = 30.0, timeout: float = 5.0) -> None:
        self._llm = llm
        self._interval = interval
        self._timeout = timeout
        self.ok: bool | None = None if llm is not None else True
        self.status = "checking" if llm is not None else "not configured"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._llm is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="llm-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._llm is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            while True:
                try:
                    ok, status = await self._llm.probe(client)
                except Exception as exc:  # a probe must never end the loop
                    ok, status = False, f"probe failed: {type(exc).__name__}"
                if ok != self.ok:
                    (log.info if ok else log.warning)("LLM %s", status)
                self.ok, self.status = ok, status
                await asyncio.sleep(self._interval)
