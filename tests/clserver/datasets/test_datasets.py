"""Uploading datasets: NPZ and CSV in, clear refusals for bad files, streams out."""
from __future__ import annotations

import io
import pickle
from unittest import mock

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.experiments import services
from clserver.experiments.job import ExperimentJob
from clserver.models import Dataset


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload(api, name: str, content: bytes, filename: str = "data.npz", **extra):
    return api.post("/api/datasets/", {"name": name, "file": SimpleUploadedFile(filename, content), **extra},
                    format="multipart")


def digits_npz(n=None) -> bytes:
    from clserver.training.streams import load_digits_arrays

    x, y = load_digits_arrays()
    return npz_bytes(x=x[:n], y=y[:n])


def test_upload_npz_and_list_detail_delete(api, user):
    response = upload(api, "digits", digits_npz())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["n_samples"] == 1797 and body["n_features"] == 64 and body["classes"] == list(range(10))
    assert [d["name"] for d in api.get("/api/datasets/").json()] == ["digits"]
    assert api.get("/api/datasets/digits").json()["original_format"] == "npz"
    assert api.delete("/api/datasets/digits").status_code == 204
    assert Dataset.objects.count() == 0


def test_upload_csv_with_a_label_column(api, user):
    csv = "f1,f2,target\n0.1,0.2,0\n0.3,0.4,1\n0.5,0.6,1\n0.7,0.8,0\n"
    response = upload(api, "tiny", csv.encode(), "tiny.csv", label_column="target")
    assert response.status_code == 201, response.content
    assert response.json()["n_features"] == 2 and response.json()["classes"] == [0, 1]


@pytest.mark.parametrize("content, filename, extra, words", [
    (npz_bytes(x=np.array([[1.0, np.nan], [1.0, 2.0]]), y=np.array([0, 1])), "a.npz", {}, "NaN or infinite"),
    (npz_bytes(x=np.array([[1.0, np.inf], [1.0, 2.0]]), y=np.array([0, 1])), "a.npz", {}, "NaN or infinite"),
    (npz_bytes(x=np.ones((3, 2)), y=np.array([0.5, 1.0, 0.0])), "a.npz", {}, "integer class labels"),
    (npz_bytes(x=np.ones((3, 2)), y=np.array([0, 1])), "a.npz", {}, "x has 3 rows but y has 2 labels"),
    (npz_bytes(x=np.ones((3, 2))), "a.npz", {}, "'y' is missing"),
    (npz_bytes(x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1])), "a.npz", {}, "pickled objects"),
    (pickle.dumps({"x": [[1, 2]], "y": [0]}), "a.pkl", {}, "Pickled files are refused"),
    (b"PK\x03\x04 not really a zip", "a.npz", {}, "not a readable NPZ"),
    (b"a,b,label\n1,2,0\n3,x,1\n", "a.csv", {}, "non-numeric value"),
    (b"a,b,label\n1,2,0\n3,4\n", "a.csv", {}, "line 3 has 2 fields"),
    (b"a,b\n1,2\n3,4\n", "a.csv", {}, "no column 'label'"),
    (b"a,b,label\n1,2,0\n3,4,0.5\n", "a.csv", {}, "integer class labels"),
    (b"", "a.csv", {}, "empty"),
    (b"a,label\n" + b"1" * 200_000 + b",0\n", "a.csv", {}, "could not be read: field larger than field limit"),
])
def test_bad_files_are_refused_and_nothing_is_stored(api, user, settings, content, filename, extra, words):
    stored = settings.DATA_DIR / "files" / "datasets"
    before = set(stored.rglob("*")) if stored.exists() else set()
    response = upload(api, "bad", content, filename, **extra)
    assert response.status_code == 400, response.content
    assert words in response.json()["error"]
    assert Dataset.objects.count() == 0
    assert (set(stored.rglob("*")) if stored.exists() else set()) == before


