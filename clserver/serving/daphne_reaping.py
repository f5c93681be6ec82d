"""Finished requests leave daphne's books at once, instead of at its next once-a-second sweep.

daphne keeps every request (its Twisted request object, the ASGI task, its queue, the coroutine)
in `Server.connections` until `application_checker`, which runs once a second, finds it both
disconnected and done. At a thousand requests a second that is a thousand finished requests kept
alive at any moment: tens of thousands of objects the garbage collector walks through again and
again, in pauses of milliseconds that land on whichever request is running (the tail latency of
`predict`). Here a request is reaped as soon as both halves are over: when its application task
ends, or when the connection is marked disconnected, whichever comes last. The sweep stays, for
what it also does (closing applications that outlive their connection), and finds less to do.
What the sweep would log for a failed application is logged here the same way.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import CancelledError
from typing import Any

logger = logging.getLogger("daphne.server")


def reap(server: Any, protocol: Any) -> None:
    """Drop `protocol` from `server.connections` if it is disconnected and its application is done."""
    details = server.connections.get(protocol)
    if details is None or "disconnected" not in details:
        return
    instance = details.get("application_instance")
    if instance is not None:
        if not instance.done():
            return
        try:
            exception = instance.exception()
        except (CancelledError, asyncio.CancelledError):
            exception = None
        if isinstance(exception, KeyboardInterrupt):
            server.stop()
        elif exception is not None:
            logger.error("Exception inside application: %s", exception, exc_info=exception)
    del server.connections[protocol]


def daphne_install() -> None:
    """Hook daphne's server class (once per process); other servers are left alone."""
    try:
        from daphne.server import Server
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    if getattr(Server, "_claas_prompt_reaping", False):
        return
    from clserver.serving.body_limit import daphne_version_check

    daphne_version_check()  # written against daphne's private Server internals: refuse another release
    create_application, protocol_disconnected = Server.create_application, Server.protocol_disconnected

    def create_application_reaped(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        queue = create_application(self, protocol, scope)
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(lambda _done: reap(self, protocol))
        return queue

    def protocol_disconnected_reaped(self: Any, protocol: Any) -> None:
        if protocol not in self.connections:  # already reaped: a second notice (finish, then connectionLost)
            return
        protocol_disconnected(self, protocol)
        reap(self, protocol)

    Server.create_application = create_application_reaped
    Server.protocol_disconnected = protocol_disconnected_reaped
    Server._claas_prompt_reaping = True
