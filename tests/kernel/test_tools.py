"""Per-user Composio tools, through the real composio 0.29 client against the local fake.

The invariant under test: a tool runs only under the entity the caller passes (the
resolved sender), never one the model writes, and there is no default entity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel.tools import AlreadyConnected, ComposioTools, Connection, ToolError
from tests.fakes.composio_api import CONNECT_LINK_PREFIX, FakeComposio
from tests.fakes.server import FakeServer, serve

REPO = Path(__file__).resolve().parents[2]
ASANA_PIN = "20250909_00"
GMAIL_LATEST = "20251024_00"  # gmail is not pinned: executed at the version it was listed with
ASANA_TOOLS = {
    "ASANA_GET_MULTIPLE_TASKS",
    "ASANA_GET_A_TASK",
    "ASANA_CREATE_A_TASK",
    "ASANA_GET_MULTIPLE_WORKSPACES",
}
GMAIL_TOOLS = {"GMAIL_FETCH_EMAILS", "GMAIL_SEND_EMAIL"}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

# --- no test may reach the internet: an audit hook sees every lookup and connect ------------

_outside: list[str] = []
_watching = [False]  # only this module's tests are watched; the hook cannot be removed


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching[0]:
        return
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(host, str) and host not in LOCAL_HOSTS:
        _outside.append(host)


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _stays_offline() -> Iterator[None]:
    before = len(_outside)
    _watching[0] = True
    try:
        yield
    finally:
        _watching[0] = False
    assert _outside[before:] == [], f"tried to reach {_outside[before:]}"


# --- fixtures ------------------------------------------------------------------------------


def entity() -> str:
    """Opaque and random, like identity's entity ids."""
    return f"ent_{secrets.token_hex(8)}"


@pytest.fixture
def fake() -> FakeComposio:
    return FakeComposio(api_key="ck_test_" + secrets.token_hex(4))


@pytest.fixture
def srv(fake: FakeComposio) -> Iterator[FakeServer]:
    with serve(fake.app) as server:
        fake.url = server.url
        yield server


def make_tools(fake: FakeComposio, url: str, **overrides: Any) -> ComposioTools:
    values: dict[str, Any] = {
        "api_key": fake.api_key,
        "base_url": url,
        "toolkits": ["asana", "gmail"],
        "auth_configs": {
            "asana": fake.auth_config_for("asana"),
            "gmail": fake.auth_config_for("gmail"),
        },
        "toolkit_versions": {"asana": ASANA_PIN},
        "max_retries": 0,
        "timeout": 10.0,
        "failure_backoff_seconds": 0.0,
    }
    values.update(overrides)
    return ComposioTools(**values)


@pytest.fixture
async def tools(fake: FakeComposio, srv: FakeServer) -> AsyncIterator[ComposioTools]:
    instance = make_tools(fake, srv.url)
    yield instance
    await instance.aclose()


# --- lazy import ------------------------------------------------------------------------


