"""Untrusted uploads: bounded before they are read or unpacked, never used as paths, never unpickled.

The refusals of pickles, object arrays, NaN and traversal-style dataset names are in
tests/clserver/datasets/test_datasets.py and tests/modelfactory/; these add the limits on size, rows,
columns and unpacked bytes, against the live server where the server itself is involved.
"""
from __future__ import annotations

import io
import json
import socket
import time
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.models import Dataset
from modelfactory.models import ModelVersion
from tests.reliability.resources import model_register, weights_file
from tests.service import LiveService

UPLOAD_LIMIT = 100_000


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[LiveService]:
    """The web process alone (no worker) with a small upload limit."""
    live = LiveService(tmp_path_factory.mktemp("uploads"), workers=0,
                       env={"CLAAS_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}).start()
    yield live
    live.stop()


def raw_exchange(port: int, head: bytes, body_chunks: Iterator[bytes] = iter(())) -> tuple[bytes, int]:
    """Send a request by hand; returns (the answer, body bytes the server let us send)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


def json_body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_declared_oversized_body_is_refused_before_it_is_sent(web):
    user = web.user("uploader")
    limit = UPLOAD_LIMIT + 10 * 1024 * 1024  # a file plus its form fields
    head = (f"POST /api/datasets/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token "
            f"{user.session.headers['Authorization'].split()[1]}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: {50 * 1024**3}\r\n\r\n").encode()
    # Not one byte of the 50 GiB body is sent: the answer comes from the headers alone.
    answer, _ = raw_exchange(web.port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json_body(answer) == {"error": f"The request body has {50 * 1024**3} bytes; at most {limit} are allowed.",
                                 "details": {"limit_bytes": limit}}
    assert user.get("/api/datasets/").json() == []


def test_a_body_without_a_length_is_cut_off_at_the_limit(web):
    # Signed in: an anonymous body is cut off far sooner (tests/reliability/test_anonymous_bodies.py).
    token = web.user("uploader").session.headers["Authorization"].split()[1]
    limit = UPLOAD_LIMIT + 10 * 1024 * 1024
    head = (f"POST /api/datasets/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            f"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    started = time.monotonic()
    answer, sent = raw_exchange(web.port, head, (chunk for _ in range(4 * limit // 0x10000)))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json_body(answer)["error"] == f"The request body is larger than the limit of {limit} bytes."
    # The server stopped reading near the limit, not after the 4x larger body.
    assert sent < 2 * limit, (sent, time.monotonic() - started)
    assert web.anonymous().get("/healthz").status_code == 200


def test_an_upload_within_the_limit_still_works(web):
    user = web.user("uploader")
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.RandomState(0).rand(50, 4).astype(np.float32), y=np.arange(50) % 2)
    response = user.post("/api/datasets/", files={"file": ("d.npz", buffer.getvalue())}, data={"name": "ok"})
    assert response.status_code == 201, response.text


# --- in-process: what the upload holds -----------------------------------------------------------
@pytest.fixture
def files(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


def upload(api, name: str, content: bytes, filename: str = "data.npz"):
    return api.post("/api/datasets/", {"name": name, "file": SimpleUploadedFile(filename, content)},
                    format="multipart")


def compressed_npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_a_compressed_npz_that_would_unpack_past_the_limit_is_refused_without_unpacking(api, user, files, settings):
    settings.MAX_UPLOAD_BYTES = 2 * 1024 * 1024
    # 400 MB of zeros pack into well under the 2 MB upload limit.
    bomb = compressed_npz(x=np.zeros((100_000, 1000), dtype=np.float32), y=np.zeros(100_000, dtype=np.int64))
    assert len(bomb) < settings.MAX_UPLOAD_BYTES
    tracemalloc.start()
    try:
        response = upload(api, "bomb", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert response.json()["error"] == (f"The NPZ arrays unpack to {400_000_000 + 800_000} bytes; the limit is "
                                        f"{settings.MAX_UPLOAD_BYTES} bytes.")
    assert peak < 50 * 1024 * 1024, peak  # the arrays were never allocated
    assert not Dataset.objects.exists()


def test_an_npz_member_that_is_not_an_array_is_refused(api, user, files):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x", b"\0" * 1_000_000)  # numpy would hand back the raw bytes of a non-array member
        archive.writestr("y.npy", b"")
    response = upload(api, "raw", buffer.getvalue())
    assert response.status_code == 400
    assert response.json()["error"] == "Array 'x' of the NPZ file is not a plain numpy array."


@pytest.mark.parametrize("rows, columns, words", [
    (11, 3, "more than 10 rows"),
    (5, 9, "has 10 columns; at most 9 are allowed"),
])
def test_csv_rows_and_columns_are_bounded(api, user, files, settings, rows, columns, words):
    settings.MAX_DATASET_ROWS, settings.MAX_DATASET_COLUMNS = 10, 8
    header = ",".join([f"f{i}" for i in range(columns)] + ["label"])
    lines = [",".join(["0.5"] * columns + [str(i % 2)]) for i in range(rows)]
    response = upload(api, "table", "\n".join([header, *lines]).encode(), "table.csv")
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("shape, words", [((11, 3), "11 rows; at most 10"), ((5, 9), "9 features; at most 8")])
def test_npz_rows_and_columns_are_bounded(api, user, files, settings, shape, words):
    settings.MAX_DATASET_ROWS, settings.MAX_DATASET_COLUMNS = 10, 8
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones(shape, dtype=np.float32), y=np.arange(shape[0]) % 2)
    response = upload(api, "arrays", buffer.getvalue())
    assert response.status_code == 400 and words in response.json()["error"]


def test_a_weights_file_name_is_never_used_as_a_path(api, user, files):
    model_register(api, "m")
    upload_file = weights_file(hidden_size=16)
    upload_file.name = "../../../../tmp/evil.pt"
    response = api.post("/api/models/m/versions/", {"file": upload_file}, format="multipart")
    assert response.status_code == 201, response.content
    stored = ModelVersion.objects.get(model__name="m", version=2).weights_file
    assert "evil" not in stored and ".." not in stored
    assert (files / stored).resolve().is_relative_to(files.resolve())
    assert not Path("/tmp/evil.pt").exists()
