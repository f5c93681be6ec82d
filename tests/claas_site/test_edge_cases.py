"""The site's edges (issue 13, findings 7 and 8): sign-in limits, deep JSON, websocket routes and
origins, and Django's own 400s in the API's error format."""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from tests.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

LOCKED = b"Too many failed sign-ins"


@pytest.fixture
def limits(settings: Any) -> Iterator[Any]:
    """Small limits, a fast hasher (a real one takes a second per guess), and no counts left over."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURES_PER_USERNAME = (10, 900)
    settings.LOGIN_FAILURES_PER_ADDRESS = (30, 900)
    cache.clear()
    yield settings
    cache.clear()


def _sign_in(username: str, password: str, *, address: str = "10.0.0.1", path: str = "/accounts/login/") -> Any:
    client = Client(REMOTE_ADDR=address)
    return client.post(path, {"username": username, "password": password}), client


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- a. sign-ins are limited ------------------------------------------------------------------------
@pytest.mark.django_db
def test_after_ten_wrong_passwords_the_right_one_is_refused_with_429(limits):
    get_user_model().objects.create_user(username="alice", password="alice-password")
    for _ in range(10):
        wrong, _client = _sign_in("alice", "guess")
        assert wrong.status_code == 200 and b"did not match" in wrong.content
    right, client = _sign_in("alice", "alice-password")
    assert right.status_code == 429 and LOCKED in right.content
    assert 0 < int(right["Retry-After"]) <= 900
    assert not _signed_in(client)
    # From another address too: the lock is on the account, not only on the guesser's address.
    elsewhere, client = _sign_in("alice", "alice-password", address="10.9.9.9")
    assert elsewhere.status_code == 429 and not _signed_in(client)
    # And for any caller of authenticate() (no request at all).
    assert authenticate(username="alice", password="alice-password") is None


@pytest.mark.django_db
def test_a_right_password_clears_the_count(limits):
    get_user_model().objects.create_user(username="alice", password="alice-password")
    for _round in range(3):
        for _ in range(9):
            assert _sign_in("alice", "typo")[0].status_code == 200
        right, client = _sign_in("alice", "alice-password")
        assert right.status_code == 302 and _signed_in(client)


@pytest.mark.django_db
def test_one_address_guessing_at_many_accounts_is_refused(limits):
    get_user_model().objects.create_user(username="carol", password="carol-password")
    for index in range(30):
        assert _sign_in(f"user{index}", "guess", address="10.6.6.6")[0].status_code == 200
    refused, client = _sign_in("carol", "carol-password", address="10.6.6.6")
    assert refused.status_code == 429 and LOCKED in refused.content and not _signed_in(client)
    # Carol herself, from her own address, is not held back by the guesser.
    assert _sign_in("carol", "carol-password", address="10.1.1.1")[0].status_code == 302


@pytest.mark.django_db
def test_an_ipv6_client_cannot_dodge_the_address_limit_by_changing_addresses(limits):
    limits.LOGIN_FAILURES_PER_ADDRESS = (5, 900)
    get_user_model().objects.create_user(username="carol", password="carol-password")
    for index in range(5):
        assert _sign_in(f"user{index}", "guess", address=f"2001:db8::{index + 1:x}")[0].status_code == 200
    assert _sign_in("carol", "carol-password", address="2001:db8::beef")[0].status_code == 429
    assert _sign_in("carol", "carol-password", address="2001:db8:0:1::1")[0].status_code == 302


@pytest.mark.django_db
def test_the_admin_sign_in_is_limited_too(limits):
    get_user_model().objects.create_superuser(username="root", password="root-password")
    for _ in range(10):
        assert _sign_in("root", "guess", path="/admin/login/")[0].status_code == 200
    right, client = _sign_in("root", "root-password", path="/admin/login/")
    assert right.status_code == 429 and LOCKED in right.content and not _signed_in(client)


def test_the_limit_setting_is_read_as_a_count_per_window(monkeypatch):
    from claas_site.settings import _env_window

    monkeypatch.setenv("CLAAS_LOGIN_FAILURES", "10/15min")
    assert _env_window("CLAAS_LOGIN_FAILURES", "x") == (10, 900)
    monkeypatch.setenv("CLAAS_LOGIN_FAILURES", "off")
    assert _env_window("CLAAS_LOGIN_FAILURES", "x") is None
    monkeypatch.setenv("CLAAS_LOGIN_FAILURES", "ten a minute")
    with pytest.raises(ValueError, match="CLAAS_LOGIN_FAILURES"):
        _env_window("CLAAS_LOGIN_FAILURES", "x")


# --- b. deeply nested JSON ----------------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000
TOO_DEEP = {"error": "The JSON is nested too deeply to read; send a flatter document.", "details": {}}


@pytest.mark.parametrize("path", ["/base-scenario/setup/", "/api/deployments/", "/api/models/"])
def test_deeply_nested_json_is_a_400_with_one_sentence(api, path):
    response = api.post(path, DEEP, content_type="application/json")
    assert response.status_code == 400 and response.json() == TOO_DEEP


def test_deeply_nested_json_inside_a_form_field_is_a_400(api):
    response = api.post("/api/models/", {"name": "m", "architecture": "mlp", "params": DEEP}, format="multipart")
    assert response.status_code == 400 and response.json() == TOO_DEEP


def test_a_recursion_bug_elsewhere_is_still_a_server_error(user):
    """Only JSON decoding is the input's fault; a runaway recursion in the code stays a logged 500."""
    with mock.patch("clserver.experiments.selectors.experiment_list", side_effect=RecursionError("a bug")):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        response = client.get("/api/experiments/")
    assert response.status_code == 500


