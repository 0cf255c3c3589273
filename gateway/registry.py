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
from kernel.turn import Tools

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    required: Callable[[Settings], tuple[str, ...]]  # settings that must be non-empty
    build: Callable[[Settings], Channel]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name.title())

    def missing(self, settings: Settings) -> list[str]:
        missing = []
        for field in self.required(settings):
            value = getattr(settings, field)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if not value:
                missing.append(field.upper())
        return missing


def build_tools(settings: Settings) -> Tools | None:
    """Per-user Composio tools, when configured (composio itself is imported on first use)."""
    if not settings.composio_configured:
        return None
    from kernel.tools import ComposioTools

    return ComposioTools(
        api_key=settings.composio_api_key.get_secret_value(),
        base_url=settings.composio_base_url,
        toolkits=settings.composio_toolkits,
        auth_configs=settings.composio_auth_configs,
        toolkit_versions=settings.composio_toolkit_versions,
        telemetry=settings.composio_telemetry,
    )


def build_whatsapp(settings: Settings) -> Channel:
    from channels.whatsapp import WhatsAppChannel

    return WhatsAppChannel(
        phone_number_id=settings.whatsapp_phone_number_id,
        token=settings.whatsapp_token.get_secret_value(),
        app_secret=settings.whatsapp_app_secret.get_secret_value(),
        verify_token=settings.whatsapp_verify_token.get_secret_value(),
        graph_url=settings.whatsapp_graph_url,
        graph_version=settings.whatsapp_graph_version,
        media_max_bytes=settings.whatsapp_media_max_bytes,
    )


def _telegram(settings: Settings) -> Channel:
    from channels.telegram import TelegramChannel

    return TelegramChannel(
        settings.telegram_bot_token.get_secret_value(),
        settings.telegram_webhook_secret.get_secret_value(),
        settings.telegram_mode,
        settings.telegram_api_url,
        commands=TELEGRAM_COMMANDS,
    )


TELEGRAM_COMMANDS = [
    ("help", "What I can do"),
    ("connect", "Connect an app, e.g. /connect asana"),
    ("connections", "Your connected apps"),
    ("whoami", "Who I know you as"),
    ("link", "Link another chat account"),
    ("unlink", "Unlink a chat account"),
    ("reset", "Forget this conversation"),
]


def _slack(settings: Settings) -> Channel:
    from channels.slack import SlackChannel

    return SlackChannel(
        bot_token=settings.slack_bot_token.get_secret_value(),
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        app_token=settings.slack_app_token.get_secret_value(),
        mode=settings.slack_mode,
        api_url=settings.slack_api_url,
    )


SPECS: list[ChannelSpec] = [
    ChannelSpec(
        "whatsapp",
        lambda s: (
            "whatsapp_phone_number_id",
            "whatsapp_token",
            "whatsapp_app_secret",
            "whatsapp_verify_token",
        ),
        build_whatsapp,
        "WhatsApp",
    ),
    ChannelSpec(
        "telegram",
        lambda s: (
            "telegram_bot_token",
            *(("telegram_webhook_secret",) if s.telegram_mode == "webhook" else ()),
        ),
        _telegram,
    ),
    ChannelSpec(
        "slack",
        lambda s: (
            "slack_bot_token",
            "slack_app_token" if s.slack_mode == "socket" else "slack_signing_secret",
        ),
        _slack,
    ),
]


def build_channels(settings: Settings) -> tuple[list[Channel], dict[str, list[str]]]:
    """The enabled channels, and for each disabled one the settings it is missing."""
    channels: list[Channel] = [ConsoleChannel(token=settings.console_token.get_secret_value())]
    disabled: dict[str, list[str]] = {}
    for spec in SPECS:
        missing = spec.missing(settings)
        if missing:
            disabled[spec.label] = missing
        else:
            channels.append(spec.build(settings))
    return channels, disabled


def report_configuration(settings: Settings, disabled: dict[str, list[str]]) -> list[str]:
    """One line per thing that is off and what turns it on."""
    lines = []
    if not settings.llm_configured:
        lines.append(
            "LLM: not configured - set LLM_MODEL (and LLM_API_KEY / LLM_API_BASE); "
            "until then users get a 'not configured' reply."
        )
    if not settings.composio_configured:
        lines.append("Tools (Composio): disabled - set COMPOSIO_API_KEY and COMPOSIO_TOOLKITS.")
    for name, missing in disabled.items():
        lines.append(f"{name}: disabled - set {', '.join(missing)}.")
    return lines
