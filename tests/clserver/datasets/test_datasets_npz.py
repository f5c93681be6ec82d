"""NPZ uploads: every member numpy could read is checked, and sized, before anything is inflated."""
from __future__ import annotations

import bz2
import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.models import Dataset

MB = 1024 * 1024


@pytest.fixture
def files(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.MAX_UPLOAD_BYTES = 2 * MB
    return tmp_path


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def zeros(n: int):
    for _ in range(n // MB):
        yield bytes(MB)


def deflated_zip(members: list[tuple[str, object]]) -> bytes:
    """A zip of (name, bytes or an iterator of chunks); chunks are deflated as they come, never held whole."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            with archive.open(name, "w", force_zip64=True) as member:
                for chunk in ([content] if isinstance(content, bytes) else content):
                    member.write(chunk)
    return buffer.getvalue()


def lying_zip(members: list[tuple[str, bytes, int]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Members (name, declared, hidden) whose directory declares `declared` (size and CRC) but whose
    compressed data inflates on with `hidden` zero bytes."""
    body, directory = b"", b""
    for name, declared, hidden in members:
        compressor = bz2.BZ2Compressor(9) if method == zipfile.ZIP_BZIP2 else zlib.compressobj(9, zlib.DEFLATED, -15)
        data = compressor.compress(declared) + b"".join(compressor.compress(c) for c in zeros(hidden))
        data += compressor.flush()
        crc, size, encoded = zlib.crc32(declared), len(declared), name.encode()
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 46, 46, 0, method, 0, 0, crc, len(data), size,
                                 len(encoded), 0, 0, 0, 0, 0, len(body)) + encoded
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 46, 0, method, 0, 0, crc, len(data), size, len(encoded), 0)
        body += encoded + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + end


def upload_measured(api, content: bytes) -> tuple[object, int]:
    tracemalloc.start()
    try:
        response = api.post("/api/datasets/", {"name": "arrays", "file": SimpleUploadedFile("d.npz", content)},
                            format="multipart")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response, peak


def assert_one_sentence_refusal(response, files: Path) -> dict:
    assert 400 <= response.status_code < 500, response.content
    body = response.json()
    assert set(body) == {"error", "details"} and body["error"].endswith(".") and "\n" not in body["error"]
    assert not Dataset.objects.exists()
    assert not list((files / "files").rglob("*.npz")) if (files / "files").exists() else True
    return body


def test_a_member_named_exactly_x_beside_a_tiny_x_npy_is_refused_without_inflating_it(api, user, files):
    # numpy reads the member named exactly 'x' before 'x.npy': the old check sized 'x.npy' (80 bytes)
    # while numpy inflated 'x' (200 MB) in the web process.
    upload = deflated_zip([("x.npy", npy(np.ones((10, 2)))), ("x", zeros(200 * MB)),
                           ("y.npy", npy(np.arange(10) % 2))])
    assert len(upload) < MB
    with np.load(io.BytesIO(upload)) as data:  # what numpy would read: the bomb, not the checked array
        assert data.zip.getinfo("x").file_size == 200 * MB and "x" in data.files
    response, peak = upload_measured(api, upload)
    assert peak < 50 * MB, peak
    body = assert_one_sentence_refusal(response, files)
    assert body["error"] == "The NPZ file holds members besides x and y (x.npy); store only the arrays x and y."


def test_a_member_x_that_declares_a_huge_array_is_refused_from_its_header(api, user, files):
    header_only = io.BytesIO()
    np.lib.format.write_array_header_1_0(header_only, {"descr": "<f4", "fortran_order": False,
                                                       "shape": (99999999, 1000)})
    # declared 400 GB, sent 1 KB: refused from the 128-byte header alone
    upload = deflated_zip([("x", header_only.getvalue()), ("y", npy(np.arange(4) % 2))])
    response, peak = upload_measured(api, upload)
    assert response.status_code == 413
    assert response.json()["error"].startswith("The NPZ arrays unpack to 399999996")
    assert peak < 50 * MB, peak


def test_a_member_whose_zip_directory_understates_its_size_is_never_inflated_past_it(api, user, files):
    # The directory declares the 8 rows of each member; their deflated data goes on with 100 MB of zeros.
    x = npy(np.arange(16, dtype=np.float32).reshape(8, 2))
    upload = lying_zip([("x.npy", x, 100 * MB), ("y.npy", npy(np.arange(8) % 2), 100 * MB)])
    assert len(upload) < MB
    response, peak = upload_measured(api, upload)
    assert peak < 50 * MB, peak
    assert response.status_code == 201, response.content  # what the directory declares, and not a byte more
    assert response.json()["n_samples"] == 8 and response.json()["n_features"] == 2


