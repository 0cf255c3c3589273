"""The admin web console under /admin: server-rendered pages and plain forms.

Security: the login form takes the ADMIN_TOKEN (same failure limit as the API) and opens a
session (gateway/admin/sessions.py) in a signed, HttpOnly, SameSite=Strict cookie scoped
to /admin. Every POST carries the session's CSRF token in a hidden field and, when the
browser sends an Origin header, must come from this host. Changes go through a
confirmation page first. Phone numbers are masked unless the admin asks to see them.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.admin import queries
from gateway.admin.auth import AdminAuth
from gateway.admin.sessions import COOKIE, LOGIN_COOKIE, SESSION_TTL, Session, SessionStore
from identity import admin as identity_admin
from identity import audit
from identity.linking import LinkError

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
PAGE_SIZE = 25

CHANNELS = {
    "whatsapp": ("WhatsApp", "wa"),
    "telegram": ("Telegram", "tg"),
    "slack": ("Slack", "sl"),
    "console": ("Console", "cl"),
}

NOTICES = {
    "linked": "Linked. The identities now belong to this user, which kept its entity.",
    "unlinked": "Unlinked. That identity is now a separate user with a fresh entity.",
    "forgotten": "The user was forgotten: identities, history and stored messages are deleted.",
    "signed_out": "You are signed out.",
}

Page = Callable[[Request, Session], Awaitable[Response]]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["shown"] = queries.shown
    env.filters["masked"] = queries.mask_phone
    env.globals["channel_name"] = lambda c: CHANNELS.get(c, (c.title(), ""))[0]
    env.globals["channel_class"] = lambda c: CHANNELS.get(c, ("", "other"))[1] or "other"
    return env


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


class Console:
    def __init__(self, gateway: Gateway, auth: AdminAuth) -> None:
        self.gateway = gateway
        self.auth = auth
        self.store = SessionStore(
            gateway.settings.admin_token.get_secret_value(), lambda: gateway.sessions
        )
        self.templates = Jinja2Templates(env=_environment())

    # --- plumbing ------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        session: Session | None = None,
        status_code: int = 200,
    ) -> Response:
        base = _base(request)
        values = {
            "base": base,
            "static": f"{base}/static",
            "csrf": session.csrf if session else "",
            "signed_in": session is not None,
            "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
            "active": "",
            **context,
        }
        response = self.templates.TemplateResponse(request, name, values, status_code=status_code)
        _no_store(response)
        return response

    def page(
        self, handler: Page, *, post: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Requires a signed-in session; POSTs also need the CSRF token and our Origin."""

        async def endpoint(request: Request) -> Response:
            if self.gateway.engine is None:
                return Response("The gateway is starting.", status_code=503)
            session = await self.store.load(request.cookies.get(COOKIE))
            if session is None:
                if post:
                    return self.refused(request, None, "You are not signed in.", 401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"{_base(request)}/login?{urlencode({'next': target})}", status_code=303
                )
            if post:
                form = await request.form()
                problem = _csrf_problem(request, form, session.csrf)
                if problem:
                    log.warning("admin console refused a POST to %s: %s", request.url.path, problem)
                    return self.refused(request, session, problem, 403)
                request.state.form = form
            try:
                return await handler(request, session)
            except LinkError as exc:
                status = 404 if exc.reason == "not_found" else 409
                return self.refused(request, session, str(exc), status, title="Not possible")

        return endpoint

    def refused(
        self,
        request: Request,
        session: Session | None,
        message: str,
        status: int,
        *,
        title: str = "Refused",
    ) -> Response:
        return self.render(
            request,
            "message.html",
            {"title": title, "message": message},
            session=session,
            status_code=status,
        )

    # --- sign in / out -------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self.gateway.engine is not None and await self.store.load(request.cookies.get(COOKIE)):
            return RedirectResponse(f"{_base(request)}/users", status_code=303)
        return self._login_page(request, error="", status=200)

    def _login_page(self, request: Request, *, error: str, status: int) -> Response:
        token = secrets.token_urlsafe(24)
        response = self.render(
            request,
            "login.html",
            {
                "title": "Sign in",
                "login_csrf": token,
                "error": error,
                "next": _safe_next(request, request.query_params.get("next", "")),
            },
            status_code=status,
        )
        _set_cookie(request, response, LOGIN_COOKIE, token, max_age=3600)
        return response

    async def login(self, request: Request) -> Response:
        if self.gateway.engine is None:
            return Response("The gateway is starting.", status_code=503)
        form = await request.form()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        supplied = str(form.get("login_csrf", ""))
        if not expected or not hmac.compare_digest(expected.encode(), supplied.encode()):
            return self._login_page(
                request, error="The sign-in form expired. Please try again.", status=403
            )
        denied = self.auth.check(request, str(form.get("token", "")))
        if denied is not None:
            error = (
                "Too many failed attempts. Wait a few minutes, then try again."
                if denied.status_code == 429
                else "That is not the admin token."
            )
            return self._login_page(request, error=error, status=denied.status_code)
        cookie, _ = await self.store.create()
        target = _safe_next(request, str(form.get("next", ""))) or f"{_base(request)}/users"
        response = RedirectResponse(target, status_code=303)
        _set_cookie(request, response, COOKIE, cookie, max_age=int(SESSION_TTL.total_seconds()))
        response.delete_cookie(LOGIN_COOKIE, path=_base(request))
        log.info("admin console: signed in from %s", request.client.host if request.client else "?")
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        await self.store.destroy(session.id)
        response = RedirectResponse(f"{_base(request)}/login?notice=signed_out", status_code=303)
        response.delete_cookie(COOKIE, path=_base(request))
        return response

    # --- pages -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{_base(request)}/users", status_code=303)

    async def users(self, request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "").strip()
        page = _page_number(request)
        async with self.gateway.sessions() as db:
            rows, total = await queries.search(
                db, query, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
            )
        return self.render(
            request,
            "users.html",
            {
                "title": "Users",
                "active": "users",
                "q": query,
                "rows": rows,
                "total": total,
                "paging": _pager(request, page, total),
                "unmask": _unmask(request),
            },
            session=session,
        )

    async def user(self, request: Request, session: Session) -> Response:
        user_id = request.path_params["user_id"]
        async with self.gateway.sessions() as db:
            found = await queries.detail(db, user_id)
        if found is None:
            return self.refused(
                request, session, "There is no such user (any more).", 404, title="Not found"
            )
        await queries.add_connections(found, self.gateway.tools)
        return self.render(
            request,
            "user.html",
            {
                "title": found.user.display_name or "Unnamed user",
                "active": "users",
                "d": found,
                "unmask": _unmask(request),
                "tools": self.gateway.tools is not None,
                "reconnect": [t for t in request.query_params.get("reconnect", "").split(",") if t],
            },
            session=session,
        )

    async def link(self, request: Request, session: Session) -> Response:
        form: FormData = request.state.form
        user_id = request.path_params["user_id"]
        ref = str(form.get("ref", "")).strip()
        async with self.gateway.sessions() as db:
            target = await queries.detail(db, user_id)
            identity = await identity_admin.find_identity_ref(db, ref) if ref else None
            other_user = (
                await identity_admin.find_user_ref(db, identity.user_id if identity else ref)
                if ref
                else None
            )
            other = await queries.detail(db, other_user.id) if other_user else None
        if target is None:
            return self.refused(request, session, "There is no such user (any more).", 404)
        if other is None:
            return self.refused(
                request,
                session,
                f"No user or identity matches {ref!r}. Use an identity number, "
                "channel:user id, or a user id.",
                404,
                title="Not found",
            )
        if other.user.id == target.user.id:
            return self.refused(
                request,
                session,
                "That identity already belongs to this user.",
                409,
                title="Nothing to do",
            )
        if form.get("confirm") != "yes":
            return self.render(
                request,
                "confirm.html",
                {
                    "title": "Confirm link",
                    "action": "link",
                    "target": target,
                    "other": other,
                    "fields": {"ref": ref},
                    "post_to": f"{_base(request)}/users/{target.user.id}/link",
                    "back": f"{_base(request)}/users/{target.user.id}",
                    "unmask": False,
                },
                session=session,
            )
        if identity is not None:
            result = await self.gateway.linking.link_identity(
                identity.id, target.user.id, via="console"
            )
        else:
            result = await self.gateway.linking.merge_users(
                target.user.id, other.user.id, via="console"
            )
        params = {"notice": "linked"}
        if result.reconnect:
            params["reconnect"] = ",".join(result.reconnect)
        return RedirectResponse(
            f"{_base(request)}/users/{result.user_id}?{urlencode(params)}", status_code=303
        )

    async def unlink(self, request: Request, session: Session) -> Response:
        form: FormData = request.state.form
        identity_id = request.path_params["identity_id"]
        async with self.gateway.sessions() as db:
            identity = await identity_admin.find_identity_ref(db, str(identity_id))
            owner = await queries.detail(db, identity.user_id) if identity else None
        if identity is None or owner is None:
            return self.refused(
                request, session, "There is no such identity.", 404, title="Not found"
            )
        if form.get("confirm") != "yes":
            return self.render(
                request,
                "confirm.html",
                {
                    "title": "Confirm unlink",
                    "action": "unlink",
                    "target": owner,
                    "identity": identity,
                    "fields": {},
                    "post_to": f"{_base(request)}/identities/{identity.id}/unlink",
                    "back": f"{_base(request)}/users/{owner.user.id}",
                    "unmask": False,
                },
                session=session,
            )
        result = await self.gateway.linking.unlink_identity(identity.id, via="console")
        return RedirectResponse(
            f"{_base(request)}/users/{result.user_id}?notice=unlinked", status_code=303
        )

    async def forget(self, request: Request, session: Session) -> Response:
        form: FormData = request.state.form
        user_id = request.path_params["user_id"]
        async with self.gateway.sessions() as db:
            target = await queries.detail(db, user_id)
        if target is None:
            return self.refused(
                request, session, "There is no such user (any more).", 404, title="Not found"
            )
        if form.get("confirm") != "yes":
            return self.render(
                request,
                "confirm.html",
                {
                    "title": "Confirm forget",
                    "action": "forget",
                    "target": target,
                    "fields": {},
                    "post_to": f"{_base(request)}/users/{user_id}/forget",
                    "back": f"{_base(request)}/users/{user_id}",
                    "unmask": False,
                },
                session=session,
            )
        await self.gateway.linking.forget(user_id, via="console")
        return RedirectResponse(f"{_base(request)}/users?notice=forgotten", status_code=303)

    async def export(self, request: Request, session: Session) -> Response:
        user_id = request.path_params["user_id"]
        data = await self.gateway.linking.export(user_id, via="console")
        response = JSONResponse(
            data, headers={"Content-Disposition": f'attachment; filename="user-{user_id}.json"'}
        )
        _no_store(response)
        return response

    async def audit_log(self, request: Request, session: Session) -> Response:
        page = _page_number(request)
        user_id = request.query_params.get("user", "").strip() or None
        async with self.gateway.sessions() as db:
            entries, total = await audit.page(
                db, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, user_id=user_id
            )
        return self.render(
            request,
            "audit.html",
            {
                "title": "Audit log",
                "active": "audit",
                "entries": entries,
                "total": total,
                "user_filter": user_id or "",
                "paging": _pager(request, page, total),
                "summary": _summary,
            },
            session=session,
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.page(self.logout, post=True), methods=["POST"]),
            Route("/users", self.page(self.users), methods=["GET"]),
            Route("/users/{user_id}", self.page(self.user), methods=["GET"]),
            Route("/users/{user_id}/link", self.page(self.link, post=True), methods=["POST"]),
            Route("/users/{user_id}/forget", self.page(self.forget, post=True), methods=["POST"]),
            Route("/users/{user_id}/export", self.page(self.export), methods=["GET"]),
            Route(
                "/identities/{identity_id:int}/unlink",
                self.page(self.unlink, post=True),
                methods=["POST"],
            ),
            Route("/audit", self.page(self.audit_log), methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="admin_static"),
        ]


