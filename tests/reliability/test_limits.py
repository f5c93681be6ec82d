"""Limits: write throttling and per-user quotas answer 429 with one clear sentence; nothing half-stored."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.models import Dataset, Experiment
from modelfactory.models import RegisteredModel

ROOT = Path(__file__).resolve().parents[2]
SETUP = {"model": {"architecture": "simple_mlp", "params": {"hidden_size": 16}},
         "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 1},
         "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}}


@pytest.fixture(autouse=True)
def isolated(settings, tmp_path: Path) -> Path:
    """Own files (the user's MLflow artifacts, which count too, among them), fresh throttle counts."""
    settings.DATA_DIR = tmp_path
    settings.MLFLOW_ARTIFACT_ROOT = str(tmp_path / "mlartifacts")
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    cache.clear()
    yield tmp_path
    cache.clear()


def rates(settings, **scopes: str | None) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"writes": None, "predict": None, **scopes}}


def npz(n: int) -> SimpleUploadedFile:
    rng = np.random.RandomState(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.rand(n, 8).astype(np.float32), y=np.arange(n) % 2)
    return SimpleUploadedFile("data.npz", buf.getvalue())


def upload(api, name: str, n: int):
    return api.post("/api/datasets/", {"name": name, "file": npz(n)}, format="multipart")


# --- throttling ------------------------------------------------------------------------------
def test_writes_over_the_rate_get_429_with_the_wait_and_reads_stay_free(api, settings):
    rates(settings, writes="3/min")
    for _ in range(3):
        assert api.delete("/api/datasets/none").status_code == 404
    refused = api.post("/base-scenario/setup/", {**SETUP, "exp_name": "late"}, format="json")
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"].startswith("Too many requests; try again in ") and body["error"].endswith(" s.")
    assert int(refused["Retry-After"]) > 0
    assert not Experiment.objects.exists()
    for _ in range(10):
        assert api.get("/api/experiments/").status_code == 200


def test_each_user_has_their_own_count(api, other_api, settings):
    rates(settings, writes="2/min")
    for _ in range(2):
        api.delete("/api/datasets/none")
    assert api.delete("/api/datasets/none").status_code == 429
    assert other_api.delete("/api/datasets/none").status_code == 404


def test_predict_is_counted_apart_from_the_other_writes(api, settings):
    rates(settings, writes="2/min", predict="3/min")
    for _ in range(3):
        assert api.post("/api/deployments/none/predict", {"inputs": [[0.0]]}, format="json").status_code == 404
    assert api.post("/api/deployments/none/predict", {"inputs": [[0.0]]}, format="json").status_code == 429
    assert api.delete("/api/datasets/none").status_code == 404


def test_unauthenticated_writes_are_401_not_throttled(client, db, settings):
    rates(settings, writes="1/min")
    for _ in range(3):
        assert client.post("/base-scenario/setup/", {}, content_type="application/json").status_code == 401


@pytest.mark.parametrize("variable, value", [("CLAAS_THROTTLE_WRITES", "5/min"),
                                             ("CLAAS_THROTTLE_PREDICT", "100/s")])
def test_rates_come_from_the_environment_and_a_bad_one_stops_the_start(tmp_path, variable, value):
    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='claas_site.settings'; django.setup();"
            "from rest_framework.settings import api_settings; print(api_settings.DEFAULT_THROTTLE_RATES)")
    env = {**os.environ, "CLAAS_DATA_DIR": str(tmp_path), variable: value}
    good = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert good.returncode == 0 and f"'{value}'" in good.stdout, good.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, variable: "lots"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and f"{variable} must look like 120/min" in bad.stderr


# --- quotas ----------------------------------------------------------------------------------
def test_concurrent_experiments_over_the_quota_are_refused_until_one_ends(api, user, settings):
    settings.QUOTA_CONCURRENT_EXPERIMENTS = 2
    for name in ("one", "two", "three"):
        assert api.post("/base-scenario/setup/", {**SETUP, "exp_name": name}, format="json").status_code == 201
    assert api.post("/base-scenario/alice/exec/one").status_code == 202
    assert api.post("/base-scenario/alice/exec/two").status_code == 202
    refused = api.post("/base-scenario/alice/exec/three")
    assert refused.status_code == 429
    assert refused.json()["error"] == ("You have 2 experiments queued or running, the most allowed at once; "
                                       "wait for one to finish or cancel one.")
    assert Experiment.objects.get(name="three").status == "ready"
    assert api.post("/api/experiments/one/cancel").status_code == 202
    assert api.post("/base-scenario/alice/exec/three").status_code == 202


def test_the_quota_counts_each_user_apart(api, other_api, settings):
    settings.QUOTA_CONCURRENT_EXPERIMENTS = 1
    for client, user in ((api, "alice"), (other_api, "bob")):
        assert client.post("/base-scenario/setup/", {**SETUP, "exp_name": "x"}, format="json").status_code == 201
        assert client.post(f"/base-scenario/{user}/exec/x").status_code == 202


