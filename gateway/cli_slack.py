"""`gateway slack manifest`: a ready Slack app manifest for this gateway.

Creating a Slack app by hand means ticking a dozen scopes and events and pasting two URLs;
one of them wrong and the bot stays silent with no error anywhere. The manifest says it
all at once: paste it at https://api.slack.com/apps -> Create New App -> From a manifest.
Scopes and events are exactly what `channels/slack.py` uses, nothing more.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gateway.settings import ConfigError, load_settings

app = typer.Typer(help="Slack app: manifest for creating the app.", no_args_is_help=True)

WEBHOOK_PATH = "/webhooks/slack"

BOT_SCOPES = [
    "app_mentions:read",  # app_mention events in channels
    "channels:history",  # message.channels: thread replies in public channels
    "groups:history",  # message.groups: the same in private channels
    "im:history",  # message.im: direct messages
    "mpim:history",  # message.mpim: group DMs
    "chat:write",  # replies, and ephemeral messages
    "im:write",  # conversations.open: connect links go to the user's DM only
    "reactions:write",  # the :eyes: reaction while a turn runs
    "users:read",  # users.info: display names
    "files:read",  # downloading files users share
]
BOT_EVENTS = ["app_mention", "message.im", "message.channels", "message.groups", "message.mpim"]


@app.callback()
def slack() -> None:
    """Slack app helpers (a group, so `manifest` stays a sub-command)."""


def build_manifest(
    name: str, base_url: str, socket_mode: bool, channel_threads: bool = True
) -> dict[str, Any]:
    """The manifest as a dict; `base_url` is ignored in Socket Mode (no public URL needed)."""
    events = BOT_EVENTS if channel_threads else ["app_mention", "message.im"]
    thread_scopes = {"channels:history", "groups:history", "mpim:history"}
    scopes = [s for s in BOT_SCOPES if channel_threads or s not in thread_scopes]
    event_subscriptions: dict[str, Any] = {"bot_events": events}
    interactivity: dict[str, Any] = {"is_enabled": True}
    if not socket_mode:
        url = base_url.rstrip("/") + WEBHOOK_PATH
        event_subscriptions["request_url"] = url
        interactivity["request_url"] = url
    return {
        "display_information": {
            "name": name,
            "description": "An AI assistant that can use your own connected tools.",
        },
        "features": {
            "app_home": {
                "home_tab_enabled": False,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": name, "always_online": True},
        },
        "oauth_config": {"scopes": {"bot": scopes}},
        "settings": {
            "event_subscriptions": event_subscriptions,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": False,
        },
    }


@app.command("manifest")
def manifest(
    name: Annotated[str, typer.Option(help="App and bot display name.")] = "AI Gateway",
    fmt: Annotated[str, typer.Option("--format", help="json or yaml.")] = "yaml",
    channel_threads: Annotated[
        bool,
        typer.Option(
            "--channel-threads/--mentions-only",
            help="Also follow threads in channels without a new @mention "
            "(subscribes to channel messages; the gateway stores them, answers only its threads).",
        ),
    ] = True,
) -> None:
    """Print a Slack app manifest for PUBLIC_BASE_URL (or Socket Mode when SLACK_MODE=socket)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    socket_mode = settings.slack_mode == "socket"
    base_url = settings.public_base_url
    if not socket_mode and not base_url.startswith("https://"):
        typer.secho(
            "PUBLIC_BASE_URL must be the gateway's public https:// URL for the Events API "
            "(or set SLACK_MODE=socket to run without one).",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    data = build_manifest(name, base_url, socket_mode, channel_threads)
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        import yaml  # installed with litellm; only this command needs it

        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        raise typer.BadParameter("--format must be json or yaml")
    typer.secho(
        "\nPaste this at https://api.slack.com/apps -> Create New App -> From a manifest, "
        "install it, then set SLACK_BOT_TOKEN (xoxb-...) and "
        + (
            "SLACK_APP_TOKEN (xapp-..., scope connections:write)."
            if socket_mode
            else "SLACK_SIGNING_SECRET."
        ),
        err=True,
    )
