"""The deployment websocket: stored drift checks and update events first, then live ones, owner only."""
from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from tests.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from claas_site.asgi import application
from clserver.deployments.models import Deployment
from clserver.deployments.events import deployment_event_record

pytestmark = pytest.mark.django_db(transaction=True)


def _user(name: str) -> Any:
    return get_user_model().objects.create_user(username=name, password=f"{name}-password")


def _cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _deployment_with_history(owner: Any) -> Deployment:
    deployment = Deployment.objects.create(owner=owner, name="digits", source={"exp_name": "x"},
                                           architecture="simple_mlp", model_params={}, detector={"name": "mmd"},
                                           update_options={})
    deployment_event_record(deployment=deployment, type="drift_check", payload={
        "check_id": 1, "is_drift": False, "p_val": 0.6, "n_samples": 180})
    deployment_event_record(deployment=deployment, type="drift_check", payload={
        "check_id": 2, "is_drift": True, "p_val": 0.0, "n_samples": 600})
    deployment_event_record(deployment=deployment, type="update", payload={"update": 1, "status": "queued"})
    return deployment


async def _connect(path: str, user: Any | None) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={await sync_to_async(_cookie)(user)}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def test_stored_events_come_first_then_live_ones():
    dora = await sync_to_async(_user)("dora")
    deployment = await sync_to_async(_deployment_with_history)(dora)
    communicator, connected, _ = await _connect("/ws/deployments/dora/digits/", dora)
    assert connected
    stored = [await communicator.receive_json_from(timeout=5) for _ in range(3)]
    assert [e["type"] for e in stored] == ["drift_check", "drift_check", "update"]
    assert stored[1]["is_drift"] is True and stored[1]["check_id"] == 2 and stored[2]["status"] == "queued"
    await sync_to_async(deployment_event_record)(deployment=deployment, type="update",
                                                 payload={"update": 1, "status": "promoted"})
    live = await communicator.receive_json_from(timeout=5)
    assert live["type"] == "update" and live["status"] == "promoted" and live["id"] > stored[2]["id"]
    assert await communicator.receive_nothing(timeout=1)
    await communicator.disconnect()


async def test_a_reconnecting_client_skips_what_it_has():
    dora = await sync_to_async(_user)("dora")
    await sync_to_async(_deployment_with_history)(dora)
    first, _, _ = await _connect("/ws/deployments/dora/digits/", dora)
    stored = [await first.receive_json_from(timeout=5) for _ in range(3)]
    await first.disconnect()
    again, connected, _ = await _connect(f"/ws/deployments/dora/digits/?after={stored[1]['id']}", dora)
    assert connected
    assert (await again.receive_json_from(timeout=5))["id"] == stored[2]["id"]
    assert await again.receive_nothing(timeout=1)
    await again.disconnect()


async def test_only_the_owner_connects_and_unknown_deployments_are_refused():
    dora = await sync_to_async(_user)("dora")
    eve = await sync_to_async(_user)("eve")
    await sync_to_async(_deployment_with_history)(dora)
    _, connected, code = await _connect("/ws/deployments/dora/digits/", eve)
    assert not connected and code == 4403
    _, connected, code = await _connect("/ws/deployments/dora/digits/", None)
    assert not connected and code == 4403
    _, connected, code = await _connect("/ws/deployments/dora/nothing/", dora)
    assert not connected and code == 4404