# --- c, d. websockets -----------------------------------------------------------------------------------
def _session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _alice_with_an_experiment() -> Any:
    from clserver.models import Experiment

    alice = get_user_model().objects.create_user(username="alice", password="alice-password")
    Experiment.objects.create(owner=alice, name="digits",
                              options={"benchmark": {"name": "split_digits", "n_experiences": 2}})
    return alice


async def _connect(path: str, headers: list[tuple[bytes, bytes]], user: Any = None) -> tuple[bool, Any]:
    from claas_site.asgi import application

    if user is not None:
        cookie = await sync_to_async(_session_cookie)(user)
        headers = [*headers, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    if connected:
        await communicator.disconnect()
    return connected, code


@pytest.mark.django_db(transaction=True)
async def test_an_unrouted_websocket_path_is_refused_with_4404_and_no_trace(caplog):
    caplog.set_level(logging.INFO)
    connected, code = await _connect("/ws/nothing/here/", [(b"origin", b"http://localhost:8000"),
                                                           (b"host", b"localhost:8000")])
    assert (connected, code) == (False, 4404)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin, host, allowed", [
    (b"http://localhost:8000", b"localhost:8000", True),      # the GUI's own page
    (b"http://localhost:8001", b"localhost:8000", False),     # another site on the same host name
    (b"http://localhost", b"localhost:8000", False),          # ... on the default port
    (b"https://localhost:8000", b"localhost:8000", False),    # another scheme
    (b"http://127.0.0.1:8000", b"localhost:8000", False),     # another host name
    (b"http://evil.example:8000", b"evil.example:8000", False),  # a host this server does not serve
    (b"null", b"localhost:8000", False),                      # a sandboxed or file:// page
])
async def test_the_websocket_origin_must_match_scheme_host_and_port(origin, host, allowed):
    alice = await sync_to_async(_alice_with_an_experiment)()
    connected, _code = await _connect("/ws/experiments/alice/digits/", [(b"origin", origin), (b"host", host)],
                                      alice)
    assert connected is allowed


@pytest.mark.django_db(transaction=True)
async def test_a_trusted_origin_opens_a_websocket_behind_a_proxy(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://claas.example.com"]
    alice = await sync_to_async(_alice_with_an_experiment)()
    headers = [(b"host", b"localhost:8000")]
    assert (await _connect("/ws/experiments/alice/digits/", [(b"origin", b"https://claas.example.com"), *headers],
                           alice))[0]
    assert not (await _connect("/ws/experiments/alice/digits/",
                               [(b"origin", b"https://claas.example.com:8443"), *headers], alice))[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin, allowed", [(b"https://claas.example.com", True),
                                             (b"http://claas.example.com", False)])
async def test_behind_a_tls_proxy_the_origin_is_the_https_one(settings, origin, allowed):
    settings.ALLOWED_HOSTS = ["claas.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    alice = await sync_to_async(_alice_with_an_experiment)()
    headers = [(b"origin", origin), (b"host", b"claas.example.com"), (b"x-forwarded-proto", b"https")]
    assert (await _connect("/ws/experiments/alice/digits/", headers, alice))[0] is allowed


# --- e. Django's own 400s ---------------------------------------------------------------------------------
def _is_error_json(response: Any, status: int) -> bool:
    body = json.loads(response.content) if response["Content-Type"] == "application/json" else None
    return (response.status_code == status and isinstance(body, dict) and set(body) == {"error", "details"}
            and body["details"] == {} and body["error"].endswith("."))


@pytest.mark.parametrize("path", ["/api/experiments/", "/base-scenario/setup/"])
def test_a_bad_host_header_is_a_json_400_under_the_api(db, path):
    response = Client().get(path, HTTP_HOST="evil.example")
    assert _is_error_json(response, 400)
    assert "Host" in response.json()["error"]


def test_a_bad_host_header_stays_an_html_page_elsewhere(db):
    response = Client().get("/", HTTP_HOST="evil.example")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


def test_too_many_form_fields_is_a_json_400(api):
    body = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = api.post("/api/models/", body, content_type="application/x-www-form-urlencoded")
    assert _is_error_json(response, 400)
    assert "form fields" in response.json()["error"]


def test_too_many_files_is_a_json_400(api):
    files = {f"f{i}": SimpleUploadedFile(f"{i}.csv", b"a\n1\n")
             for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FILES + 1)}
    response = api.post("/api/datasets/", files, format="multipart")
    assert _is_error_json(response, 400)
    assert "files" in response.json()["error"]
