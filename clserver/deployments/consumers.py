"""Websocket of a deployment: stored drift checks and update events first, then live ones, owner only."""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from clserver.deployments.models import Deployment, DeploymentEvent
from clserver.deployments.events import deployment_group
from clserver.experiments.events import event_as_message

# Events are tailed from the database as well as pushed through the channel layer, so the
# worker (another process) reaches the browser even with the in-memory layer.
TAIL_INTERVAL_S = 0.5
REPLAY_BATCH = 500
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class DeploymentConsumer(AsyncJsonWebsocketConsumer):
    """ws/deployments/<username>/<name>/[?after=<event id>]"""

    deployment_id: int | None = None
    last_id: int = 0
    group: str = ""
    tail_task: asyncio.Task | None = None

    async def connect(self) -> None:
        # The tail loop and channel-layer pushes both send; one at a time keeps events in order.
        self.send_lock = asyncio.Lock()
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        if user is None or not user.is_authenticated or user.username != kwargs["username"]:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.deployment_id = await self._deployment_id(user.id, kwargs["name"])
        if self.deployment_id is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            self.last_id = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_id = 0
        self.group = deployment_group(owner_id=user.id, name=kwargs["name"])
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
                events = await self._events_after(self.last_id)
                for event in events:
                    await self.send_json(event)
                    self.last_id = event["id"]
                if len(events) < REPLAY_BATCH:
                    return

    @database_sync_to_async
    def _deployment_id(self, owner_id: int, name: str) -> int | None:
        return Deployment.objects.filter(owner_id=owner_id, name=name).values_list("id", flat=True).first()

    @database_sync_to_async
    def _events_after(self, last_id: int) -> list[dict[str, Any]]:
        rows = DeploymentEvent.objects.filter(deployment_id=self.deployment_id, id__gt=last_id)
        return [event_as_message(e) for e in rows.order_by("id")[:REPLAY_BATCH]]
