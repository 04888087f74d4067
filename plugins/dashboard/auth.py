"""Who is looking: sign-in, sign-out, and the guards every dashboard route goes through.

One sign-in form takes either key: the admin key opens the operator's
console, a customer's API key opens their usage page. Guards:
``page(kind)`` (HTML: no session -> the sign-in page, the other kind of
session -> 403) and ``api(kind, change=...)`` (JSON errors; with ``change``,
for anything that writes, the CSRF token sent as ``X-CSRF-Token`` must match
the session's and the request must come from this origin).
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from proxy import ProxyError, bad_request

from .sessions import COOKIE, Session, Sessions, SignInLimiter, admin_mark, csrf_ok

if TYPE_CHECKING:
    from .console import Dashboard

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("tollway_dashboard_session", Session)


class Guard:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        opts = dash.options
        self.sessions = Sessions(dash.store, opts.session_hours * 3600)
        self.limiter = SignInLimiter(dash.store, opts.sign_in_attempts, opts.sign_in_window)

    # -- sessions ------------------------------------------------------------------------
    async def session(self, request: web.Request) -> Session | None:
        """The request's live session: expired ones, admin sessions of another
        admin key, and customer sessions of a key no longer active are ended."""
        token = request.cookies.get(COOKIE)
        session = await self.sessions.get(token)
        if session is None:
            return None
        if session.kind == "admin":
            admin = self.dash.admin_key
            if not admin or not hmac.compare_digest(session.admin_mark, admin_mark(admin)):
                await self.sessions.end(token)
                return None
        else:
            accounts = self.dash.accounts
            record = accounts.by_id.get(session.key_id) if accounts is not None else None
            if record is None or record.status(time.time()) != "active":
                await self.sessions.end(token)
                return None
        return session

    def set_cookie(self, request: web.Request, response: web.StreamResponse, token: str) -> None:
        secure = {"always": True, "never": False}.get(self.dash.options.secure_cookie, request.secure)
        response.set_cookie(COOKIE, token, max_age=int(self.sessions.ttl), path=self.dash.root, httponly=True,
                            samesite="Strict", secure=secure)

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path=self.dash.root)

    # -- sign in / out -----------------------------------------------------------------
    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        dash = self.dash
        if not same_origin(request):
            return dash.login_page(request, "This sign-in came from another site and was refused.", status=403)
        client = request.remote or "?"
        wait = await self.limiter.attempt(client)  # counted as failed until the key is right
        if wait:
            return dash.login_page(request, f"Too many failed sign-ins from your address. Try again in {wait} s.",
                                   status=429, headers={"Retry-After": str(wait)})
        form = await read_form(request)
        given = str(form.get("key", "")).strip()
        admin = dash.admin_key
        if admin and given and hmac.compare_digest(given.encode(), admin.encode()):
            await self.limiter.succeeded(client)
            token, _ = await self.sessions.create("admin", mark=admin_mark(admin))
            return await self._enter(request, token, dash.root)
        accounts = dash.accounts
        record = accounts.key_for(given) if (accounts is not None and given) else None
        if record is not None and record.status(time.time()) == "active":
            await self.limiter.succeeded(client)
            token, _ = await self.sessions.create("customer", key_id=record.id)
            return await self._enter(request, token, dash.root + "/usage")
        message = "That key was not recognised." if given else "Enter a key."
        if record is not None:
            message = f"That key is {record.status(time.time())}."
        return dash.login_page(request, message, status=401)

    async def _enter(self, request: web.Request, token: str, default: str) -> web.StreamResponse:
        old = request.cookies.get(COOKIE)
        await self.sessions.end(old)  # a fresh id on every sign-in (no session fixation)
        target = request.query.get("next", "")
        if not (target.startswith(self.dash.root + "/") or target == self.dash.root) or "//" in target:
            target = default
        response = redirect(target)
        self.set_cookie(request, response, token)
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        session = await self.session(request)
        if session is not None:
            form = await read_form(request)
            if not csrf_ok(session, request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))):
                raise csrf_error()
            await self.sessions.end(request.cookies.get(COOKIE))
        response = redirect(self.dash.root + "/login")
        self.clear_cookie(response)
        return response

    # -- guards ------------------------------------------------------------------------
    def page(self, kind: str) -> Callable[[Handler], Handler]:
        def wrap(fn: Handler) -> Handler:
            @functools.wraps(fn)
            async def run(request: web.Request) -> web.StreamResponse:
                session = await self.session(request)
                if session is None:
                    return redirect(f"{self.dash.root}/login?next={quote(request.path_qs)}")
                if session.kind != kind:
                    if kind == "customer":  # the operator has no usage page of their own
                        return redirect(self.dash.root)
                    return self.dash.forbidden_page(request, session)
                request[SESSION_KEY] = session
                return await fn(request)
            return run
        return wrap

    def api(self, kind: str, *, change: bool = False) -> Callable[[Handler], Handler]:
        def wrap(fn: Handler) -> Handler:
            @functools.wraps(fn)
            async def run(request: web.Request) -> web.StreamResponse:
                # A ProxyError raised here or by fn is rendered (as JSON) by the app's error middleware.
                session = await self.session(request)
                if session is None:
                    raise ProxyError(401, "sign in to the dashboard first", code="not_signed_in")
                if session.kind != kind:
                    raise ProxyError(403, "this session may not use this call", code="forbidden")
                if change and not (same_origin(request) and csrf_ok(session, request.headers.get("X-CSRF-Token"))):
                    raise csrf_error()
                request[SESSION_KEY] = session
                return await fn(request)
            return run
        return wrap


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def csrf_error() -> ProxyError:
    return ProxyError(403, "missing or wrong CSRF token: reload the page and try again", code="csrf_failed")


async def read_form(request: web.Request) -> MultiDictProxy:
    """The posted form; a 400 when it is not UTF-8 text (aiohttp raised UnicodeDecodeError: a 500)."""
    try:
        return await request.post()
    except UnicodeDecodeError:
        raise bad_request("the form is not UTF-8 text", code="invalid_body") from None


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request came from another origin (the
    ``Origin`` header, else ``Referer``); requests without either pass (not a browser)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin != "null"
    parts = urlsplit(origin)
    return parts.netloc == request.host