def test_a_bzip2_member_is_refused_before_it_is_inflated(api, user, files):
    # zipfile inflates bzip2 (and lzma) without a bound per read: the first 4 KB of compressed input
    # would become all 100 MB at once, whatever size the directory declares.
    x, y = npy(np.ones((8, 2), dtype=np.float32)), npy(np.arange(8) % 2)
    upload = lying_zip([("x.npy", x, 100 * MB), ("y.npy", y, 0)], method=zipfile.ZIP_BZIP2)
    response, peak = upload_measured(api, upload)
    assert peak < 50 * MB, peak
    assert assert_one_sentence_refusal(response, files)["error"] == (
        "Array 'x' of the NPZ file is encrypted or compressed with a method other than deflate; "
        "save it with numpy.savez or numpy.savez_compressed.")


def test_a_member_whose_size_disagrees_with_its_array_header_is_refused(api, user, files):
    # Header: 10 float64 values (80 bytes); the member carries 1 MB more, which numpy.load never looked at.
    upload = deflated_zip([("x.npy", npy(np.ones((5, 2))) + bytes(MB)), ("y.npy", npy(np.arange(5) % 2))])
    response, _ = upload_measured(api, upload)
    body = assert_one_sentence_refusal(response, files)
    assert body["error"].startswith("Array 'x' of the NPZ file has ") and "inconsistent" in body["error"]


@pytest.mark.parametrize("members, words", [
    ([("x.npy", "a"), ("y.npy", "y"), ("x.npy", "b")], "two members with the same name"),
    ([("x.npy", "a"), ("y.npy", "y"), ("notes", "a")], "members besides x and y (notes)"),
    ([("x.npy", "a"), ("y", "y"), ("y.npy", "y")], "members besides x and y (y.npy)"),
])
def test_archives_with_members_the_reader_would_not_use_are_refused(api, user, files, members, words):
    arrays = {"a": npy(np.ones((4, 2))), "b": npy(np.zeros((4, 3))), "y": npy(np.arange(4) % 2)}
    buffer = io.BytesIO()
    with pytest.warns(UserWarning) if members[0][0] == members[-1][0] else _nothing():
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, key in members:
                archive.writestr(name, arrays[key])
    response, _ = upload_measured(api, buffer.getvalue())
    assert words in assert_one_sentence_refusal(response, files)["error"]


def test_an_archive_with_thousands_of_members_is_refused_before_its_directory_is_read(api, user, files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy(np.ones((4, 2))))
        archive.writestr("y.npy", npy(np.arange(4) % 2))
        for i in range(3000):
            archive.writestr(f"pad{i}", b"")
    response, _ = upload_measured(api, buffer.getvalue())
    assert "directory is too large" in assert_one_sentence_refusal(response, files)["error"]


@pytest.mark.parametrize("name", ["x", "x.npy"])
def test_the_array_read_is_the_one_numpy_reads(api, user, files, name):
    x = np.arange(24, dtype=np.int16).reshape(6, 4)[:, ::2].copy(order="F")  # Fortran order, a narrow dtype
    upload = deflated_zip([(name, npy(x)), ("y", npy(np.array([0, 1, 0, 1, 0, 1], dtype=">i4")))])
    with np.load(io.BytesIO(upload)) as data:
        expected = data["x"]
    response, _ = upload_measured(api, upload)
    assert response.status_code == 201, response.content
    with np.load(files / Dataset.objects.get().file) as stored:
        assert np.array_equal(stored["x"], expected.astype(np.float32)) and list(stored["y"]) == [0, 1] * 3


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_small_integer_x_is_sized_as_the_float32_it_becomes(api, user, files):
    # 1.5 MB of uint8 passes a 2 MB limit as stored, but becomes 6 MB of float32 once read.
    x = np.zeros((1536, 1024), dtype=np.uint8)
    upload = deflated_zip([("x.npy", npy(x)), ("y.npy", npy(np.zeros(1536, dtype=np.uint8)))])
    assert len(upload) < 64 * 1024
    response, peak = upload_measured(api, upload)
    body = assert_one_sentence_refusal(response, files)
    assert response.status_code == 413 and body["details"]["unpacked_bytes"] > 2 * MB
    assert peak < 4 * MB, peak
