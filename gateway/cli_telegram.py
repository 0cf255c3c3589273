"""`gateway telegram ...`: register the webhook and check what Telegram knows of the bot.

Setting the webhook is a one-off against the Bot API, so it is a command rather than
something the server does at each start: the secret token and the allowed update kinds
must match what the adapter checks and parses.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

import typer
from telegram import Bot
from telegram.error import TelegramError

from channels.telegram_parse import ALLOWED_UPDATES
from gateway.settings import Settings, load_settings

app = typer.Typer(help="Telegram bot: webhook registration and status.", no_args_is_help=True)

_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _bot(settings: Settings) -> Bot:
    token = settings.telegram_bot_token.get_secret_value()
    if not token:
        raise typer.BadParameter("TELEGRAM_BOT_TOKEN is not set (get one from @BotFather)")
    api_url = settings.telegram_api_url.rstrip("/")
    return Bot(token, base_url=f"{api_url}/bot", base_file_url=f"{api_url}/file/bot")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("set-webhook")
def set_webhook(
    url: Annotated[
        str | None,
        typer.Argument(
            help="Public HTTPS URL of POST /webhooks/telegram; default: PUBLIC_BASE_URL + that path."
        ),
    ] = None,
    drop_pending: Annotated[
        bool,
        typer.Option(
            "--drop-pending", help="Discard updates Telegram queued while no webhook was set."
        ),
    ] = False,
) -> None:
    """Point Telegram at this gateway, with the secret token and the update kinds it reads."""
    settings = load_settings()
    secret = settings.telegram_webhook_secret.get_secret_value()
    if not _SECRET.match(secret):
        _fail(
            "TELEGRAM_WEBHOOK_SECRET must be set to 1-256 characters of A-Z a-z 0-9 _ - "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if url is None:
        if not settings.public_base_url:
            _fail("give the webhook URL or set PUBLIC_BASE_URL")
        url = settings.public_base_url.rstrip("/") + "/webhooks/telegram"
    bot = _bot(settings)

    async def run() -> None:
        async with bot:
            await bot.set_webhook(
                url,
                secret_token=secret,
                allowed_updates=list(ALLOWED_UPDATES),
                drop_pending_updates=drop_pending,
            )

    try:
        asyncio.run(run())
    except TelegramError as exc:
        _fail(f"Telegram refused: {exc.message}")
    typer.echo(f"Webhook set: {url} (updates: {', '.join(ALLOWED_UPDATES)})")


@app.command("info")
def info() -> None:
    """Show the bot (getMe) and its webhook status (getWebhookInfo)."""
    bot = _bot(load_settings())

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with bot:
            me = await bot.get_me()
            hook = await bot.get_webhook_info()
        return me.to_dict(), hook.to_dict()

    try:
        me, hook = asyncio.run(run())
    except TelegramError as exc:
        _fail(f"Telegram refused: {exc.message}")
        return
    typer.echo(f"Bot: @{me.get('username')} (id {me.get('id')}, {me.get('first_name')})")
    typer.echo(
        f"Reads all group messages: {me.get('can_read_all_group_messages', False)} "
        "(false = privacy mode: only mentions, replies and commands)"
    )
    typer.echo(f"Webhook URL: {hook.get('url') or '(none: polling or not set)'}")
    typer.echo(f"Pending updates: {hook.get('pending_update_count', 0)}")
    if hook.get("allowed_updates"):
        typer.echo(f"Allowed updates: {', '.join(hook['allowed_updates'])}")
    if hook.get("last_error_message"):
        typer.echo(f"Last error: {hook['last_error_message']}")
