"""Request bodies are bounded as their headers arrive: too large is 413, large from an anonymous client 401.

daphne's HTTP server (Twisted) receives a whole request body, spooling it to a temporary file,
before the ASGI application sees the request; a view's checks (of Content-Length, of the caller's
token) therefore come after the bytes have been taken in. This hooks daphne's request object
instead, where the headers are known and no byte of the body has been stored:

- a declared length over the limit is answered 413 at once and the connection closed; a body
  without a declared length (chunked) is counted as it arrives and cut off at the limit;
- a body over the anonymous limit (`CLAAS_MAX_ANONYMOUS_BODY_BYTES`), or one of unknown length,
  must come with credentials Django will accept: a DRF token of an active user, or the session
  cookie of a live session of an active user. They are checked once, on a thread of the reactor's
  pool (the ORM refuses to run on the event loop, and a query must not stall every connection),
  while reading from the connection is paused; what already came in with the headers (one socket
  read) is kept meanwhile. Without valid credentials a declared body is answered 401 before it is
  read; an unsized one is cut off at the anonymous limit. Small bodies (sign-in forms, `predict`)
  are not checked here: Django authenticates them as usual.

Twisted would also parse every multipart or form POST body into memory (all of it, several copies,
on the event loop) for `request.args`, which daphne never reads; that is switched off per request.
The hooks mirror daphne's and Twisted's internals of the versions below: another version refuses
to start until they have been checked against it (tests/claas_site/test_web_process.py).
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any

from django.conf import settings

from claas_site.errors import error_body

logger = logging.getLogger(__name__)

# The releases whose WebRequest / HTTPChannel behaviour these hooks (and clserver/serving/daphne_reaping.py's
# Server hooks) were written against: gotLength is called once the headers and cookies are parsed,
# before any body byte; handleContentChunk gets every body byte; process runs once the body is whole.
DAPHNE_VERSION = "4.2.3"
TWISTED_MAJOR = "26."


def daphne_version_check() -> None:
    """Raise unless daphne and Twisted are the releases the web-process hooks were written for."""
    import daphne
    import twisted

    if daphne.__version__ != DAPHNE_VERSION or not twisted.__version__.startswith(TWISTED_MAJOR):
        raise RuntimeError(
            f"clserver/serving/body_limit.py and clserver/serving/daphne_reaping.py hook daphne {DAPHNE_VERSION} on "
            f"Twisted {TWISTED_MAJOR}x; this is daphne {daphne.__version__} on Twisted {twisted.__version__}. "
            "Check the hooks against these releases, then update DAPHNE_VERSION / TWISTED_MAJOR.")


def max_request_bytes() -> int:
    """The largest body any endpoint accepts: an upload plus its form fields."""
    return settings.MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def max_anonymous_bytes() -> int:
    """The largest body taken in before the sender has shown valid credentials."""
    return settings.MAX_ANONYMOUS_BODY_BYTES


# --- the answers ---------------------------------------------------------------------------------
def _response(status: str, message: str, details: dict[str, Any], headers: str = "") -> bytes:
    body = json.dumps(error_body(message, details)).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def refusal_bytes(length: int | None) -> bytes:
    """The raw 413 response, in the API's error format."""
    limit = max_request_bytes()
    message = (f"The request body has {length} bytes; at most {limit} are allowed." if length is not None
               else f"The request body is larger than the limit of {limit} bytes.")
    return _response("413 Payload Too Large", message, {"limit_bytes": limit})


def unauthenticated_bytes(*, provided: bool) -> bytes:
    """The raw 401 response to a large body without valid credentials, in the API's error format."""
    limit = max_anonymous_bytes()
    message = (f"The token or session is not valid; a request body over {limit} bytes needs valid credentials."
               if provided else
               f"Authentication credentials were not provided; a request body over {limit} bytes needs them.")
    return _response("401 Unauthorized", message, {"limit_bytes": limit}, "WWW-Authenticate: Token\r\n")


def unavailable_bytes() -> bytes:
    return _response("503 Service Unavailable", "The server could not check the credentials; try again.", {})


# --- the credentials, read as Django and DRF will read them --------------------------------------
def credentials(headers: Any) -> tuple[str, str] | None:
    """("token", key), ("session", key), or ("invalid", "") from a request's Twisted headers; None if none.

    Repeated headers are joined as Django's ASGI request joins them ("," for Authorization, "; " for
    cookies), so that a repeated Authorization header is as invalid here as it is to DRF.
    """
    from django.http.cookie import parse_cookie

    authorization = headers.getRawHeaders(b"authorization")
    if authorization:
        words = b",".join(authorization).split()
        if words and words[0].lower() == b"token":  # DRF's TokenAuthentication takes the request
            if len(words) != 2:
                return ("invalid", "")
            try:
                return ("token", words[1].decode())
            except UnicodeDecodeError:
                return ("invalid", "")
    cookies = headers.getRawHeaders(b"cookie")
    if cookies:
        joined = "; ".join(c.decode("latin-1").rstrip("; ") for c in cookies)
        key = parse_cookie(joined).get(settings.SESSION_COOKIE_NAME)
        if key:
            return ("session", key)
    return None


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


