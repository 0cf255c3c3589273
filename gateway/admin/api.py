"""The admin JSON API under /admin/api: bearer token only (no cookies, so no CSRF).

GET  /admin/api/users?q=&limit=&offset=&unmask=   search and page users
GET  /admin/api/users/{id}?unmask=                identities, connections, counts, activity
POST /admin/api/users/{id}/link    {"identity": 12 | "telegram:4242"}   that identity's
                                                  user joins this one
POST /admin/api/users/{id}/merge   {"user_id": "..."}   that user joins this one
POST /admin/api/identities/{id}/unlink            the identity becomes a fresh user
POST /admin/api/users/{id}/forget                 delete the user's data, retire the entity
GET  /admin/api/users/{id}/export                 everything stored about the user
GET  /admin/api/audit?limit=&offset=&user_id=&action=
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import outbox
from gateway.admin import queries
from gateway.admin.auth import AdminAuth
from identity import admin as identity_admin
from identity import audit
from identity.linking import LinkError

if TYPE_CHECKING:
    from gateway.runtime import Gateway

Handler = Callable[[Request], Awaitable[Response]]

LINK_ERROR_STATUS = {"not_found": 404}


class BadRequest(Exception):
    pass


def error(status: int, message: str, reason: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status)


def link_error(exc: LinkError) -> JSONResponse:
    return error(LINK_ERROR_STATUS.get(exc.reason, 409), str(exc), exc.reason)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    return max(low, min(high, value))


def flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in {"1", "true", "yes", "on"}


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def api_routes(gateway: Gateway, auth: AdminAuth) -> list[Route]:
    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            denied = auth.bearer(request)
            if denied is not None:
                return denied
            if gateway.engine is None:
                return error(503, "the gateway is starting")
            try:
                return await handler(request)
            except BadRequest as exc:
                return error(400, str(exc))
            except LinkError as exc:
                return link_error(exc)

        return endpoint

    async def list_users(request: Request) -> Response:
        limit = int_param(request, "limit", 25, 1, 200)
        offset = int_param(request, "offset", 0, 0, 10**9)
        async with gateway.sessions() as session:
            rows, total = await queries.search(
                session, request.query_params.get("q"), limit=limit, offset=offset
            )
        unmask = flag(request, "unmask")
        return JSONResponse(
            {
                "items": [r.as_json(unmask=unmask) for r in rows],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )

    async def show_user(request: Request) -> Response:
        async with gateway.sessions() as session:
            found = await queries.detail(session, request.path_params["user_id"])
        if found is None:
            return error(404, "no such user", "not_found")
        await queries.add_connections(found, gateway.tools)
        return JSONResponse(found.as_json(unmask=flag(request, "unmask")))

    async def link(request: Request) -> Response:
        body = await json_body(request)
        ref = body.get("identity", body.get("identity_id"))
        if ref is None or isinstance(ref, bool) or not isinstance(ref, int | str):
            raise BadRequest('give {"identity": <identity id or "channel:user id">}')
        async with gateway.sessions() as session:
            identity = await identity_admin.find_identity_ref(session, str(ref))
        if identity is None:
            return error(404, f"no identity matches {ref!r}", "not_found")
        result = await gateway.linking.link_identity(
            identity.id, request.path_params["user_id"], via="api"
        )
        return JSONResponse(result.as_json())

    async def merge(request: Request) -> Response:
        body = await json_body(request)
        joining = body.get("user_id")
        if not isinstance(joining, str) or not joining:
            raise BadRequest('give {"user_id": "<the user that joins this one>"}')
        result = await gateway.linking.merge_users(
            request.path_params["user_id"], joining, via="api"
        )
        return JSONResponse(result.as_json())

    async def unlink(request: Request) -> Response:
        result = await gateway.linking.unlink_identity(
            request.path_params["identity_id"], via="api"
        )
        return JSONResponse(result.as_json())

    async def forget(request: Request) -> Response:
        result = await gateway.linking.forget(request.path_params["user_id"], via="api")
        return JSONResponse(result.as_json())

    async def export(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        data = await gateway.linking.export(user_id, via="api")
        return JSONResponse(
            data, headers={"Content-Disposition": f'attachment; filename="user-{user_id}.json"'}
        )

    async def audit_log(request: Request) -> Response:
        limit = int_param(request, "limit", 50, 1, 500)
        offset = int_param(request, "offset", 0, 0, 10**9)
        async with gateway.sessions() as session:
            entries, total = await audit.page(
                session,
                limit=limit,
                offset=offset,
                user_id=request.query_params.get("user_id") or None,
                action=request.query_params.get("action") or None,
            )
        return JSONResponse(
            {
                "items": [e.as_json() for e in entries],
                "total": total,
                "limit": limit,
                "offset": offset,
            }
        )

    async def dead_letters(request: Request) -> Response:
        limit = int_param(request, "limit", 50, 1, 500)
        offset = int_param(request, "offset", 0, 0, 10**9)
        async with gateway.sessions() as session:
            rows = await outbox.listing(session, status=outbox.DEAD, limit=limit, offset=offset)
        return JSONResponse(
            {
                "items": [
                    {
                        "id": row.seq,
                        "channel": row.channel,
                        "conversation": row.message().conversation.id,
                        "user_id": row.user_id,
                        "attempts": row.attempts,
                        "error": row.last_error,
                        "created_at": row.created_at.isoformat(),
                    }
                    for row in rows
                ],
                "limit": limit,
                "offset": offset,
            }
        )

    async def retry_dead_letter(request: Request) -> Response:
        async with gateway.sessions.begin() as session:
            count = await outbox.retry_dead(session, [request.path_params["seq"]])
        if not count:
            return error(404, "no such dead letter")
        gateway.sends.wake()
        return JSONResponse({"retried": count})

    async def drop_dead_letter(request: Request) -> Response:
        async with gateway.sessions.begin() as session:
            count = await outbox.drop_dead(session, [request.path_params["seq"]])
        if not count:
            return error(404, "no such dead letter")
        return JSONResponse({"dropped": count})

    async def not_found(request: Request) -> Response:
        return error(404, "no such admin endpoint")

    return [
        Route("/users", guarded(list_users), methods=["GET"]),
        Route("/users/{user_id}", guarded(show_user), methods=["GET"]),
        Route("/users/{user_id}/link", guarded(link), methods=["POST"]),
        Route("/users/{user_id}/merge", guarded(merge), methods=["POST"]),
        Route("/users/{user_id}/forget", guarded(forget), methods=["POST"]),
        Route("/users/{user_id}/export", guarded(export), methods=["GET"]),
        Route("/identities/{identity_id:int}/unlink", guarded(unlink), methods=["POST"]),
        Route("/audit", guarded(audit_log), methods=["GET"]),
        Route("/outbox/dead", guarded(dead_letters), methods=["GET"]),
        Route("/outbox/{seq:int}/retry", guarded(retry_dead_letter), methods=["POST"]),
        Route("/outbox/{seq:int}/drop", guarded(drop_dead_letter), methods=["POST"]),
        Route(
            "/{path:path}", guarded(not_found), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        ),
    ]
