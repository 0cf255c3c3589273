"""The admin surface: JSON API under /admin/api, web console under /admin.

`admin_routes(gateway)` is the only thing gateway/app.py needs. Without ADMIN_TOKEN the
whole surface answers 404 (it does not even reveal that it exists) and the log says so
once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)
_told_disabled = False


async def _not_found(request: Request) -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def admin_routes(gateway: Gateway) -> list[BaseRoute]:
    global _told_disabled
    token = gateway.settings.admin_token.get_secret_value()
    if not token:
        if not _told_disabled:
            log.warning("admin API and console are disabled: set ADMIN_TOKEN to enable /admin")
            _told_disabled = True
        return [
            Mount(
                "/admin",
                routes=[
                    Route(
                        "/{path:path}",
                        _not_found,
                        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                    )
                ],
            )
        ]
    from gateway.admin.api import api_routes
    from gateway.admin.auth import AdminAuth
    from gateway.admin.console import Console

    auth = AdminAuth(token)
    console = Console(gateway, auth)
    return [
        Mount("/admin", routes=[Mount("/api", routes=api_routes(gateway, auth)), *console.routes()])
    ]
