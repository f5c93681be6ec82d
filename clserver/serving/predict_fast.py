"""`predict` without the detour: an ASGI layer in front of Django for the one hot endpoint.

`POST /api/deployments/<name>/predict` with a token is what client applications call in a loop.
Through Django it runs the whole middleware stack, DRF and three queries on the one thread that
serves every synchronous view, so requests queue behind each other. Here the same work is done
directly: one query finds the caller's deployment and its champion version from the token, the
inputs go through the same validation (`deployment_data.inputs_parse`), the model comes from the
same cache (`deployment_serving`), and the answer is the same JSON with the same headers; the
query and the forward pass run on a small thread pool, so concurrent clients are served at once.

Only the plain successful case of an unambiguous request is taken here: no query string, no
cookies, exactly one Authorization, Host and Content-Type header, the body JSON in UTF-8, and an
Accept header (if any) that asks for JSON. Anything else (no token, session cookies, repeated
headers, which Django joins into values it refuses, another content type, charset or renderer,
an unknown token or deployment, invalid inputs, a body over the limit, a host not allowed) is
handed to Django unchanged, body included, which answers exactly as it would without this layer
(tests/clserver/serving/test_predict_fast_agreement.py), errors in the API's format.
`CLAAS_PREDICT_FAST_PATH=0` turns the layer off.

Concurrent calls on the same champion version are micro-batched (clserver/serving/batching.py):
lookup and parsing run per call on the pool, then the calls gathered within `CLAAS_PREDICT_BATCH_MS`
run as one forward pass, each answered with its own rows and the version its lookup found. A call
alone runs at once; `CLAAS_PREDICT_BATCH_MS=0` runs every call's forward pass on its own.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache, partial
from typing import Any, Awaitable, Callable

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.http.request import split_domain_port, validate_host

from clserver.serving.batching import PredictBatcher, one_compute_thread, predict_many

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PATH = re.compile(r"^/api/deployments/(?P<name>[^/]+)/predict$")
TOKEN_PREFIX = b"token "
# What DRF's JSONParser reads as UTF-8 JSON (other charsets, and other types it refuses, go to Django).
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"})
# Accept values for which DRF's negotiation picks the JSON renderer with no parameters (no indent).
JSON_ACCEPTS = frozenset({b"*/*", b"application/json"})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # as DRF's parser: NaN and Infinity are refused


# The same reading as DRF's JSONParser: strict UTF-8 text (no BOM), no NaN or Infinity.
JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)


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

    from clserver.deployments.models import Deployment, DeploymentVersion

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
        self.window_s = settings.PREDICT_BATCH_MS / 1000
        self.executor = ThreadPoolExecutor(max_workers=threads or settings.PREDICT_THREADS,
                                           thread_name_prefix="predict",
                                           initializer=one_compute_thread if self.window_s > 0 else None)
        self.headers = _headers()
        self.batcher: PredictBatcher | None = None  # made on the event loop at the first call
        proxy = settings.SECURE_PROXY_SSL_HEADER
        # (header as ASGI names it, value meaning https): Django's is_secure reads it in place of the scheme.
        self.proxy_ssl = ((proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode(), proxy[1].encode())
                          if proxy else None)

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
        answer = await self._answered(token, match["name"], body)
        if answer is None:
            return await self.app(scope, replay, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*self.headers, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    async def _answered(self, token: str, name: str, body: bytes) -> bytes | None:
        """The answer's body, or None for Django to answer: on the pool, and batched when that is on."""
        loop = asyncio.get_running_loop()
        if self.window_s <= 0:
            return await loop.run_in_executor(self.executor, self._answer_or_none, token, name, body, None)
        if self.batcher is None:
            self.batcher = PredictBatcher(loop=loop, executor=self.executor, window_s=self.window_s)
        batcher = self.batcher
        batcher.expect()
        joined = False
        try:
            work = await loop.run_in_executor(self.executor, self._answer_or_none, token, name, body, batcher)
            if not isinstance(work, Prepared):
                return work
            joined = True
            waiter = batcher.join(work.key, work.x, work.run)
        finally:
            if not joined:
                batcher.leave()
        try:
            return await waiter
        except Exception:  # the batch's forward pass failed: Django serves this call again, errors in its format
            logger.exception("predict fast path: a batched forward pass failed; Django answers instead")
            return None

    @staticmethod
    def enabled() -> bool:
        """Off by setting, and whenever predict is rate-limited (the throttle lives in DRF)."""
        from rest_framework.settings import api_settings

        return settings.PREDICT_FAST_PATH and api_settings.DEFAULT_THROTTLE_RATES.get("predict") is None

    # --- the request ---------------------------------------------------------------------------
    def _token(self, scope: Scope) -> str | None:
        """The token of an unambiguous `Authorization: Token ...` request from an allowed host; None hands
        the request to Django. One pass over the headers; a repeated header is Django's to refuse."""
        if scope.get("query_string"):
            return None  # DRF reads `?format=` to pick a renderer
        authorization = host = content_type = accept = forwarded = None
        proxy = self.proxy_ssl[0] if self.proxy_ssl else None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif key == b"host":
                if host is not None:
                    return None
                host = value
            elif key == b"content-type":
                if content_type is not None:
                    return None
                content_type = value
            elif key == b"accept":
                if accept is not None:
                    return None
                accept = value
            elif key == b"cookie":
                return None  # a browser session: Django decides (CSRF, session auth)
            elif key == proxy:
                if forwarded is not None:
                    return None
                forwarded = value
        if content_type not in JSON_TYPES and (content_type is None or content_type.lower() not in JSON_TYPES):
            return None
        if accept is not None and accept not in JSON_ACCEPTS:
            return None
        if not authorization or authorization[:len(TOKEN_PREFIX)].lower() != TOKEN_PREFIX:
            return None
        if not self._host_allowed(host, scope, forwarded):
            return None
        token = authorization[len(TOKEN_PREFIX):].strip()
        if not token or b" " in token:
            return None
        try:
            return token.decode("ascii")
        except UnicodeDecodeError:
            return None

    def _host_allowed(self, host: bytes | None, scope: Scope, forwarded: bytes | None) -> bool:
        if settings.SECURE_SSL_REDIRECT and not self._secure(scope, forwarded):
            return False
        if host is None:
            return False
        domain, _ = split_domain_port(host.decode("latin-1"))
        allowed = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]
        return bool(domain) and validate_host(domain, allowed)

    def _secure(self, scope: Scope, forwarded: bytes | None) -> bool:
        """As Django's `is_secure`: the proxy's header when configured and sent, else the scheme."""
        if self.proxy_ssl and forwarded is not None:
            return forwarded.split(b",", 1)[0].strip() == self.proxy_ssl[1]
        return scope.get("scheme") == "https"

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
    def _answer_or_none(self, token: str, name: str, body: bytes,
                        batcher: PredictBatcher | None) -> bytes | Prepared | None:
        try:
            return self._answer(token, name, body, batcher)
        except Exception:  # Django serves it again and answers in the API's error format
            logger.exception("predict fast path failed; Django answers instead")
            return None

    def _answer(self, token: str, name: str, body: bytes, batcher: PredictBatcher | None) -> bytes | Prepared | None:
        """The answer (no batcher, or this call alone), the call ready to join a batch, or None for Django."""
        from claas_site.errors import ApplicationError
        from clserver.serving import cache as serving
        from clserver.deployments.data import inputs_parse

        try:
            payload = JSON_DECODER.decode(body.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
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
        prepared = Prepared(key=(*row["deployment_key"], row["version"], row["weights_file"], x.shape[1:], x.dtype.str),
                            x=x, run=partial(answers_encode, model, row["version"]))
        if batcher is None or batcher.alone():
            return prepared.run([x])[0]
        return prepared


@dataclass(frozen=True)
class Prepared:
    """A call looked up and parsed, ready to join a batch: calls under one key share a model version."""
    key: tuple
    x: Any
    run: Callable[[list[Any]], list[bytes]]


def answers_encode(model: Any, version: int, xs: list[Any]) -> list[bytes]:
    """One forward pass over every call's rows; each call's answer body, with the version that made it."""
    return [json.dumps({"predictions": p.tolist(), "model_version": version}, separators=(",", ":")).encode()
            for p in predict_many(model, xs, version=version)]
