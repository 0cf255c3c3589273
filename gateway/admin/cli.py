"""Admin commands for the `gateway` CLI: users show|forget|export, link, unlink, audit.

Registered on the main app by gateway/cli.py (`register(app, users_app)`). Every change
goes through gateway/linking.py like the API and console do, and is audited with actor
"admin" via "cli". Heavy imports stay inside the commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from gateway.cli_common import database, settings_or_exit

T = TypeVar("T")


def _run(work: Callable[[Any, Any], Awaitable[T]], *, tools: bool = False) -> T:
    """Open the database (migrated), build the linker, run `work(sessions, linking)`."""
    from gateway.linking import Linking
    from gateway.registry import build_tools

    settings = settings_or_exit()

    async def run() -> T:
        composio = build_tools(settings) if tools else None
        try:
            async with database(settings) as sessions:
                return await work(sessions, Linking(sessions, {}, composio))
        finally:
            aclose = getattr(composio, "aclose", None)
            if aclose is not None:
                await aclose()

    return asyncio.run(run())


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


async def _user_id(sessions: Any, ref: str) -> str:
    from identity.admin import find_user_ref

    async with sessions() as session:
        user = await find_user_ref(session, ref)
    if user is None:
        raise _fail(
            f"no user matches {ref!r} (give a user id, an identity number or channel:user id)"
        )
    return user.id


async def _guard(work: Awaitable[T]) -> T:
    """A refused change is a readable error, not a traceback."""
    from identity.linking import LinkError

    try:
        return await work
    except LinkError as exc:
        raise _fail(f"refused: {exc}") from None


def show(
    user: str = typer.Argument(..., help="User id, identity number or channel:user id."),
    unmask: bool = typer.Option(False, "--unmask", help="Show phone numbers unmasked."),
) -> None:
    """A user's identities, tool connections, message counts and recent activity."""
    from gateway.admin import queries

    async def work(sessions: Any, linking: Any) -> Any:
        user_id = await _user_id(sessions, user)
        async with sessions() as session:
            found = await queries.detail(session, user_id)
        assert found is not None
        await queries.add_connections(found, linking.tools)
        return found.as_json(unmask=unmask)

    data = _run(work, tools=True)
    typer.echo(f"{data['display_name'] or 'Unnamed user'}  {data['id']}")
    typer.echo(f"  entity       {data['entity_id']}")
    typer.echo(f"  first seen   {data['first_seen'] or '-'}")
    typer.echo(f"  last seen    {data['last_seen'] or '-'}")
    counts = data["messages"]
    typer.echo(
        f"  messages     {counts['received']} received, {counts['sent']} sent, "
        f"{counts['history']} in memory"
    )
    typer.echo("  identities")
    for i in data["identities"]:
        name = i["display_name"] or i["username"] or "-"
        phone = f"  phone {i['phone']}" if i["phone"] else ""
        typer.echo(
            f"    #{i['id']:<6} {i['channel']}:{i['account']}:{i['channel_user_id']}  {name}{phone}"
        )
    if data["connections"] is None:
        typer.echo("  connections  (tools not configured)")
    elif data["connections_error"]:
        typer.echo(f"  connections  unavailable: {data['connections_error']}")
    else:
        kits = ", ".join(c["toolkit"] for c in data["connections"]) or "none"
        typer.echo(f"  connections  {kits}")
    for merged in data["merged_from"]:
        typer.echo(f"  merged from  {merged['id']} (retired entity {merged['entity_id']})")


