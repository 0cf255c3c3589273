"""Load shedding on the webhook path: past a bound, a fast 503 instead of a late 200.

Platforms time out an unanswered webhook (Slack after 3 s) and retry it either way; a
request queued behind hundreds of others is answered too late to count, and makes every
request behind it late too. Refusing at once keeps the accepted ones fast and tells the
platform to come back, which all three do for a 5xx. Nothing is stored for a refused
request, so nothing accepted is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Too many webhook requests in flight; answer 503 without reading the body."""


class WebhookLimiter:
    def __init__(self, max_in_flight: int, gauge: Gauge) -> None:
        self.max_in_flight = max_in_flight  # 0: no limit
        self.in_flight = 0
        self._gauge = gauge
        self._shedding = False

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight, or raise `Overloaded` when the bound is reached."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            if not self._shedding:
                self._shedding = True
                log.warning(
                    "overloaded: %d webhook requests in flight; answering 503 until it drains",
                    self.in_flight,
                )
            raise Overloaded
        if self._shedding and self.in_flight < self.max_in_flight // 2:
            self._shedding = False
            log.warning("no longer overloaded: accepting webhooks again")
        self.in_flight += 1
        self._gauge.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._gauge.set(self.in_flight)