# --- the hooks -----------------------------------------------------------------------------------
def _size(length: int | None) -> str:
    return f"a body of {length} bytes" if length is not None else "an unsized body"


def _expects_continue(request: Any) -> bool:
    """Take `Expect: 100-continue` off the request, so that Twisted does not send the client its go-ahead
    as the headers end; whether it was there."""
    expect = request.requestHeaders.getRawHeaders(b"expect")
    if not expect or expect[0].lower() != b"100-continue":
        return False
    request.requestHeaders.removeHeader(b"expect")
    return getattr(request.channel, "_version", b"HTTP/1.1") == b"HTTP/1.1"  # as Twisted's own check


def _refuse(request: Any, answer: bytes, what: str) -> None:
    _expects_continue(request)  # refused: the client is not invited to send the body
    request._claas_refused = True
    request._claas_pending = False
    old, request.content = request.content, io.BytesIO()  # Twisted rewinds it when the request ends
    if old is not None:
        old.close()  # a spooled temporary file goes at once
    if request.channel is not None:
        request.channel.transport.write(answer)
        request.channel.loseConnection()
    logger.warning("refused a request body: %s", what)


def _verify(request: Any, kind: str, key: str, got_length: Any, length: int | None, process: Any) -> None:
    """Pause reading, check the credentials on a pool thread, then go on or refuse."""
    from twisted.internet.threads import deferToThread

    request._claas_pending = True
    go_ahead = _expects_continue(request)  # sent once the credentials are found valid
    request.channel.transport.pauseProducing()
    got_length(request, length)  # the content file: what arrived with the headers goes there

    def verdict(valid: bool) -> None:
        if request._claas_refused or request.channel is None or request._disconnected:
            return  # the client left meanwhile
        if not valid:
            _refuse(request, unauthenticated_bytes(provided=True), f"{_size(length)} with invalid credentials")
            return
        request._claas_pending = False
        if go_ahead:
            request.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.channel.transport.resumeProducing()
        if request._claas_process_waiting:  # the whole body came in with the headers
            process(request)

    def failed(failure: Any) -> None:
        logger.error("checking a request's credentials failed: %s", failure.getTraceback())
        if not (request._claas_refused or request.channel is None or request._disconnected):
            _refuse(request, unavailable_bytes(), "credentials could not be checked")

    deferToThread(credentials_valid, kind, key).addCallbacks(verdict, failed)


def daphne_install() -> None:
    """Hook daphne's request class (once per process); other servers are left alone."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    if getattr(WebRequest, "_claas_body_limit", False):
        return
    daphne_version_check()
    got_length, content_chunk, process = WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process

    def gotLength(self: Any, length: int | None) -> None:
        self._claas_received = 0
        self._claas_refused = self._claas_pending = self._claas_process_waiting = False
        self._claas_limit = max_request_bytes()
        self._parsePOSTFormSubmission = False  # daphne never reads request.args
        if length is not None and length > max_request_bytes():
            _refuse(self, refusal_bytes(length), f"{_size(length)} (limit {max_request_bytes()})")
            return
        if length is not None and length <= max_anonymous_bytes():
            got_length(self, length)
            return
        found = credentials(self.requestHeaders)
        if found is not None and found[0] == "invalid":
            _refuse(self, unauthenticated_bytes(provided=True), f"{_size(length)} with a malformed token header")
        elif found is not None:
            _verify(self, *found, got_length, length, process)
        elif length is not None:
            _refuse(self, unauthenticated_bytes(provided=False), f"{_size(length)} without credentials")
        else:  # unsized and anonymous: taken in up to the anonymous limit only
            self._claas_limit = max_anonymous_bytes()
            got_length(self, length)

    def handleContentChunk(self: Any, data: bytes) -> None:
        if getattr(self, "_claas_refused", False):
            return
        self._claas_received = getattr(self, "_claas_received", 0) + len(data)
        limit = getattr(self, "_claas_limit", max_request_bytes())
        if self._claas_received > limit:
            if limit < max_request_bytes():
                _refuse(self, unauthenticated_bytes(provided=False), "unsized body without credentials")
            else:
                _refuse(self, refusal_bytes(None), f"unsized body over {limit} bytes")
            return
        content_chunk(self, data)

    def guarded_process(self: Any) -> Any:
        if getattr(self, "_claas_refused", False):
            return None
        if getattr(self, "_claas_pending", False):
            self._claas_process_waiting = True  # run once the credentials are found valid
            return None
        return process(self)

    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = guarded_process
    WebRequest._claas_body_limit = True
