"""Hot reads answered on the read pool (clserver/serving/pooled_reads.py) are the answers Django gives.

The same requests go to the web process's handler and to Django's own ASGI handler (the same
database): status, headers and body must be the same bytes, for successes and for every refusal
(no token, a bad token, another user's path, an unknown experiment, a method the view lacks).
The pool's threads keep their database connections, so a read must still see each write at once.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from rest_framework.authtoken.models import Token

from clserver.models import Experiment, ExperimentEvent
from clserver.serving.pooled_reads import PooledReadsHandler, read_path

pytestmark = pytest.mark.django_db(transaction=True)


async def call(app: Any, path: str, *, method: str = "GET", headers: list[tuple[bytes, bytes]] = (),
               query: bytes = b"", root_path: str = "") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": root_path,
             "headers": [(b"host", b"127.0.0.1"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 80)}
    received = False
    start: dict[str, Any] = {}
    body = b""

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {}

    async def send(message: dict[str, Any]) -> None:
        nonlocal body
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            body += message.get("body", b"")

    await app(scope, receive, send)
    return start["status"], sorted(start["headers"]), body


def _world(tmp_data_dir: str) -> dict[str, Any]:
    users = get_user_model().objects
    alice = users.create_user(username="alice", password="alice-password")
    bob = users.create_user(username="bob", password="bob-password")
    options = {"benchmark": {"name": "split_digits", "n_experiences": 2}, "training": {"epochs": 3},
               "model": {"architecture": "simple_mlp", "params": {}}}
    failed = Experiment.objects.create(
        owner=alice, name="failed", options=options, status="failed", progress=0.5, experience=1, epoch=2,
        error=f"RuntimeError: no file {tmp_data_dir}/experiments/1/x.pt",
        results={"metrics": {"accuracy_matrix": [[0.9, 0.1]]}, "experiences": [{"index": 0, "accuracy": 0.9}],
                 "mlflow_models": [], "model": {"save_path": f"{tmp_data_dir}/experiments/1/final.pt"}})
    Experiment.objects.create(owner=alice, name="ready", options=options)
    for i in range(3):
        ExperimentEvent.objects.create(experiment=failed, type="epoch_end", payload={"epoch": i})
    return {"alice": Token.objects.create(user=alice).key, "bob": Token.objects.create(user=bob).key}


@pytest.fixture
def world(settings, tmp_path) -> dict[str, Any]:
    settings.DATA_DIR = tmp_path
    return _world(str(tmp_path))


def auth(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Token {key}".encode())]


def test_the_hot_reads_are_the_ones_routed_to_the_pool():
    for path in ("/healthz", "/base-scenario/alice/status/x", "/base-scenario/alice/results/x",
                 "/api/experiments/x", "/api/experiments/x/events", "/api/experiments/",
                 "/api/deployments/d", "/api/deployments/d/events", "/api/models/m/versions/1", "/api/datasets/d"):
        assert read_path(path), path
    for path in ("/base-scenario/alice/exec/x", "/base-scenario/setup/", "/api/experiments/x/model",
                 "/api/deployments/d/predict", "/api/experiments/x/cancel", "/", "/admin/", "/nowhere"):
        assert not read_path(path), path


async def test_pooled_reads_answer_byte_for_byte_as_django(world):
    pooled, plain = PooledReadsHandler(threads=2), ASGIHandler()
    alice, bob = auth(world["alice"]), auth(world["bob"])
    cases = [
        ("/base-scenario/alice/status/failed", alice, "GET", b""),
        ("/base-scenario/alice/results/failed", alice, "GET", b""),
        ("/base-scenario/alice/results/ready", alice, "GET", b""),
        ("/base-scenario/alice/status/failed", alice, "HEAD", b""),
        ("/base-scenario/alice/status/failed", alice, "GET", b"format=json"),
        ("/base-scenario/alice/status/failed", [*alice, (b"accept", b"application/json; indent=2")], "GET", b""),
        ("/base-scenario/alice/status/failed", [*alice, (b"accept", b"application/xml")], "GET", b""),
        ("/base-scenario/alice/status/failed", [], "GET", b""),                        # 401
        ("/base-scenario/alice/status/failed", auth("not-a-token"), "GET", b""),        # 401
        ("/base-scenario/alice/status/failed", bob, "GET", b""),                        # 403
        ("/base-scenario/bob/status/failed", bob, "GET", b""),                          # 404
        ("/api/experiments/failed", alice, "GET", b""),
        ("/api/experiments/failed/events", alice, "GET", b"after=1"),
        ("/api/experiments/", alice, "GET", b""),
        ("/api/experiments/nothing/events", alice, "GET", b""),                         # 404
        ("/api/deployments/nothing", alice, "GET", b""),                                # 404
        ("/api/models/", alice, "GET", b""),
        ("/api/datasets/", alice, "GET", b""),
        ("/base-scenario/alice/status/failed", alice, "OPTIONS", b""),                  # not pooled
    ]
    for path, headers, method, query in cases:
        ours = await call(pooled, path, method=method, headers=headers, query=query)
        django = await call(plain, path, method=method, headers=headers, query=query)
        assert ours == django, (method, path, query, headers)
    # Behind a proxy that mounts the site under a prefix (ASGI root_path).
    for path in ("/claas/base-scenario/alice/status/failed", "/claas/api/experiments/failed"):
        ours = await call(pooled, path, headers=alice, root_path="/claas")
        assert ours == await call(plain, path, headers=alice, root_path="/claas") and ours[0] == 200
    ours = await call(pooled, "/healthz")
    django = await call(plain, "/healthz")
    assert ours[0] == django[0] == 200 and ours[1] == django[1]  # the body holds each check's milliseconds


async def test_a_session_reads_on_the_pool_as_on_django(world, client):
    user = await sync_to_async(get_user_model().objects.get)(username="alice")
    await sync_to_async(client.force_login)(user)
    cookie = [(b"cookie", f"{django_settings.SESSION_COOKIE_NAME}="
                          f"{client.cookies[django_settings.SESSION_COOKIE_NAME].value}".encode())]
    pooled, plain = PooledReadsHandler(threads=2), ASGIHandler()
    for path in ("/base-scenario/alice/status/failed", "/api/experiments/failed/events"):
        ours, django = await call(pooled, path, headers=cookie), await call(plain, path, headers=cookie)
        assert ours == django and ours[0] == 200


async def test_a_pooled_read_sees_every_write_at_once(world):
    """The pool's connections stay open between requests; they never answer from an old snapshot."""
    pooled = PooledReadsHandler(threads=1)
    alice = auth(world["alice"])
    path = "/base-scenario/alice/status/ready"
    seen = []
    for status, epoch in (("queued", 0), ("running", 1), ("running", 2), ("completed", 3)):
        await sync_to_async(Experiment.objects.filter(name="ready").update)(status=status, epoch=epoch)
        code, _, body = await call(pooled, path, headers=alice)
        assert code == 200
        seen.append(body)
    assert [b'"status":"queued"' in seen[0], b'"epoch":1' in seen[1], b'"epoch":2' in seen[2],
            b'"status":"completed"' in seen[3]] == [True] * 4
    await sync_to_async(Experiment.objects.filter(name="ready").delete)()
    assert (await call(pooled, path, headers=alice))[0] == 404


async def test_a_write_on_a_pooled_path_still_writes(world):
    """DELETE shares its path with a pooled read; it keeps Django's path and its effect is read back at once."""
    pooled = PooledReadsHandler(threads=2)
    alice = auth(world["alice"])
    assert (await call(pooled, "/api/experiments/ready", headers=alice))[0] == 200
    assert (await call(pooled, "/api/experiments/ready", method="DELETE", headers=alice))[0] == 204
    assert (await call(pooled, "/api/experiments/ready", headers=alice))[0] == 404
    assert not await sync_to_async(Experiment.objects.filter(name="ready").exists)()


async def test_concurrent_reads_all_answer(world):
    pooled = PooledReadsHandler(threads=4)
    alice = auth(world["alice"])
    answers = await asyncio.gather(*(call(pooled, p, headers=alice) for p in
                                     ["/base-scenario/alice/status/failed", "/base-scenario/alice/results/failed",
                                      "/api/experiments/failed/events"] * 20))
    assert [a[0] for a in answers] == [200] * 60
    assert len({a[2] for a in answers[0::3]}) == 1  # every status answer the same bytes
