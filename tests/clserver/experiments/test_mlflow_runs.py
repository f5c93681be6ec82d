"""An experiment's MLflow run mirrors its job, read back with MlflowClient alone: FINISHED when it completes,
FAILED with the error when it fails (also when the reaper gives up on it), KILLED when it is cancelled."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.utils import timezone

from clserver.experiments import services
from clserver.experiments.job import ExperimentJob
from clserver.jobs.kinds import job_kind_get
from clserver.jobs.runner import job_requeue_stale
from clserver.models import Experiment

SMALL = {"benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 3},
         "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
         "strategy": {"name": "replay", "params": {"mem_size": 50}},
         "training": {"epochs": 2, "train_mb_size": 32, "device": "cpu"}}


def mlflow_client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI)


def setup(user, name: str, **overrides) -> Experiment:
    experiment = services.experiment_setup(owner=user, raw={"exp_name": name, **SMALL, **overrides})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        services.experiment_execute(owner=user, name=name)
    return experiment


def run(experiment: Experiment) -> Experiment:
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    return experiment


def test_a_completed_experiment_ends_its_run_finished_with_its_matrix_data_strategy_and_cost(transactional_db, user):
    import json

    experiment = run(setup(user, "finished"))
    assert experiment.status == "completed", experiment.error
    client = mlflow_client()
    run_ = client.get_run(experiment.mlflow_run_id)
    assert run_.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"accuracy_matrix.json", "accuracy_matrix.png"} <= artifacts
    table = json.loads(open(client.download_artifacts(run_.info.run_id, "accuracy_matrix.json")).read())
    matrix = experiment.results["metrics"]["accuracy_matrix"]
    assert table["columns"] == ["after_experience", "experience_0", "experience_1"]
    assert [row[0] for row in table["data"]] == [0, 1]
    assert [v for row in table["data"] for v in row[1:]] == pytest.approx([v for row in matrix for v in row])
    inputs = {i.tags[0].value if i.tags else "": i.dataset for i in run_.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    assert inputs["train"].name == "split_digits" and inputs["train"].digest
    assert json.loads(json.loads(inputs["train"].source)["tags"]["claas.benchmark"])["name"] == "split_digits"
    assert run_.data.tags["claas.strategy"] == "replay"
    assert run_.data.metrics["cost_train_time_s"] == pytest.approx(experiment.results["cost"]["train_time_s"])
    assert run_.data.metrics["cost_samples_processed"] == experiment.results["cost"]["samples_processed"]


def test_a_failed_experiment_ends_its_run_failed_with_the_error(transactional_db, user):
    # MAS at Avalanche's own default strength blows up under SGD at lr 0.1 in the second experience.
    experiment = run(setup(user, "diverges", strategy={"name": "mas", "params": {"lambda_reg": 1.0}}))
    assert experiment.status == "failed"
    run_ = mlflow_client().get_run(experiment.mlflow_run_id)
    assert run_.info.status == "FAILED"
    assert run_.data.tags["claas.error"] == experiment.error and "diverged" in experiment.error


def test_an_experiment_cancelled_in_its_first_experience_ends_its_run_killed(transactional_db, user):
    slow = {**SMALL["training"], "epochs": 200}
    experiment = setup(user, "cancelled", training=slow)
    worker = threading.Thread(target=run, args=(experiment,))
    worker.start()
    deadline = time.time() + 120
    while time.time() < deadline and not experiment.events.filter(type="epoch_end").exists():
        time.sleep(0.2)
    services.experiment_cancel(owner=user, name="cancelled")
    worker.join(timeout=120)
    experiment.refresh_from_db()
    assert experiment.status == "cancelled"
    assert experiment.mlflow_run_id  # the run exists from the start of training
    assert mlflow_client().get_run(experiment.mlflow_run_id).info.status == "KILLED"


def test_an_experiment_the_reaper_gives_up_on_ends_its_run_failed(transactional_db, user):
    from claas_site import tracking

    experiment = setup(user, "abandoned")
    _, run_id = tracking.run_start(username=user.username, run_name="abandoned", params={}, tags={})
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_S + 60)
    Experiment.objects.filter(pk=experiment.pk).update(status="running", heartbeat_at=stale, run_token="t",
                                                       attempts=settings.JOB_MAX_ATTEMPTS, mlflow_run_id=run_id)
    kind = job_kind_get(name="Experiment")
    job_requeue_stale(model=Experiment, enqueue=lambda pk: None, on_failed=kind.on_failed)
    experiment.refresh_from_db()
    assert experiment.status == "failed"
    run_ = mlflow_client().get_run(run_id)
    assert run_.info.status == "FAILED"
    assert run_.data.tags["claas.error"].startswith("The worker stopped responding")
