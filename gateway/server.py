"""Serve the gateway over HTTP with uvicorn, and drain it on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from gateway.process_lock import AlreadyRunning
from gateway.registry import build_channels, report_configuration
from gateway.runtime import Gateway
from gateway.settings import Settings


class DrainingServer(uvicorn.Server):
    """Uvicorn re-raises SIGTERM after it stops serving, which would kill the process
    before in-flight turns finish; forgetting it lets `serve` drain and exit cleanly."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


async def serve(settings: Settings, host: str, port: int) -> int:
    """Start the gateway, then serve HTTP; on SIGTERM stop accepting, then drain."""
    log = logging.getLogger("gateway")
    channels, disabled = build_channels(settings)
    for line in report_configuration(settings, disabled):
        log.warning(line)
    gateway = Gateway(settings, channels)
    try:
        await gateway.start()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 3
    except Exception as exc:
        log.error("the gateway could not start: %s", exc)
        await gateway.stop()
        return 1
    log.info("channels enabled: %s", ", ".join(sorted(gateway.channels)))
    config = uvicorn.Config(
        gateway.app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds) + 1,
    )
    try:
        await DrainingServer(config).serve()
    finally:
        log.info(
            "draining: finishing in-flight turns (up to %ss)", settings.shutdown_timeout_seconds
        )
        await gateway.stop()
    return 0