def test_a_dataset_over_the_stored_bytes_quota_is_refused_and_nothing_is_stored(api, user, settings, isolated):
    settings.QUOTA_STORED_BYTES = 20_000
    assert upload(api, "small", 200).status_code == 201  # about 8 KB stored
    refused = upload(api, "large", 400)  # about 16 KB more
    assert refused.status_code == 429
    body = refused.json()
    # 400 rows of 8 float32 features and int64 labels: 16,000 bytes.
    assert re.fullmatch(r"Storing 15\.6 KiB more would take your files to \d+\.\d KiB, over your quota of "
                        r"19\.5 KiB; delete datasets, models, experiments or deployments you no longer need\.",
                        body["error"]), body["error"]
    assert body["details"]["quota_bytes"] == 20_000
    assert list(Dataset.objects.values_list("name", flat=True)) == ["small"]
    assert len(list((isolated / "files" / "datasets").rglob("*.npz"))) == 1
    # Deleting frees the space again.
    assert api.delete("/api/datasets/small").status_code == 204
    assert upload(api, "large", 400).status_code == 201


def test_model_weights_count_against_the_same_quota(api, user, settings, isolated):
    settings.QUOTA_STORED_BYTES = 30_000
    assert upload(api, "data", 600).status_code == 201  # about 24 KB
    refused = api.post("/api/models/", {"name": "m", "architecture": "simple_mlp",
                                        "params": {"hidden_size": 64}}, format="json")
    assert refused.status_code == 429 and "over your quota" in refused.json()["error"]
    assert not RegisteredModel.objects.exists()
    assert not (isolated / "files" / "models").exists() or not any((isolated / "files" / "models").rglob("*.pt"))


def test_a_user_over_the_quota_cannot_start_training(api, user, settings):
    assert upload(api, "data", 300).status_code == 201
    assert api.post("/base-scenario/setup/", {**SETUP, "exp_name": "e"}, format="json").status_code == 201
    settings.QUOTA_STORED_BYTES = 1000
    refused = api.post("/base-scenario/alice/exec/e")
    assert refused.status_code == 429 and refused.json()["error"].startswith("Your files take ")
    settings.QUOTA_STORED_BYTES = 0  # 0 lifts the quota
    assert api.post("/base-scenario/alice/exec/e").status_code == 202


@pytest.mark.parametrize("kind, setting, model, create", [
    ("datasets", "QUOTA_DATASETS", Dataset, lambda api, name: upload(api, name, 10)),
    ("registered models", "QUOTA_MODELS", RegisteredModel,
     lambda api, name: api.post("/api/models/", {"name": name, "architecture": "simple_mlp",
                                                 "params": {"hidden_size": 4}}, format="json")),
    ("experiments", "QUOTA_EXPERIMENTS", Experiment,
     lambda api, name: api.post("/base-scenario/setup/", {**SETUP, "exp_name": name}, format="json")),
])
def test_each_user_has_at_most_the_allowed_number_of_each_resource(api, user, other_api, settings, isolated, kind,
                                                                    setting, model, create):
    setattr(settings, setting, 2)
    assert create(api, "a").status_code == 201 and create(api, "b").status_code == 201
    files = sorted(isolated.rglob("*.npz")) + sorted(isolated.rglob("*.pt"))
    refused = create(api, "c")
    assert refused.status_code == 429
    assert refused.json()["error"] == f"You have 2 {kind}, the most allowed; delete one you no longer need first."
    assert sorted(isolated.rglob("*.npz")) + sorted(isolated.rglob("*.pt")) == files  # nothing half-stored
    assert create(other_api, "c").status_code == 201  # each user counts apart
    assert model.objects.filter(owner=user).count() == 2
    setattr(settings, setting, 0)  # 0 lifts the limit
    assert create(api, "c").status_code == 201


def test_replacing_an_experiment_at_the_limit_is_allowed(api, settings):
    settings.QUOTA_EXPERIMENTS = 1
    assert api.post("/base-scenario/setup/", {**SETUP, "exp_name": "x"}, format="json").status_code == 201
    again = api.post("/base-scenario/setup/", {**SETUP, "exp_name": "x", "overwrite": True}, format="json")
    assert again.status_code == 201, again.json()
    assert Experiment.objects.count() == 1


# --- model size --------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [
    ("/api/models/", {"name": "wide", "architecture": "simple_mlp",
                      "params": {"hidden_size": 2048, "hidden_layers": 2}}),
    ("/base-scenario/setup/", {**SETUP, "exp_name": "wide",
                               "model": {"architecture": "simple_mlp", "params": {"hidden_size": 2048,
                                                                                  "hidden_layers": 2}}}),
])
def test_a_model_over_the_parameter_limit_is_refused_before_it_is_built(api, user, settings, path, body):
    settings.MAX_MODEL_PARAMETERS = 1_000_000
    refused = api.post(path, body, format="json")
    assert refused.status_code == 400
    # 64*2048+2048 + 2048*2048+2048 + 2048*10+10 parameters
    assert refused.json()["error"] == ("model.params describe a model of 4,349,962 parameters; at most 1,000,000 "
                                       "are allowed.")
    assert not RegisteredModel.objects.exists() and not Experiment.objects.exists()
