"""Live event streams over websockets: a resource's stored events first, then live ones, to its owner only."""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

# Events are tailed from the database as well as pushed through the channel layer, so a
# worker in another process reaches the browser even with the in-memory layer.
TAIL_INTERVAL_S = 0.5
REPLAY_BATCH = 500
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def after_from_query(scope: dict[str, Any]) -> int:
    """`?after=<id>` lets a reconnecting client skip the events it already has."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        return max(0, int(query.get("after", ["0"])[0]))
    except ValueError:
        return 0


class EventStreamConsumer(AsyncJsonWebsocketConsumer):
    """ws/<resources>/<username>/<name>/[?after=<event id>]; a subclass names its resource and its events."""

    name_kwarg = "name"
    resource_id: int | None = None
    last_id: int = 0
    group: str = ""
    tail_task: asyncio.Task | None = None

    def resource_find(self, *, owner_id: int, name: str) -> int | None:
        """The owner's resource id by name, or None (runs in a thread)."""
        raise NotImplementedError

    def events_after(self, *, last_id: int, limit: int) -> list[dict[str, Any]]:
        """The resource's stored events after `last_id`, as messages, oldest first (runs in a thread)."""
        raise NotImplementedError

    def group_name(self, *, owner_id: int, name: str) -> str:
        raise NotImplementedError

    async def connect(self) -> None:
        # The tail loop and channel-layer pushes both send; one at a time keeps events in
        # order and never sends one twice.
        self.send_lock = asyncio.Lock()
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        if user is None or not user.is_authenticated or user.username != kwargs["username"]:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        name = kwargs[self.name_kwarg]
        self.resource_id = await database_sync_to_async(self.resource_find)(owner_id=user.id, name=name)
        if self.resource_id is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.last_id = after_from_query(self.scope)
        self.group = self.group_name(owner_id=user.id, name=name)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send_new()
        self.tail_task = asyncio.create_task(self._tail())

    async def disconnect(self, code: int) -> None:
        if self.tail_task:
            self.tail_task.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The socket is one-way; anything a client sends is ignored."""

    async def push_event(self, message: dict[str, Any]) -> None:
        if message["event"].get("id", 0) > self.last_id:
            # Anything between the last sent event and this one comes from the database first.
            await self._send_new()

    async def _tail(self) -> None:
        try:
            while True:
                await asyncio.sleep(TAIL_INTERVAL_S)
                await self._send_new()
        except asyncio.CancelledError:
            pass

    async def _send_new(self) -> None:
        async with self.send_lock:
            while True:
                events = await database_sync_to_async(self.events_after)(last_id=self.last_id, limit=REPLAY_BATCH)
                for event in events:
                    await self.send_json(event)
                    self.last_id = event["id"]
                if len(events) < REPLAY_BATCH:
                    return
