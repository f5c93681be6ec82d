"""The body limits as an ASGI middleware (clserver/serving/body_limit.py), whatever server runs it.

Each request goes through `BodyLimit` in front of an application that records what it was given: a
refused request must be answered from its headers with the application never reading a byte, a
streamed one cut off at the limit with the application told the client left, and everything else
passed through untouched. The same limits against the live server (uvicorn), by hand-written
requests: tests/reliability/test_uploads.py and test_anonymous_bodies.py.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from clserver.serving.body_limit import BodyLimit

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 100_000  # MAX_UPLOAD_BYTES; the whole limit adds DATA_UPLOAD_MAX_MEMORY_SIZE
ANONYMOUS = 4096


@pytest.fixture(autouse=True)
def limits(settings):
    settings.MAX_UPLOAD_BYTES = LIMIT
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.MAX_ANONYMOUS_BODY_BYTES = ANONYMOUS
    return LIMIT + 1000


class Recorder:
    """The application behind the middleware: reads the whole body, answers 200 with its size."""

    def __init__(self) -> None:
        self.called = False
        self.read = 0
        self.messages: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.messages.append(message["type"])
            if message["type"] != "http.request":
                return  # the client left: nothing to answer
            self.read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read).encode()})


def request(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[Recorder, dict[str, Any], int]:
    """Run one request through BodyLimit(Recorder); (the application, the answer, body bytes pulled)."""
    app = Recorder()
    pulled = 0
    queue = list(chunks)
    answer: dict[str, Any] = {"status": None, "headers": {}, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not queue:
            await asyncio.sleep(3600)  # the client waits
        chunk = queue.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": "/api/datasets/", "headers": [(b"host", b"127.0.0.1"),
                                                                                      *headers]}
    asyncio.run(asyncio.wait_for(BodyLimit(app)(scope, receive, send), timeout=30))
    return app, answer, pulled


def declared(n: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(n).encode())


CHUNKED = (b"transfer-encoding", b"chunked")


@pytest.fixture
def token() -> str:
    user = get_user_model().objects.create_user(username="alice", password="alice-password")
    return Token.objects.create(user=user).key


def error_of(answer: dict[str, Any]) -> str:
    return json.loads(answer["body"])["error"]


def test_a_declared_body_over_the_limit_is_refused_unread(limits, token):
    app, answer, pulled = request([declared(limits + 1), (b"authorization", f"Token {token}".encode())],
                                  [b"x" * 1000])
    assert (answer["status"], pulled, app.called) == (413, 0, False)
    assert error_of(answer) == f"The request body has {limits + 1} bytes; at most {limits} are allowed."
    assert answer["headers"]["connection"] == "close"


def test_a_streamed_body_over_the_limit_is_cut_off_there(limits, token):
    chunks = [b"x" * 10_000] * 20  # 200,000 bytes offered, no declared length
    app, answer, pulled = request([CHUNKED, (b"authorization", f"Token {token}".encode())], chunks)
    assert answer["status"] == 413
    assert error_of(answer) == f"The request body is larger than the limit of {limits} bytes."
    assert limits < pulled <= limits + 10_000  # reading stopped at the first chunk past the limit
    assert app.messages[-1] == "http.disconnect"  # the application was told the client left, and answered nothing


def test_a_streamed_body_within_the_limit_reaches_the_application_whole(token):
    app, answer, _ = request([CHUNKED, (b"authorization", f"Token {token}".encode())], [b"x" * 10_000] * 5)
    assert (answer["status"], answer["body"]) == (200, b"50000")


def test_a_large_declared_body_without_credentials_is_refused_unread():
    app, answer, pulled = request([declared(50_000)], [b"x" * 50_000])
    assert (answer["status"], pulled, app.called) == (401, 0, False)
    assert error_of(answer) == (f"Authentication credentials were not provided; a request body over {ANONYMOUS} "
                                "bytes needs them.")
    assert answer["headers"]["www-authenticate"] == "Token"


@pytest.mark.parametrize("authorization", [b"Token " + b"0" * 40, b"Token", b"Token a b"])
def test_a_large_declared_body_with_bad_credentials_is_refused_unread(token, authorization):
    app, answer, pulled = request([declared(50_000), (b"authorization", authorization)], [b"x" * 50_000])
    assert (answer["status"], pulled, app.called) == (401, 0, False)
    assert error_of(answer).startswith("The token or session is not valid")


def test_a_deactivated_users_token_does_not_open_the_door(token):
    get_user_model().objects.filter(username="alice").update(is_active=False)
    _, answer, pulled = request([declared(50_000), (b"authorization", f"Token {token}".encode())], [b"x" * 50_000])
    assert (answer["status"], pulled) == (401, 0)


def test_a_large_body_with_a_valid_token_reaches_the_application(token):
    app, answer, _ = request([declared(50_000), (b"authorization", f"Token {token}".encode())], [b"x" * 50_000])
    assert (answer["status"], answer["body"]) == (200, b"50000")


def test_an_anonymous_streamed_body_is_cut_off_at_the_anonymous_limit():
    app, answer, pulled = request([CHUNKED], [b"x" * 1000] * 20)
    assert answer["status"] == 401
    assert ANONYMOUS < pulled <= ANONYMOUS + 1000
    assert app.messages[-1] == "http.disconnect"


def test_small_bodies_and_bodiless_requests_pass_without_a_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        _, small, _ = request([declared(ANONYMOUS)], [b"x" * ANONYMOUS])
        _, empty, _ = request([], [b""])
    assert (small["status"], small["body"], empty["status"]) == (200, str(ANONYMOUS).encode(), 200)


def test_a_session_of_a_signed_in_user_opens_the_door(client):
    get_user_model().objects.create_user(username="bob", password="bob-password")
    assert client.login(username="bob", password="bob-password")
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    _, answer, _ = request([declared(50_000), (b"cookie", cookie)], [b"x" * 50_000])
    assert answer["status"] == 200
    _, forged, pulled = request([declared(50_000), (b"cookie", b"sessionid=" + b"a" * 32)], [b"x" * 50_000])
    assert (forged["status"], pulled) == (401, 0)


def test_websockets_pass_untouched():
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(BodyLimit(app)({"type": "websocket", "headers": [declared(10**9)]}, None, None))
    assert seen == ["websocket"]

