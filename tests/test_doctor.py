"""`gateway doctor` against the local fakes: all green when everything is healthy, and each
failure (bad token, database down, missing migration, bad settings, missing auth config)
reported as ✘ with its fix — without leaking a secret and without importing litellm or
composio unless the LLM check is asked for."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from gateway import doctor, migrate
from gateway.cli_doctor import doctor as doctor_command
from gateway.settings import Settings, load_settings
from identity.db import create_engine
from tests.fakes.bot_api import FakeBotAPI
from tests.fakes.composio_api import DEFAULT_AUTH_CONFIGS, error_body
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.llm import FakeLLM
from tests.fakes.server import serve
from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, FakeSlack

PUBLIC = "https://gateway.example.org"
COMPOSIO_KEY = "test-composio-key"
TELEGRAM_SECRET = "doctor-secret_1"
ROOT = Path(__file__).resolve().parent.parent


# --- a fake of the one Composio endpoint doctor reads ------------------------------------------
class FakeAuthConfigs:
    """GET /api/v3.1/auth_configs as composio_client lists it (bodies validated below)."""

    def __init__(self, configs: dict[str, str], api_key: str = COMPOSIO_KEY) -> None:
        self.api_key = api_key
        self.items = [_auth_config(ac, toolkit) for ac, toolkit in configs.items()]
        self.app = Starlette(routes=[Route("/api/v3.1/auth_configs", self._list)])

    async def _list(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return JSONResponse(
                error_body(401, "Invalid API key", 10401, "Auth_InvalidApiKey"), status_code=401
            )
        limit = int(float(request.query_params.get("limit", "20")))
        offset = int(request.query_params.get("cursor") or 0)
        page = self.items[offset : offset + limit]
        following = offset + limit
        return JSONResponse(
            {
                "items": page,
                "next_cursor": str(following) if following < len(self.items) else None,
                "total_items": len(self.items),
                "total_pages": max(1, -(-len(self.items) // limit)),
                "current_page": offset // limit + 1,
            }
        )


def _auth_config(auth_id: str, toolkit: str, status: str = "ENABLED") -> dict[str, Any]:
    return {
        "id": auth_id,
        "uuid": str(uuid.uuid4()),
        "name": f"{toolkit} auth config",
        "type": "default",
        "status": status,
        "auth_scheme": "OAUTH2",
        "is_composio_managed": True,
        "no_of_connections": 0,
        "created_at": "2026-01-01T00:00:00.000Z",
        "last_updated_at": "2026-01-01T00:00:00.000Z",
        "tool_access_config": {"tools_for_connected_account_creation": []},
        "toolkit": {"slug": toolkit, "logo": f"https://logos.composio.dev/api/{toolkit}"},
    }


def test_fake_auth_configs_match_the_composio_client_model() -> None:
    from composio_client.types.auth_config_list_response import AuthConfigListResponse

    fake = FakeAuthConfigs(DEFAULT_AUTH_CONFIGS)
    with serve(fake.app) as server:
        body = httpx.get(
            f"{server.url}/api/v3.1/auth_configs", headers={"x-api-key": COMPOSIO_KEY}
        ).json()
    parsed = AuthConfigListResponse.model_validate(body)
    assert {item.id for item in parsed.items} == set(DEFAULT_AUTH_CONFIGS)


# --- fixtures ------------------------------------------------------------------------------------------
class Fakes:
    def __init__(
        self,
        llm: FakeLLM,
        graph: FakeGraphAPI,
        graph_url: str,
        bot: FakeBotAPI,
        bot_url: str,
        slack_url: str,
        composio: FakeAuthConfigs,
        composio_url: str,
    ) -> None:
        self.llm, self.graph, self.graph_url = llm, graph, graph_url
        self.bot, self.bot_url, self.slack_url = bot, bot_url, slack_url
        self.composio, self.composio_url = composio, composio_url

    def settings(self, database_url: str, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "database_url": database_url,
            "public_base_url": PUBLIC,
            "llm_model": "openai/fake-model",
            "llm_api_base": f"{self.llm.url}/v1",  # type: ignore[attr-defined]
            "llm_api_key": "sk-test-not-a-real-key",
            "whatsapp_phone_number_id": self.graph.phone_number_id,
            "whatsapp_token": self.graph.token,
            "whatsapp_app_secret": "doctor-app-secret",
            "whatsapp_verify_token": "doctor-verify-token",
            "whatsapp_graph_url": self.graph_url,
            "telegram_bot_token": self.bot.token,
            "telegram_webhook_secret": TELEGRAM_SECRET,
            "telegram_api_url": self.bot_url,
            "slack_bot_token": BOT_TOKEN,
            "slack_signing_secret": SIGNING_SECRET,
            "slack_api_url": f"{self.slack_url}/api/",
            "composio_api_key": COMPOSIO_KEY,
            "composio_base_url": self.composio_url,
            "composio_toolkits": ["asana", "gmail"],
            "composio_auth_configs": {v: k for k, v in DEFAULT_AUTH_CONFIGS.items()},
        }
        values.update(overrides)
        return values


@pytest.fixture
def fakes(fake_llm: FakeLLM) -> Iterator[Fakes]:
    graph, bot, slack = FakeGraphAPI(), FakeBotAPI(), FakeSlack()
    composio = FakeAuthConfigs(DEFAULT_AUTH_CONFIGS)
    with (
        serve(graph.app) as graph_srv,
        serve(bot.app) as bot_srv,
        serve(slack.app) as slack_srv,
        serve(composio.app) as composio_srv,
    ):
        slack.base_url = slack_srv.url
        registered = httpx.post(
            f"{bot_srv.url}/bot{bot.token}/setWebhook",
            data={"url": f"{PUBLIC}/webhooks/telegram", "secret_token": TELEGRAM_SECRET},
        )
        assert registered.json()["ok"]
        yield Fakes(
            fake_llm,
            graph,
            graph_srv.url,
            bot,
            bot_srv.url,
            slack_srv.url,
            composio,
            composio_srv.url,
        )
        bot.close()


async def _migrated(url: str) -> str:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return url


def _loader(values: dict[str, Any]) -> Any:
    return lambda: Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


# --- healthy ----------------------------------------------------------------------------------------------
async def test_all_green_against_healthy_fakes(db_url: str, fakes: Fakes) -> None:
    await _migrated(db_url)
    checks = await doctor.run(llm=True, load=_loader(fakes.settings(db_url)))
    assert [c.name for c in checks if c.status != doctor.OK] == [], doctor.render(checks)
    named = _by_name(checks)
    assert set(named) >= {
        "settings",
        "database",
        "whatsapp",
        "telegram",
        "telegram webhook",
        "slack",
        "composio",
        "composio asana",
        "composio gmail",
        "llm",
    }
    assert "head" in named["database"].detail
    assert "@" + fakes.bot.username in named["telegram"].detail
    assert f"{PUBLIC}/webhooks/telegram" in named["telegram webhook"].detail
    assert len(fakes.llm.requests) == 1  # one tiny completion, only because llm=True
    assert doctor.render(checks).endswith("all good")


def test_cli_exits_zero_when_healthy_and_one_otherwise(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = asyncio.run(_migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in fakes.settings(url).items():
        monkeypatch.setenv(key.upper(), _env_value(value))
    app = typer.Typer()
    app.command()(doctor_command)
    app.command("other")(lambda: None)  # a group, so "doctor" is a sub-command as in the CLI
    runner = CliRunner()
    healthy = runner.invoke(app, ["doctor"])
    assert healthy.exit_code == 0, healthy.output
    assert "✘" not in healthy.output and "✔ database" in healthy.output
    assert "– llm" in healthy.output and "--llm" in healthy.output  # not contacted by default
    assert fakes.llm.requests == []

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:not-the-token")
    broken = runner.invoke(app, ["doctor"])
    assert broken.exit_code == 1
    assert "✘ telegram" in broken.output and "@BotFather" in broken.output


# --- failures, each with its fix --------------------------------------------------------------------------
async def test_bad_tokens_are_reported_with_their_fix(tmp_path: Path, fakes: Fakes) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    fakes.llm.fail_status = 401
    values = fakes.settings(
        url,
        whatsapp_token="EAAwrong-token-0000000000",
        telegram_bot_token="7000000001:AAwrongwrongwrongwrongwrongwrongwrong",
        slack_bot_token="xoxb-wrong-token",
        composio_api_key="wrong-composio-key",
        llm_retries=0,
    )
    checks = await doctor.run(llm=True, load=_loader(values))
    named = _by_name(checks)
    failed = {c.name for c in checks if c.failed}
    assert failed == {"whatsapp", "telegram", "slack", "composio", "llm"}, doctor.render(checks)
    assert (
        "token rejected" in named["whatsapp"].detail and "WHATSAPP_TOKEN" in named["whatsapp"].fix
    )
    assert "401" in named["telegram"].detail and "TELEGRAM_BOT_TOKEN" in named["telegram"].fix
    assert "invalid_auth" in named["slack"].detail and "SLACK_BOT_TOKEN" in named["slack"].fix
    assert "API key rejected" in named["composio"].detail
    assert "COMPOSIO_API_KEY" in named["composio"].fix
    assert "LLM_API_KEY" in named["llm"].fix
    assert named["database"].status == doctor.OK
    rendered = doctor.render(checks)
    assert rendered.count("fix:") == 5 and rendered.endswith("5 problems found")
    for secret in (
        "EAAwrong-token-0000000000",
        "AAwrongwrongwrongwrong",
        "xoxb-wrong-token",
        "wrong-composio-key",
    ):
        assert secret not in rendered


async def test_wrong_whatsapp_phone_number_id(tmp_path: Path, fakes: Fakes) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    values = fakes.settings(url, whatsapp_phone_number_id="999999999999999")
    check = _by_name(await doctor.run(load=_loader(values)))["whatsapp"]
    assert check.failed and "not found" in check.detail
    assert "WHATSAPP_PHONE_NUMBER_ID" in check.fix


async def test_database_down(fakes: Fakes) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/gateway"
    check = _by_name(await doctor.run(seconds=5, load=_loader(fakes.settings(url))))["database"]
    assert check.failed and "unreachable" in check.detail
    assert "start PostgreSQL" in check.fix


async def test_missing_sqlite_file_is_not_created(tmp_path: Path, fakes: Fakes) -> None:
    path = tmp_path / "nowhere" / "gateway.db"
    values = fakes.settings(f"sqlite+aiosqlite:///{path}")
    check = _by_name(await doctor.run(load=_loader(values)))["database"]
    assert check.failed and "does not exist" in check.detail and "gateway db upgrade" in check.fix
    assert not path.exists() and not path.parent.exists()


async def test_database_without_migrations(db_url: str, fakes: Fakes) -> None:
    if db_url.startswith("sqlite"):  # an existing file that never saw a migration
        sqlite3.connect(db_url.split("///", 1)[1]).execute("CREATE TABLE unrelated (x)").close()
    check = _by_name(await doctor.run(load=_loader(fakes.settings(db_url))))["database"]
    assert check.failed and "no schema" in check.detail
    assert "gateway db upgrade" in check.fix


async def test_database_at_a_revision_this_version_does_not_know(
    tmp_path: Path, fakes: Fakes
) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed9999'")
    check = _by_name(await doctor.run(load=_loader(fakes.settings(url))))["database"]
    assert check.failed and "f00dfeed9999" in check.detail and "newer gateway" in check.fix


async def test_invalid_settings_are_one_failure_with_the_fix() -> None:
    checks = await doctor.run(load=lambda: load_settings(_env_file=None, pool_concurrency=0))
    assert [(c.name, c.status) for c in checks] == [("settings", doctor.FAIL)]
    assert "POOL_CONCURRENCY" in checks[0].detail and "environment or .env" in checks[0].fix


async def test_composio_toolkit_without_a_usable_auth_config(tmp_path: Path, fakes: Fakes) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    fakes.composio.items.append(_auth_config("ac_notion_off", "notion", status="DISABLED"))
    values = fakes.settings(
        url,
        composio_toolkits=["asana", "gmail", "notion", "slack", "github"],
        composio_auth_configs={
            "asana": "ac_asana_test",
            "gmail": "ac_asana_test",
            "notion": "ac_notion_off",
            "github": "ac_does_not_exist",
        },
    )
    named = _by_name(await doctor.run(load=_loader(values)))
    assert named["composio"].status == doctor.OK
    assert named["composio asana"].status == doctor.OK
    assert "belongs to asana" in named["composio gmail"].detail
    assert "disabled" in named["composio notion"].detail
    assert "no auth config" in named["composio slack"].detail
    assert "does not exist" in named["composio github"].detail
    for toolkit in ("gmail", "slack", "github"):
        assert "COMPOSIO_AUTH_CONFIGS" in named[f"composio {toolkit}"].fix


async def test_telegram_webhook_missing_or_elsewhere(tmp_path: Path, fakes: Fakes) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    async with httpx.AsyncClient(base_url=f"{fakes.bot_url}/bot{fakes.bot.token}") as bot_api:
        await bot_api.post("/setWebhook", data={"url": "https://old.example/hook"})
        elsewhere = _by_name(await doctor.run(load=_loader(fakes.settings(url))))
        assert elsewhere["telegram webhook"].failed
        assert "https://old.example/hook" in elsewhere["telegram webhook"].detail
        await bot_api.post("/deleteWebhook")
    missing = _by_name(await doctor.run(load=_loader(fakes.settings(url))))["telegram webhook"]
    assert missing.failed and "no webhook registered" in missing.detail
    assert "gateway telegram set-webhook" in missing.fix
    polling = _by_name(
        await doctor.run(load=_loader(fakes.settings(url, telegram_mode="polling")))
    )["telegram webhook"]
    assert polling.status == doctor.OK


async def test_unreachable_services_never_show_a_token(tmp_path: Path, fakes: Fakes) -> None:
    url = await _migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    closed = f"http://127.0.0.1:{_closed_port()}"
    values = fakes.settings(
        url,
        telegram_api_url=closed,
        whatsapp_graph_url=closed,
        slack_api_url=f"{closed}/api/",
        composio_base_url=closed,
    )
    checks = await doctor.run(load=_loader(values))
    named = _by_name(checks)
    for name in ("whatsapp", "telegram", "slack", "composio"):
        assert named[name].failed and "cannot reach" in named[name].detail
    rendered = doctor.render(checks)
    for secret in (fakes.bot.token, fakes.graph.token, BOT_TOKEN, COMPOSIO_KEY):
        assert secret not in rendered


def test_doctor_without_llm_imports_neither_litellm_nor_composio(
    fakes: Fakes, tmp_path: Path
) -> None:
    url = asyncio.run(_migrated(f"sqlite+aiosqlite:///{tmp_path}/gateway.db"))
    values = fakes.settings(url)
    code = (
        "import asyncio, json, sys\n"
        "from gateway import doctor\n"
        "from gateway.settings import Settings\n"
        f"values = json.loads({json.dumps(json.dumps(values))})\n"
        "checks = asyncio.run(doctor.run(load=lambda: Settings(_env_file=None, **values)))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('litellm', 'composio'))\n"
        "print(json.dumps({'failed': [c.name for c in checks if c.failed], 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"failed": [], "heavy": []}, out.stderr
