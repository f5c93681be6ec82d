"""Hot reads on a thread pool: status, results, events, detail endpoints and /healthz, each answered whole
by one pool thread, so they neither queue behind each other nor pay Django's per-request thread hops.

Under Django's ASGIHandler a synchronous view runs inside a per-request ThreadSensitiveContext: every
request starts a new thread, opens (and closes) a new database connection on it, and each of the
synchronous middleware's hooks hops between the event loop and that thread (whitenoise, being
synchronous only, adds a hop back for the rest of the chain). Measured in the web process (py-spy,
status requests in a loop): the DRF view, its queries included, was about a sixth of the busy samples,
opening and closing the connection a tenth; thread start-up and the hops were most of the rest. On a
busy two-core machine with a training job running, `status` and `results` answered about 25 to 40 req/s
each while the predict fast path answered 83 to 150 (bench/load.py).

Here the request is parsed and answered exactly as before, with the same middleware and the same DRF
views, but synchronously: the whole chain (BaseHandler in sync mode, as under WSGI) runs on a small
pool of long-lived threads that keep their database connections. Answers are byte for byte those of
the asynchronous chain (tests/clserver/serving/test_pooled_reads.py); every other request (writes,
pages, downloads, anything not named in READS) takes Django's usual path. `CLAAS_READ_THREADS` sizes the
pool; 0 turns it off.
"""
from __future__ import annotations

import asyncio
import contextvars
from contextlib import suppress
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Awaitable, Callable

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

# URL names (no namespace) whose GET and HEAD are answered on the pool: reads that change nothing.
READS = frozenset({
    "healthz",
    "base-status", "base-results",
    "experiment-list", "experiment-detail", "experiment-events",
    "deployment-list", "deployment-detail", "deployment-events",
    "dataset-list", "dataset-detail",
    "model-list", "model-detail", "model-version-list", "model-version-detail",
})
METHODS = frozenset({"GET", "HEAD"})
SCOPE_KEY = "claas.pooled_read"


@lru_cache(maxsize=4096)
def read_path(path_info: str) -> bool:
    """Whether `path_info` routes to one of READS (resolved once per distinct path)."""
    try:
        match = resolve(path_info)
    except Resolver404:
        return False
    return not match.namespace and match.url_name in READS


def connections_kept() -> None:
    """Before a pooled request: close_old_connections, except that a connection with no maximum age stays
    open (the pool's threads live as long as the process; the predict pool keeps its connections too)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        try:
            if conn.settings_dict["CONN_MAX_AGE"]:
                conn.close_if_unusable_or_obsolete()
            elif conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"] or conn.in_atomic_block:
                conn.close()
            elif conn.errors_occurred:
                if conn.is_usable():
                    conn.errors_occurred = False
                else:
                    conn.close()
        except DatabaseError:  # a broken connection: the request opens a new one
            with suppress(DatabaseError):
                conn.close()


class PooledReadsHandler(ASGIHandler):
    """Django's ASGI handler, answering READS on a thread pool with the synchronous middleware chain."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        threads = settings.READ_THREADS if threads is None else threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reads") if threads else None
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if self.executor is not None and scope["type"] == "http" and self.pooled(scope):
            # No ThreadSensitiveContext: nothing of this request runs on a per-request thread.
            await self.handle({**scope, SCOPE_KEY: True}, receive, send)
            return
        await super().__call__(scope, receive, send)

    @staticmethod
    def pooled(scope: dict[str, Any]) -> bool:
        if scope.get("method") not in METHODS:
            return False
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return read_path(path or "/")

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if not getattr(request, "scope", {}).get(SCOPE_KEY):
            return await super().get_response_async(request)
        # In this request's context, as asyncio.to_thread runs a call (the script prefix set by handle()).
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, context.run, self._respond, request)

    def _respond(self, request: HttpRequest) -> HttpResponseBase:
        connections_kept()
        return self.sync_handler.get_response(request)