# --- helpers -------------------------------------------------------------------------------


def _base(request: Request) -> str:
    """Where the console is mounted (/admin, behind any proxy root path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self'; script-src 'none'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    )


def _set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=_base(request) or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _csrf_problem(request: Request, form: FormData, expected: str) -> str | None:
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        return "This form was sent from another site."
    supplied = str(form.get("csrf", ""))
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        return "This form was not sent from the admin console (missing or wrong CSRF token)."
    return None


def _safe_next(request: Request, target: str) -> str:
    """Only paths inside the console: never an open redirect."""
    base = _base(request)
    if target.startswith(f"{base}/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""


def _unmask(request: Request) -> bool:
    return request.query_params.get("unmask") == "1"


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


def _pager(request: Request, page: int, total: int) -> dict[str, Any]:
    pages = max(1, -(-total // PAGE_SIZE))
    params = dict(request.query_params)

    def url(number: int) -> str:
        return f"{request.url.path}?{urlencode({**params, 'page': number})}"

    first = (page - 1) * PAGE_SIZE + 1 if total else 0
    return {
        "page": page,
        "pages": pages,
        "first": first,
        "last": min(total, page * PAGE_SIZE),
        "total": total,
        "prev": url(page - 1) if page > 1 else None,
        "next": url(page + 1) if page < pages else None,
    }


def _summary(entry: audit.AuditRecord) -> str:
    """One line describing an audit entry's before/after."""
    after = entry.after
    if entry.action in (audit.LINK, audit.MERGE):
        joining = entry.before.get("joining", {})
        moved = len(joining.get("identities", []))
        channels = ", ".join(sorted({i["channel"] for i in joining.get("identities", [])}))
        counts = after.get("moved", {})
        return (
            f"{moved} identit{'y' if moved == 1 else 'ies'} ({channels or 'none'}) joined; "
            f"moved {counts.get('history', 0)} history, {counts.get('inbox', 0)} inbox, "
            f"{counts.get('outbox', 0)} outbox rows; entity {joining.get('entity_id', '?')} retired"
        )
    if entry.action == audit.UNLINK:
        new = after.get("new_user", {})
        channels = ", ".join(i["channel"] for i in new.get("identities", []))
        return (
            f"identity {after.get('identity_id')} ({channels}) became a new user "
            f"with entity {new.get('entity_id', '?')}"
        )
    if entry.action == audit.FORGET:
        deleted = after.get("deleted", {})
        return "deleted " + ", ".join(f"{v} {k}" for k, v in deleted.items())
    if entry.action == audit.EXPORT:
        counts = after.get("counts", {})
        return "exported " + ", ".join(f"{v} {k}" for k, v in counts.items())
    return ""
