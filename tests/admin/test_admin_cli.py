"""`gateway users show|forget|export`, `gateway link|unlink|audit`, run as real processes
against the database a running gateway uses."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from channels.console import ConsoleChannel
from identity import audit
from tests.conftest import GatewayFactory

GATEWAY = str(Path(sys.executable).with_name("gateway"))


async def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": db_url}
    env.pop("ADMIN_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        GATEWAY, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def test_admin_cli_round_trip(make_gateway: GatewayFactory, db_url: str) -> None:
    tg, wa = ConsoleChannel(name="telegram"), ConsoleChannel(name="whatsapp")
    gw = await make_gateway([tg, wa], llm=False)
    await gw.accept([tg.envelope("ann", "/help"), wa.envelope("ann-wa", "/help")])
    await gw.wait_idle(within=120)
    ann = await gw.identity.resolve("telegram", "local", "ann")

    code, out, err = await cli(db_url, "link", "whatsapp:ann-wa", "telegram:ann")
    assert code == 0, err
    assert f"joined {ann.id}" in out and f"entity {ann.entity_id} kept" in out
    assert (await gw.identity.resolve("whatsapp", "local", "ann-wa")).id == ann.id

    code, out, _ = await cli(db_url, "users", "show", ann.id)
    assert code == 0 and "telegram:local:ann" in out and "whatsapp:local:ann-wa" in out
    assert "2 received" in out

    code, out, _ = await cli(db_url, "users", "export", "telegram:ann")
    data = json.loads(out)
    assert {i["channel_user_id"] for i in data["identities"]} == {"ann", "ann-wa"}

    code, out, err = await cli(db_url, "unlink", "whatsapp:ann-wa")
    assert code == 0 and "now user" in out
    assert (await gw.identity.resolve("whatsapp", "local", "ann-wa")).id != ann.id
    code, _, err = await cli(db_url, "unlink", "telegram:ann")
    assert code == 1 and "refused" in err and "only identity" in err

    code, out, _ = await cli(db_url, "users", "forget", "--yes", ann.id)
    assert code == 0 and f"forgot {ann.id}" in out
    assert await gw.identity.get(ann.id) is None
    code, _, err = await cli(db_url, "users", "show", ann.id)
    assert code == 1 and "no user matches" in err

    code, out, _ = await cli(db_url, "audit", "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["actor"], e["via"]) for e in reversed(entries)] == [
        (audit.LINK, audit.ADMIN, "cli"),
        (audit.EXPORT, audit.ADMIN, "cli"),
        (audit.UNLINK, audit.ADMIN, "cli"),
        (audit.FORGET, audit.ADMIN, "cli"),
    ]
