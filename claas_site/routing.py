"""Websocket routes of every app, the origin check in front of them, and the answer to an unknown path."""
from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host
from django.urls import path, re_path

from clserver.experiments import consumers
from clserver.deployments import consumers as deployment_consumers

CLOSE_NOT_FOUND = 4404
DEFAULT_PORTS = {"http": 80, "https": 443}


async def no_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A path no consumer serves: the handshake is refused with 4404 (not a 500 and a trace in the log)."""
    await send({"type": "websocket.close", "code": CLOSE_NOT_FOUND})


websocket_urlpatterns = [
    path("ws/experiments/<str:username>/<str:exp_name>/", consumers.ExperimentConsumer.as_asgi()),
    path("ws/deployments/<str:username>/<str:name>/", deployment_consumers.DeploymentConsumer.as_asgi()),
    re_path(r"", no_route),  # last: everything the routes above do not match
]


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, the port made explicit; None when it is not one."""
    try:
        parts: SplitResult = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _trusted(origin: tuple[str, str, int]) -> bool:
    """An origin named in CSRF_TRUSTED_ORIGINS (exactly, or "scheme://*.domain" for its subdomains), as
    Django's CSRF check reads that setting."""
    scheme, host, port = origin
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in pattern
        trusted = _origin(pattern.replace("://*.", "://", 1))
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if host == trusted[1] or (wildcard and is_same_domain(host, "." + trusted[1])):
            return True
    return False


def _is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """Whether the browser's page is on https (a server behind a proxy sees plain ws)."""
    if scope.get("scheme") == "wss" or settings.SECURE_SSL_REDIRECT:
        return True  # a site that redirects every page to https (CLAAS_SECURE=1) has no http page
    proxy = settings.SECURE_PROXY_SSL_HEADER  # as Django's request.is_secure() reads it
    if proxy:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        return headers.get(name, b"").decode("latin-1").split(",")[0].strip() == proxy[1]
    return False


def websocket_origin_allowed(*, scope: dict[str, Any]) -> bool:
    """The browser's Origin must be this site's own, scheme, host and port (or a trusted origin).

    Cookies do not keep to a port, so another site on the same host name (another port) must not
    open a websocket with the user's session. The site's own origin is the one the browser asked
    for: the Host header (which must be an allowed host) with the scheme of the connection; a
    same-origin page sends exactly that as its Origin. Only browsers are held by an Origin check
    (any other client writes the header it likes), and browsers always send Host; a scope
    without one (an in-process test client) is checked against ALLOWED_HOSTS alone.
    """
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", []):
        if name in headers and name in (b"origin", b"host"):
            return False  # two answers to one question: trust neither
        headers[name] = value
    if b"origin" not in headers:
        return False
    origin = _origin(headers[b"origin"].decode("latin-1"))
    if origin is None:
        return False
    if _trusted(origin):
        return True
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:  # as Django's request.get_host() does
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if b"host" not in headers:
        return validate_host(origin[1], allowed_hosts)
    host = headers[b"host"].decode("latin-1").strip().lower()
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, allowed_hosts):
        return False
    return origin == _origin(("https://" if _is_secure(scope, headers) else "http://") + host)


class SameOriginValidator:
    """ASGI middleware: a websocket whose Origin is not the site's own is refused at the handshake."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if websocket_origin_allowed(scope=scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
