"""Link codes, merges, unlinks and forgetting at the identity layer, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway import migrate
from gateway.admin.sessions import AdminSession
from identity import audit
from identity import linking as links
from identity.db import Base, create_engine, session_factory, utcnow
from identity.linking import LinkAttempt, LinkCode, LinkError
from identity.models import Identity, User
from identity.service import IdentityService, Profile

OUR_TABLES = {"link_codes", "link_attempts", "audit_log", "admin_sessions", "users"}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


async def person(
    sessions: async_sessionmaker[AsyncSession], channel: str, uid: str
) -> tuple[str, int]:
    """(user id, identity id) of a channel identity, created on first sight."""
    user = await IdentityService(sessions).resolve(channel, "acct", uid, Profile(display_name=uid))
    async with sessions() as session:
        identity = await links.find_identity(session, channel, "acct", uid)
    assert identity is not None
    return user.id, identity.id


# --- codes -------------------------------------------------------------------------------


def test_codes_use_an_unambiguous_alphabet_and_tolerate_typing() -> None:
    assert not set("01ILOU") & set(links.ALPHABET)
    codes = {links.new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 8 and set(c) <= set(links.ALPHABET) for c in codes)
    code = "ABCD2345"
    assert links.format_code(code) == "ABCD-2345"
    assert links.normalize_code(" abcd-2345 ") == code
    assert links.normalize_code("abcd 2345") == code
    assert links.normalize_code("ABCD-234") is None
    assert links.normalize_code("ABCD-2340") is None  # 0 is not in the alphabet


async def test_code_is_stored_hashed_and_found_by_its_text(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id, identity_id = await person(sessions, "telegram", "ann")
    async with sessions.begin() as session:
        code, expires = await links.issue_code(
            session, identity_id=identity_id, user_id=user_id, conversation_id="dm:ann"
        )
    assert timedelta(minutes=9) < expires - utcnow() <= timedelta(minutes=10)
    async with sessions() as session:
        row = (await session.scalars(select(LinkCode))).one()
        stored = " ".join(str(v) for v in (row.lookup, row.salt, row.code_hash))
        assert code not in stored and code.lower() not in stored
        assert len(row.code_hash) == 64
        found = await links.find_code(session, code)
        assert found is not None and found.id == row.id
        assert await links.find_code(session, links.new_code()) is None


async def test_a_new_code_replaces_the_identitys_unused_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id, identity_id = await person(sessions, "telegram", "ann")
    async with sessions.begin() as session:
        first, _ = await links.issue_code(
            session, identity_id=identity_id, user_id=user_id, conversation_id="dm:ann"
        )
    async with sessions.begin() as session:
        second, _ = await links.issue_code(
            session, identity_id=identity_id, user_id=user_id, conversation_id="dm:ann"
        )
    async with sessions() as session:
        assert await links.find_code(session, first) is None
        assert await links.find_code(session, second) is not None


async def test_concurrent_consumption_has_exactly_one_winner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id, identity_id = await person(sessions, "telegram", "ann")
    async with sessions.begin() as session:
        code, _ = await links.issue_code(
            session, identity_id=identity_id, user_id=user_id, conversation_id="dm:ann"
        )
        code_id = (await links.find_code(session, code)).id  # type: ignore[union-attr]

    async def consume() -> bool:
        async with sessions.begin() as session:
            return await links.consume_code(session, code_id, by_identity_id=None, outcome="linked")

    results = await asyncio.gather(*[consume() for _ in range(8)])
    assert sorted(results) == [False] * 7 + [True]


async def test_expired_code_cannot_be_consumed(sessions: async_sessionmaker[AsyncSession]) -> None:
    user_id, identity_id = await person(sessions, "telegram", "ann")
    past = utcnow() - timedelta(minutes=30)
    async with sessions.begin() as session:
        code, _ = await links.issue_code(
            session, identity_id=identity_id, user_id=user_id, conversation_id="dm:ann", now=past
        )
        row = await links.find_code(session, code)
        assert row is not None
        assert not await links.consume_code(session, row.id, by_identity_id=None, outcome="linked")


async def test_wrong_attempts_are_limited_per_identity_in_a_rolling_hour(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    _, ann = await person(sessions, "telegram", "ann")
    _, bob = await person(sessions, "telegram", "bob")
    start = utcnow() - timedelta(minutes=50)
    async with sessions.begin() as session:
        for i in range(links.MAX_WRONG_ATTEMPTS):
            links.record_failure(session, ann, now=start + timedelta(minutes=i))
    async with sessions.begin() as session:
        budget = await links.attempt_budget(session, ann)
        assert budget.blocked and budget.left == 0
        assert budget.retry_at == start + links.ATTEMPT_WINDOW
        assert not (await links.attempt_budget(session, bob)).blocked  # per identity
        later = start + links.ATTEMPT_WINDOW + timedelta(seconds=30)
        assert (await links.attempt_budget(session, ann, now=later)).used == 4
    async with sessions() as session:  # the expired failure was pruned from the table
        assert await session.scalar(select(func.count()).select_from(LinkAttempt)) == 4


# --- merge, detach, forget --------------------------------------------------------------


async def test_merge_moves_identities_and_retires_the_joining_entity(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ann, _ = await person(sessions, "telegram", "ann")
    ann_wa, _ = await person(sessions, "whatsapp", "ann-wa")
    service = IdentityService(sessions)
    keeps = (await service.get(ann)).entity_id  # type: ignore[union-attr]
    retired = (await service.get(ann_wa)).entity_id  # type: ignore[union-attr]
    async with sessions.begin() as session:
        merged = await links.merge_users(session, ann, ann_wa)
    assert merged.before["joining"]["identities"][0]["channel"] == "whatsapp"
    assert {i["channel"] for i in merged.after["target"]["identities"]} == {"telegram", "whatsapp"}
    assert (await service.resolve("whatsapp", "acct", "ann-wa")).entity_id == keeps
    resolved = await service.get(ann_wa)  # queued work of the joining user follows the merge
    assert resolved is not None and resolved.id == ann
    async with sessions() as session:
        row = await session.get(User, ann_wa)
        assert row is not None and row.retired_at is not None and row.merged_into == ann
        assert row.entity_id == retired  # kept in the retired row: unique, never reissued
        assert (
            await session.scalar(
                select(func.count()).select_from(User).where(User.entity_id == retired)
            )
            == 1
        )
    assert await service.count_users() == 1
    assert [u.id for u, _ in await service.list_users()] == [ann]
    async with sessions.begin() as session:
        with pytest.raises(LinkError) as same:
            await links.merge_users(session, ann, ann)
        assert same.value.reason == "same_user"
        with pytest.raises(LinkError) as gone:
            await links.merge_users(session, ann, ann_wa)
        assert gone.value.reason == "retired"


async def test_detach_gives_a_fresh_entity_and_refuses_the_last_identity(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ann, tg = await person(sessions, "telegram", "ann")
    ann_wa, wa = await person(sessions, "whatsapp", "ann-wa")
    service = IdentityService(sessions)
    async with sessions.begin() as session:
        await links.merge_users(session, ann, ann_wa)
    entity = (await service.get(ann)).entity_id  # type: ignore[union-attr]
    async with sessions.begin() as session:
        detached = await links.detach_identity(session, wa)
    fresh = await service.resolve("whatsapp", "acct", "ann-wa")
    assert fresh.id == detached.new_user.id and fresh.id not in (ann, ann_wa)
    assert fresh.entity_id not in (entity, detached.old_user.entity_id)
    assert (await service.resolve("telegram", "acct", "ann")).entity_id == entity
    async with sessions.begin() as session:
        with pytest.raises(LinkError) as last:
            await links.detach_identity(session, tg)
        assert last.value.reason == "last_identity"


async def test_forget_deletes_identities_and_retires_the_user(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ann, identity_id = await person(sessions, "telegram", "ann")
    async with sessions.begin() as session:
        await links.issue_code(
            session, identity_id=identity_id, user_id=ann, conversation_id="dm:ann"
        )
        links.record_failure(session, identity_id)
    async with sessions.begin() as session:
        forgotten = await links.forget_user(session, ann)
    assert forgotten.identity_ids == [identity_id]
    async with sessions() as session:
        for model in (Identity, LinkCode, LinkAttempt):
            assert await session.scalar(select(func.count()).select_from(model)) == 0
        row = await session.get(User, ann)
        assert row is not None and row.retired_at is not None and row.display_name is None
    service = IdentityService(sessions)
    assert await service.get(ann) is None
    again = await service.resolve("telegram", "acct", "ann")  # comes back as a stranger
    assert again.id != ann and again.entity_id != row.entity_id


# --- audit -----------------------------------------------------------------------------


async def test_audit_log_is_paged_newest_first_and_append_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        for i in range(5):
            audit.record(
                session,
                actor=audit.ADMIN,
                via="cli",
                action=audit.EXPORT,
                user_id=f"u{i % 2}",
                after={"n": i},
            )
    async with sessions() as session:
        first, total = await audit.page(session, limit=2)
        assert total == 5 and [e.after["n"] for e in first] == [4, 3]
        rest, _ = await audit.page(session, limit=10, offset=2)
        assert [e.after["n"] for e in rest] == [2, 1, 0]
        mine, count = await audit.page(session, user_id="u1")
        assert count == 2 and all(e.user_id == "u1" for e in mine)
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessions.begin() as session:
                await session.execute(text(statement))
    async with sessions() as session:
        entries, total = await audit.page(session)
        assert total == 5 and {e.actor for e in entries} == {audit.ADMIN}


# --- the migration -----------------------------------------------------------------------


async def test_migration_matches_the_models_and_downgrades(engine: AsyncEngine) -> None:
    import gateway.inbox
    import gateway.outbox  # noqa: F401 - registers every table on Base.metadata
    import kernel.memory  # noqa: F401

    assert AdminSession.__tablename__ in Base.metadata.tables

    def diff(connection) -> list:  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in OUR_TABLES]

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []

    from alembic import command

    async with engine.begin() as connection:
        await connection.run_sync(lambda c: command.downgrade(migrate._config(c), "0001"))
    assert await migrate.current_revision(engine) == "0001"
    await migrate.upgrade(engine)
    assert await migrate.at_head(engine)


def _table_of(difference: object) -> str | None:
    item = difference[0] if isinstance(difference, list) else difference
    for part in item if isinstance(item, tuple) else ():
        table = getattr(part, "table", None)
        if table is not None and hasattr(table, "name"):
            return table.name
        if hasattr(part, "name") and hasattr(part, "columns"):
            return part.name
        if isinstance(part, str) and part in OUR_TABLES:
            return part
    return None
