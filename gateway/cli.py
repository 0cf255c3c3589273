"""The `gateway` command. Heavy imports stay inside the commands that need them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import typer

from gateway.admin.cli import register as register_admin_commands
from gateway.cli_common import database, settings_or_exit
from gateway.cli_doctor import doctor
from gateway.cli_outbox import app as outbox_app
from gateway.cli_slack import app as slack_app
from gateway.cli_telegram import app as telegram_app
from gateway.cli_whatsapp import app as whatsapp_app
from gateway.settings import Settings

app = typer.Typer(help="Multi-channel AI gateway.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Unified users.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(whatsapp_app, name="whatsapp", help="WhatsApp Cloud API.")
app.add_typer(telegram_app, name="telegram", help="Telegram bot.")
app.add_typer(outbox_app, name="outbox", help="Outgoing messages: dead letters, retry, drop.")
app.add_typer(slack_app, name="slack", help="Slack app.")
app.command()(doctor)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@app.command()
def run(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Run the gateway (webhooks, processing, delivery)."""
    from gateway.logs import configure_logging

    settings = settings_or_exit()
    configure_logging(
        settings.log_level,
        unmasked=settings.log_unmasked,
        json_lines=settings.log_format == "json",
    )
    from gateway.server import serve

    raise typer.Exit(_run(serve(settings, host, port)))


@app.command()
def chat(user: str = typer.Option(..., "--user", help="Talk as this console user.")) -> None:
    """Talk to the assistant from the terminal, through the same pipeline."""
    _run(_chat(settings_or_exit(), user))


async def _chat(settings: Settings, user: str) -> None:
    from channels.console import ConsoleChannel
    from gateway.logs import configure_logging
    from gateway.registry import report_configuration
    from gateway.runtime import Gateway

    configure_logging("warning")
    console = ConsoleChannel()
    gateway = Gateway(settings, [console])
    for line in report_configuration(settings, {}):
        typer.secho(line, fg="yellow", err=True)
    await gateway.start()
    unsubscribe = console.subscribe(
        lambda m: (
            typer.secho(f"assistant> {m.text}", fg="cyan")
            if m.conversation.id == f"dm:{user}" or m.private_to == user
            else None
        )
    )
    typer.echo(f"Talking as {user!r}. /help lists commands; Ctrl-D quits.")
    try:
        while True:
            try:
                text = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if not text.strip():
                continue
            await gateway.accept([console.envelope(user, text)])
            await gateway.wait_idle(within=settings.llm_timeout_seconds * settings.llm_max_steps)
    finally:
        unsubscribe()
        await gateway.stop()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest revision."""

    async def upgrade() -> str | None:
        from gateway import migrate
        from identity.db import create_engine

        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    settings = settings_or_exit()
    revision = _run(upgrade())
    typer.echo(f"database at revision {revision}")


@users_app.command("list")
def users_list(
    query: str = typer.Option("", "--search", "-s", help="Name, username or channel id."),
    limit: int = typer.Option(50, help="How many."),
    offset: int = typer.Option(0, help="Skip this many."),
) -> None:
    """List unified users and their channel identities."""

    async def listing() -> list[Any]:
        from identity.service import IdentityService

        async with database(settings) as sessions:
            service = IdentityService(sessions)
            return await service.list_users(query=query or None, limit=limit, offset=offset)

    settings = settings_or_exit()
    rows = _run(listing())
    if not rows:
        typer.echo("no users")
        return
    for user, identities in rows:
        names = ", ".join(
            f"{i.channel}:{i.username or i.display_name or i.channel_user_id}" for i in identities
        )
        typer.echo(f"{user.id}  {user.display_name or '-':<24} {names}")


register_admin_commands(app, users_app)  # users show|forget|export, link, unlink, audit


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
