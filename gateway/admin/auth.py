"""Who may use the admin surface: the ADMIN_TOKEN, compared in constant time, with failed
attempts limited per client address.

The failure window lives in memory and is bounded (least recently seen clients are
dropped first), so a flood of addresses cannot grow it without limit. While a client is
over the limit even the right token is refused, so guessing cannot continue at full
speed however it is spread over time.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_FAILURES = 10
WINDOW_SECONDS = 600.0
MAX_CLIENTS = 4096


class FailureLimiter:
    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until this client may try again, or None if it may try now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if times is None or len(times) < self._max:
            return None
        return max(0.0, times[0] + self._window - now)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now) or deque(maxlen=self._max)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    @property
    def clients(self) -> int:
        return len(self._failures)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class AdminAuth:
    def __init__(self, token: str, limiter: FailureLimiter | None = None) -> None:
        if not token:
            raise ValueError("the admin surface needs ADMIN_TOKEN")
        self._token = token.encode()
        self.limiter = limiter or FailureLimiter()

    def token_matches(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.encode(), self._token)

    def check(self, request: Request, supplied: str) -> Response | None:
        """None when `supplied` is the token; else the 401/429 response to give."""
        client = client_address(request)
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return too_many(wait)
        if supplied and self.token_matches(supplied):
            return None
        self.limiter.failed(client)
        return JSONResponse(
            {"error": "missing or wrong admin token"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="admin"'},
        )

    def bearer(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        supplied = value.strip() if scheme.lower() == "bearer" else ""
        return self.check(request, supplied)


def too_many(wait: float) -> Response:
    return JSONResponse(
        {"error": "too many failed attempts; try again later"},
        status_code=429,
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
