"""The HTTP face of the gateway: webhooks, health and readiness."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from channels.base import Channel, MalformedPayload, VerificationFailed
from gateway import migrate
from gateway.admin import admin_routes
from gateway.runtime import Gateway
from gateway.shedding import Overloaded, WebhookLimiter

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 1024 * 1024
READYZ_DB_SECONDS = 2.0
READYZ_BUSY_GRACE = 30.0


def create_app(gateway: Gateway) -> Starlette:
    """The routes of a gateway whose life (start/stop) its owner manages: `gateway.server`
    for `gateway run`, the tests' fixtures otherwise."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    last_answer = 0.0  # when the database last answered a readiness check

    async def readyz(request: Request) -> Response:
        nonlocal last_answer
        if gateway.engine is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            async with asyncio.timeout(READYZ_DB_SECONDS):
                at_head = await migrate.at_head(gateway.engine)
            last_answer = time.monotonic()
        except TimeoutError:
            # Busy, not down: under a burst every connection (SQLite has one) is at work.
            # A database that answered recently is taken as up rather than pulling this
            # replica out of the load balancer when it is needed most.
            if time.monotonic() - last_answer > READYZ_BUSY_GRACE:
                log.warning("readiness: database did not answer in %ss", READYZ_DB_SECONDS)
                return JSONResponse({"status": "database not answering"}, status_code=503)
            at_head = True
        except Exception as exc:
            log.warning("readiness: database unreachable: %s", exc)
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        if not at_head:
            return JSONResponse({"status": "schema not at head"}, status_code=503)
        health = gateway.llm_health
        if health.ok is False and gateway.settings.readyz_requires_llm:
            return JSONResponse({"status": "llm unavailable", "llm": health.status}, 503)
        return JSONResponse({"status": "ready", "llm": health.status})

    limiter = WebhookLimiter(
        gateway.settings.webhook_max_in_flight, gateway.metrics.webhooks_in_flight
    )

    async def webhook(request: Request) -> Response:
        name = request.path_params["channel"]
        channel = gateway.channels.get(name)
        if channel is None:
            return PlainTextResponse("unknown channel", status_code=404)
        try:
            with limiter.admit():
                return await receive(request, name, channel)
        except Overloaded:
            gateway.metrics.shed.labels(name).inc()
            return PlainTextResponse(
                "overloaded, retry later", status_code=503, headers={"Retry-After": "1"}
            )

    async def receive(request: Request, name: str, channel: Channel) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_WEBHOOK_BYTES:
            log.warning("%s webhook rejected: body of %s bytes is too large", name, length)
            return PlainTextResponse("payload too large", status_code=413)
        started = time.perf_counter()
        try:
            received = await channel.receive(request)
        except VerificationFailed as exc:
            gateway.metrics.rejected.labels(name, "verification").inc()
            log.warning("%s webhook rejected: %s", name, exc)
            return PlainTextResponse("forbidden", status_code=exc.status_code)
        except MalformedPayload as exc:
            gateway.metrics.rejected.labels(name, "malformed").inc()
            log.warning("%s webhook malformed: %s", name, exc)
            return PlainTextResponse(f"bad request: {exc}", status_code=400)
        except Exception:
            gateway.metrics.rejected.labels(name, "unparsable").inc()
            log.exception("%s webhook could not be parsed", name)
            return PlainTextResponse("bad request", status_code=400)
        try:
            accepted = await gateway.accept(received.envelopes)
        except Exception:
            # Not stored: a 503 makes the platform retry instead of losing the message.
            log.exception("%s webhook could not be stored", name)
            return PlainTextResponse("temporarily unavailable", status_code=503)
        elapsed = time.perf_counter() - started
        gateway.metrics.ack_seconds.labels(name).observe(elapsed)
        log.info(
            "%s webhook: %d stored, %d duplicate, %d status in %.1f ms (%s)",
            name,
            accepted.stored,
            accepted.duplicates,
            accepted.statuses,
            elapsed * 1000,
            ", ".join(e.id for e in received.envelopes) or "no envelopes",
        )
        return received.response or PlainTextResponse("ok")

    async def metrics(request: Request) -> Response:
        if gateway.engine is not None:
            try:
                async with asyncio.timeout(1):  # a busy database must not stall the scrape
                    await gateway.observe_inbox()
            except Exception as exc:
                log.warning("metrics: inbox gauges unavailable: %s", exc)
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/webhooks/{channel}", webhook, methods=["GET", "POST"]),
            *admin_routes(gateway),
        ],
    )
