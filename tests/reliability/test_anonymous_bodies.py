"""Large request bodies are read only from clients with valid credentials (issue 13, finding 5).

The web server used to take in and spool any body up to the upload limit before Django saw who sent
it: six anonymous uploads held 2.4 GB of temporary files. Now a body over the anonymous limit, or of
unknown length, needs a valid token or session, checked from the headers before the body is read
(clserver/serving/body_limit.py). Against the live server, by hand-written requests where it matters
what the server does before the body arrives.
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests

from tests.service import LiveService

ANONYMOUS_LIMIT = 4096  # small, so that modest uploads take the credentials check
NOT_PROVIDED = (f"Authentication credentials were not provided; a request body over {ANONYMOUS_LIMIT} bytes "
                "needs them.")
NOT_VALID = f"The token or session is not valid; a request body over {ANONYMOUS_LIMIT} bytes needs valid credentials."


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[LiveService]:
    """The web process alone (no worker)."""
    live = LiveService(tmp_path_factory.mktemp("anonymous"), workers=0,
                       env={"CLAAS_MAX_ANONYMOUS_BODY_BYTES": str(ANONYMOUS_LIMIT)}).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def token(web) -> str:
    return web.user("uploader").session.headers["Authorization"].split()[1]


def head(path: str, length: int | None, *extra: str) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=x",
             size, *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(sock: socket.socket) -> bytes:
    """What the server answers; b"" if it answered nothing within 20 s (it is still waiting for the body)."""
    sock.settimeout(20)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        pass
    return answer


def parsed(answer: bytes) -> tuple[int, dict]:
    assert answer, "the server gave no answer: it waited for the body"
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def spooled_files(pid: int) -> int:
    """Unlinked temporary files the process holds open: where a spooled request body would be."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            count += 1
    return count


def npz_bytes(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.RandomState(0).rand(rows, 64).astype(np.float32), y=np.arange(rows) % 10)
    return buffer.getvalue()


