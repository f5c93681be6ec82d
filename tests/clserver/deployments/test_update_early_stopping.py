"""A deployment update with `training.early_stopping` stops once its validation accuracy stops improving and
records how many epochs it trained and why it stopped; without it (the default) it trains every epoch."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from clserver.deployments.models import DeploymentUpdate
from clserver.deployments.update import DeploymentUpdateJob
from clserver.experiments.options import options_validate
from clserver.experiments.services import experiment_dir
from clserver.models import Experiment, JobStatus
from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from modelfactory.architectures import architecture_build

OPTIONS = {"exp_name": "digits", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
           "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
           "strategy": {"name": "replay", "params": {"mem_size": 100}}}
EPOCHS = 20


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


@pytest.fixture
def experiment(user, digits) -> Experiment:
    """A completed experiment whose final model is trained here with plain torch."""
    validated = options_validate(owner=user, raw=OPTIONS)
    torch.manual_seed(0)
    model = architecture_build(architecture="simple_mlp", params=validated.options["model"]["params"])
    x, y = torch.from_numpy(digits["x"][digits["tr"]]), torch.from_numpy(digits["y"][digits["tr"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    exp = Experiment.objects.create(owner=user, name="digits", options=validated.options, status=JobStatus.COMPLETED)
    path = experiment_dir(exp) / "final_model.pt"
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    exp.results = {"model": {"save_path": str(path)}}
    exp.save()
    return exp


def update_run(api, body: dict) -> dict:
    """A manual update of what is buffered, run here by the job runner; the update as the API shows it."""
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        response = api.post("/api/deployments/prod/update", body, format="json")
    assert response.status_code == 202, response.json()
    update = DeploymentUpdate.objects.get(deployment__name="prod", number=response.json()["id"])
    DeploymentUpdateJob(update.pk).handle()
    [shown] = [u for u in api.get("/api/deployments/prod").json()["updates"] if u["id"] == update.number]
    return shown


def test_an_update_stops_when_it_has_learned_and_a_null_option_trains_every_epoch(transactional_db, api, experiment,
                                                                                   digits):
    created = api.post("/api/deployments/", {"name": "prod", "source": {"exp_name": "digits"},
                                             "detector": {"name": "ks"},
                                             "update": {"trigger": "manual", "min_samples": 50,
                                                        "training": {"epochs": EPOCHS,
                                                                     "early_stopping": {"patience": 2}}}},
                           format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["update"]["training"]["early_stopping"]["patience"] == 2
    te = digits["te"]
    rows = np.concatenate([te[::2], te[1::2]])[:240]

    def ingest() -> None:
        x = rotate_images(digits["x"][rows].reshape(-1, 8, 8), 90).reshape(len(rows), 64)
        response = api.post("/api/deployments/prod/ingest", {"inputs": x.tolist(),
                                                             "labels": digits["y"][rows].tolist()}, format="json")
        assert response.status_code == 200, response.json()

    ingest()
    stopped = update_run(api, {})
    assert stopped["job_status"] == "completed", stopped["error"]
    assert 1 <= stopped["cost"]["epochs_trained"] < EPOCHS
    assert stopped["cost"]["stopped"] == "no improvement in 2 epochs"
    if stopped["decision"] == "promoted":
        ingest()  # a promoted update has learned its data; a rejected one put it back in the buffer
    full = update_run(api, {"training": {"early_stopping": None}})
    assert full["job_status"] == "completed", full["error"]
    assert full["options"]["training"]["early_stopping"] is None
    assert full["cost"]["epochs_trained"] == EPOCHS and full["cost"]["stopped"] == "max epochs"
    assert stopped["cost"]["samples_processed"] < full["cost"]["samples_processed"]


def test_updates_train_every_epoch_unless_asked_and_a_bad_option_is_refused_with_one_sentence(api, experiment):
    plain = api.post("/api/deployments/", {"name": "plain", "source": {"exp_name": "digits"}}, format="json")
    assert plain.status_code == 201 and plain.json()["update"]["training"]["early_stopping"] is None
    response = api.post("/api/deployments/", {"name": "prod", "source": {"exp_name": "digits"},
                                              "update": {"training": {"epochs": 3,
                                                                      "early_stopping": {"min_epochs": 5}}}},
                        format="json")
    assert response.status_code == 400
    assert response.json()["error"] == ("update.training.early_stopping.min_epochs is 5 but update.training.epochs "
                                        "is 3; it may be at most the epochs.")
