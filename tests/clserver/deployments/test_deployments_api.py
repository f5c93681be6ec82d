"""Deployments through the REST API in-process: creation, predict, ingest, validation, ownership.

The source is a completed experiment whose final model is trained here with plain torch (the
Avalanche run itself is exercised by the live-service tests in test_deployments_live.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clserver.serving import cache as deployment_serving
from clserver.deployments.models import Deployment, DeploymentBatch, DeploymentUpdate, DriftCheck
from clserver.models import Experiment, JobStatus
from clserver.experiments.options import options_validate
from clserver.experiments.services import experiment_dir
from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from modelfactory.architectures import architecture_build

OPTIONS = {"exp_name": "digits", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 64}},
           "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
           "strategy": {"name": "replay", "params": {"mem_size": 100}}}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    return tmp_path


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    x, y = load_digits_arrays()
    tr, te = stratified_split(y, 0.2, 1)
    return {"x": x, "y": y, "tr": tr, "te": te}


def rotated(x: np.ndarray) -> np.ndarray:
    return rotate_images(x.reshape(-1, 8, 8), 90).reshape(len(x), 64)


@pytest.fixture(scope="module")
def trained_state(digits) -> dict[str, torch.Tensor]:
    """A simple_mlp trained on the benchmark's training split (what the experiment would produce)."""
    torch.manual_seed(0)
    params = options_params()
    model = architecture_build(architecture="simple_mlp", params=params)
    x, y = torch.from_numpy(digits["x"][digits["tr"]]), torch.from_numpy(digits["y"][digits["tr"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def options_params() -> dict:
    return {"num_classes": 10, "input_shape": [64], "hidden_size": 64, "hidden_layers": 1, "drop_rate": 0.5}


@pytest.fixture
def experiment(user, trained_state) -> Experiment:
    validated = options_validate(owner=user, raw=OPTIONS)
    exp = Experiment.objects.create(owner=user, name="digits", options=validated.options, status=JobStatus.COMPLETED)
    path = experiment_dir(exp) / "final_model.pt"
    path.parent.mkdir(parents=True)
    torch.save(trained_state, path)
    exp.results = {"model": {"save_path": str(path)}}
    exp.save()
    return exp


def create(api, name: str = "prod", **body):
    return api.post("/api/deployments/", {"name": name, "source": {"exp_name": "digits"}, **body}, format="json")


@pytest.fixture
def deployed(api, experiment):
    response = create(api, detector={"name": "ks"}, update={"trigger": "manual", "min_samples": 50})
    assert response.status_code == 201, response.json()
    return response.json()


def nothing_stored(tmp_path: Path) -> None:
    assert DriftCheck.objects.count() == 0
    assert DeploymentBatch.objects.count() == 0
    assert DeploymentUpdate.objects.count() == 0
    assert not list(tmp_path.glob("deployments/*/*/buffer/*"))


def test_detector_registry_lists_every_detector_with_parameters(api):
    body = api.get("/api/detectors/").json()
    names = [d["name"] for d in body]
    assert names == ["ks", "mmd", "lsdd", "chi_square", "tabular", "classifier", "mmd_online", "lsdd_online",
                     "cvm_online"]
    online = {d["name"]: {p["name"] for p in d["params"]} for d in body if d["kind"] == "online"}
    assert all({"ert", "window_size"} <= params for params in online.values())
    assert {p["name"] for p in body[0]["preprocess"]} == {"random_projection", "penultimate"}


def test_create_from_an_experiment_holds_version_1_and_its_files(api, experiment, tmp_path, digits):
    response = create(api, detector={"name": "mmd", "p_val": 0.01, "n_permutations": 50})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["champion_version"] == 1 and body["source"] == {"exp_name": "digits"}
    assert body["detector"]["name"] == "mmd" and body["detector"]["p_val"] == 0.01
    assert body["update"]["trigger"] == "drift" and body["update"]["strategy"]["name"] == "replay"
    assert body["update"]["strategy"]["params"]["mem_size"] == body["update"]["memory_size"] == 500
    [v1] = body["versions"]
    assert v1["is_champion"] and v1["aliases"] == ["champion"] and v1["memory_size"] == 500
    assert v1["validation_accuracy"] > 0.8
    assert body["source_train_samples"] == len(digits["tr"])
    folder = tmp_path / "deployments" / str(experiment.owner_id)
    [dep_dir] = [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert (dep_dir / "detector" / "config.toml").is_file()
    assert (dep_dir / "versions" / "v1.pt").is_file() and (dep_dir / "validation.npz").is_file()
    with np.load(dep_dir / "versions" / "v1-memory.npz") as memory:
        assert np.bincount(memory["y"]).tolist() == [50] * 10


@pytest.mark.parametrize("body, status, words", [
    ({"name": "x y", "source": {"exp_name": "digits"}}, 400, "name may contain only"),
    ({"name": "a", "source": {"exp_name": "nope"}}, 400, "no experiment named 'nope'"),
    ({"name": "a"}, 400, "source must be"),
    ({"name": "a", "source": {"exp_name": "digits"}, "colour": 1}, 400, "unknown key 'colour'"),
    ({"name": "a", "source": {"exp_name": "digits"}, "detector": {"name": "magic"}}, 400, "Unknown detector 'magic'"),
    ({"name": "a", "source": {"exp_name": "digits"}, "detector": {"name": "mmd", "p_val": 3}}, 400,
     "detector.p_val must be at most 0.5"),
    ({"name": "a", "source": {"exp_name": "digits"}, "detector": {"name": "mmd", "preprocess": {"name": "pca"}}},
     400, "Unknown preprocess 'pca'"),
    ({"name": "a", "source": {"exp_name": "digits"}, "update": {"strategy": {"name": "gdumb"}}}, 400,
     "retrains from scratch"),
    ({"name": "a", "source": {"exp_name": "digits"}, "update": {"trigger": "sometimes"}}, 400,
     "update.trigger must be one of"),
    ({"name": "a", "source": {"registered": "mymodel"}}, 400, "source.reference is required"),
])
def test_create_refuses_bad_options_with_one_sentence_and_creates_nothing(api, experiment, tmp_path, body, status,
                                                                          words):
    response = api.post("/api/deployments/", body, format="json")
    assert response.status_code == status, response.json()
    assert words in response.json()["error"]
    assert Deployment.objects.count() == 0
    assert not (tmp_path / "deployments").exists() or not any((tmp_path / "deployments").rglob("*.npz"))


def test_create_from_an_unfinished_experiment_is_refused(api, experiment):
    Experiment.objects.filter(pk=experiment.pk).update(status=JobStatus.RUNNING)
    response = create(api)
    assert response.status_code == 400
    assert response.json()["error"] == "source.exp_name: experiment 'digits' is running, not completed."


def test_a_second_deployment_with_the_same_name_is_a_conflict(api, deployed):
    response = create(api)
    assert response.status_code == 409
    assert "exists" in response.json()["error"]


def test_predict_answers_with_the_champion_and_its_version(api, deployed, digits, trained_state):
    x = digits["x"][digits["te"]][:50]
    response = api.post("/api/deployments/prod/predict", {"inputs": x.tolist()}, format="json")
    assert response.status_code == 200
    body = response.json()
    model = architecture_build(architecture="simple_mlp", params=options_params())
    model.load_state_dict(trained_state)
    model.eval()
    assert body["model_version"] == 1
    assert body["predictions"] == model(torch.from_numpy(x)).argmax(1).tolist()


def test_ingest_checks_drift_and_buffers_without_a_manual_update(api, deployed, digits, tmp_path):
    # Every other held-out digit: the file's order follows its writers, so a slice would not be i.i.d.
    te = np.concatenate([digits["te"][::2], digits["te"][1::2]])
    same = api.post("/api/deployments/prod/ingest", {"inputs": digits["x"][te[:150]].tolist(),
                                                     "labels": digits["y"][te[:150]].tolist()}, format="json")
    assert same.status_code == 200, same.json()
    assert same.json()["drift"]["is_drift"] is False and same.json()["drift"]["detector"] == "ks"
    assert same.json()["update"] is None and same.json()["buffered"] == 150
    turned = api.post("/api/deployments/prod/ingest", {"inputs": rotated(digits["x"][te[150:300]]).tolist(),
                                                       "labels": digits["y"][te[150:300]].tolist()}, format="json")
    body = turned.json()
    assert body["drift"]["is_drift"] is True and body["drift"]["p_val"] < body["drift"]["threshold"]
    assert body["update"] is None and "manual" in body["trigger"] and body["buffered"] == 300
    detail = api.get("/api/deployments/prod").json()
    assert [c["is_drift"] for c in detail["drift_checks"]] == [False, True]
    assert [c["n_samples"] for c in detail["drift_checks"]] == [150, 150]
    assert detail["buffered_samples"] == 300 and detail["samples_seen"] == 300 and detail["drift_pending"]
    events = api.get("/api/deployments/prod/events").json()
    assert [e["type"] for e in events] == ["created", "drift_check", "drift_check"]
    assert events[2]["is_drift"] is True and events[2]["check_id"] == detail["drift_checks"][1]["id"]


def test_drift_trigger_needs_min_samples(api, experiment, digits):
    assert create(api, "auto", detector={"name": "ks"}, update={"min_samples": 400}).status_code == 201
    te = digits["te"]
    body = api.post("/api/deployments/auto/ingest", {"inputs": rotated(digits["x"][te[:100]]).tolist(),
                                                     "labels": digits["y"][te[:100]].tolist()}, format="json").json()
    assert body["drift"]["is_drift"] is True and body["update"] is None
    assert body["trigger"] == ("Drift was detected but only 100 labelled samples are buffered; an update starts "
                               "once 400 are.")


def test_a_manual_update_needs_enough_buffered_samples(api, deployed, digits):
    response = api.post("/api/deployments/prod/update", {}, format="json")
    assert response.status_code == 409
    assert response.json()["error"].startswith("Only 0 labelled samples are buffered; an update needs at least 50")


BAD_INGEST = [
    ({"inputs": [[0.1] * 63], "labels": [1]}, 400, "Each row of inputs must have 64 features (the model's input "
                                                   "size); these rows have 63."),
    ({"inputs": [["a"] * 64], "labels": [1]}, 400, "inputs must hold numbers only; found values of type string."),
    ({"inputs": [[0.1] * 64, [0.1] * 3], "labels": [1, 2]}, 400, "the rows differ in length"),
    ({"inputs": [[None] * 64], "labels": [1]}, 400, "inputs must be a list of rows"),
    ('{"inputs": [[' + ", ".join(["1e999"] * 64) + ']], "labels": [1]}', 400, "NaN or infinite values in 1 rows"),
    ('{"inputs": [[' + ", ".join(["NaN"] * 64) + ']], "labels": [1]}', 400, "not JSON compliant"),
    ({"inputs": [], "labels": []}, 400, "inputs is empty; send at least one row."),
    ({"inputs": [[0.1] * 64]}, 400, "labels is required"),
    ({"inputs": [[0.1] * 64] * 2, "labels": [1]}, 400, "labels has 1 entries but inputs has 2 rows"),
    ({"inputs": [[0.1] * 64], "labels": ["one"]}, 400, "labels must hold integer class labels only."),
    ({"inputs": [[0.1] * 64], "labels": [1.5]}, 400, "labels must hold integer class labels only."),
    ({"inputs": [[0.1] * 64], "labels": [10]}, 400, "labels must lie in 0..9"),
    ({"inputs": "[[0.1]]", "labels": [1]}, 400, "inputs must be a list of rows"),
    ({"inputs": [[0.0] * 64] * 10_001, "labels": [0] * 10_001}, 413, "at most 10000 are allowed"),
    ({"inputs": [[0.1] * 64], "labels": [1], "extra": 1}, 400, "Unknown key 'extra'"),
]


@pytest.mark.parametrize("body, status, words", BAD_INGEST)
def test_bad_ingest_is_refused_with_one_sentence_and_nothing_stored(api, deployed, tmp_path, body, status, words):
    if isinstance(body, str):  # raw JSON text: numbers that overflow to infinity, or NaN literals
        response = api.generic("POST", "/api/deployments/prod/ingest", body, content_type="application/json")
    else:
        response = api.post("/api/deployments/prod/ingest", body, format="json")
    assert response.status_code == status, response.json()
    assert words in response.json()["error"]
    assert response.json()["error"].endswith(".")
    nothing_stored(tmp_path)


@pytest.mark.parametrize("body, words", [
    ({"inputs": [[0.1] * 65]}, "must have 64 features"),
    ({"inputs": [[True] * 64]}, "numbers only; found values of type boolean"),
    ({}, "inputs is required"),
    ({"inputs": []}, "inputs is empty"),
])
def test_bad_predict_is_refused(api, deployed, body, words):
    response = api.post("/api/deployments/prod/predict", body, format="json")
    assert response.status_code == 400
    assert words in response.json()["error"]


def test_unknown_deployments_answer_404(api, tmp_path):
    for path in ("/api/deployments/ghost/ingest", "/api/deployments/ghost/predict",
                 "/api/deployments/ghost/rollback", "/api/deployments/ghost/update"):
        response = api.post(path, {"inputs": [[0.0] * 64], "labels": [0], "version": 1}, format="json")
        assert response.status_code == 404
        assert response.json()["error"] == "You have no deployment named 'ghost'."
    assert api.get("/api/deployments/ghost").status_code == 404
    nothing_stored(tmp_path)


def test_another_users_deployment_is_not_found(other_api, deployed):
    assert other_api.get("/api/deployments/prod").status_code == 404
    assert other_api.post("/api/deployments/prod/predict", {"inputs": [[0.0] * 64]}, format="json").status_code == 404
    assert other_api.get("/api/deployments/").json() == []


def test_rollback_refuses_a_version_that_does_not_exist(api, deployed):
    response = api.post("/api/deployments/prod/rollback", {"version": 7}, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "Deployment 'prod' has no version 7; versions that served: 1."
    assert api.post("/api/deployments/prod/rollback", {"version": "x"}, format="json").status_code == 400


def test_delete_removes_the_deployment_and_its_files(api, deployed, tmp_path):
    assert api.delete("/api/deployments/prod").status_code == 204
    assert api.get("/api/deployments/prod").status_code == 404
    assert Deployment.objects.count() == 0


def test_an_online_detector_keeps_its_state_across_batches_and_restarts(api, experiment, digits):
    detector = {"name": "mmd_online", "ert": 200, "window_size": 10, "n_bootstraps": 500, "n_reference": 60}
    assert create(api, "online", detector=detector, update={"trigger": "manual"}).status_code == 201
    te = np.concatenate([digits["te"][::2], digits["te"][1::2]])

    def ingest(rows):
        return api.post("/api/deployments/online/ingest", {"inputs": digits["x"][rows].tolist(),
                                                           "labels": digits["y"][rows].tolist()},
                        format="json").json()["drift"]

    first = ingest(te[:15])
    assert first["is_drift"] is False and first["p_val"] is None and first["threshold"] is not None
    assert first["details"]["time"] == 15
    # A fresh web process has no cached detector: it loads the saved one and its saved state.
    deployment_serving.DETECTORS.drop(lambda key: True)
    second = ingest(te[15:30])
    assert second["is_drift"] is False and second["details"]["time"] == 30
    turned = api.post("/api/deployments/online/ingest", {"inputs": rotated(digits["x"][te[30:130]]).tolist(),
                                                         "labels": digits["y"][te[30:130]].tolist()},
                      format="json").json()["drift"]
    assert turned["is_drift"] is True and turned["details"]["detected_at"] < 60


@pytest.fixture
def registered(user, trained_state, digits, tmp_path):
    """A registered model version with the trained weights, and an uploaded dataset of digits."""
    from clserver.models import Dataset
    from modelfactory.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(owner=user, name="mlp", architecture="simple_mlp", params=options_params())
    torch.save(trained_state, tmp_path / "mlp-v1.pt")
    ModelVersion.objects.create(model=model, version=1, weights_file="mlp-v1.pt", source_format="state_dict",
                                sha256="0" * 64)
    np.savez(tmp_path / "digits.npz", x=digits["x"], y=digits["y"])
    Dataset.objects.create(owner=user, name="digits-ref", file="digits.npz", original_format="npz",
                           n_samples=len(digits["y"]), n_features=64, classes=list(range(10)))
    np.savez(tmp_path / "wide.npz", x=np.zeros((20, 65), np.float32), y=np.arange(20) % 2)
    Dataset.objects.create(owner=user, name="wide", file="wide.npz", original_format="npz", n_samples=20,
                           n_features=65, classes=[0, 1])
    return model


def test_create_from_a_registered_model_takes_its_data_from_the_reference_dataset(api, registered, digits):
    response = api.post("/api/deployments/", {"name": "reg", "detector": {"name": "ks"},
                                              "source": {"registered": "mlp", "version": 1,
                                                         "reference": "digits-ref"}}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["source"] == {"registered": "mlp", "version": 1, "reference": "digits-ref"}
    assert body["source_train_samples"] == len(digits["tr"])
    assert body["champion"]["metrics"]["validation_samples"] == len(digits["te"])
    assert body["champion"]["validation_accuracy"] > 0.8
    x = digits["x"][digits["te"][:20]]
    assert api.post("/api/deployments/reg/predict", {"inputs": x.tolist()}, format="json").json()["model_version"] == 1


@pytest.mark.parametrize("source, words", [
    ({"registered": "mlp", "reference": "nothing"}, "source.reference: you have no dataset named 'nothing'."),
    ({"registered": "mlp", "reference": "wide"}, "dataset 'wide' has 65 features but the model takes 64."),
    ({"registered": "mlp", "version": 9, "reference": "digits-ref"}, "Registered model 'mlp' has no version 9."),
    ({"registered": "other", "reference": "digits-ref"}, "no registered model named 'other'"),
    ({"registered": "mlp", "version": 0, "reference": "digits-ref"}, "source.version must be a positive integer"),
])
def test_create_from_a_registered_model_checks_the_model_and_the_dataset(api, registered, source, words):
    response = api.post("/api/deployments/", {"name": "reg", "source": source}, format="json")
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert Deployment.objects.count() == 0


def test_every_n_samples_trigger_queues_one_update_at_a_time_and_cancel_returns_its_data(api, experiment, digits):
    update = {"trigger": "every_n_samples", "every_n_samples": 100, "min_samples": 50}
    assert create(api, "steady", detector={"name": "ks"}, update=update).status_code == 201
    tr = digits["tr"]

    def ingest(rows):
        return api.post("/api/deployments/steady/ingest", {"inputs": digits["x"][rows].tolist(),
                                                           "labels": digits["y"][rows].tolist()}, format="json").json()

    first = ingest(tr[:60])
    assert first["update"] is None
    assert first["trigger"] == "Only 60 labelled samples are buffered; an update starts once 100 are."
    second = ingest(tr[60:120])
    assert second["update"]["status"] == "queued" and second["buffered"] == 0
    assert second["trigger"] == f"120 samples since the last update with 120 labelled samples buffered: " \
                                f"update {second['update']['id']} is queued."
    third = ingest(tr[120:240])
    assert third["update"] is None and third["buffered"] == 120
    assert third["trigger"].startswith(f"Update {second['update']['id']} is still queued")
    # The id users see is the update's number within the deployment, not the row's key.
    queued = DeploymentUpdate.objects.get(deployment__name="steady", number=second["update"]["id"])
    assert queued.n_samples == 120 and queued.samples_seen_total == len(tr) + 120
    assert queued.options["trigger"] == "every_n_samples" and queued.base_version == 1

    cancelled = api.post(f"/api/deployments/steady/updates/{queued.number}/cancel", format="json")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert api.get("/api/deployments/steady").json()["buffered_samples"] == 240
    again = api.post(f"/api/deployments/steady/updates/{queued.number}/cancel", format="json")
    assert again.status_code == 409 and "only queued or running updates" in again.json()["error"]
    manual = api.post("/api/deployments/steady/update", {"training": {"epochs": 1}}, format="json")
    assert manual.status_code == 202 and manual.json()["trigger"] == "manual"
    assert manual.json()["n_samples"] == 240 and manual.json()["options"]["training"]["epochs"] == 1
    bad = api.post("/api/deployments/steady/update", {"training": {"epochs": 0}}, format="json")
    assert bad.status_code == 400 and bad.json()["error"] == "update.training.epochs must be at least 1."
    busy = api.post("/api/deployments/steady/update", {}, format="json")
    assert busy.status_code == 409 and busy.json()["error"].endswith("is already queued.")


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(api, deployed, tmp_path):
    from clserver.deployments.api import MAX_BODY_BYTES

    response = api.generic("POST", "/api/deployments/prod/ingest", "{}", content_type="application/json",
                           CONTENT_LENGTH=str(MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["error"].startswith(f"The request body has {MAX_BODY_BYTES + 1} bytes")
    nothing_stored(tmp_path)
