"""`predict` without the detour: an ASGI layer in front of Django for the one hot endpoint.

`POST /api/deployments/<name>/predict` with a token is what client applications call in a loop.
Through Django it runs the whole middleware stack, DRF and three queries on the one thread that
serves every synchronous view, so requests queue behind each other. Here the same work is done
directly: one query finds the caller's deployment and its champion version from the token, the
inputs go through the same validation (`deployment_data.inputs_parse`), the model comes from the
same cache (`deployment_serving`), and the answer is the same JSON with the same headers; the
query and the forward pass run on a small thread pool, so concurrent clients are served at once.

Only the plain successful case is taken here. Anything else (no token, session cookies, an
unknown token or deployment, invalid inputs, a body over the limit, a host not allowed) is handed
to Django unchanged, body included, which answers exactly as before, errors in the API's format.
`CLAAS_PREDICT_FAST_PATH=0` turns the layer off.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Awaitable, Callable

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.http.request import split_domain_port, validate_host

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PATH = re.compile(r"^/api/deployments/(?P<name>[^/]+)/predict$")
TOKEN_PREFIX = b"token "


def _headers() -> list[tuple[bytes, bytes]]:
    """What Django's middleware and DRF put on a successful predict answer."""
    headers = [
        (b"content-type", b"application/json"),
        (b"vary", b"Accept"),
        (b"allow", b"POST, OPTIONS"),
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"cross-origin-opener-policy", (settings.SECURE_CROSS_ORIGIN_OPENER_POLICY or "").encode()),
        (b"referrer-policy", (settings.SECURE_REFERRER_POLICY or "").encode()),
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append((b"strict-transport-security", value.encode()))
    return [(k, v) for k, v in headers if v]


@lru_cache(maxsize=1)
def _lookup_sql() -> str:
    """One query from token and deployment name to the champion version (names from the models' metadata)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from clserver.deployment_models import Deployment, DeploymentVersion

    d, v = Deployment._meta, DeploymentVersion._meta
    t, u = Token._meta, get_user_model()._meta

    def col(meta: Any, field: str) -> str:
        return meta.get_field(field).column

    return (
        f"SELECT v.{col(v, 'version')}, v.{col(v, 'weights_file')}, d.{d.pk.column}, d.{col(d, 'created_at')}, "
        f"d.{col(d, 'architecture')}, d.{col(d, 'model_params')} "
        f"FROM {v.db_table} v JOIN {d.db_table} d ON v.{col(v, 'deployment')} = d.{d.pk.column} "
        f"JOIN {t.db_table} t ON t.{col(t, 'user')} = d.{col(d, 'owner')} "
        f"JOIN {u.db_table} u ON u.{u.pk.column} = d.{col(d, 'owner')} "
        f"WHERE t.{col(t, 'key')} = %s AND u.{col(u, 'is_active')} = %s AND d.{col(d, 'name')} = %s "
        f"AND v.{col(v, 'version')} = d.{col(d, 'champion_version')} LIMIT 1"
    )


def _aware(value: Any) -> datetime:
    """A timestamp column as Django's ORM returns it (SQLite keeps naive UTC text)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def champion_lookup(*, token: str, name: str) -> dict[str, Any] | None:
    """The deployment `name` of the active user holding `token`, with its champion version; None if none.

    Raw SQL on purpose: composing the equivalent ORM query costs more than the whole prediction.
    """
    with connection.cursor() as cursor:
        cursor.execute(_lookup_sql(), [token, True, name])
        row = cursor.fetchone()
    if row is None:
        return None
    version, weights_file, deployment_id, created_at, architecture, params = row
    return {"version": version, "weights_file": weights_file, "deployment_key": (deployment_id, _aware(created_at).timestamp()),
            "architecture": architecture, "params": params if isinstance(params, dict) else json.loads(params)}