def test_importing_kernel_tools_does_not_import_composio_or_litellm() -> None:
    code = (
        "import asyncio, json, sys; import kernel.tools, kernel.telemetry; "
        # Constructing it, and asking with no toolkit enabled, needs no composio either.
        "t = kernel.tools.ComposioTools(api_key='k', base_url='http://127.0.0.1:9', "
        "toolkits=[], auth_configs={}, toolkit_versions={}); "
        "assert asyncio.run(t.schemas()) == []; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('composio', 'composio_client', 'litellm'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == []


# --- schemas -------------------------------------------------------------------------------


async def test_schemas_cover_enabled_toolkits_only_and_are_cached(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    schemas = await tools.schemas()
    names = {s["function"]["name"] for s in schemas}
    assert names == ASANA_TOOLS | GMAIL_TOOLS  # github exists on the server but is not enabled
    for schema in schemas:
        assert schema["type"] == "function"
        assert schema["function"]["description"]
        assert schema["function"]["parameters"]["type"] == "object"
        assert "strict" not in schema["function"]
    listed = fake.calls("GET", "/api/v3.1/tools")
    assert listed == 2  # one listing per toolkit

    # Fetched once for everybody, and a caller mutating its copy changes nobody else's.
    schemas[0]["function"]["name"] = "HACKED"
    schemas.clear()
    again = await tools.schemas()
    assert {s["function"]["name"] for s in again} == names
    assert fake.calls("GET", "/api/v3.1/tools") == listed


async def test_schemas_are_listed_at_the_pinned_version(
    tools: ComposioTools, fake: FakeComposio, srv: FakeServer
) -> None:
    await tools.schemas()
    # Read the listing the way the client asked for it: asana pinned, gmail at "latest".
    async with httpx.AsyncClient(base_url=srv.url, headers={"x-api-key": fake.api_key}) as http:
        pinned = await http.get(
            "/api/v3.1/tools",
            params={"toolkit_slug": "asana", "toolkit_versions[asana]": ASANA_PIN},
        )
    assert {item["version"] for item in pinned.json()["items"]} == {ASANA_PIN}


async def test_every_page_of_tools_and_connections_is_read(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    fake.max_page_size = 1
    user = entity()
    accounts = {fake.connect(user, "asana"), fake.connect(user, "gmail")}
    names = {s["function"]["name"] for s in await tools.schemas()}
    assert names == ASANA_TOOLS | GMAIL_TOOLS
    assert fake.calls("GET", "/api/v3.1/tools") == len(ASANA_TOOLS | GMAIL_TOOLS)
    assert {c.id for c in await tools.connections(user)} == accounts


async def test_schema_listing_failure_is_a_tool_error_and_recovers(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    fake.fail("list_tools", 500)
    with pytest.raises(ToolError) as err:
        await tools.schemas()
    assert err.value.reason == "unavailable"
    with pytest.raises(ToolError):
        await tools.execute(entity(), "ASANA_GET_MULTIPLE_TASKS", {})
    fake.heal()
    assert len(await tools.schemas()) == len(ASANA_TOOLS | GMAIL_TOOLS)


async def test_a_failed_refresh_keeps_the_cached_schemas(
    fake: FakeComposio, srv: FakeServer
) -> None:
    tools = make_tools(fake, srv.url, schema_ttl_seconds=0.0)
    try:
        first = await tools.schemas()
        fake.fail("list_tools", 503)
        assert await tools.schemas() == first
    finally:
        await tools.aclose()


# --- execute: the entity is the caller's, never the model's ------------------------------


async def test_execute_runs_under_the_given_entity_and_model_ids_cannot_redirect_it(
    tools: ComposioTools, fake: FakeComposio, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = entity(), entity()
    alice_account = fake.connect(alice, "asana")
    bob_account = fake.connect(bob, "asana")
    caplog.set_level(logging.DEBUG)

    result = await tools.execute(
        alice,
        "ASANA_GET_MULTIPLE_TASKS",
        {
            "project": "p1",
            "user_id": bob,
            "entity_id": bob,
            "connected_account_id": bob_account,
            "userId": bob,
            "Entity-Id": bob,
        },
    )

    (run,) = fake.executions
    assert run["user_id"] == alice
    assert run["arguments"] == {"project": "p1"}
    assert run["connected_account_id"] == alice_account
    assert run["version"] == ASANA_PIN
    assert result["successful"] is True
    assert result["data"]["user_id"] == alice
    assert bob not in json.dumps(result)
    assert "user_id" in caplog.text  # the dropped key names are logged ...
    assert bob not in caplog.text  # ... never their values


async def test_unpinned_toolkit_executes_at_the_listed_version(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    user = entity()
    fake.connect(user, "gmail")
    await tools.execute(user, "GMAIL_FETCH_EMAILS", {"query": "is:unread", "user_id": "me"})
    (run,) = fake.executions
    assert run["version"] == GMAIL_LATEST
    assert run["arguments"] == {"query": "is:unread"}
    assert run["user_id"] == user


async def test_each_user_gets_only_their_own_data_even_concurrently(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    users = [entity() for _ in range(20)]
    for user in users:
        fake.connect(user, "asana")
        fake.seed(user, "ASANA_GET_MULTIPLE_TASKS", {"tasks": [f"task of {user}"]})

    async def ask(user: str) -> dict[str, Any]:
        other = users[(users.index(user) + 1) % len(users)]
        return await tools.execute(user, "ASANA_GET_MULTIPLE_TASKS", {"user_id": other})

    results = await asyncio.gather(*(ask(u) for u in users * 3))
    for user, result in zip(users * 3, results, strict=True):
        assert result["data"] == {"tasks": [f"task of {user}"]}
    assert len(fake.executions) == 60
    assert sorted(run["user_id"] for run in fake.executions) == sorted(users * 3)
    assert all(run["arguments"] == {} for run in fake.executions)


async def test_a_user_without_a_connection_is_told_to_connect(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    alice, bob = entity(), entity()
    fake.connect(bob, "asana")  # someone else's connection must not be used
    with pytest.raises(ToolError) as err:
        await tools.execute(alice, "ASANA_GET_MULTIPLE_TASKS", {})
    assert err.value.reason == "not_connected"
    assert "/connect asana" in str(err.value)
    (run,) = fake.executions
    assert (run["user_id"], run["outcome"]) == (alice, "no_connection")


async def test_a_tool_level_failure_is_returned_to_the_model(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    user = entity()
    fake.connect(user, "asana")
    fake.seed(user, "ASANA_GET_A_TASK", {}, successful=False, error="Task not found")
    result = await tools.execute(user, "ASANA_GET_A_TASK", {"task_gid": "1"})
    assert result == {"data": {}, "error": "Task not found", "successful": False}


async def test_unknown_or_disabled_tools_are_refused_without_calling_composio(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    user = entity()
    for name in ("GITHUB_GET_THE_AUTHENTICATED_USER", "NOT_A_TOOL", ""):
        with pytest.raises(ToolError) as err:
            await tools.execute(user, name, {})
        assert err.value.reason == "unknown_tool"
    with pytest.raises(ToolError):
        await tools.execute(user, "ASANA_GET_A_TASK", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ToolError):
        await tools.execute(user, None, {})  # type: ignore[arg-type]
    assert fake.executions == []


@pytest.mark.parametrize("bad", ["", "   ", "default", "default_user", "DEFAULT_USER"])
async def test_there_is_no_default_entity(
    tools: ComposioTools, fake: FakeComposio, bad: str
) -> None:
    fake.connect("default_user", "asana")
    with pytest.raises(ToolError):
        await tools.execute(bad, "ASANA_GET_MULTIPLE_TASKS", {})
    with pytest.raises(ToolError):
        await tools.connect_link(bad, "asana")
    with pytest.raises(ToolError):
        await tools.connections(bad)
    assert fake.executions == []
    assert fake.links == []


@pytest.mark.parametrize("body", [None, "<html><body>502 Bad Gateway</body></html>"])
async def test_composio_server_errors_become_tool_errors(
    tools: ComposioTools, fake: FakeComposio, body: str | None
) -> None:
    user = entity()
    fake.connect(user, "asana")
    status = 500 if body is None else 502
    # get_tool first: the SDK fetches a tool's definition once, before its first execution.
    for endpoint in ("get_tool", "execute"):
        fake.fail(endpoint, status, body=body)
        with pytest.raises(ToolError) as err:
            await tools.execute(user, "ASANA_GET_MULTIPLE_TASKS", {})
        assert err.value.reason == "unavailable"
        assert f"HTTP {status}" in str(err.value)
        fake.heal()
    fake.fail("create_link", status, body=body)
    with pytest.raises(ToolError):
        await tools.connect_link(user, "gmail")
    fake.fail("list_accounts", status, body=body)
    with pytest.raises(ToolError):
        await tools.connections(user)
    fake.heal()
    result = await tools.execute(user, "ASANA_GET_MULTIPLE_TASKS", {})
    assert result["data"]["user_id"] == user


async def test_a_rejected_api_key_is_reported_as_such(fake: FakeComposio, srv: FakeServer) -> None:
    tools = make_tools(fake, srv.url, api_key="ck_wrong")
    try:
        with pytest.raises(ToolError) as err:
            await tools.schemas()
        assert err.value.reason == "auth"
        assert "COMPOSIO_API_KEY" in str(err.value)
    finally:
        await tools.aclose()


async def test_unreachable_composio_is_a_tool_error(fake: FakeComposio) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tools = make_tools(fake, f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        user = entity()
        for call in (
            tools.schemas(),
            tools.execute(user, "ASANA_GET_MULTIPLE_TASKS", {}),
            tools.connect_link(user, "asana"),
            tools.connections(user),
        ):
            with pytest.raises(ToolError) as err:
                await call
            assert err.value.reason == "unavailable"
    finally:
        await tools.aclose()


# --- connect links and connections -------------------------------------------------------


async def test_two_users_get_two_links_each_bound_to_its_own_entity(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    alice, bob = entity(), entity()
    alice_url = await tools.connect_link(alice, "asana")
    bob_url = await tools.connect_link(bob, "Asana")

    assert alice_url != bob_url
    for url, owner in ((alice_url, alice), (bob_url, bob)):
        assert url.startswith(CONNECT_LINK_PREFIX + "lk_")
        assert fake.link_owner(url) == owner
    assert {link.user_id for link in fake.links} == {alice, bob}
    assert all(link.user_id not in ("default", "default_user") for link in fake.links)
    assert {link.auth_config_id for link in fake.links} == {fake.auth_config_for("asana")}

    # Each finishes OAuth through their own link: each owns one ACTIVE account.
    fake.complete_link(alice_url)
    fake.complete_link(bob_url)
    assert len(fake.active_accounts(alice, "asana")) == 1
    assert len(fake.active_accounts(bob, "asana")) == 1


async def test_an_active_connection_means_already_connected(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    alice, bob = entity(), entity()
    url = await tools.connect_link(alice, "asana")
    fake.complete_link(url)
    with pytest.raises(AlreadyConnected) as err:
        await tools.connect_link(alice, "asana")
    assert isinstance(err.value, ToolError)
    assert err.value.reason == "already_connected"
    assert len(fake.links) == 1
    # Alice's connection does not count for Bob, nor for Alice's other toolkits.
    assert (await tools.connect_link(bob, "asana")).startswith(CONNECT_LINK_PREFIX)
    assert (await tools.connect_link(alice, "gmail")).startswith(CONNECT_LINK_PREFIX)


async def test_connections_lists_only_this_entitys_active_accounts(
    tools: ComposioTools, fake: FakeComposio
) -> None:
    alice, bob = entity(), entity()
    assert await tools.connections(alice) == []
    asana = fake.connect(alice, "asana")
    fake.connect(alice, "gmail", status="INITIATED")
    fake.connect(alice, "gmail", status="EXPIRED")
    bob_gmail = fake.connect(bob, "gmail")

    assert await tools.connections(alice) == [
        Connection(id=asana, toolkit="asana", status="ACTIVE")
    ]
    assert await tools.connections(bob) == [
        Connection(id=bob_gmail, toolkit="gmail", status="ACTIVE")
    ]

    url = await tools.connect_link(bob, "asana")
    assert {c.toolkit for c in await tools.connections(bob)} == {"gmail"}  # not finished yet
    fake.complete_link(url)
    assert {c.toolkit for c in await tools.connections(bob)} == {"gmail", "asana"}
    assert {c.toolkit for c in await tools.connections(alice)} == {"asana"}


async def test_connecting_a_toolkit_that_is_not_set_up_says_what_to_configure(
    fake: FakeComposio, srv: FakeServer
) -> None:
    tools = make_tools(fake, srv.url, auth_configs={"asana": fake.auth_config_for("asana")})
    user = entity()
    try:
        with pytest.raises(ToolError) as err:
            await tools.connect_link(user, "gmail")
        assert err.value.reason == "not_configured"
        assert "COMPOSIO_AUTH_CONFIGS" in str(err.value)
        with pytest.raises(ToolError) as err:
            await tools.connect_link(user, "github")
        assert err.value.reason == "not_enabled"
        assert "COMPOSIO_TOOLKITS" in str(err.value)
        with pytest.raises(ToolError) as err:
            await tools.connect_link(user, " ")
        assert err.value.reason == "invalid"
    finally:
        await tools.aclose()
    assert fake.links == []


async def test_an_unknown_auth_config_is_a_tool_error(fake: FakeComposio, srv: FakeServer) -> None:
    tools = make_tools(fake, srv.url, auth_configs={"asana": "ac_does_not_exist"})
    try:
        with pytest.raises(ToolError) as err:
            await tools.connect_link(entity(), "asana")
        assert err.value.reason == "rejected"
    finally:
        await tools.aclose()


# --- telemetry -----------------------------------------------------------------------------

_TELEMETRY_SCRIPT = textwrap.dedent(
    """
    import asyncio, atexit, json, sys

    base_url, api_key, telemetry, entity, report = sys.argv[1:6]
    outside = []

    def audit(event, args):
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect" and isinstance(args[1], tuple):
            host = args[1][0]
        else:
            return
        if isinstance(host, bytes):
            host = host.decode()
        if host not in ("127.0.0.1", "localhost", "::1"):
            outside.append(str(host))

    sys.addaudithook(audit)

    def write_report():  # registered first, so it runs after composio's own atexit flush
        with open(report, "w") as fh:
            json.dump(outside, fh)

    atexit.register(write_report)

    # Send composio's telemetry (if any) to the fake instead of telemetry.composio.dev.
    from composio.core.models import _telemetry
    _telemetry.METRIC_ENDPOINT = base_url + "/v1/metrics/invocations"
    _telemetry.ERROR_ENDPOINT = base_url + "/v1/errors"

    from kernel.tools import ComposioTools, ToolError

    async def main():
        tools = ComposioTools(
            api_key=api_key, base_url=base_url, toolkits=["asana", "gmail"],
            auth_configs={"asana": "ac_asana_test", "gmail": "ac_gmail_test"},
            toolkit_versions={"asana": "20250909_00"}, telemetry=telemetry == "on",
            max_retries=0,
        )
        await tools.schemas()
        await tools.execute(entity, "ASANA_GET_MULTIPLE_TASKS", {})
        try:  # gmail is not connected: a failing call (an "error" event when tracking)
            await tools.execute(entity, "GMAIL_FETCH_EMAILS", {})
        except ToolError:
            pass
        await tools.connect_link(entity, "gmail")
        await tools.connections(entity)
        await tools.aclose()

    asyncio.run(main())
    """
)


async def _run_client_process(
    fake: FakeComposio, url: str, telemetry: str, report: Path
) -> list[str]:
    user = entity()
    fake.connect(user, "asana")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TELEMETRY_SCRIPT,
        url,
        fake.api_key or "k",
        telemetry,
        user,
        str(report),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(await asyncio.to_thread(report.read_text))


async def test_telemetry_is_off_by_default_and_the_check_would_see_it(
    tmp_path: Path,
) -> None:
    """Two real client processes, each exiting (which flushes composio's telemetry queue):
    with telemetry off the fake sees zero telemetry requests; with it on (the control)
    it sees them, proving the check can see telemetry at all."""
    off_fake, on_fake = FakeComposio(), FakeComposio()
    with serve(off_fake.app) as off_srv, serve(on_fake.app) as on_srv:
        off_outside, on_outside = await asyncio.gather(
            _run_client_process(off_fake, off_srv.url, "off", tmp_path / "off.json"),
            _run_client_process(on_fake, on_srv.url, "on", tmp_path / "on.json"),
        )
    assert off_fake.executions and on_fake.executions  # both really used the API
    assert off_fake.telemetry == []
    assert off_outside == []
    assert len(on_fake.telemetry) > 0
    assert on_outside == []
    assert off_fake.unexpected == [] and on_fake.unexpected == []


# --- the fake speaks the client's own response models ------------------------------------


async def test_fake_responses_validate_against_composio_client_models(
    fake: FakeComposio, srv: FakeServer
) -> None:
    from composio_client.types.connected_account_list_response import (
        ConnectedAccountListResponse,
    )
    from composio_client.types.link_create_response import LinkCreateResponse
    from composio_client.types.tool_execute_response import ToolExecuteResponse
    from composio_client.types.tool_list_response import ToolListResponse
    from composio_client.types.tool_retrieve_response import ToolRetrieveResponse

    user = entity()
    fake.connect(user, "asana")
    async with httpx.AsyncClient(base_url=srv.url, headers={"x-api-key": fake.api_key}) as http:
        listing = (await http.get("/api/v3.1/tools", params={"toolkit_slug": "asana"})).json()
        ToolListResponse.model_validate(listing, strict=False)
        one = (await http.get("/api/v3.1/tools/ASANA_GET_A_TASK")).json()
        ToolRetrieveResponse.model_validate(one)
        link = await http.post(
            "/api/v3.1/connected_accounts/link",
            json={"user_id": user, "auth_config_id": fake.auth_config_for("gmail")},
        )
        assert link.status_code == 201
        LinkCreateResponse.model_validate(link.json())
        accounts = (
            await http.get("/api/v3.1/connected_accounts", params={"user_ids": user})
        ).json()
        assert {a["status"] for a in accounts["items"]} == {"ACTIVE", "INITIATED"}
        ConnectedAccountListResponse.model_validate(accounts)
        ran = await http.post(
            "/api/v3.1/tools/execute/ASANA_GET_A_TASK",
            json={"user_id": user, "version": ASANA_PIN, "arguments": {"task_gid": "1"}},
        )
        ToolExecuteResponse.model_validate(ran.json())
        missing = await http.post(
            "/api/v3.1/tools/execute/ASANA_GET_A_TASK", json={"arguments": {}}
        )
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == 1803
    assert fake.executions[-1]["user_id"] == "default"  # like the real API: no id, "default"
    assert fake.unexpected == []
