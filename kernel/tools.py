"""Per-user Composio tools: one shared client, and the entity is an argument of every call.

The incident this exists for: one agent kernel ran every Composio call under the same
entity (`default_user`), so users overwrote each other's connections and saw each
other's data. Here nothing per user lives in this object; each call names the entity of
the resolved sender, and nothing the model writes can change it.

Design choices (composio 0.29.0):
- composio is imported lazily (it costs ~2 s), on first use, inside a worker thread.
- Its SDK client is synchronous (httpx.Client); every call runs in `asyncio.to_thread`
  so the event loop never blocks. We keep the SDK (not `composio_client.AsyncComposio`)
  because it carries the logic we want: the "already connected" check of
  `connected_accounts.link` and the version check of `tools.execute`.
- Telemetry is off unless `telemetry=True` (see kernel/telemetry.py for why the
  `allow_tracking` flag alone is not enough).
- Versions: a toolkit listed in `toolkit_versions` is listed and executed at that
  version. A toolkit without a pin is listed at "latest", and each tool is executed at
  the concrete version the listing reported, so the model always runs exactly the schema
  it was shown (no `ToolVersionRequiredError`, no silent schema drift). Only if the API
  reports no concrete version do we fall back to "latest" with the SDK's
  `dangerously_skip_version_check`.
- Schemas are the same for every user: fetched once, kept for `schema_ttl_seconds`
  (one list, bounded by the enabled toolkits), and contain no entity.

HTTP endpoints the client calls (all under the base URL):
  GET  /api/v3.1/tools                    schemas: toolkit_slug, toolkit_versions, limit, cursor
  GET  /api/v3.1/tools/{slug}             once per tool, inside the SDK's tools.execute
  POST /api/v3.1/tools/execute/{slug}     {"user_id", "version", "arguments"}
  GET  /api/v3.1/connected_accounts       user_ids, statuses, auth_config_ids, limit, cursor
  POST /api/v3.1/connected_accounts/link  {"auth_config_id", "user_id", "callback_url"?}
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Keys a model could use to aim a call at another entity, compared without "_"/"-" and
# case, so userId / entity-id / connectedAccountId are caught too.
_ENTITY_KEYS = frozenset({"userid", "entityid", "connectedaccountid"})
# Entities that mean "whoever": never valid for a real person.
_NOT_AN_ENTITY = frozenset({"", "default", "default_user"})
_PAGE_LIMIT = 1000  # the API's maximum page size for /tools
_MAX_PAGES = 50
_DETAIL_MAX = 300


@dataclass(frozen=True)
class Connection:
    """One of a user's connected accounts."""

    id: str
    toolkit: str
    status: str


