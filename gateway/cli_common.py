"""What every `gateway` sub-command needs: settings (or one clear error) and the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.process_lock import sqlite_path
from gateway.settings import ConfigError, Settings, load_settings


def settings_or_exit() -> Settings:
    """The settings, or exit 2 with the list of invalid ones (never a traceback)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    path = sqlite_path(settings.database_url) if settings.is_sqlite else None
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return settings


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the configured database, its schema brought to the newest revision."""
    from gateway import migrate
    from identity.db import create_engine, session_factory

    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        yield session_factory(engine)
    finally:
        await engine.dispose()
