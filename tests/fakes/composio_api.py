"""A fake Composio API (v3.1) speaking what composio==0.29.0 really sends and reads.

Serve it with tests.fakes.server.serve(fake.app) and point the real SDK at it
(`Composio(base_url=srv.url)`). Every endpoint the pinned client calls for tools and
connections is here with real-shaped JSON (the test suite validates the bodies against
composio_client's own response models):

  GET  /api/v3.1/tools                  toolkit_slug, tool_slugs, toolkit_versions, limit, cursor
  GET  /api/v3.1/tools/{slug}           toolkit_versions / version
  POST /api/v3.1/tools/execute/{slug}   {"user_id", "entity_id", "connected_account_id", "version",
                                         "arguments"}
  GET  /api/v3.1/connected_accounts     user_ids, toolkit_slugs, statuses, auth_config_ids,
                                        connected_account_ids, limit, cursor (comma lists)
  GET  /api/v3.1/connected_accounts/{id}
  POST /api/v3.1/connected_accounts/link {"auth_config_id", "user_id", "callback_url"?}
  POST /v1/metrics/invocations, /v1/errors   composio's telemetry (recorded in `telemetry`)

Like the real service, an execution without a user id runs as "default" — so a caller that
forgets the entity shows up as "default" in `executions` instead of passing silently.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONNECT_LINK_PREFIX = "https://connect.composio.dev/link/"
# What tests/conftest.py configures the gateway with.
DEFAULT_AUTH_CONFIGS = {"ac_asana_test": "asana", "ac_gmail_test": "gmail"}
_ASANA_VERSIONS = ("20250101_00", "20250909_00", "20251027_00")
_GMAIL_VERSIONS = ("20250101_00", "20250815_00", "20251024_00")
_LOGO = "https://logos.composio.dev/api/{}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _props(**props: tuple[str, str]) -> dict[str, Any]:
    return {name: {"type": kind, "description": text} for name, (kind, text) in props.items()}


@dataclass(frozen=True)
class ToolDef:
    slug: str
    toolkit: str
    name: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...] = ()
    versions: tuple[str, ...] = _ASANA_VERSIONS
    no_auth: bool = False

    def item(self, version: str) -> dict[str, Any]:
        """One tool, shaped like an item of GET /api/v3.1/tools (ToolListResponse.Item)."""
        logo = _LOGO.format(self.toolkit)
        return {
            "slug": self.slug,
            "name": self.name,
            "description": self.description,
            "human_description": self.description,
            "input_parameters": {
                "type": "object",
                "title": f"{self.name}Request",
                "properties": self.properties,
                "required": list(self.required),
            },
            "output_parameters": {
                "type": "object",
                "properties": {
                    "data": {"type": "object", "description": "Data from the action execution"},
                    "error": {"type": "string", "description": "Error if any occurred"},
                    "successful": {"type": "boolean", "description": "Whether it succeeded"},
                },
                "required": ["data", "successful"],
            },
            "available_versions": list(self.versions),
            "version": version,
            "deprecated": {
                "available_versions": list(self.versions),
                "displayName": self.name,
                "is_deprecated": False,
                "toolkit": {"logo": logo},
                "version": version,
            },
            "is_deprecated": False,
            "no_auth": self.no_auth,
            "scopes": [],
            "scope_requirements": None,
            "tags": [],
            "toolkit": {"slug": self.toolkit, "name": self.toolkit.title(), "logo": logo},
        }


# Real slugs of Composio's Asana and Gmail toolkits (parameters trimmed to the essentials).
TOOLS: tuple[ToolDef, ...] = (
    ToolDef(
        "ASANA_GET_MULTIPLE_TASKS",
        "asana",
        "Get multiple tasks",
        "Retrieves a list of tasks filterable by assignee, project, section or completion.",
        _props(
            assignee=("string", "Assignee gid or 'me'"),
            project=("string", "Project gid"),
            workspace=("string", "Workspace gid"),
            completed_since=("string", "Only tasks incomplete or completed since this time"),
        ),
    ),
    ToolDef(
        "ASANA_GET_A_TASK",
        "asana",
        "Get a task",
        "Returns the complete task record.",
        _props(task_gid=("string", "The task to get")),
        ("task_gid",),
    ),
    ToolDef(
        "ASANA_CREATE_A_TASK",
        "asana",
        "Create a task",
        "Creates a new task.",
        _props(
            name=("string", "Task name"),
            notes=("string", "Free-form notes"),
            workspace=("string", "Workspace gid"),
        ),
        ("name",),
    ),
    ToolDef(
        "ASANA_GET_MULTIPLE_WORKSPACES",
        "asana",
        "Get multiple workspaces",
        "Returns the workspaces visible to the authorized user.",
        {},
    ),
    ToolDef(
        "GMAIL_FETCH_EMAILS",
        "gmail",
        "Fetch emails",
        "Fetches a list of email messages from a Gmail account.",
        _props(
            user_id=("string", "User's email address or 'me' for the authenticated user"),
            query=("string", "Gmail search query"),
            max_results=("integer", "Maximum number of messages"),
        ),
        versions=_GMAIL_VERSIONS,
    ),
    ToolDef(
        "GMAIL_SEND_EMAIL",
        "gmail",
        "Send email",
        "Sends an email via the Gmail API.",
        _props(
            recipient_email=("string", "To"),
            subject=("string", "Subject"),
            body=("string", "Body"),
            user_id=("string", "'me' for the authenticated user"),
        ),
        ("recipient_email", "body"),
        versions=_GMAIL_VERSIONS,
    ),
    ToolDef(
        "GITHUB_GET_THE_AUTHENTICATED_USER",
        "github",
        "Get the authenticated user",
        "Gets the authenticated GitHub user.",
        {},
    ),
)


@dataclass
class Account:
    id: str
    user_id: str
    toolkit: str
    auth_config_id: str
    status: str
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        """Shaped like ConnectedAccountListResponse.Item (OAuth2 account; tokens masked)."""
        if self.status == "ACTIVE":
            val: dict[str, Any] = {
                "status": "ACTIVE",
                "access_token": "gho_****",
                "token_type": "Bearer",
            }
        elif self.status == "INITIATED":
            val = {"status": "INITIATED", "redirectUrl": f"https://auth.example/{self.id}"}
        else:
            val = {"status": self.status}
        return {
            "id": self.id,
            "alias": None,
            "auth_config": {
                "id": self.auth_config_id,
                "auth_scheme": "OAUTH2",
                "is_composio_managed": True,
                "is_disabled": False,
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "data": {"status": self.status},
            "state": {"authScheme": "OAUTH2", "val": val},
            "status": self.status,
            "status_reason": None,
            "is_disabled": False,
            "test_request_endpoint": None,
            "toolkit": {"slug": self.toolkit},
            "user_id": self.user_id,
            "word_id": f"{self.toolkit}_{self.id[-6:].lower()}",
        }


@dataclass
class Link:
    url: str
    token: str
    user_id: str
    auth_config_id: str
    toolkit: str
    connected_account_id: str
    callback_url: str | None


def error_body(status: int, message: str, code: int, slug: str, fix: str = "") -> dict[str, Any]:
    """Composio's error envelope (what composio_client reads into APIStatusError.details)."""
    return {
        "error": {
            "message": message,
            "code": code,
            "slug": slug,
            "status": status,
            "request_id": secrets.token_hex(8),
            "suggested_fix": fix,
            "errors": [],
        }
    }


