"""`gateway outbox ...`: look at dead letters, retry them or drop them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from gateway.cli_common import database, settings_or_exit

app = typer.Typer(help="Outgoing messages: dead letters, retry, drop.", no_args_is_help=True)

T = TypeVar("T")
Seqs = Annotated[
    list[int] | None, typer.Argument(help="Outbox ids; all dead letters when omitted.")
]


def _with_session(work: Callable[[Any], Awaitable[T]]) -> T:
    settings = settings_or_exit()

    async def run() -> T:
        async with database(settings) as sessions, sessions.begin() as session:
            return await work(session)

    return asyncio.run(run())


@app.command("list")
def list_(
    status: str = typer.Option("dead", help="dead, pending, processing, sent, dropped or all."),
    limit: int = typer.Option(50, help="How many, newest first."),
) -> None:
    """List outgoing messages (dead letters by default) with their last error."""
    from gateway import outbox

    rows = _with_session(
        lambda s: outbox.listing(s, status=None if status == "all" else status, limit=limit)
    )
    if not rows:
        typer.echo(f"no {status} messages")
        return
    for row in rows:
        message = row.message()
        typer.echo(
            f"{row.seq:>8}  {row.status:<10} {row.channel:<9} {message.conversation.id:<24} "
            f"attempts={row.attempts}  {row.created_at:%Y-%m-%d %H:%M}  {row.last_error or ''}"
        )


@app.command()
def retry(seqs: Seqs = None) -> None:
    """Send dead letters again, with a fresh set of attempts."""
    from gateway import outbox

    count = _with_session(lambda s: outbox.retry_dead(s, seqs))
    typer.echo(f"{count} dead letter(s) queued again")


@app.command()
def drop(seqs: Seqs = None) -> None:
    """Give up on dead letters for good (they stay listed as dropped)."""
    from gateway import outbox

    count = _with_session(lambda s: outbox.drop_dead(s, seqs))
    typer.echo(f"{count} dead letter(s) dropped")