class ToolError(Exception):
    """A tool/connection failure whose message is safe to show the user (and the model).

    `reason` lets callers react without parsing text: unknown_tool, not_enabled,
    not_configured, not_connected, already_connected, auth, rate_limited, unavailable,
    rejected, invalid, error.
    """

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class AlreadyConnected(ToolError):
    """The entity already has an ACTIVE connection for that toolkit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="already_connected")


@dataclass(frozen=True)
class _ToolInfo:
    toolkit: str
    version: str | None


@dataclass(frozen=True)
class _Catalog:
    fetched_at: float
    schemas: tuple[dict[str, Any], ...]
    tools: dict[str, _ToolInfo]


class ComposioTools:
    """Composio tools for the enabled toolkits, executed under the caller-given entity only."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        toolkits: list[str],
        auth_configs: dict[str, str],
        toolkit_versions: dict[str, str],
        telemetry: bool = False,
        callback_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        schema_ttl_seconds: float = 3600.0,
        failure_backoff_seconds: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("ComposioTools needs an API key (COMPOSIO_API_KEY)")
        self._api_key = api_key
        self._base_url = base_url.rstrip("/") if base_url else ""
        self._toolkits = _unique(t.strip().lower() for t in toolkits if t.strip())
        self._auth_configs = {k.strip().lower(): v.strip() for k, v in auth_configs.items()}
        self._versions = {k.strip().lower(): v.strip() for k, v in toolkit_versions.items()}
        self._telemetry = telemetry
        self._callback_url = callback_url or None
        self._timeout = timeout
        self._max_retries = max_retries
        self._ttl = schema_ttl_seconds
        self._backoff = failure_backoff_seconds
        self._sdk_obj: Any = None
        self._sdk_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalog: _Catalog | None = None
        self._failure: tuple[float, ToolError] | None = None

    @property
    def toolkits(self) -> list[str]:
        return list(self._toolkits)

    def _toolkit_of(self, name: object) -> str | None:
        if not isinstance(name, str):
            return None
        info = self._catalog.tools.get(name) if self._catalog else None
        if info is not None:
            return info.toolkit
        head = name.split("_", 1)[0].lower()
        return head if head in self._toolkits else None

    # --- public API ---------------------------------------------------------------

    async def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-format tool dicts (litellm `tools=`); the same for every user.

        Raises ToolError when Composio cannot be reached and nothing is cached yet.
        """
        try:
            catalog = await self._current_catalog()
        except ToolError:
            raise
        except Exception as exc:
            raise self._translate(exc, "loading the tool list") from exc
        return [_copy_schema(schema) for schema in catalog.schemas]

    async def execute(self, entity_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run tool `name` as `entity_id`; raises only ToolError."""
        try:
            entity = _check_entity(entity_id)
            if not isinstance(arguments, dict):
                raise ToolError(f"The arguments of {name} must be an object.", reason="invalid")
            clean = _drop_entity_keys(name, arguments)
            catalog = await self._current_catalog()
            info = catalog.tools.get(name)
            if info is None:
                raise ToolError(
                    f"There is no tool named {name!r} among the enabled toolkits "
                    f"({', '.join(self._toolkits) or 'none'}).",
                    reason="unknown_tool",
                )
            sdk = await self._sdk()
            return await asyncio.to_thread(self._execute_sync, sdk, entity, name, clean, info)
        except ToolError:
            raise
        except Exception as exc:
            raise self._translate(exc, f"running {name}", toolkit=self._toolkit_of(name)) from exc

    async def connect_link(self, entity_id: str, toolkit: str) -> str:
        """A Composio Connect Link bound to `entity_id`; whoever opens it connects as them."""
        entity = _check_entity(entity_id)
        slug = (toolkit or "").strip().lower()
        available = ", ".join(self._toolkits) or "none"
        if not slug:
            raise ToolError(
                f"Say which account to connect, e.g. /connect asana. Available: {available}.",
                reason="invalid",
            )
        if slug not in self._toolkits:
            raise ToolError(
                f"{slug!r} is not enabled on this assistant (available: {available}). "
                "The operator can enable it in COMPOSIO_TOOLKITS.",
                reason="not_enabled",
            )
        auth_config = self._auth_configs.get(slug)
        if not auth_config:
            raise ToolError(
                f"Connecting {slug} is not set up yet: the operator needs to add its auth config "
                f"id to COMPOSIO_AUTH_CONFIGS (e.g. {slug}=ac_...).",
                reason="not_configured",
            )
        try:
            sdk = await self._sdk()
            url = await asyncio.to_thread(self._link_sync, sdk, entity, auth_config)
        except ToolError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "ComposioMultipleConnectedAccountsError":
                raise AlreadyConnected(
                    f"Your {slug.title()} account is already connected, so there is nothing to do. "
                    "Use /connections to see your accounts."
                ) from exc
            raise self._translate(exc, f"creating a {slug} connect link", toolkit=slug) from exc
        if not url:
            raise ToolError(f"Composio returned no link for {slug}.", reason="unavailable")
        return url

    async def connections(self, entity_id: str) -> list[Connection]:
        """The ACTIVE connected accounts of this entity (and of nobody else)."""
        entity = _check_entity(entity_id)
        try:
            sdk = await self._sdk()
            return await asyncio.to_thread(self._connections_sync, sdk, entity)
        except ToolError:
            raise
        except Exception as exc:
            raise self._translate(exc, "listing your connections") from exc

    async def aclose(self) -> None:
        sdk, self._sdk_obj = self._sdk_obj, None
        if sdk is not None:
            await asyncio.to_thread(sdk.client.close)

    # --- client ---------------------------------------------------------------------

    async def _sdk(self) -> Any:
        if self._sdk_obj is not None:
            return self._sdk_obj
        return await asyncio.to_thread(self._build_sync)

    def _build_sync(self) -> Any:
        with self._sdk_lock:
            if self._sdk_obj is not None:
                return self._sdk_obj
            from kernel.telemetry import set_composio_telemetry

            set_composio_telemetry(self._telemetry)
            from composio import Composio

            kwargs: dict[str, Any] = {
                "api_key": self._api_key,
                "allow_tracking": self._telemetry,
                "timeout": self._timeout,
                "max_retries": self._max_retries,
                "toolkit_versions": dict(self._versions) if self._versions else "latest",
            }
            if self._base_url:
                kwargs["base_url"] = self._base_url
            self._sdk_obj = Composio(**kwargs)
            return self._sdk_obj

    # --- schemas --------------------------------------------------------------------

    async def _current_catalog(self) -> _Catalog:
        if not self._toolkits:
            return _Catalog(fetched_at=time.monotonic(), schemas=(), tools={})
        catalog = self._catalog
        if catalog is not None and time.monotonic() - catalog.fetched_at < self._ttl:
            return catalog
        failure = self._failure
        if catalog is None and failure and time.monotonic() - failure[0] < self._backoff:
            raise failure[1]
        sdk = await self._sdk()
        return await asyncio.to_thread(self._refresh_sync, sdk)

    def _refresh_sync(self, sdk: Any) -> _Catalog:
        with self._catalog_lock:
            current = self._catalog
            now = time.monotonic()
            if current is not None and now - current.fetched_at < self._ttl:
                return current  # another thread refreshed it meanwhile
            try:
                fresh = self._fetch_catalog(sdk)
            except Exception as exc:
                error = self._translate(exc, "loading the tool list")
                if current is not None:
                    log.warning("tool list refresh failed, keeping the cached one: %s", error)
                    # Try again after the backoff, not on every turn.
                    self._catalog = _Catalog(
                        fetched_at=now - self._ttl + self._backoff,
                        schemas=current.schemas,
                        tools=current.tools,
                    )
                    return self._catalog
                self._failure = (now, error)
                raise error from exc
            self._catalog, self._failure = fresh, None
            return fresh

    def _fetch_catalog(self, sdk: Any) -> _Catalog:
        schemas: list[dict[str, Any]] = []
        tools: dict[str, _ToolInfo] = {}
        for toolkit in self._toolkits:
            found = 0
            for item in self._list_tools(sdk, toolkit):
                slug = getattr(item, "slug", None)
                item_toolkit = _item_toolkit(item)
                if not isinstance(slug, str) or not slug or slug in tools:
                    continue
                if item_toolkit != toolkit or getattr(item, "is_deprecated", False):
                    continue
                version = getattr(item, "version", None)
                pinned = self._versions.get(toolkit)
                tools[slug] = _ToolInfo(
                    toolkit=toolkit,
                    version=pinned or (version if isinstance(version, str) and version else None),
                )
                schemas.append(_openai_schema(item))
                found += 1
            if not found:
                log.warning("Composio returned no tools for toolkit %r (check the slug)", toolkit)
        log.info("loaded %d Composio tools for %s", len(schemas), ", ".join(self._toolkits))
        return _Catalog(fetched_at=time.monotonic(), schemas=tuple(schemas), tools=tools)

    def _list_tools(self, sdk: Any, toolkit: str) -> Iterable[Any]:
        """Every tool of a toolkit, following cursors (the SDK's tools.get reads one page)."""
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            kwargs: dict[str, Any] = {
                "toolkit_slug": toolkit,
                "toolkit_versions": (
                    {toolkit: self._versions[toolkit]} if toolkit in self._versions else "latest"
                ),
                "limit": _PAGE_LIMIT,
            }
            if cursor:
                kwargs["cursor"] = cursor
            page = sdk.client.tools.list(**kwargs)
            yield from page.items
            cursor = getattr(page, "next_cursor", None)
            if not cursor or not page.items:
                return

    # --- blocking calls (run in worker threads) -------------------------------------

    def _execute_sync(
        self, sdk: Any, entity: str, name: str, arguments: dict[str, Any], info: _ToolInfo
    ) -> dict[str, Any]:
        version = info.version
        skip = not version or version == "latest"
        result = sdk.tools.execute(
            name,
            arguments,
            user_id=entity,  # the only place an entity enters a tool call
            version=None if skip else version,
            dangerously_skip_version_check=True if skip else None,
        )
        return {
            "data": result.get("data"),
            "error": result.get("error"),
            "successful": bool(result.get("successful")),
        }

    def _link_sync(self, sdk: Any, entity: str, auth_config: str) -> str | None:
        request = sdk.connected_accounts.link(entity, auth_config, callback_url=self._callback_url)
        url = getattr(request, "redirect_url", None)
        return url if isinstance(url, str) else None

    def _connections_sync(self, sdk: Any, entity: str) -> list[Connection]:
        found: list[Connection] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            kwargs: dict[str, Any] = {"user_ids": [entity], "statuses": ["ACTIVE"], "limit": 100}
            if cursor:
                kwargs["cursor"] = cursor
            page = sdk.connected_accounts.list(**kwargs)
            for item in page.items:
                owner = getattr(item, "user_id", entity)
                if owner and owner != entity:
                    log.warning("Composio listed a connected account of another user; dropped")
                    continue
                if getattr(item, "status", None) != "ACTIVE":
                    continue
                found.append(
                    Connection(id=str(item.id), toolkit=_item_toolkit(item), status="ACTIVE")
                )
            cursor = getattr(page, "next_cursor", None)
            if not cursor or not page.items:
                break
        return found

    # --- errors ---------------------------------------------------------------------

    def _translate(self, exc: BaseException, action: str, toolkit: str | None = None) -> ToolError:
        """Turn a composio/httpx failure into a message a user may read (no secrets)."""
        if isinstance(exc, ToolError):
            return exc
        names = {cls.__name__ for cls in type(exc).__mro__}
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            details = _details(exc)
            message = str(details.get("message") or "")[:_DETAIL_MAX]
            code = details.get("code")
            if status in (400, 404) and (code == 1803 or "connected account" in message.lower()):
                which = toolkit or "that"
                return ToolError(
                    f"You have not connected your {which.title()} account yet. "
                    f"Use /connect {which} to get a private link.",
                    reason="not_connected",
                )
            if status in (401, 403):
                return ToolError(
                    f"Composio refused this assistant's credentials while {action} "
                    "(the operator should check COMPOSIO_API_KEY).",
                    reason="auth",
                )
            if status == 429:
                return ToolError(
                    f"Composio is rate limiting requests ({action}); please try again in a minute.",
                    reason="rate_limited",
                )
            if status >= 500:
                return ToolError(
                    f"Composio had an internal error (HTTP {status}) while {action}; "
                    "please try again later.",
                    reason="unavailable",
                )
            return ToolError(
                f"Composio rejected {action} (HTTP {status}){': ' + message if message else ''}.",
                reason="rejected",
            )
        if names & {"APIConnectionError", "APITimeoutError", "TransportError", "TimeoutException"}:
            return ToolError(
                f"Could not reach Composio while {action}; please try again later.",
                reason="unavailable",
            )
        if "ToolNotFoundError" in names:
            return ToolError(f"Composio does not know that tool ({action}).", reason="unknown_tool")
        if "ToolVersionRequiredError" in names:
            return ToolError(
                f"No version is pinned for the toolkit while {action} "
                "(set COMPOSIO_TOOLKIT_VERSIONS).",
                reason="not_configured",
            )
        log.warning("unexpected Composio failure while %s: %s", action, type(exc).__name__)
        log.debug("Composio failure detail", exc_info=exc)
        return ToolError(
            f"Something went wrong while {action} ({type(exc).__name__}).", reason="error"
        )


