"""A websocket client for in-process consumer tests, as channels.testing's WebsocketCommunicator.

`channels.testing` imports daphne (for its live-server test case), which the project no longer
installs: the web server is uvicorn. This is the part of it the tests use, on asgiref's
ApplicationCommunicator, with Channels' own test-time tweak: the consumer's database calls must not
close the test's connection (Channels calls close_old_connections around each one).
"""
from __future__ import annotations

import json
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlparse

from asgiref.testing import ApplicationCommunicator


def _no_op() -> None:
    pass


class WebsocketCommunicator(ApplicationCommunicator):
    def __init__(self, application: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None,
                 subprotocols: list[str] | None = None) -> None:
        parsed = urlparse(path)
        scope = {"type": "websocket", "path": unquote(parsed.path), "query_string": parsed.query.encode(),
                 "headers": headers or [], "subprotocols": subprotocols or []}
        super().__init__(application, scope)

    async def send_input(self, message: dict[str, Any]) -> None:
        with mock.patch("channels.db.close_old_connections", _no_op):
            return await super().send_input(message)

    async def receive_output(self, timeout: float = 1) -> dict[str, Any]:
        with mock.patch("channels.db.close_old_connections", _no_op):
            return await super().receive_output(timeout)

    async def connect(self, timeout: float = 1) -> tuple[bool, Any]:
        """(True, subprotocol) when the consumer accepts; (False, close code) when it refuses."""
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept", response
        return True, response.get("subprotocol")

    async def send_json_to(self, data: Any) -> None:
        await self.send_input({"type": "websocket.receive", "text": json.dumps(data)})

    async def receive_from(self, timeout: float = 1) -> str | bytes:
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", f"expected websocket.send, got {response['type']}"
        return response["text"] if "text" in response else response["bytes"]

    async def receive_json_from(self, timeout: float = 1) -> Any:
        payload = await self.receive_from(timeout)
        assert isinstance(payload, str), f"JSON data is not a text frame: {type(payload)}"
        return json.loads(payload)

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)