def test_six_anonymous_uploads_are_refused_from_their_headers_and_spool_nothing(web):
    """The finding: declared bodies of 100 MB each, of which 256 KiB is sent, connections left open."""
    socks = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(head("/api/datasets/", 100 * 1024**2))
            try:
                sock.sendall(b"a" * 256 * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass  # already refused and closed
        held = spooled_files(web.web.pid)
        answers = [answer_of(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert held == 0  # before: one spooled file per connection, growing as the bodies came in
    assert [parsed(a) for a in answers] == [(401, {"error": NOT_PROVIDED, "details": {"limit_bytes": ANONYMOUS_LIMIT}})] * 6


def test_a_declared_body_with_a_bogus_token_is_refused_before_it_is_sent(web):
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", 100 * 1024**2, "Authorization: Token " + "0" * 40))
        status, body = parsed(answer_of(sock))  # not one byte of the body was sent
    assert (status, body) == (401, {"error": NOT_VALID, "details": {"limit_bytes": ANONYMOUS_LIMIT}})


@pytest.mark.parametrize("credentials", [
    pytest.param(("Authorization: Token {token}", "Authorization: Token {token}"), id="the-token-twice"),
    pytest.param(("Authorization: Token",), id="the-keyword-alone"),
    pytest.param(("Cookie: sessionid=abcdefghijklmnopqrstuvwxyz012345",), id="an-unknown-session"),
])
def test_credentials_django_would_refuse_do_not_open_the_door(web, token, credentials):
    extra = [line.format(token=token) for line in credentials]
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", 10 * 1024**2, *extra))
        status, body = parsed(answer_of(sock))
    assert status == 401
    assert body["error"] in (NOT_VALID, NOT_PROVIDED)


def test_the_token_of_a_deactivated_user_does_not_open_the_door(web):
    gone = web.user("gone").session.headers["Authorization"]
    web.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
               "get_user_model().objects.filter(username='gone').update(is_active=False)")
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", 10 * 1024**2, f"Authorization: {gone}"))
        status, body = parsed(answer_of(sock))
    assert (status, body) == (401, {"error": NOT_VALID, "details": {"limit_bytes": ANONYMOUS_LIMIT}})


def test_an_anonymous_body_without_a_length_is_cut_off_at_the_anonymous_limit(web):
    chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", None))
        try:
            for _ in range(64 * 1024**2 // 0x4000):  # 64 MiB offered
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = parsed(answer_of(sock))
    assert (status, body) == (401, {"error": NOT_PROVIDED, "details": {"limit_bytes": ANONYMOUS_LIMIT}})
    print(f"sent {sent} bytes of the unsized body before the server closed")
    assert sent < 16 * 1024**2  # the server stopped reading: the rest of the 64 MiB was never taken


@pytest.mark.parametrize("rows", [40, 4000], ids=["whole-body-with-the-headers", "body-after-the-check"])
def test_a_valid_token_still_uploads_a_dataset(web, token, rows):
    content = npz_bytes(rows)
    assert len(content) > ANONYMOUS_LIMIT
    response = requests.post(f"{web.base_url}/api/datasets/", headers={"Authorization": f"Token {token}"},
                             files={"file": ("d.npz", content)}, data={"name": f"rows-{rows}"}, timeout=60)
    assert response.status_code == 201, response.text
    assert response.json()["n_samples"] == rows


def multipart(name: str, content: bytes) -> bytes:
    return (b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n" + name.encode() +
            b"\r\n--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.npz\"\r\n\r\n" +
            content + b"\r\n--x--\r\n")


def test_a_client_that_waits_for_the_go_ahead_gets_it_only_with_valid_credentials(web, token):
    """`Expect: 100-continue` (curl sends it with large uploads): the go-ahead used to come with the headers."""
    body = multipart("expected", npz_bytes(400))
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", len(body), "Authorization: Token " + "0" * 40, "Expect: 100-continue"))
        refused = answer_of(sock)
    assert refused.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in refused
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        sock.sendall(head("/api/datasets/", len(body), f"Authorization: Token {token}", "Expect: 100-continue",
                          "Connection: close"))
        sock.settimeout(20)
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, created = parsed(answer_of(sock))
    assert status == 201 and created["name"] == "expected"


def test_a_signed_in_browser_still_signs_in_and_uploads(web):
    user = web.user("browser")
    browser = requests.Session()
    page = browser.get(f"{web.base_url}/accounts/login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    signed_in = browser.post(f"{web.base_url}/accounts/login/", timeout=30, allow_redirects=False,
                             data={"username": "browser", "password": user.password, "csrfmiddlewaretoken": csrf},
                             headers={"Referer": f"{web.base_url}/accounts/login/"})
    assert signed_in.status_code == 302 and "sessionid" in browser.cookies  # a small anonymous form: read
    response = browser.post(f"{web.base_url}/api/datasets/", files={"file": ("d.npz", npz_bytes(400))},
                            data={"name": "from-the-browser"}, timeout=60,
                            headers={"X-CSRFToken": browser.cookies["csrftoken"],
                                     "Referer": f"{web.base_url}/"})
    assert response.status_code == 201, response.text


def test_an_anonymous_small_body_still_reaches_django(web):
    response = requests.post(f"{web.base_url}/api/datasets/", data={"name": "x"}, timeout=30)
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication credentials were not provided.", "details": {}}


def test_a_multipart_body_is_not_parsed_into_memory_before_the_application_sees_it(web, token):
    """The server used to parse every multipart POST into memory (several copies) before the application
    saw it: a 26 MB upload took the web process 350 MB past its peak."""
    body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n"
    body += np.random.RandomState(0).bytes(24 * 1024**2) + b"\r\n--x--\r\n"

    def peak_kib() -> int:
        status = Path(f"/proc/{web.web.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

    assert requests.get(f"{web.base_url}/healthz", timeout=30).status_code == 200
    before = peak_kib()
    response = requests.post(f"{web.base_url}/healthz", data=body, timeout=60,
                             headers={"Authorization": f"Token {token}",
                                      "Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 403  # a POST to a page without a CSRF token; the body was not needed
    grown_kib = peak_kib() - before
    print(f"web process peak grew by {grown_kib} KiB for a {len(body)} byte multipart body")
    # At most one copy of the body in memory (24 MiB); the old parse took ten times it.
    assert grown_kib < 3 * 24 * 1024, grown_kib
