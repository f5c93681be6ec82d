"""CSV uploads: parsed a row at a time into float32, so memory stays a small multiple of the file."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.datasets import services as datasets
from clserver.models import Dataset


@pytest.fixture
def files(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


def upload(api, content: bytes, name: str = "table"):
    return api.post("/api/datasets/", {"name": name, "file": SimpleUploadedFile("t.csv", content)},
                    format="multipart")


def test_storing_a_csv_takes_a_small_multiple_of_its_size(user, files):
    # One-digit values pack the most numbers into a byte: the old parser took ~27x the file here,
    # in lists of Python floats. Measured around the service, which is what the web process runs
    # once Django has spooled the upload to disk (the test client's own copies of the body are not).
    columns, rows = 20, 50_000
    line = ",".join(["1"] * columns)
    content = (",".join([f"f{i}" for i in range(columns)] + ["label"]) + "\n"
               + "".join(f"{line},{i % 3}\n" for i in range(rows))).encode()
    upload = SimpleUploadedFile("t.csv", content)
    tracemalloc.start()
    try:
        dataset = datasets.dataset_create(owner=user, name="table", file=upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dataset.n_samples == rows and dataset.n_features == columns
    # the bytes read (1x), float32 values (2x for one-digit values), NPZ writing (up to 2x)
    assert peak < 6 * len(content), peak / len(content)


def test_values_are_the_float32_of_their_text(api, user, files):
    text = b"a,b,label\n0.1,-2.5e-3,0\n3.4028234e38,1e-46,1\n 7 ,1_000,1\n"
    assert upload(api, text).status_code == 201
    with np.load(files / Dataset.objects.get().file) as stored:
        expected = np.array([[0.1, -2.5e-3], [3.4028234e38, 1e-46], [7, 1000]], dtype=np.float64).astype(np.float32)
        assert stored["x"].dtype == np.float32 and np.array_equal(stored["x"], expected)
        assert list(stored["y"]) == [0, 1, 1]


@pytest.mark.parametrize("content, words", [
    (b"a,label\n1e39,0\n2,1\n", "NaN or infinite values in 1 rows"),  # past float32's range
    (b"a,label\n1,1.00000001\n2,0\n", "integer class labels"),  # labels keep float64's precision
    (b"label\n0\n1\n", "at least one feature column besides 'label'"),
    (b"a,label\n1,0\n\xff,1\n", "not UTF-8 text"),
    (b"a,label\n", "header but no data rows"),
])
def test_bad_tables_are_refused_in_one_sentence(api, user, files, content, words):
    response = upload(api, content)
    assert response.status_code == 400 and words in response.json()["error"], response.content
    assert not Dataset.objects.exists()
