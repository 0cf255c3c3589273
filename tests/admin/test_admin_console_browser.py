"""The admin console driven in headless Chromium (Playwright + Debian's chromium).

Log in, search a user, open it, link two identities through the confirmation step, see
the audit entry, log out (and the old cookie is dead); a forged POST without the CSRF
token is refused, from another site and from the console's own origin alike.

The app and the browser driver run on the test's event loop (uvicorn serves a pre-bound
socket), so the gateway started by the fixture is the one the browser talks to.

Set ADMIN_SCREENSHOT=docs/admin-console.png to refresh the README's screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from channels.console import ConsoleChannel
from channels.envelope import Envelope, Sender
from gateway.runtime import Gateway
from identity.audit import AuditEntry
from identity.models import Identity, User
from tests.conftest import IN_CI, GatewayFactory
from tests.fakes.composio_api import FakeComposio

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "console-test-token-5b2d"


def require_chromium() -> None:
    """Skip when Chromium is missing, except under CI=true, where that is a failure."""
    if Path(CHROMIUM).exists():
        return
    message = (
        f"Chromium not found at {CHROMIUM}: the admin console browser tests need Debian's "
        "chromium (`apt-get install -y chromium`; `make test` installs it when run as root)."
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def serve_here(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 (ephemeral port) on this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])  # listening once this returns
    loop = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await loop
        await server.shutdown(sockets=[sock])
        sock.close()


def evil_site(target: str) -> Starlette:
    """Another site (another port is another origin) with a form aimed at the console."""

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(
            f"""<!doctype html><title>You won!</title>
            <form method="post" action="{target}">
              <input type="hidden" name="confirm" value="yes">
              <button id="prize" type="submit">Claim your prize</button>
            </form>"""
        )

    return Starlette(routes=[Route("/", page)])


def person(
    channel: ConsoleChannel, uid: str, name: str, text: str, phone: str | None = None
) -> Envelope:
    """An envelope with the profile the real platform would give (Telegram has @handles)."""
    envelope = channel.envelope(uid, text, display_name=name)
    username = uid if channel.name == "telegram" else None
    return envelope.model_copy(
        update={"sender": Sender(id=uid, display_name=name, username=username, phone=phone)}
    )


async def populate(gw: Gateway, fake_composio: FakeComposio) -> None:
    wa, tg, sl = (gw.channels[n] for n in ("whatsapp", "telegram", "slack"))
    assert (
        isinstance(wa, ConsoleChannel)
        and isinstance(tg, ConsoleChannel)
        and isinstance(sl, ConsoleChannel)
    )
    await gw.accept(
        [
            person(
                wa, "wa-4477009", "Ann Lee", "Can you check my calendar?", phone="+447700900123"
            ),
            person(tg, "ann_lee", "Ann Lee", "hi from telegram"),
            person(sl, "U04ANNLEE", "Ann Lee", "morning!"),
            person(tg, "bob_stone", "Bob Stone", "what's on my plate today?"),
            person(wa, "wa-4915112", "Chidi Okafor", "hello", phone="+4915112345678"),
            person(sl, "U07DANA", "Dana Whitfield", "summarise #general"),
            person(tg, "eva_k", "Eva Kowalski", "remind me at 5"),
        ]
    )
    await gw.accept([person(wa, "wa-4477009", "Ann Lee", "and my tasks for tomorrow")])
    await gw.wait_idle(within=120)
    ann = await gw.identity.resolve("whatsapp", "local", "wa-4477009")
    fake_composio.connect(ann.entity_id, "gmail")
    fake_composio.connect(ann.entity_id, "asana")


async def test_admin_console_in_a_real_browser(
    make_gateway: GatewayFactory, fake_composio: FakeComposio, tmp_path: Path
) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    channels = [ConsoleChannel(name=n) for n in ("whatsapp", "telegram", "slack")]
    gw = await make_gateway(channels, tools=True, admin_token=TOKEN)
    await populate(gw, fake_composio)
    bob = (await gw.identity.resolve("telegram", "local", "bob_stone")).id

    async with serve_here(gw.app) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = await browser.new_context(viewport={"width": 1360, "height": 900})
        page = await context.new_page()

        # Not signed in: sent to the login form, which refuses a wrong token.
        await page.goto(f"{base}/admin/users")
        await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
        await page.fill("#token", "not-the-token")
        await page.click("button[type=submit]")
        await expect(page.locator(".alert")).to_contain_text("not the admin token")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await expect(page).to_have_url(f"{base}/admin/users")
        await expect(page.locator("h1")).to_have_text("Users")
        await expect(page.locator("tbody tr")).to_have_count(7)

        cookie = next(c for c in await context.cookies() if c["name"] == "gw_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"

        # Search, open Ann's WhatsApp user; the phone number is masked.
        await page.fill("input[name=q]", "ann lee")
        await page.click("form.search button")
        await expect(page.locator("tbody tr")).to_have_count(3)
        await page.screenshot(path=str(tmp_path / "users.png"), full_page=True)
        await page.locator("tbody tr", has_text="WhatsApp").locator("a.strong").click()
        await expect(page.locator("h1")).to_have_text("Ann Lee")
        body = await page.inner_text("body")
        assert "+44" in body and "+447700900123" not in body
        await expect(page.locator(".conns")).to_contain_text("Gmail")
        ann_id = page.url.rsplit("/", 1)[-1]

        # Link her Telegram and Slack accounts, each through the confirmation page.
        for ref, channel in (("telegram:ann_lee", "Telegram"), ("slack:U04ANNLEE", "Slack")):
            await page.fill("#ref", ref)
            await page.get_by_role("button", name="Link…", exact=True).click()
            await expect(page.locator("h1")).to_have_text("Confirm link")
            await page.screenshot(path=str(tmp_path / f"confirm-{channel}.png"), full_page=True)
            await page.get_by_role("button", name="Link accounts").click()
            await expect(page.locator(".notice")).to_contain_text("Linked")
            await expect(page.locator("table").first).to_contain_text(channel)
        assert page.url.startswith(f"{base}/admin/users/{ann_id}")
        await expect(page.locator("table").first.locator("tbody tr")).to_have_count(3)
        async with gw.sessions() as session:
            owners = set(
                await session.scalars(
                    select(Identity.user_id).where(
                        Identity.channel_user_id.in_(["wa-4477009", "ann_lee", "U04ANNLEE"])
                    )
                )
            )
        assert owners == {ann_id}
        shot = tmp_path / "admin-console.png"
        await page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("ADMIN_SCREENSHOT"):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=target, full_page=False)

        # The audit log shows the links, made by the admin via the console.
        await page.click("nav >> text=Audit log")
        await expect(page.locator("h1")).to_have_text("Audit log")
        rows = page.locator("tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("link")
        await expect(rows.first).to_contain_text("admin")
        await expect(rows.first).to_contain_text("via console")
        await expect(rows.first).to_contain_text("(slack) joined")
        await page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)

        # Forged POSTs are refused and change nothing.
        forget = f"{base}/admin/users/{bob}/forget"
        async with serve_here(evil_site(forget)) as evil:
            attacker = await context.new_page()
            await attacker.goto(evil)
            await attacker.click("#prize")
            await expect(attacker.locator("h1")).to_have_text("Refused")
            await attacker.close()
        no_token = await page.request.post(forget, form={"confirm": "yes"})
        assert no_token.status == 403 and "CSRF" in await no_token.text()
        await page.goto(f"{base}/admin/users/{ann_id}")
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        cross_origin = await page.request.post(
            forget,
            form={"confirm": "yes", "csrf": csrf or ""},
            headers={"Origin": "http://evil.example"},
        )
        assert cross_origin.status == 403
        async with gw.sessions() as session:
            assert (await session.get(User, bob)).retired_at is None  # type: ignore[union-attr]
            actions = list(await session.scalars(select(AuditEntry.action)))
        assert actions == ["link", "link"]

        # Sign out: the session is gone on the server too, not just in this browser.
        saved = await context.cookies()
        await page.click("text=Sign out")
        await expect(page.locator(".notice")).to_contain_text("signed out")
        await page.goto(f"{base}/admin/users")
        await expect(page).to_have_url(re.compile(r"/admin/login"))
        await context.add_cookies([c for c in saved if c["name"] == "gw_admin"])  # type: ignore[misc]
        await page.goto(f"{base}/admin/users")
        await expect(page).to_have_url(re.compile(r"/admin/login"))
        await browser.close()