def test_csv_lines_may_end_in_a_lone_carriage_return(api, user):
    response = upload(api, "old-mac", b"f1,f2,label\r0.1,0.2,0\r0.3,0.4,1\r0.5,0.6,1\r", "mac.csv")
    assert response.status_code == 201, response.content
    assert response.json()["n_samples"] == 3 and response.json()["n_features"] == 2


def test_duplicate_name_is_a_conflict(api, user):
    assert upload(api, "twice", digits_npz(100)).status_code == 201
    response = upload(api, "twice", digits_npz(100))
    assert response.status_code == 409 and "exists already" in response.json()["error"]


def test_a_file_over_the_limit_is_413(api, user, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    response = upload(api, "big", digits_npz())
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert Dataset.objects.count() == 0


def test_file_names_are_never_used_as_paths(api, user, settings):
    response = upload(api, "sneaky", digits_npz(200), filename="../../../../etc/passwd.npz")
    assert response.status_code == 201
    stored = Dataset.objects.get(name="sneaky").file
    assert ".." not in stored and "passwd" not in stored
    assert (settings.DATA_DIR / stored).resolve().is_relative_to(settings.DATA_DIR.resolve())


def test_another_users_dataset_is_invisible(api, other_api, user, other_user):
    upload(api, "mine", digits_npz(200))
    assert other_api.get("/api/datasets/mine").status_code == 404
    assert other_api.delete("/api/datasets/mine").status_code == 404
    assert other_api.get("/api/datasets/").json() == []


def test_a_dataset_in_use_cannot_be_deleted(api, user):
    upload(api, "used", digits_npz())
    api.post("/base-scenario/setup/", {"exp_name": "on-used", "benchmark": {
        "name": "dataset", "dataset": "used", "scenario": "time_ordered", "n_experiences": 3}}, format="json")
    response = api.delete("/api/datasets/used")
    assert response.status_code == 409 and "on-used" in response.json()["error"]


def test_time_ordered_stream_keeps_the_files_row_order(api, user):
    from clserver.training.benchmarks import benchmark_source

    x = np.arange(300, dtype=np.float32).reshape(100, 3)
    y = np.repeat([0, 1], 50)
    upload(api, "ordered", npz_bytes(x=x, y=y))
    _, source = benchmark_source(name="dataset", params={"dataset": "ordered", "scenario": "time_ordered",
                                                         "n_experiences": 4}, owner=user)
    stream = source.load()
    firsts = [train_x[:, 0].min() for train_x, _ in stream.train]
    assert firsts == sorted(firsts)
    assert all(train_x[:, 0].max() < later_x[:, 0].min()
               for (train_x, _), (later_x, _) in zip(stream.train, stream.train[1:]))


def test_class_incremental_on_a_dataset_needs_divisible_classes(api, user):
    upload(api, "three", npz_bytes(x=np.random.rand(90, 4), y=np.repeat([0, 1, 2], 30)))
    response = api.post("/base-scenario/setup/", {"exp_name": "ci", "benchmark": {
        "name": "dataset", "dataset": "three", "scenario": "class_incremental", "n_experiences": 2}}, format="json")
    assert response.status_code == 400 and "divide the 3 classes" in response.json()["error"]


def test_an_experiment_trains_on_an_uploaded_dataset(transactional_db, api, user):
    upload(api, "digits-file", digits_npz())
    experiment = services.experiment_setup(owner=user, raw={
        "exp_name": "on-file", "benchmark": {"name": "dataset", "dataset": "digits-file", "scenario": "new_instances",
                                             "n_experiences": 3},
        "strategy": {"name": "replay", "params": {"mem_size": 100}}, "training": {"epochs": 3, "device": "cpu"}})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        services.experiment_execute(owner=user, name="on-file")
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    assert experiment.status == "completed", experiment.error
    assert experiment.results["metrics"]["final_accuracy"] > 0.8
