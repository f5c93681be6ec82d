"""The experiment websocket: stored events first, then live ones, only to the experiment's owner."""
from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from tests.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from claas_site.asgi import application
from clserver.experiments.events import experiment_event_record
from clserver.models import Experiment

pytestmark = pytest.mark.django_db(transaction=True)

OPTIONS = {"benchmark": {"name": "split_digits", "n_experiences": 2}, "training": {"epochs": 2}}


def _user(name: str) -> Any:
    return get_user_model().objects.create_user(username=name, password=f"{name}-password")


def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _experiment_with_history(owner: Any, name: str = "digits") -> Experiment:
    experiment = Experiment.objects.create(owner=owner, name=name, options=OPTIONS)
    experiment_event_record(experiment=experiment, type="status", payload={"status": "running"})
    experiment_event_record(experiment=experiment, type="epoch_end", payload={
        "experience": 0, "n_experiences": 2, "epoch": 1, "epochs": 2, "loss": 1.5, "progress": 0.25,
        "elapsed_s": 0.1, "eta_s": 0.3})
    experiment_event_record(experiment=experiment, type="experience_end", payload={
        "experience": 0, "n_experiences": 2, "accuracy_row": [0.9, 0.0], "accuracy": 0.9,
        "stream_accuracy": 0.45, "train_time_s": 0.1, "samples_processed": 100, "progress": 0.5,
        "elapsed_s": 0.2})
    return experiment


async def _connect(path: str, user: Any | None) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        cookie = await sync_to_async(_session_cookie)(user)
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def _receive(communicator: WebsocketCommunicator, n: int) -> list[dict[str, Any]]:
    return [await communicator.receive_json_from(timeout=5) for _ in range(n)]


async def test_stored_events_are_replayed_in_order_on_connect():
    alice = await sync_to_async(_user)("alice")
    await sync_to_async(_experiment_with_history)(alice)
    communicator, connected, _ = await _connect("/ws/experiments/alice/digits/", alice)
    assert connected
    events = await _receive(communicator, 3)
    assert [e["type"] for e in events] == ["status", "epoch_end", "experience_end"]
    assert events[0]["status"] == "running"
    assert events[1]["loss"] == 1.5 and events[1]["epoch"] == 1 and events[1]["epochs"] == 2
    assert events[2]["accuracy_row"] == [0.9, 0.0]
    assert events[0]["id"] < events[1]["id"] < events[2]["id"]
    assert all(e["time"] for e in events)
    await communicator.disconnect()


async def test_live_events_follow_the_stored_ones_once_each():
    alice = await sync_to_async(_user)("alice")
    experiment = await sync_to_async(_experiment_with_history)(alice)
    communicator, connected, _ = await _connect("/ws/experiments/alice/digits/", alice)
    assert connected
    stored = await _receive(communicator, 3)

    await sync_to_async(experiment_event_record)(experiment=experiment, type="epoch_end", payload={
        "experience": 1, "n_experiences": 2, "epoch": 1, "epochs": 2, "loss": 0.7, "progress": 0.75,
        "elapsed_s": 0.3, "eta_s": 0.1})
    await sync_to_async(experiment_event_record)(experiment=experiment, type="status",
                                                 payload={"status": "completed"})
    live = await _receive(communicator, 2)
    assert [e["type"] for e in live] == ["epoch_end", "status"]
    assert live[0]["loss"] == 0.7 and live[1]["status"] == "completed"
    assert stored[-1]["id"] < live[0]["id"] < live[1]["id"]
    # The channel-layer push and the database tail both see the new events; each is sent once.
    assert await communicator.receive_nothing(timeout=1.5)
    await communicator.disconnect()


async def test_a_reconnecting_client_gets_only_the_events_after_its_last_one():
    alice = await sync_to_async(_user)("alice")
    await sync_to_async(_experiment_with_history)(alice)
    first, connected, _ = await _connect("/ws/experiments/alice/digits/", alice)
    assert connected
    seen = await _receive(first, 3)
    await first.disconnect()

    again, connected, _ = await _connect(f"/ws/experiments/alice/digits/?after={seen[1]['id']}", alice)
    assert connected
    rest = await _receive(again, 1)
    assert rest[0]["id"] == seen[2]["id"] and rest[0]["type"] == "experience_end"
    assert await again.receive_nothing(timeout=1.0)
    await again.disconnect()


async def test_another_users_experiment_is_refused():
    alice = await sync_to_async(_user)("alice")
    bob = await sync_to_async(_user)("bob")
    await sync_to_async(_experiment_with_history)(alice)

    # Bob asking for Alice's path is refused before anything is sent.
    communicator, connected, code = await _connect("/ws/experiments/alice/digits/", bob)
    assert not connected and code == 4403
    # Bob naming Alice's experiment under his own name finds nothing of his.
    communicator, connected, code = await _connect("/ws/experiments/bob/digits/", bob)
    assert not connected and code == 4404


async def test_anonymous_clients_are_refused():
    alice = await sync_to_async(_user)("alice")
    await sync_to_async(_experiment_with_history)(alice)
    communicator, connected, code = await _connect("/ws/experiments/alice/digits/", None)
    assert not connected and code == 4403
