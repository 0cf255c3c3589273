"""Which channels run: one entry per platform, enabled when its credentials are set.

Adapters are imported only when enabled, so a deployment without Slack never imports
slack_bolt. Adding a platform is one `ChannelSpec` line here and its module in channels/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from channels.base import Channel
from channels.console import ConsoleChannel
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    required: tuple[str, ...]  # settings that must be non-empty
    build: Callable[[Settings], Channel]

    def missing(self, settings: Settings) -> list[str]:
        missing = []
        for field in self.required:
            value = getattr(settings, field)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if not value:
                missing.append(field.upper())
        return missing


SPECS: list[ChannelSpec] = []


def build_channels(settings: Settings) -> tuple[list[Channel], dict[str, list[str]]]:
    """The enabled channels, and for each disabled one the settings it is missing."""
    channels: list[Channel] = [ConsoleChannel(token=settings.console_token.get_secret_value())]
    disabled: dict[str, list[str]] = {}
    for spec in SPECS:
        missing = spec.missing(settings)
        if missing:
            disabled[spec.name] = missing
        else:
            channels.append(spec.build(settings))
    return channels, disabled