# --- helpers --------------------------------------------------------------------------


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _check_entity(entity_id: str) -> str:
    """There is no default entity: an empty or 'default' one is a bug upstream, not a user."""
    if not isinstance(entity_id, str) or entity_id.strip().lower() in _NOT_AN_ENTITY:
        raise ToolError("I could not tell who you are, so I won't run tools.", reason="invalid")
    return entity_id


def _drop_entity_keys(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in arguments.items():
        normalized = str(key).replace("_", "").replace("-", "").lower()
        if normalized in _ENTITY_KEYS:
            dropped.append(str(key))
        else:
            clean[key] = value
    if dropped:
        # Names only: values may be other people's ids.
        log.warning("ignored entity arguments %s supplied by the model for %s", dropped, name)
    return clean


def _item_toolkit(item: Any) -> str:
    toolkit = getattr(item, "toolkit", None)
    slug = toolkit.get("slug") if isinstance(toolkit, dict) else getattr(toolkit, "slug", None)
    return slug.lower() if isinstance(slug, str) else ""


def _openai_schema(item: Any) -> dict[str, Any]:
    """The OpenAI function-tool shape (what composio's OpenAIProvider builds), minus strict=None."""
    parameters = getattr(item, "input_parameters", None)
    if not isinstance(parameters, dict) or not parameters:
        parameters = {"type": "object", "properties": {}}
    description = getattr(item, "description", None) or getattr(item, "name", None) or item.slug
    return {
        "type": "function",
        "function": {"name": item.slug, "description": description, "parameters": parameters},
    }


def _copy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A deep copy, so a caller mutating its tools list cannot change everyone's."""
    return copy.deepcopy(schema)


def _details(exc: BaseException) -> dict[str, Any]:
    try:
        details = getattr(exc, "details", None)
    except Exception:
        details = None
    if isinstance(details, dict):
        return details
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return {}
