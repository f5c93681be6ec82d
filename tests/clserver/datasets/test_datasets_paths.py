"""A broken dataset upload is answered in one sentence that names no server path and no exception text."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


GOOD = npz(x=np.random.RandomState(0).rand(40, 3), y=np.arange(40) % 2)


def corrupted_deflate() -> bytes:
    at = GOOD.index(b"x.npy") + len(b"x.npy") + 20  # inside the deflated data of x.npy
    return GOOD[:at] + bytes(len(GOOD) - at - 200) + GOOD[-200:]


@pytest.mark.parametrize("content, filename", [
    (GOOD[: len(GOOD) // 2], "truncated.npz"),
    (corrupted_deflate(), "corrupted.npz"),
    (GOOD.replace(b"x.npy", b"x.npz", 1), "local-name-differs.npz"),
    (b"PK\x03\x04" + bytes(100), "no-directory.npz"),
    (b"a,label\n\"1,0\n", "unterminated-quote.csv"),
    (b"a,label\n" + b"1" * 200_000 + b",0\n", "field-over-the-limit.csv"),
])
def test_broken_uploads_name_no_server_path(api, user, settings, tmp_path: Path, content, filename):
    settings.DATA_DIR = tmp_path / "server-data-dir"
    settings.DATA_DIR.mkdir()
    response = api.post("/api/datasets/", {"name": "broken", "file": SimpleUploadedFile(filename, content)},
                        format="multipart")
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"error", "details"} and body["error"].count(". ") == 0, body
    text = response.content.decode()
    for leak in (str(tmp_path), "server-data-dir", "/work/", "site-packages", "Traceback", "Errno"):
        assert leak not in text, text
    assert not list(settings.DATA_DIR.rglob("*.npz"))
