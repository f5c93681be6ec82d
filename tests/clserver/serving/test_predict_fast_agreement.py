"""The predict fast path answers every request exactly as Django does (issue 13, finding 7).

It answered 200 where Django answers 401 (a repeated Authorization header), 400 (a repeated Host
header), 415 (text/plain, no content type, a repeated one), 406 or 404 (an Accept header or
`?format=` DRF cannot satisfy), or a JSON parse error (a BOM, UTF-16). Now it takes only
unambiguous requests and hands every other one to Django. The same requests go to a live server
with the fast path and to one without it (the same database), and must get the same answer.
"""
from __future__ import annotations

import io
import json
import socket
from typing import Any, Iterator

import numpy as np
import pytest
from django.core.handlers.asgi import ASGIRequest

from clserver.serving.predict_fast import PredictFastPath
from tests.service import LiveService

ROW = [0.5] * 64
BODY = json.dumps({"inputs": [ROW]}).encode()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Two web processes on one database: the fast path on, and off (Django alone answers)."""
    data = tmp_path_factory.mktemp("agreement")
    fast = LiveService(data, workers=0).start()
    django = LiveService(data, workers=0, env={"CLAAS_PREDICT_FAST_PATH": "0"})
    try:
        django.start_web()
        pat = fast.user("pat")
        buffer = io.BytesIO()
        np.savez(buffer, x=np.random.RandomState(0).rand(60, 64).astype(np.float32), y=np.arange(60) % 10)
        assert pat.post("/api/datasets/", files={"file": ("d.npz", buffer.getvalue())},
                        data={"name": "ref"}).status_code == 201
        assert pat.post("/api/models/", {"name": "m", "architecture": "simple_mlp",
                                         "params": {"hidden_size": 16}}).status_code == 201
        created = pat.post("/api/deployments/", {"name": "dep", "source": {"registered": "m", "reference": "ref"},
                                                 "detector": {"name": "ks"},
                                                 "update": {"trigger": "manual", "min_samples": 1}})
        assert created.status_code == 201, created.text
        yield {"fast": fast.port, "django": django.port, "token": pat.session.headers["Authorization"].split()[1]}
    finally:
        django.stop()
        fast.stop()


def exchange(port: int, headers: list[tuple[str, str]], body: bytes, query: str = "") -> tuple[int, str, Any]:
    """(status, content type, the body: parsed JSON, or None for a page) of one hand-written request."""
    lines = [f"POST /api/deployments/dep/predict{query} HTTP/1.1", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {len(body)}", "Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    content_type = fields.get(b"Content-Type", b"").decode()
    if fields.get(b"Transfer-Encoding") == b"chunked":
        content = dechunk(content)
    return status, content_type, json.loads(content) if content_type == "application/json" else None


def dechunk(content: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = content.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, content = out + rest[:n], rest[n + 2:]


HOST = ("Host", "127.0.0.1")
JSON = ("Content-Type", "application/json")


def auth(token: str) -> tuple[str, str]:
    return ("Authorization", f"Token {token}")


# (id, headers (TOKEN stands for the caller's token), body, query string)
CASES = [
    ("plain", [HOST, "TOKEN", JSON], BODY, ""),
    ("authorization-twice", [HOST, "TOKEN", "TOKEN", JSON], BODY, ""),
    ("a-bogus-authorization-then-the-token", [HOST, ("Authorization", "Token " + "0" * 40), "TOKEN", JSON], BODY, ""),
    ("host-twice", [HOST, HOST, "TOKEN", JSON], BODY, ""),
    ("another-host-second", [HOST, ("Host", "evil.example"), "TOKEN", JSON], BODY, ""),
    ("text-plain", [HOST, "TOKEN", ("Content-Type", "text/plain")], BODY, ""),
    ("no-content-type", [HOST, "TOKEN"], BODY, ""),
    ("form-urlencoded", [HOST, "TOKEN", ("Content-Type", "application/x-www-form-urlencoded")], BODY, ""),
    ("vendor-json", [HOST, "TOKEN", ("Content-Type", "application/vnd.api+json")], BODY, ""),
    ("content-type-twice", [HOST, "TOKEN", JSON, JSON], BODY, ""),
    ("charset-utf-16", [HOST, "TOKEN", ("Content-Type", "application/json; charset=utf-16")], BODY, ""),
    ("charset-latin-1", [HOST, "TOKEN", ("Content-Type", "application/json; charset=latin-1")],
     BODY[:-1] + ', "\xe9": 1}'.encode("latin-1"), ""),
    ("charset-utf-8", [HOST, "TOKEN", ("Content-Type", "application/json; charset=UTF-8")], BODY, ""),
    ("utf-8-bom", [HOST, "TOKEN", JSON], b"\xef\xbb\xbf" + BODY, ""),
    ("utf-16-body", [HOST, "TOKEN", JSON], BODY.decode().encode("utf-16-le"), ""),
    ("not-utf-8", [HOST, "TOKEN", JSON], BODY[:-1] + b', "\xff": 1}', ""),
    ("trailing-data", [HOST, "TOKEN", JSON], BODY + b"{}", ""),
    ("nan", [HOST, "TOKEN", JSON], json.dumps({"inputs": [[float("nan")] * 64]}).encode(), ""),
    ("nested-deeply", [HOST, "TOKEN", JSON], b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", ""),
    ("an-extra-key", [HOST, "TOKEN", JSON], json.dumps({"inputs": [ROW], "labels": [1]}).encode(), ""),
    ("accept-xml", [HOST, "TOKEN", JSON, ("Accept", "application/xml")], BODY, ""),
    ("accept-html", [HOST, "TOKEN", JSON, ("Accept", "text/html")], BODY, ""),
    ("accept-indented-json", [HOST, "TOKEN", JSON, ("Accept", "application/json; indent=4")], BODY, ""),
    ("accept-anything", [HOST, "TOKEN", JSON, ("Accept", "*/*")], BODY, ""),
    ("format-xml", [HOST, "TOKEN", JSON], BODY, "?format=xml"),
    ("format-api", [HOST, "TOKEN", JSON], BODY, "?format=api"),
    ("keyword-in-lower-case", [HOST, ("Authorization", "token TOKEN"), JSON], BODY, ""),
    ("no-host", ["TOKEN", JSON], BODY, ""),
]


@pytest.mark.parametrize("headers, body, query", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_fast_path_answers_as_django_does(servers, headers, body, query):
    token = servers["token"]
    sent = [auth(token) if h == "TOKEN" else (h[0], h[1].replace("TOKEN", token)) for h in headers]
    fast = exchange(servers["fast"], sent, body, query)
    django = exchange(servers["django"], sent, body, query)
    assert fast == django


# --- which requests the fast path takes (in-process: no server, no database) ---------------------
def scope(*headers: tuple[bytes, bytes], scheme: str = "http", query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/api/deployments/dep/predict", "scheme": scheme,
            "query_string": query, "headers": list(headers), "root_path": "", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5000)}


H, A, J = (b"host", b"127.0.0.1"), (b"authorization", b"Token abc"), (b"content-type", b"application/json")
TAKEN = {
    "plain": scope(H, A, J),
    "charset-utf-8": scope(H, A, (b"content-type", b"application/json; charset=UTF-8")),
    "accept-anything": scope(H, A, J, (b"accept", b"*/*")),
    "accept-json": scope(H, A, J, (b"accept", b"application/json")),
}
HANDED_OVER = {
    "authorization-twice": scope(H, A, A, J),
    "host-twice": scope(H, H, A, J),
    "no-host": scope(A, J),
    "no-content-type": scope(H, A),
    "content-type-twice": scope(H, A, J, J),
    "text-plain": scope(H, A, (b"content-type", b"text/plain")),
    "charset-latin-1": scope(H, A, (b"content-type", b"application/json; charset=latin-1")),
    "accept-html": scope(H, A, J, (b"accept", b"text/html")),
    "accept-twice": scope(H, A, J, (b"accept", b"*/*"), (b"accept", b"*/*")),
    "query-string": scope(H, A, J, query=b"format=json"),
    "cookie": scope(H, A, J, (b"cookie", b"theme=dark")),
}


@pytest.mark.parametrize("name", TAKEN)
def test_an_unambiguous_token_request_takes_the_fast_path(name):
    assert PredictFastPath(app=None, threads=1)._token(TAKEN[name]) == "abc"


@pytest.mark.parametrize("name", HANDED_OVER)
def test_an_ambiguous_request_is_handed_to_django(name):
    assert PredictFastPath(app=None, threads=1)._token(HANDED_OVER[name]) is None


@pytest.mark.parametrize("scheme, forwarded", [
    ("http", []), ("https", []), ("http", [b"https"]), ("https", [b"http"]), ("http", [b"https, http"]),
    ("http", [b"http", b"https"]), ("http", [b"https", b"http"]),
], ids=str)
def test_behind_a_tls_proxy_the_fast_path_takes_only_what_django_sees_as_secure(settings, scheme, forwarded):
    """With CLAAS_SECURE=1 Django redirects a request it does not see as secure; the fast path must not answer it."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    request = scope(H, A, J, *[(b"x-forwarded-proto", v) for v in forwarded], scheme=scheme)
    secure_to_django = ASGIRequest(request, io.BytesIO()).is_secure()
    taken = PredictFastPath(app=None, threads=1)._token(request) is not None
    assert not taken or secure_to_django
    if len(forwarded) <= 1:
        assert taken == secure_to_django
