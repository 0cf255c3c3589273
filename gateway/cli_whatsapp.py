"""`gateway whatsapp ...`: check the WhatsApp Cloud API configuration against the Graph API.

`check` asks the Graph API for the configured phone number with the configured token, so
a wrong token, an expired one or a phone number id from another app shows up here with
Meta's own error instead of as silent failed replies later. It also prints what to
register in the Meta app dashboard (callback URL and verify token setting).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import typer

from channels.base import ChannelError
from gateway.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from channels.whatsapp import WhatsAppChannel

app = typer.Typer(help="WhatsApp Cloud API: configuration check.", no_args_is_help=True)


@app.callback()
def whatsapp() -> None:
    """WhatsApp Cloud API: configuration check (a group, so `check` stays a sub-command)."""


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _channel(settings: Settings) -> WhatsAppChannel:
    from gateway.registry import build_whatsapp  # pywa costs ~1 s: only for this command

    return build_whatsapp(settings)  # type: ignore[return-value]


@app.command("check")
def check() -> None:
    """Verify WHATSAPP_TOKEN and WHATSAPP_PHONE_NUMBER_ID against the Graph API."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), 2)
        return
    missing = [
        name.upper()
        for name, value in (
            ("whatsapp_phone_number_id", settings.whatsapp_phone_number_id),
            ("whatsapp_token", settings.whatsapp_token.get_secret_value()),
        )
        if not value
    ]
    if missing:
        _fail(f"set {', '.join(missing)} first (Meta app dashboard > WhatsApp > API Setup)", 2)
    channel = _channel(settings)

    async def run() -> dict[str, Any]:
        try:
            return await channel.check()
        finally:
            await channel.stop()

    try:
        info = asyncio.run(run())
    except ChannelError as exc:
        _fail(f"WhatsApp check failed: {exc}")
        return
    typer.echo(
        f"Phone number {settings.whatsapp_phone_number_id}: {info.get('display_phone_number', '?')} "
        f"({info.get('verified_name', 'no verified name')}), "
        f"quality {info.get('quality_rating', '?')}, via {channel.base_url}"
    )
    problems = []
    if not settings.whatsapp_app_secret.get_secret_value():
        problems.append("WHATSAPP_APP_SECRET is not set: every webhook POST will be refused.")
    if not settings.whatsapp_verify_token.get_secret_value():
        problems.append("WHATSAPP_VERIFY_TOKEN is not set: Meta cannot verify the callback URL.")
    base = settings.public_base_url.rstrip("/")
    typer.echo(
        f"Callback URL to register: {base + '/webhooks/whatsapp' if base else '<PUBLIC_BASE_URL>/webhooks/whatsapp'}"
        " (subscribe to the 'messages' field)"
    )
    for problem in problems:
        typer.secho(problem, fg=typer.colors.YELLOW, err=True)
    if problems:
        raise typer.Exit(1)
