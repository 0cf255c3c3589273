"""`gateway doctor`: is this deployment able to work? One row per check, with the fix.

Each check asks the real service with the configured credentials and base URLs (so it
works against the local fakes too) using plain httpx: doctor depends on the platforms'
HTTP APIs, not on our adapters' internals, and never imports litellm or composio unless
the LLM check was asked for (`--llm`). Whatever a service or an exception says is masked like
the logs (tokens, phone numbers) before it is shown, and no secret goes into an error text: failures are described by
status and the platform's own error message, never by the request URL (Telegram's
carries the token).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from gateway.logs import mask
from gateway.settings import ConfigError, Settings, load_settings

OK, FAIL, SKIP = "ok", "fail", "skip"
Status = Literal["ok", "fail", "skip"]
SYMBOLS = {OK: "✔", FAIL: "✘", SKIP: "–"}
UPGRADE = "run `gateway db upgrade` (or start the gateway, which upgrades on start)"


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


# --- running --------------------------------------------------------------------------------
async def run(
    *,
    llm: bool = False,
    seconds: float = 10.0,
    load: Callable[[], Settings] = load_settings,
) -> list[Check]:
    """Every check, in a stable order. Settings come from `load` (env and .env by default)."""
    try:
        settings = load()
    except ConfigError as exc:
        return [
            Check(
                "settings",
                FAIL,
                str(exc),
                "correct the variables listed above in the environment or .env, then run "
                "`gateway doctor` again",
            )
        ]
    checks = [Check("settings", OK, "valid")]
    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as client:
        groups = await asyncio.gather(
            _one(check_database(settings, seconds)),
            check_whatsapp(settings, client),
            check_telegram(settings, client),
            check_slack(settings, client),
            check_composio(settings, client),
        )
    for group in groups:
        checks += group
    # Last and alone: importing litellm blocks the event loop for seconds, which would
    # eat into the other checks' time limits.
    checks.append(await check_llm(settings, probe=llm, seconds=seconds))
    return checks


async def _one(check: Awaitable[Check]) -> list[Check]:
    return [await check]


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{SYMBOLS[check.status]} {check.name.ljust(width)}  {check.detail}")
        if check.failed and check.fix:
            lines.append(f"  {' ' * width}  fix: {check.fix}")
    failed = sum(c.failed for c in checks)
    lines.append("")
    lines.append("all good" if not failed else f"{failed} problem{'s' * (failed != 1)} found")
    return "\n".join(lines)


# --- database ---------------------------------------------------------------------------------
async def check_database(settings: Settings, seconds: float) -> Check:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from gateway import migrate

    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if settings.is_sqlite:
        path = url.database or ""
        if path and path != ":memory:" and not await asyncio.to_thread(Path(path).exists):
            return Check("database", FAIL, f"{shown}: the file does not exist", UPGRADE)
    engine = create_async_engine(
        settings.database_url, poolclass=NullPool, connect_args={"timeout": seconds}
    )
    try:
        async with asyncio.timeout(seconds):
            current = await migrate.current_revision(engine)
    except Exception as exc:  # every failure to connect is reported, not raised
        return Check(
            "database", FAIL, f"{shown}: unreachable: {_short(exc)}", _db_fix(exc, settings)
        )
    finally:
        await engine.dispose()
    head = migrate.head_revision()
    if current == head:
        return Check("database", OK, f"{shown}: reachable, schema at head ({head})")
    if current is None:
        return Check(
            "database", FAIL, f"{shown}: reachable, but no schema (no migration applied)", UPGRADE
        )
    if not _known_revision(current):
        return Check(
            "database",
            FAIL,
            f"{shown}: at revision {current}, which this version does not know (head {head})",
            "a newer gateway migrated this database: run that version, or restore a backup",
        )
    return Check("database", FAIL, f"{shown}: at revision {current}, head is {head}", UPGRADE)


def _known_revision(revision: str) -> bool:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from gateway.migrate import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def _db_fix(exc: BaseException, settings: Settings) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    if "does not exist" in text and "database" in text:
        return "create the database (e.g. `createdb NAME`), then " + UPGRADE
    if "password" in text or "authentication" in text:
        return "correct the user and password in DATABASE_URL"
    if settings.is_sqlite:
        return "check that the SQLite file is readable and writable by this user"
    return "start PostgreSQL, or correct the host and port in DATABASE_URL"


# --- channels ----------------------------------------------------------------------------------
def _configured(settings: Settings, fields: tuple[str, ...]) -> tuple[bool, list[str]]:
    """(any of the fields set, the names of those missing)."""
    values = {f: _value(getattr(settings, f)) for f in fields}
    return any(values.values()), [f.upper() for f, v in values.items() if not v]


def _value(value: Any) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value or "")


async def check_whatsapp(settings: Settings, client: httpx.AsyncClient) -> list[Check]:
    name = "whatsapp"
    fields = (
        "whatsapp_phone_number_id",
        "whatsapp_token",
        "whatsapp_app_secret",
        "whatsapp_verify_token",
    )
    configured, missing = _configured(settings, fields)
    if not configured:
        return [
            Check(name, SKIP, "not configured (set " + ", ".join(f.upper() for f in fields) + ")")
        ]
    if missing:
        return [Check(name, FAIL, f"missing {', '.join(missing)}", f"set {', '.join(missing)}")]
    version = settings.whatsapp_graph_version
    version = version if version.startswith("v") else f"v{version}"
    phone_id = settings.whatsapp_phone_number_id
    url = f"{settings.whatsapp_graph_url.rstrip('/')}/{version}/{phone_id}"
    try:
        response = await client.get(
            url,
            params={"fields": "verified_name,quality_rating,code_verification_status"},
            headers={"Authorization": f"Bearer {settings.whatsapp_token.get_secret_value()}"},
        )
    except httpx.HTTPError as exc:
        return [_unreachable(name, settings.whatsapp_graph_url, exc, "WHATSAPP_GRAPH_URL")]
    body = _json(response)
    if response.status_code == 200 and isinstance(body, dict) and not body.get("error"):
        webhook = _webhook_hint(settings, "whatsapp", "WHATSAPP_VERIFY_TOKEN")
        return [
            Check(
                name,
                OK,
                f"phone number found: {body.get('verified_name', '?')!r}, "
                f"quality {body.get('quality_rating', '?')}; {webhook}",
            )
        ]
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = mask(str(error.get("message") or response.reason_phrase))
    code = error.get("code")
    if response.status_code == 401 or code == 190:
        return [
            Check(
                name,
                FAIL,
                f"token rejected by the Graph API ({response.status_code}, code {code}): {message}",
                "create a new access token (a System User token does not expire) with "
                "whatsapp_business_messaging and set WHATSAPP_TOKEN",
            )
        ]
    if code in (100, 803) or response.status_code == 404:
        return [
            Check(
                name,
                FAIL,
                f"phone number id not found or not visible to this token: {message}",
                "copy the Phone number ID from the Meta app (WhatsApp > API Setup) into "
                "WHATSAPP_PHONE_NUMBER_ID, and give the token access to its business account",
            )
        ]
    return [
        Check(
            name,
            FAIL,
            f"Graph API answered {response.status_code}: {message}",
            "retry later; if it persists, check Meta's status page and the app's permissions",
        )
    ]


async def check_telegram(settings: Settings, client: httpx.AsyncClient) -> list[Check]:
    name = "telegram"
    token = settings.telegram_bot_token.get_secret_value()
    if not token:
        return [Check(name, SKIP, "not configured (set TELEGRAM_BOT_TOKEN)")]
    base = f"{settings.telegram_api_url.rstrip('/')}/bot{token}"
    fix_token = "copy the token from @BotFather (/mybots > API Token) into TELEGRAM_BOT_TOKEN"
    try:
        me = await client.get(f"{base}/getMe")
    except httpx.HTTPError as exc:
        return [_unreachable(name, settings.telegram_api_url, exc, "TELEGRAM_API_URL")]
    body = _json(me)
    if me.status_code in (401, 404) or not (isinstance(body, dict) and body.get("ok")):
        description = (
            mask(str(body.get("description", me.reason_phrase))) if isinstance(body, dict) else ""
        )
        return [Check(name, FAIL, f"getMe refused ({me.status_code}): {description}", fix_token)]
    bot = body.get("result") or {}
    checks = [Check(name, OK, f"bot @{bot.get('username', '?')} (getMe)")]
    checks.append(await _telegram_webhook(settings, client, base))
    return checks


async def _telegram_webhook(settings: Settings, client: httpx.AsyncClient, base: str) -> Check:
    name = "telegram webhook"
    try:
        response = await client.get(f"{base}/getWebhookInfo")
        info = (_json(response) or {}).get("result") or {}
    except (httpx.HTTPError, AttributeError) as exc:
        return _unreachable(name, settings.telegram_api_url, exc, "TELEGRAM_API_URL")
    url = str(info.get("url") or "")
    pending = int(info.get("pending_update_count") or 0)
    if settings.telegram_mode == "polling":
        note = (
            f"a webhook is set ({url}); the gateway deletes it when polling starts"
            if url
            else "no webhook set"
        )
        return Check(name, OK, f"polling mode; {note}; {pending} updates waiting")
    set_hook = "run `gateway telegram set-webhook` (it uses PUBLIC_BASE_URL)"
    if not settings.telegram_webhook_secret.get_secret_value():
        return Check(
            name,
            FAIL,
            "TELEGRAM_WEBHOOK_SECRET is not set: every update would be refused",
            "set TELEGRAM_WEBHOOK_SECRET (1-256 of A-Z a-z 0-9 _ -), then " + set_hook,
        )
    if not url:
        return Check(
            name,
            FAIL,
            f"no webhook registered: Telegram is not sending updates ({pending} waiting)",
            set_hook,
        )
    expected = _public_url(settings, "telegram")
    if expected and url != expected:
        return Check(name, FAIL, f"webhook points at {url}, expected {expected}", set_hook)
    last_error = mask(str(info.get("last_error_message") or ""))
    last_at = int(info.get("last_error_date") or 0)
    if last_error and time.time() - last_at < 3600:
        return Check(
            name,
            FAIL,
            f"Telegram's last delivery to {url} failed: {last_error} ({pending} updates waiting)",
            "make that URL reachable from the internet over HTTPS (valid certificate) and "
            "answering 200; then " + set_hook,
        )
    return Check(name, OK, f"webhook registered at {url}; {pending} updates waiting")


async def check_slack(settings: Settings, client: httpx.AsyncClient) -> list[Check]:
    name = "slack"
    token = settings.slack_bot_token.get_secret_value()
    if not token:
        return [Check(name, SKIP, "not configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET)")]
    if settings.slack_mode == "http" and not settings.slack_signing_secret.get_secret_value():
        return [
            Check(
                name,
                FAIL,
                "SLACK_SIGNING_SECRET is not set: every event would be refused",
                "copy the Signing Secret (app settings > Basic Information) into SLACK_SIGNING_SECRET",
            )
        ]
    api = settings.slack_api_url.rstrip("/") + "/"
    result = await _slack_call(client, api, "auth.test", token)
    if isinstance(result, Check):
        return [_named(result, name, settings.slack_api_url)]
    if not result.get("ok"):
        return [
            Check(
                name,
                FAIL,
                f"auth.test refused the bot token: {mask(str(result.get('error', 'unknown error')))}",
                "reinstall the app to the workspace and copy the Bot User OAuth Token (xoxb-...) "
                "into SLACK_BOT_TOKEN",
            )
        ]
    checks = [
        Check(
            name,
            OK,
            f"bot {result.get('user', '?')} in team {result.get('team', '?')} (auth.test); "
            + (
                _webhook_hint(settings, "slack", None)
                if settings.slack_mode == "http"
                else "socket mode"
            ),
        )
    ]
    if settings.slack_mode == "socket":
        checks.append(await _slack_socket(settings, client, api))
    return checks


async def _slack_socket(settings: Settings, client: httpx.AsyncClient, api: str) -> Check:
    name = "slack socket mode"
    fix = (
        "create an app-level token with connections:write (Basic Information) into SLACK_APP_TOKEN"
    )
    app_token = settings.slack_app_token.get_secret_value()
    if not app_token:
        return Check(name, FAIL, "SLACK_APP_TOKEN is not set", fix)
    result = await _slack_call(client, api, "apps.connections.open", app_token)
    if isinstance(result, Check):
        return _named(result, name, settings.slack_api_url)
    if not result.get("ok"):
        return Check(
            name, FAIL, f"apps.connections.open refused: {mask(str(result.get('error')))}", fix
        )
    return Check(name, OK, "app token accepted (apps.connections.open)")


async def _slack_call(
    client: httpx.AsyncClient, api: str, method: str, token: str
) -> dict[str, Any] | Check:
    try:
        response = await client.post(api + method, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return Check("", FAIL, _short(exc))
    body = _json(response)
    if not isinstance(body, dict):
        return Check("", FAIL, f"{method} answered {response.status_code} without JSON")
    return body


def _named(check: Check, name: str, base_url: str) -> Check:
    return Check(
        name,
        FAIL,
        f"cannot reach {_host(base_url)}: {check.detail}",
        "check the network and SLACK_API_URL",
    )


# --- Composio ------------------------------------------------------------------------------------
async def check_composio(settings: Settings, client: httpx.AsyncClient) -> list[Check]:
    name = "composio"
    if not settings.composio_configured:
        return [Check(name, SKIP, "tools disabled (set COMPOSIO_API_KEY and COMPOSIO_TOOLKITS)")]
    if not settings.composio_toolkits:
        return [
            Check(
                name,
                FAIL,
                "COMPOSIO_API_KEY is set but no toolkit is enabled",
                "set COMPOSIO_TOOLKITS, e.g. gmail,asana",
            )
        ]
    configs = await _auth_configs(settings, client)
    if isinstance(configs, Check):
        return [configs]
    checks = [Check(name, OK, f"reachable; {len(configs)} auth configs in this project")]
    for toolkit in settings.composio_toolkits:
        checks.append(_toolkit_check(settings, toolkit, configs))
    return checks


async def _auth_configs(
    settings: Settings, client: httpx.AsyncClient
) -> dict[str, dict[str, Any]] | Check:
    """Every auth config of the project, by id (GET /api/v3.1/auth_configs, as the SDK)."""
    url = settings.composio_base_url.rstrip("/") + "/api/v3.1/auth_configs"
    headers = {"x-api-key": settings.composio_api_key.get_secret_value()}
    found: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": 100, "show_disabled": "true"}
        if cursor:
            params["cursor"] = cursor
        try:
            response = await client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            return _unreachable("composio", settings.composio_base_url, exc, "COMPOSIO_BASE_URL")
        body = _json(response)
        if response.status_code in (401, 403):
            return Check(
                "composio",
                FAIL,
                f"API key rejected ({response.status_code}): {_composio_error(body)}",
                "copy the project API key (Composio dashboard > Settings > API Keys) into "
                "COMPOSIO_API_KEY",
            )
        if response.status_code != 200 or not isinstance(body, dict):
            return Check(
                "composio",
                FAIL,
                f"listing auth configs answered {response.status_code}: {_composio_error(body)}",
                "retry later; if it persists, check COMPOSIO_BASE_URL and Composio's status",
            )
        for item in body.get("items") or []:
            found[str(item.get("id"))] = item
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return found


def _toolkit_check(settings: Settings, toolkit: str, configs: dict[str, dict[str, Any]]) -> Check:
    name = f"composio {toolkit}"
    auth_id = settings.composio_auth_configs.get(toolkit)
    add = (
        f"create an auth config for {toolkit} in the Composio dashboard (Auth Configs) and add "
        f"{toolkit}=ac_... to COMPOSIO_AUTH_CONFIGS"
    )
    if not auth_id:
        return Check(name, FAIL, "no auth config id: users cannot connect this toolkit", add)
    config = configs.get(auth_id)
    if config is None:
        return Check(name, FAIL, f"auth config {auth_id} does not exist in this project", add)
    slug = str((config.get("toolkit") or {}).get("slug") or "").lower()
    if slug and slug != toolkit:
        return Check(name, FAIL, f"auth config {auth_id} belongs to {slug}, not {toolkit}", add)
    if config.get("status") == "DISABLED":
        return Check(
            name,
            FAIL,
            f"auth config {auth_id} is disabled",
            f"enable {auth_id} in the Composio dashboard (Auth Configs)",
        )
    return Check(name, OK, f"auth config {auth_id} present and enabled")


def _composio_error(body: Any) -> str:
    return mask(_composio_message(body))


def _composio_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error:
            return str(error)
        return str(body.get("message") or "")
    return ""


# --- LLM -------------------------------------------------------------------------------------------------
async def check_llm(settings: Settings, *, probe: bool, seconds: float) -> Check:
    name = "llm"
    if not settings.llm_configured:
        return Check(
            name,
            FAIL,
            "no model configured: users get a 'not configured' reply",
            "set LLM_MODEL (e.g. openai/gpt-4o-mini) and LLM_API_KEY; LLM_API_BASE for any "
            "OpenAI-compatible server",
        )
    if not probe:
        return Check(
            name,
            SKIP,
            f"{settings.llm_model} configured; not contacted (add --llm to send one tiny completion)",
        )
    from kernel.llm import LLM, LLMConfig, LLMError

    llm = LLM(
        LLMConfig(
            model=settings.llm_model,
            api_base=settings.llm_api_base,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout=min(seconds, settings.llm_timeout_seconds),
            retries=0,
        )
    )
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds + 5):
            await llm.complete([{"role": "user", "content": "Reply with the single word: ok"}])
    except (LLMError, TimeoutError) as exc:
        return Check(
            name,
            FAIL,
            f"{settings.llm_model} did not answer: {_short(exc, 300)}",
            "check LLM_MODEL, LLM_API_KEY and LLM_API_BASE (and the provider's status page)",
        )
    return Check(
        name, OK, f"{settings.llm_model} answered in {time.perf_counter() - started:.1f} s"
    )


# --- helpers ------------------------------------------------------------------------------------------------
def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or url
    except Exception:  # a malformed URL is shown as given
        return url


def _short(exc: BaseException, limit: int = 160) -> str:
    """The error's kind and first line, without any URL (a Telegram URL holds the token)."""
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = mask(text if len(text) <= limit else text[: limit - 1] + "…")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unreachable(name: str, base_url: str, exc: BaseException, setting: str) -> Check:
    return Check(
        name,
        FAIL,
        f"cannot reach {_host(base_url)}: {_short(exc)}",
        f"check the network (proxy, firewall, DNS) and {setting}",
    )


def _public_url(settings: Settings, channel: str) -> str:
    base = settings.public_base_url.rstrip("/")
    return f"{base}/webhooks/{channel}" if base else ""


def _webhook_hint(settings: Settings, channel: str, verify_setting: str | None) -> str:
    url = _public_url(settings, channel)
    where = url or f"PUBLIC_BASE_URL + /webhooks/{channel}"
    suffix = f" with verify token {verify_setting}" if verify_setting else ""
    return f"the platform does not expose the webhook registration: register {where}{suffix}"
