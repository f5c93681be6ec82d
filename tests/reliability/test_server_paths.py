"""No answer names a server path: results, experiments, models, deployments, their events and job
errors give paths relative to the data dir, or none (issue 13, finding 8)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from clserver.experiments import services
from clserver.deployments.models import DeploymentBatch, DeploymentUpdate
from clserver.deployments.update import DeploymentUpdateJob
from clserver.experiments.job import ExperimentJob
from clserver.models import Experiment

SMALL = {"benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 3},
         "model": {"architecture": "simple_mlp", "params": {"hidden_size": 16}},
         "strategy": {"name": "naive"}, "training": {"epochs": 1, "train_mb_size": 64, "device": "cpu"}}
ROWS = [[float(i % 17) for i in range(64)]] * 30
# An absolute path of this machine as it would show in JSON: the data dir, a temp or home folder.
SERVER_PATH = re.compile(r"(^|[\s'\"(=:])/(tmp|home|root|var|srv|opt)/")


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    # Jobs run here, in-process; nothing goes to a queue.
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"), \
            mock.patch("clserver.deployments.tasks.deployment_update_enqueue"), \
            mock.patch("clserver.deployments.tasks.deployment_version_register_enqueue"), \
            mock.patch("clserver.deployments.tasks.deployment_aliases_sync_enqueue"):
        yield tmp_path


def no_server_path(response) -> dict | list:
    assert response.status_code < 500, response.content
    text = response.content.decode()
    assert str(settings.DATA_DIR) not in text, text
    found = SERVER_PATH.search(text)
    assert found is None, text[max(0, found.start() - 200):found.end() + 200]
    return json.loads(text) if text else {}


def experiment_run(user, name: str, **options) -> Experiment:
    services.experiment_setup(owner=user, raw={**SMALL, "exp_name": name, **options})
    experiment = services.experiment_execute(owner=user, name=name)
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    return experiment


def experiment_answers(api: APIClient, user, name: str) -> dict:
    results = no_server_path(api.get(f"/base-scenario/{user.username}/results/{name}"))
    no_server_path(api.get(f"/base-scenario/{user.username}/status/{name}"))
    no_server_path(api.get(f"/api/experiments/{name}"))
    no_server_path(api.get(f"/api/experiments/{name}/events"))
    no_server_path(api.get("/api/experiments/"))
    return results


def test_results_give_the_model_file_relative_to_the_data_dir(transactional_db, user, api):
    experiment = experiment_run(user, "paths")
    assert experiment.status == "completed", experiment.error
    results = experiment_answers(api, user, "paths")
    save_path = results["model"]["save_path"]
    assert not Path(save_path).is_absolute() and save_path.endswith("final_model.pt")
    # The operator finds the file under the data dir.
    assert (settings.DATA_DIR / save_path).is_file()
    assert results["model"]["download_url"] == "/api/experiments/paths/model"


def test_results_stored_with_an_absolute_path_are_answered_relative(transactional_db, user, api):
    experiment = experiment_run(user, "legacy")
    final = settings.DATA_DIR / experiment.results["model"]["save_path"]
    Experiment.objects.filter(pk=experiment.pk).update(results={**experiment.results, "model": {
        **experiment.results["model"], "save_path": str(final)}})
    results = experiment_answers(api, user, "legacy")
    assert settings.DATA_DIR / results["model"]["save_path"] == final


def test_a_job_failing_on_a_missing_file_does_not_name_the_server_path(transactional_db, user, api):
    registered = api.post("/api/models/", {"name": "paths-model", **SMALL["model"]}, format="json")
    assert registered.status_code == 201
    version = user.registered_models.get(name="paths-model").versions.get()
    (settings.DATA_DIR / version.weights_file).unlink()
    experiment = experiment_run(user, "lost", model={"registered": "paths-model", "version": 1})
    assert experiment.status == "failed" and "No such file" in experiment.error
    experiment_answers(api, user, "lost")


def test_models_and_deployments_answer_without_server_paths(transactional_db, user, api):
    assert experiment_run(user, "source").status == "completed"
    registered = no_server_path(api.post("/api/models/", {"name": "paths-model", **SMALL["model"]},
                                         format="json"))
    assert registered["name"] == "paths-model"
    for path in ("/api/models/", "/api/models/paths-model", "/api/models/paths-model/versions/",
                 "/api/models/paths-model/versions/1"):
        no_server_path(api.get(path))

    no_server_path(api.post("/api/deployments/", {
        "name": "dep", "source": {"exp_name": "source"}, "detector": {"name": "ks"},
        "update": {"trigger": "manual", "min_samples": 1, "training": {"epochs": 1}}}, format="json"))
    labels = [i % 10 for i in range(len(ROWS))]
    no_server_path(api.post("/api/deployments/dep/ingest", {"inputs": ROWS, "labels": labels}, format="json"))
    no_server_path(api.post("/api/deployments/dep/update", {}, format="json"))
    DeploymentUpdateJob(DeploymentUpdate.objects.latest("id").pk).handle()
    # A second update whose buffered data went missing fails: its error must not name the file.
    no_server_path(api.post("/api/deployments/dep/ingest", {"inputs": ROWS, "labels": labels}, format="json"))
    second = no_server_path(api.post("/api/deployments/dep/update", {}, format="json"))
    update = DeploymentUpdate.objects.latest("id")
    for batch in DeploymentBatch.objects.filter(update=update):
        (settings.DATA_DIR / batch.file).unlink()
    DeploymentUpdateJob(update.pk).handle()

    detail = no_server_path(api.get("/api/deployments/dep"))
    assert [u["status"] for u in detail["updates"]][1] == "failed"
    assert "No such file" in detail["updates"][1]["error"]
    assert len(detail["versions"]) == 2
    no_server_path(api.get("/api/deployments/"))
    events = no_server_path(api.get("/api/deployments/dep/events"))
    assert any(e.get("error") for e in events)
    no_server_path(api.post("/api/deployments/dep/predict", {"inputs": ROWS[:2]}, format="json"))
    no_server_path(api.post("/api/deployments/dep/rollback", {"version": 1}, format="json"))
    no_server_path(api.post(f"/api/deployments/dep/updates/{second['id']}/cancel", format="json"))
