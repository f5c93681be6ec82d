"""Request bodies are bounded as their headers arrive: too large is 413, large from an anonymous client 401.

An ASGI middleware in front of the application, so the limits hold under any ASGI server. The server
(uvicorn) buffers at most 64 KiB of a body the application has not asked for and then stops reading
the connection; here the headers are checked before the application asks for a byte:

- a declared length (`Content-Length`) over the limit is answered 413 at once, the body unread and
  the connection closed; a body without a declared length (chunked) is counted as it arrives and cut
  off with a 413 at the limit;
- a body over the anonymous limit (`CLAAS_MAX_ANONYMOUS_BODY_BYTES`), or one of unknown length, must
  come with credentials Django will accept: a DRF token of an active user, or the session cookie of a
  live session of an active user. They are checked once, on a pool thread (one query), before the body
  is read. Without valid credentials a declared body is answered 401 unread; an unsized one is cut
  off at the anonymous limit. Small bodies (sign-in forms, `predict`) are not checked here: Django
  authenticates them as usual.

A refused request gets the API's error format and `Connection: close`; the application never sees it,
or (a body cut off in the middle) sees the client leave. The server sends `100 Continue` only when the
application first asks for the body, so a refused client is never invited to send it.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from asgiref.sync import sync_to_async
from django.conf import settings

from claas_site.errors import error_body

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def max_request_bytes() -> int:
    """The largest body any endpoint accepts: an upload plus its form fields."""
    return settings.MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def max_anonymous_bytes() -> int:
    """The largest body taken in before the sender has shown valid credentials."""
    return settings.MAX_ANONYMOUS_BODY_BYTES


# --- the answers ---------------------------------------------------------------------------------
class Refusal:
    """One refusal: status, the API's error body, extra headers, and what the log says."""

    def __init__(self, status: int, message: str, details: dict[str, Any], log: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status, self.log = status, log
        self.body = json.dumps(error_body(message, details)).encode()
        self.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()),
                        (b"connection", b"close"), *headers]

    async def send(self, send: Send) -> None:
        logger.warning("refused a request body: %s", self.log)
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def too_large(length: int | None) -> Refusal:
    limit = max_request_bytes()
    message = (f"The request body has {length} bytes; at most {limit} are allowed." if length is not None
               else f"The request body is larger than the limit of {limit} bytes.")
    return Refusal(413, message, {"limit_bytes": limit}, f"{_size(length)} (limit {limit})")


def unauthenticated(*, provided: bool, length: int | None) -> Refusal:
    limit = max_anonymous_bytes()
    message = (f"The token or session is not valid; a request body over {limit} bytes needs valid credentials."
               if provided else
               f"Authentication credentials were not provided; a request body over {limit} bytes needs them.")
    why = "with invalid credentials" if provided else "without credentials"
    return Refusal(401, message, {"limit_bytes": limit}, f"{_size(length)} {why}",
                   ((b"www-authenticate", b"Token"),))


def unavailable() -> Refusal:
    return Refusal(503, "The server could not check the credentials; try again.", {},
                   "credentials could not be checked")


def _size(length: int | None) -> str:
    return f"a body of {length} bytes" if length is not None else "an unsized body"


# --- what the headers say --------------------------------------------------------------------------
def declared_length(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length or None, whether the body is chunked). A request with neither has no body (0)."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:  # the server refuses these before the application; count it as unsized
                length = None
                chunked = True
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        return None, True
    return (0 if length is None else length), False


def credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """("token", key), ("session", key), or ("invalid", "") from a request's ASGI headers; None if none.

    Repeated headers are joined as Django's ASGI request joins them ("," for Authorization, "; " for
    cookies), so that a repeated Authorization header is as invalid here as it is to DRF.
    """
    from django.http.cookie import parse_cookie

    authorization = [value for name, value in headers if name == b"authorization"]
    if authorization:
        words = b",".join(authorization).split()
        if words and words[0].lower() == b"token":  # DRF's TokenAuthentication takes the request
            if len(words) != 2:
                return ("invalid", "")
            try:
                return ("token", words[1].decode())
            except UnicodeDecodeError:
                return ("invalid", "")
    cookies = [value for name, value in headers if name == b"cookie"]
    if cookies:
        joined = "; ".join(c.decode("latin-1").rstrip("; ") for c in cookies)
        key = parse_cookie(joined).get(settings.SESSION_COOKIE_NAME)
        if key:
            return ("session", key)
    return None


# --- the credentials, read as Django and DRF will read them --------------------------------------
def token_valid(key: str) -> bool:
    """Whether `key` is the DRF token of an active user (one query)."""
    from rest_framework.authtoken.models import Token

    return Token.objects.filter(key=key, user__is_active=True).exists()


def session_valid(key: str) -> bool:
    """Whether `key` is a live session of an active user, checked as `django.contrib.auth.get_user` does,
    without its writes (a session it would flush or cycle is simply not valid here)."""
    from importlib import import_module

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
    from django.utils.crypto import constant_time_compare

    data = import_module(settings.SESSION_ENGINE).SessionStore(key).load()  # one query; {} if none
    backend_path = data.get(BACKEND_SESSION_KEY)
    if SESSION_KEY not in data or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    user = load_backend(backend_path).get_user(get_user_model()._meta.pk.to_python(data[SESSION_KEY]))
    if user is None:  # unknown or inactive
        return False
    if not hasattr(user, "get_session_auth_hash"):
        return True
    session_hash = data.get(HASH_SESSION_KEY)
    return bool(session_hash) and constant_time_compare(session_hash, user.get_session_auth_hash())


def credentials_valid(kind: str, key: str) -> bool:
    """Run on a pool thread: the database connection is this thread's, opened and closed as Django's
    request cycle would (close_old_connections)."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        return token_valid(key) if kind == "token" else session_valid(key) if kind == "session" else False
    finally:
        close_old_connections()


# --- the middleware --------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: HTTP request bodies within the limits, and large ones only from known callers."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", [])
        length, chunked = declared_length(headers)
        if not chunked and length <= max_anonymous_bytes():
            return await self.app(scope, receive, send)  # the common case: no body, or a small one
        if length is not None and length > max_request_bytes():
            return await too_large(length).send(send)
        limit = max_request_bytes()
        found = credentials(headers)
        if found is not None and found[0] == "invalid":
            return await unauthenticated(provided=True, length=length).send(send)
        if found is not None:
            try:
                valid = await sync_to_async(credentials_valid, thread_sensitive=False)(*found)
            except Exception:
                logger.exception("checking a request's credentials failed")
                return await unavailable().send(send)
            if not valid:
                return await unauthenticated(provided=True, length=length).send(send)
        elif length is not None:
            return await unauthenticated(provided=False, length=length).send(send)
        else:  # unsized and anonymous: taken in up to the anonymous limit only
            limit = max_anonymous_bytes()
        if not chunked:  # the server stops at the declared length itself
            return await self.app(scope, receive, send)
        await Counted(self.app, limit, anonymous=found is None)(scope, receive, send)


class Counted:
    """One chunked request: its body counted as the application reads it, cut off past `limit`."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, *, anonymous: bool) -> None:
        self.app, self.limit, self.anonymous = app, limit, anonymous
        self.received = 0
        self.started = self.refused = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> dict[str, Any]:
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.refused = True
                    if not self.started:
                        refusal = (unauthenticated(provided=False, length=None) if self.anonymous
                                   else too_large(None))
                        await refusal.send(send)
                    return {"type": "http.disconnect"}  # the application stops reading: the client "left"
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if self.refused:
                return  # the refusal is the answer
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