def forget(
    user: str = typer.Argument(..., help="User id, identity number or channel:user id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a user's identities, history and stored messages; retire their entity."""

    async def resolve(sessions: Any, linking: Any) -> str:
        return await _user_id(sessions, user)

    user_id = _run(resolve)
    if not yes:
        typer.confirm(
            f"Forget user {user_id}? Their identities, history and messages are deleted.",
            abort=True,
        )

    async def work(sessions: Any, linking: Any) -> Any:
        return await _guard(linking.forget(user_id, via="cli"))

    result = _run(work, tools=True)
    deleted = ", ".join(f"{v} {k}" for k, v in result.deleted.items())
    typer.echo(f"forgot {user_id}: deleted {deleted}; entity {result.retired_entity_id} retired")
    if result.connections_left:
        typer.echo(
            "still connected at Composio under the retired entity (revoke them there): "
            + ", ".join(result.connections_left)
        )


def export(
    user: str = typer.Argument(..., help="User id, identity number or channel:user id."),
    output: str = typer.Option("", "--output", "-o", help="File to write; default stdout."),
) -> None:
    """Everything stored about a user, as JSON."""

    async def work(sessions: Any, linking: Any) -> Any:
        return await _guard(linking.export(await _user_id(sessions, user), via="cli"))

    text = json.dumps(_run(work), indent=2, ensure_ascii=False)
    if not output:
        sys.stdout.write(text + "\n")
    else:
        Path(output).write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {output}")


def link(
    identity: str = typer.Argument(
        ..., help="Identity number or channel:user id (or channel:account:user id)."
    ),
    user: str = typer.Argument(
        ..., help="The user it joins: user id, identity number or channel:user id."
    ),
) -> None:
    """Link IDENTITY to USER: the identity's user (all its identities, history and queued
    messages) joins USER, which keeps its entity."""
    from identity.admin import find_identity_ref

    async def work(sessions: Any, linking: Any) -> Any:
        async with sessions() as session:
            found = await find_identity_ref(session, identity)
        if found is None:
            raise _fail(f"no identity matches {identity!r}")
        target = await _user_id(sessions, user)
        return await _guard(linking.link_identity(found.id, target, via="cli"))

    result = _run(work, tools=True)
    typer.echo(
        f"linked: user {result.retired_user_id} joined {result.user_id} "
        f"(entity {result.entity_id} kept, {result.retired_entity_id} retired)"
    )
    if result.reconnect:
        typer.echo(
            "connected only on the retired entity; the user must connect them again: "
            + ", ".join(result.reconnect)
        )


def unlink(
    identity: str = typer.Argument(..., help="Identity number or channel:user id."),
) -> None:
    """Unlink an identity: it becomes a fresh user with a fresh entity."""
    from identity.admin import find_identity_ref

    async def work(sessions: Any, linking: Any) -> Any:
        async with sessions() as session:
            found = await find_identity_ref(session, identity)
        if found is None:
            raise _fail(f"no identity matches {identity!r}")
        return await _guard(linking.unlink_identity(found.id, via="cli"))

    result = _run(work)
    typer.echo(
        f"unlinked #{result.identity_id} ({result.channel}) from {result.user_id}: "
        f"now user {result.new_user_id} with entity {result.new_entity_id}"
    )


def audit_log(
    limit: int = typer.Option(50, help="How many, newest first."),
    offset: int = typer.Option(0, help="Skip this many."),
    user: str = typer.Option("", "--user", help="Only entries about this user id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines with before/after."),
) -> None:
    """The audit log of links, unlinks, merges, forgets and exports."""
    from identity import audit

    async def work(sessions: Any, linking: Any) -> Any:
        async with sessions() as session:
            return await audit.page(session, limit=limit, offset=offset, user_id=user or None)

    entries, total = _run(work)
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.as_json(), sort_keys=True))
        return
    if not entries:
        typer.echo("no audit entries")
        return
    for e in entries:
        typer.echo(
            f"{e.id:>6}  {e.at:%Y-%m-%d %H:%M:%S}  {e.action:<7} {e.actor} via {e.via:<8} "
            f"user {e.user_id or '-'}  other {e.other_user_id or '-'}"
        )
    typer.echo(f"{len(entries)} of {total}")


def register(app: typer.Typer, users_app: typer.Typer) -> None:
    users_app.command("show")(show)
    users_app.command("forget")(forget)
    users_app.command("export")(export)
    app.command("link")(link)
    app.command("unlink")(unlink)
    app.command("audit")(audit_log)