def _error(status: int, message: str, code: int, slug: str, fix: str = "") -> JSONResponse:
    return JSONResponse(error_body(status, message, code, slug, fix), status_code=status)


def _csv(request: Request, name: str) -> list[str]:
    values: list[str] = []
    for raw in request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]"):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


def _page(
    request: Request, items: list[Any], max_limit: int = 1000, default_limit: int = 20
) -> dict[str, Any]:
    """Cursor pagination like the real API: the cursor is base64 of the next offset."""
    limit = int(float(request.query_params.get("limit") or default_limit))
    limit = max(1, min(limit, max_limit))
    cursor = request.query_params.get("cursor")
    offset = int(base64.b64decode(cursor).decode()) if cursor else 0
    chunk = items[offset : offset + limit]
    following = offset + limit
    pages = max(1, -(-len(items) // max(limit, 1)))
    return {
        "items": chunk,
        "next_cursor": base64.b64encode(str(following).encode()).decode()
        if following < len(items)
        else None,
        "total_items": len(items),
        "total_pages": pages,
        "current_page": offset // max(limit, 1) + 1,
    }


class FakeComposio:
    """State is readable from the test thread; handlers run in the server's thread."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        auth_configs: dict[str, str] | None = None,
        tools: tuple[ToolDef, ...] = TOOLS,
    ) -> None:
        self.api_key = api_key  # None: any non-empty x-api-key is accepted
        self.url = ""  # set by whoever serves it
        self.max_page_size = 1000  # the real API's cap; lower it to exercise pagination
        self.auth_configs = dict(auth_configs or DEFAULT_AUTH_CONFIGS)  # id -> toolkit
        self.tools = {tool.slug: tool for tool in tools}
        self.executions: list[dict[str, Any]] = []
        self.accounts: list[Account] = []
        self.links: list[Link] = []
        self.telemetry: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: dict[str, tuple[int, str | dict[str, Any] | None, int | None]] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/v3.1/tools", self._list_tools, methods=["GET"]),
                Route("/api/v3.1/tools/execute/{slug}", self._execute, methods=["POST"]),
                Route("/api/v3.1/tools/{slug}", self._get_tool, methods=["GET"]),
                Route("/api/v3.1/connected_accounts", self._list_accounts, methods=["GET"]),
                Route("/api/v3.1/connected_accounts/link", self._create_link, methods=["POST"]),
                Route("/api/v3.1/connected_accounts/{id}", self._get_account, methods=["GET"]),
                Route("/v1/metrics/invocations", self._telemetry, methods=["POST"]),
                Route("/v1/errors", self._telemetry, methods=["POST"]),
                Route(
                    "/{path:path}", self._unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
                ),
            ]
        )

    # --- test helpers ---------------------------------------------------------------

    def auth_config_for(self, toolkit: str) -> str:
        for ac_id, kit in self.auth_configs.items():
            if kit == toolkit:
                return ac_id
        raise KeyError(toolkit)

    def seed(
        self,
        user_id: str,
        slug: str,
        result: dict[str, Any],
        *,
        successful: bool = True,
        error: str | None = None,
    ) -> None:
        """What `slug` returns (as `data`) when executed for `user_id`."""
        with self._lock:
            self._results[(user_id, slug)] = {
                "data": result,
                "successful": successful,
                "error": error,
            }

    def connect(self, user_id: str, toolkit: str, status: str = "ACTIVE") -> str:
        """Create a connected account directly (as if the user had finished a link)."""
        with self._lock:
            account = Account(
                id=f"ca_{secrets.token_urlsafe(9)}",
                user_id=user_id,
                toolkit=toolkit,
                auth_config_id=self.auth_config_for(toolkit),
                status=status,
            )
            self.accounts.append(account)
            return account.id

    def complete_link(self, url: str) -> str:
        """The user opened `url` and finished OAuth: their account becomes ACTIVE."""
        with self._lock:
            for link in self.links:
                if link.url == url:
                    for account in self.accounts:
                        if account.id == link.connected_account_id:
                            account.status = "ACTIVE"
                            account.updated_at = _now()
                            return account.id
            raise KeyError("no such connect link")

    def link_owner(self, url: str) -> str:
        return next(link.user_id for link in self.links if link.url == url)

    def active_accounts(self, user_id: str, toolkit: str | None = None) -> list[Account]:
        return [
            a
            for a in self.accounts
            if a.user_id == user_id and a.status == "ACTIVE" and toolkit in (None, a.toolkit)
        ]

    def fail(
        self,
        endpoint: str,
        status: int = 500,
        *,
        body: str | dict[str, Any] | None = None,
        times: int | None = None,
    ) -> None:
        """Make an endpoint fail: list_tools, get_tool, execute, list_accounts, get_account,
        create_link. `times=None` keeps failing until `heal()`."""
        with self._lock:
            self._failures[endpoint] = (status, body, times)

    def heal(self, endpoint: str | None = None) -> None:
        with self._lock:
            if endpoint is None:
                self._failures.clear()
            else:
                self._failures.pop(endpoint, None)

    def calls(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    # --- plumbing -------------------------------------------------------------------

    def _gate(self, request: Request, endpoint: str) -> Response | None:
        """Records the request, checks the API key, applies injected failures."""
        with self._lock:
            self.requests.append((request.method, request.url.path))
            failure = self._failures.get(endpoint)
            if failure is not None:
                status, body, times = failure
                if times is not None:
                    if times <= 1:
                        del self._failures[endpoint]
                    else:
                        self._failures[endpoint] = (status, body, times - 1)
        key = request.headers.get("x-api-key")
        if not key or (self.api_key is not None and key != self.api_key):
            return _error(
                401,
                "Invalid API key",
                10401,
                "Auth_InvalidApiKey",
                "Pass a valid project API key in the x-api-key header",
            )
        if failure is None:
            return None
        status, body, _ = failure
        if isinstance(body, str):
            return Response(body, status_code=status, media_type="text/html")
        return JSONResponse(
            body or error_body(status, "Internal server error", status, "Internal_ServerError"),
            status_code=status,
        )

    def _version_for(self, request: Request, tool: ToolDef) -> str | None:
        """The version a listing/retrieval shows; None if a pinned version does not exist."""
        explicit = request.query_params.get("version")
        pinned = explicit or request.query_params.get(f"toolkit_versions[{tool.toolkit}]")
        if pinned is None:
            plain = request.query_params.get("toolkit_versions")
            pinned = plain if plain and "[" not in plain else None
        if pinned in (None, "latest"):
            return tool.versions[-1]
        return pinned if pinned in tool.versions else None

    # --- tools ----------------------------------------------------------------------

    async def _list_tools(self, request: Request) -> Response:
        if (failed := self._gate(request, "list_tools")) is not None:
            return failed
        toolkits = {t.lower() for t in _csv(request, "toolkit_slug")}
        slugs = set(_csv(request, "tool_slugs"))
        items = []
        for tool in self.tools.values():
            if slugs and tool.slug not in slugs:
                continue
            if not slugs and toolkits and tool.toolkit not in toolkits:
                continue
            version = self._version_for(request, tool)
            if version is None:
                return _error(
                    400,
                    f"Toolkit version not found for {tool.toolkit}",
                    1101,
                    "Toolkit_VersionNotFound",
                    "Use one of the available_versions",
                )
            items.append(tool.item(version))
        return JSONResponse(_page(request, items, self.max_page_size))

    async def _get_tool(self, request: Request) -> Response:
        if (failed := self._gate(request, "get_tool")) is not None:
            return failed
        tool = self.tools.get(request.path_params["slug"])
        if tool is None:
            return _error(
                404, f"Tool {request.path_params['slug']} not found", 1102, "Tool_ToolNotFound"
            )
        version = self._version_for(request, tool)
        if version is None:
            return _error(400, "Toolkit version not found", 1101, "Toolkit_VersionNotFound")
        return JSONResponse(tool.item(version))

    async def _execute(self, request: Request) -> Response:
        if (failed := self._gate(request, "execute")) is not None:
            return failed
        slug = request.path_params["slug"]
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "Invalid JSON body", 1000, "Request_InvalidBody")
        user_id = body.get("user_id") or body.get("entity_id") or "default"
        arguments = body.get("arguments") or {}
        record: dict[str, Any] = {
            "slug": slug,
            "user_id": user_id,
            "arguments": arguments,
            "version": body.get("version"),
            "connected_account_id": body.get("connected_account_id"),
            "outcome": "completed",
        }
        tool = self.tools.get(slug)
        with self._lock:
            self.executions.append(record)
            if tool is None:
                record["outcome"] = "unknown_tool"
                return _error(404, f"Tool {slug} not found", 1102, "Tool_ToolNotFound")
            version = body.get("version")
            if version and version != "latest" and version not in tool.versions:
                record["outcome"] = "bad_version"
                return _error(
                    400, f"Version {version} not found for {slug}", 1101, "Toolkit_VersionNotFound"
                )
            account = self._account_for(user_id, tool, body.get("connected_account_id"))
            if account is None and not tool.no_auth:
                record["outcome"] = "no_connection"
                return _error(
                    400,
                    "No connected account found for this user and toolkit",
                    1803,
                    "ConnectedAccount_NotFound",
                    "Connect the user to the toolkit first",
                )
            if account is not None:
                record["connected_account_id"] = account.id
            seeded = self._results.get((user_id, slug))
        if seeded is None:
            seeded = {
                "data": {
                    "user_id": user_id,
                    "items": [f"{slug} result for {user_id}"],
                    "arguments": arguments,
                },
                "successful": True,
                "error": None,
            }
        return JSONResponse({**seeded, "log_id": f"log_{secrets.token_hex(6)}"})

    def _account_for(self, user_id: str, tool: ToolDef, account_id: str | None) -> Account | None:
        for account in self.accounts:
            if account.status != "ACTIVE" or account.toolkit != tool.toolkit:
                continue
            if account.user_id != user_id:
                continue
            if account_id and account.id != account_id:
                continue
            return account
        return None

    # --- connected accounts -----------------------------------------------------------

    async def _list_accounts(self, request: Request) -> Response:
        if (failed := self._gate(request, "list_accounts")) is not None:
            return failed
        users = set(_csv(request, "user_ids"))
        toolkits = {t.lower() for t in _csv(request, "toolkit_slugs")}
        statuses = set(_csv(request, "statuses"))
        configs = set(_csv(request, "auth_config_ids"))
        ids = set(_csv(request, "connected_account_ids"))
        with self._lock:
            items = [
                a.as_json()
                for a in self.accounts
                if (not users or a.user_id in users)
                and (not toolkits or a.toolkit in toolkits)
                and (not statuses or a.status in statuses)
                and (not configs or a.auth_config_id in configs)
                and (not ids or a.id in ids)
            ]
        return JSONResponse(_page(request, items, self.max_page_size))

    async def _get_account(self, request: Request) -> Response:
        if (failed := self._gate(request, "get_account")) is not None:
            return failed
        for account in self.accounts:
            if account.id == request.path_params["id"]:
                return JSONResponse(account.as_json())
        return _error(404, "Connected account not found", 1804, "ConnectedAccount_NotFound")

    async def _create_link(self, request: Request) -> Response:
        if (failed := self._gate(request, "create_link")) is not None:
            return failed
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "Invalid JSON body", 1000, "Request_InvalidBody")
        user_id, ac_id = body.get("user_id"), body.get("auth_config_id")
        if not user_id or not ac_id:
            return _error(
                400, "auth_config_id and user_id are required", 1000, "Request_ValidationError"
            )
        toolkit = self.auth_configs.get(ac_id)
        if toolkit is None:
            return _error(404, f"Auth config {ac_id} not found", 1201, "AuthConfig_NotFound")
        token = f"lk_{secrets.token_urlsafe(12)}"
        with self._lock:
            account = Account(
                id=f"ca_{secrets.token_urlsafe(9)}",
                user_id=user_id,
                toolkit=toolkit,
                auth_config_id=ac_id,
                status="INITIATED",
            )
            self.accounts.append(account)
            link = Link(
                url=CONNECT_LINK_PREFIX + token,
                token=token,
                user_id=user_id,
                auth_config_id=ac_id,
                toolkit=toolkit,
                connected_account_id=account.id,
                callback_url=body.get("callback_url"),
            )
            self.links.append(link)
        expires = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return JSONResponse(
            {
                "link_token": token,
                "redirect_url": link.url,
                "connected_account_id": account.id,
                "expires_at": expires,
            },
            status_code=201,
        )

    # --- telemetry / anything else -----------------------------------------------------

    async def _telemetry(self, request: Request) -> Response:
        payload = await request.body()
        with self._lock:
            self.requests.append((request.method, request.url.path))
            self.telemetry.append(
                {"path": request.url.path, "body": payload.decode(errors="replace")}
            )
        return JSONResponse({"ok": True})

    async def _unknown(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
            self.unexpected.append((request.method, request.url.path))
        return _error(404, f"Cannot {request.method} {request.url.path}", 404, "Route_NotFound")
