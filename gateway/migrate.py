"""Bring the schema to the newest Alembic revision, and tell whether it is there."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# Beside this package both in a checkout and in an installed wheel. (Not `import
# migrations`: other distributions ship a top-level "migrations" folder too.)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


# Replicas starting together must not migrate at the same time: the first takes this
# transaction-scoped advisory lock, the others wait and then find the schema at head.
_MIGRATION_LOCK = 0x6761_7465_7761_79  # "gateway"


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
            )
        await connection.run_sync(lambda sync: command.upgrade(_config(sync), "head"))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def at_head(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head_revision()