class PredictFastPath:
    """ASGI middleware: answers successful token `predict` calls itself, hands the rest to `app`."""

    def __init__(self, app: Callable[..., Awaitable[None]], threads: int | None = None) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads or settings.PREDICT_THREADS,
                                           thread_name_prefix="predict")
        self.headers = _headers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if not (match and scope.get("method") == "POST" and self.enabled()):
            return await self.app(scope, receive, send)
        token = self._token(scope)
        if token is None:
            return await self.app(scope, receive, send)
        body, complete = await self._read_body(receive)
        replay = self._replaying(body, receive)
        if not complete:
            return await self.app(scope, replay, send)
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.executor, self._answer_or_none, token, match["name"], body)
        if answer is None:
            return await self.app(scope, replay, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*self.headers, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    @staticmethod
    def enabled() -> bool:
        """Off by setting, and whenever predict is rate-limited (the throttle lives in DRF)."""
        from rest_framework.settings import api_settings

        return settings.PREDICT_FAST_PATH and api_settings.DEFAULT_THROTTLE_RATES.get("predict") is None

    # --- the request ---------------------------------------------------------------------------
    def _token(self, scope: Scope) -> str | None:
        """The token of an `Authorization: Token ...` request from an allowed host, with no cookies."""
        authorization = host = None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                authorization = value
            elif key == b"host":
                host = value
            elif key == b"cookie":
                return None  # a browser session: Django decides (CSRF, session auth)
        if not authorization or authorization[:len(TOKEN_PREFIX)].lower() != TOKEN_PREFIX:
            return None
        if not self._host_allowed(host, scope):
            return None
        token = authorization[len(TOKEN_PREFIX):].strip()
        if not token or b" " in token:
            return None
        try:
            return token.decode("ascii")
        except UnicodeDecodeError:
            return None

    def _host_allowed(self, host: bytes | None, scope: Scope) -> bool:
        if settings.SECURE_SSL_REDIRECT and not self._secure(scope):
            return False
        if host is None:
            return False
        domain, _ = split_domain_port(host.decode("latin-1"))
        allowed = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]
        return bool(domain) and validate_host(domain, allowed)

    @staticmethod
    def _secure(scope: Scope) -> bool:
        if scope.get("scheme") == "https":
            return True
        header = settings.SECURE_PROXY_SSL_HEADER
        if not header:
            return False
        name = header[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        return any(k == name and v.split(b",")[0].strip() == header[1].encode()
                   for k, v in scope.get("headers", []))

    @staticmethod
    async def _read_body(receive: Receive) -> tuple[bytes, bool]:
        """The body, and whether it was read whole within the JSON body limit."""
        chunks, size, limit = [], 0, settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return b"".join(chunks), True

    @staticmethod
    def _replaying(body: bytes, receive: Receive) -> Receive:
        """A `receive` that gives Django the body already read, then whatever follows."""
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    # --- the work (on the pool) ----------------------------------------------------------------
    def _answer_or_none(self, token: str, name: str, body: bytes) -> bytes | None:
        try:
            return self._answer(token, name, body)
        except Exception:  # Django serves it again and answers in the API's error format
            logger.exception("predict fast path failed; Django answers instead")
            return None

    def _answer(self, token: str, name: str, body: bytes) -> bytes | None:
        from claas_site.errors import ApplicationError
        from clserver import deployment_serving as serving
        from clserver.deployment_data import inputs_parse

        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            return None
        try:
            row = champion_lookup(token=token, name=name)
        except DatabaseError:
            close_old_connections()
            logger.warning("predict fast path: database error; Django answers instead", exc_info=True)
            return None
        if row is None:
            return None
        params = row["params"]
        try:
            x = inputs_parse(inputs=payload["inputs"], input_shape=params["input_shape"])
        except ApplicationError:
            return None
        model = serving.model_cached(deployment_key=row["deployment_key"], version=row["version"],
                                     architecture=row["architecture"], params=params,
                                     weights_file=row["weights_file"])
        predictions = serving.model_predict(model, x)
        answer = {"predictions": predictions.tolist(), "model_version": row["version"]}
        return json.dumps(answer, separators=(",", ":")).encode()
