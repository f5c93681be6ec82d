"""Parquet uploads: rows, columns and types are checked from the file's metadata before any column is read."""
from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.experiments import services as experiments
from clserver.experiments.job import ExperimentJob
from clserver.models import Dataset

MB = 1024 * 1024


@pytest.fixture
def files(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.MAX_UPLOAD_BYTES = 2 * MB
    return tmp_path


def parquet(columns: dict[str, object], **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, **options)
    return buffer.getvalue()


def upload(api, content: bytes, name: str = "table", **fields):
    return api.post("/api/datasets/", {"name": name, "file": SimpleUploadedFile("t.parquet", content), **fields},
                    format="multipart")


def refused(response, files: Path, status: int = 400) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "details"} and body["error"].endswith(".") and "\n" not in body["error"]
    assert not Dataset.objects.exists()
    assert not list(files.rglob("*.npz"))
    return body["error"]


def test_a_parquet_file_trains_an_experiment_to_completion(transactional_db, api, user, settings):
    from clserver.training.streams import load_digits_arrays

    x, y = load_digits_arrays()
    columns = {f"p{i}": x[:, i].astype(np.float64 if i % 2 else np.float32) for i in range(x.shape[1])}
    columns["digit"] = y.astype(np.int16)
    response = upload(api, parquet(columns), "digits", label_column="digit")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["original_format"], body["n_samples"], body["n_features"]) == ("parquet", 1797, 64)
    with np.load(settings.DATA_DIR / Dataset.objects.get().file) as stored:
        assert np.array_equal(stored["x"], x.astype(np.float32)) and np.array_equal(stored["y"], y)

    experiment = experiments.experiment_setup(owner=user, raw={
        "exp_name": "on-parquet", "benchmark": {"name": "dataset", "dataset": "digits", "scenario": "new_instances",
                                                "n_experiences": 2},
        "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        experiments.experiment_execute(owner=user, name="on-parquet")
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    assert experiment.status == "completed", experiment.error


def test_integer_boolean_columns_and_a_pandas_index_are_read_as_features(api, user, files):
    content = parquet({"__index_level_0__": [10, 11, 12, 13], "count": pa.array([1, 2, 3, 4], pa.uint8()),
                       "flag": [True, False, True, False], "label": [0, 1, 0, 1]})
    response = upload(api, content)
    assert response.status_code == 201, response.content
    with np.load(files / Dataset.objects.get().file) as stored:
        assert stored["x"].tolist() == [[1, 1], [2, 0], [3, 1], [4, 0]]


@pytest.mark.parametrize("columns, words", [
    ({"f": [0.5, 1.5], "colour": ["red", "blue"], "label": [0, 1]},
     "Column 'colour' of the Parquet file holds string, not numbers."),
    ({"f": [0.5, 1.5], "tags": [[1, 2], [3]], "label": [0, 1]},
     "Column 'tags' of the Parquet file is nested (list<element: int64>); store one number per cell."),
    ({"f": [0.5, 1.5], "label": ["a", "b"]}, "Column 'label' of the Parquet file holds string, not numbers."),
    ({"f": [0.5, float("nan"), 1.0], "label": [0, 1, 1]}, "x contains NaN or infinite values in 1 rows."),
    ({"f": [0.5, None, 1.0], "label": [0, 1, 1]}, "x contains NaN or infinite values in 1 rows."),
    ({"f": [0.5, 1.5], "target": [0, 1]}, "The Parquet file has no column 'label' (columns: f, target)."),
    ({"f": [0.5, 1.5], "label": [0.5, 1.0]}, "y must hold integer class labels; it has non-integer values."),
    ({"f": [0.5, 1.5], "label": [1, 1]}, "The dataset needs at least 2 classes."),
    ({"label": [0, 1]}, "The Parquet file needs at least one feature column besides 'label'."),
])
def test_bad_columns_are_refused_in_one_sentence(api, user, files, columns, words):
    assert refused(upload(api, parquet(columns)), files) == words


@pytest.mark.parametrize("shape, words", [((11, 2), "11 rows; at most 10"), ((4, 10), "11 columns; at most 9")])
def test_rows_and_columns_are_bounded_from_the_metadata(api, user, files, settings, shape, words):
    settings.MAX_DATASET_ROWS, settings.MAX_DATASET_COLUMNS = 10, 8
    columns = {f"f{i}": np.zeros(shape[0]) for i in range(shape[1])}
    columns["label"] = np.arange(shape[0]) % 2
    assert words in refused(upload(api, parquet(columns)), files)


def test_a_compressed_column_that_would_unpack_past_the_limit_is_refused_unread(api, user, files):
    rows = 1_000_000  # a million zeros compress to a few kilobytes but unpack to 4 MB of float32
    content = parquet({"f": np.zeros(rows), "label": np.arange(rows) % 2}, compression="zstd")
    assert len(content) < 2 * MB
    tracemalloc.start()
    try:
        response = upload(api, content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = refused(response, files, status=413)
    assert error == f"The Parquet columns unpack to {4 * rows} bytes of float32; the limit is {2 * MB} bytes."
    assert peak < 4 * MB, peak


def test_a_damaged_parquet_file_is_refused(api, user, files):
    content = parquet({"f": np.arange(100.0), "label": np.arange(100) % 2})
    assert refused(upload(api, content[:4] + bytes(len(content) - 8) + content[-4:]), files) == (
        "The file is not a readable Parquet file.")
