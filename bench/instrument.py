"""Timing hooks for benchmarks only: how long each turn took, minus its LLM calls.

`LLM.complete` and `TurnRunner.__call__` are wrapped at class level for the duration of a
benchmark. A context variable carries the current turn's list of LLM durations: each
turn runs in its own task, so concurrent turns never mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_current_llm: ContextVar[list[float] | None] = ContextVar("bench_turn_llm", default=None)


@dataclass
class TurnTimes:
    own: list[float] = field(default_factory=list)
    """Per turn: the turn handler's wall time minus the LLM calls made inside it."""
    llm: list[float] = field(default_factory=list)
    """Every LLM call (litellm round trip to the fake), turn or not."""

    def clear(self) -> None:
        self.own.clear()
        self.llm.clear()


@contextmanager
def timed_turns() -> Iterator[TurnTimes]:
    from gateway.turns import TurnRunner
    from kernel.llm import LLM

    times = TurnTimes()
    original_complete = LLM.complete
    original_call = TurnRunner.__call__

    async def complete(self: LLM, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original_complete(self, *args, **kwargs)
        finally:
            took = time.perf_counter() - started
            times.llm.append(took)
            bucket = _current_llm.get()
            if bucket is not None:
                bucket.append(took)

    async def call(self: TurnRunner, item: Any) -> None:
        bucket: list[float] = []
        token = _current_llm.set(bucket)
        started = time.perf_counter()
        try:
            await original_call(self, item)
        finally:
            times.own.append(time.perf_counter() - started - sum(bucket))
            _current_llm.reset(token)

    LLM.complete = complete  # type: ignore[method-assign]
    TurnRunner.__call__ = call  # type: ignore[method-assign]
    try:
        yield times
    finally:
        LLM.complete = original_complete  # type: ignore[method-assign]
        TurnRunner.__call__ = original_call  # type: ignore[method-assign]
