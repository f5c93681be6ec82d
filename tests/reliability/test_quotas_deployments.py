"""Deployments under the quotas: version 1 and ingested batches count as stored bytes, their number is
limited, and deleting one removes its MLflow runs and their files (issue 13, finding 4)."""
from __future__ import annotations

import re
from pathlib import Path
from uuid import uuid4

import pytest
import torch
from django.conf import settings as django_settings

from claas_site.quotas import stored_bytes
from claas_site import tracking
from clserver.deployments.models import Deployment, DeploymentBatch, DeploymentVersion
from clserver.deployments.registration import version_register
from clserver.models import Experiment, JobStatus
from clserver.experiments.options import options_validate
from clserver.experiments.services import experiment_dir
from clserver.training.streams import load_digits_arrays
from modelfactory.architectures import architecture_build

OPTIONS = {"exp_name": "digits", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 16}},
           "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 1}, "strategy": {"name": "naive"}}
BODY = {"source": {"exp_name": "digits"}, "detector": {"name": "ks", "n_reference": 100},
        "update": {"trigger": "manual", "memory_size": 100}}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Own files; MLflow keeps the shared store (its artifacts of this user are measured as deltas)."""
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    return tmp_path


@pytest.fixture
def experiment(user) -> Experiment:
    """A completed experiment with a final simple_mlp (untrained: only sizes matter here)."""
    validated = options_validate(owner=user, raw=OPTIONS)
    exp = Experiment.objects.create(owner=user, name="digits", options=validated.options, status=JobStatus.COMPLETED)
    path = experiment_dir(exp) / "final_model.pt"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(architecture_build(architecture="simple_mlp", params=validated.options["model"]["params"]).state_dict(),
               path)
    exp.results = {"model": {"save_path": str(path)}}
    exp.save()
    return exp


def create(api, name: str):
    return api.post("/api/deployments/", {"name": name, **BODY}, format="json")


def deployment_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "deployments").rglob("*") if p.is_file())


def test_a_deployment_past_the_stored_bytes_quota_is_refused_and_nothing_is_stored(
        api, user, experiment, settings, tmp_path, django_capture_on_commit_callbacks):
    before = stored_bytes(owner=user)
    assert create(api, "measure").status_code == 201
    adds = stored_bytes(owner=user) - before  # weights, memory, validation set, detector
    assert adds > 0
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/deployments/measure").status_code == 204
    assert deployment_files(tmp_path) == [] and stored_bytes(owner=user) == before
    settings.QUOTA_STORED_BYTES = before + adds // 2  # the user is under it until the deployment
    refused = create(api, "prod")
    assert refused.status_code == 429
    body = refused.json()
    assert re.fullmatch(r"Storing \d+\.\d KiB more would take your files to \d+\.\d (KiB|MiB), over your quota of "
                        r"\d+\.\d (KiB|MiB); delete datasets, models, experiments or deployments you no longer "
                        r"need\.", body["error"]), body["error"]
    assert body["details"]["adding_bytes"] >= adds  # the estimate covers what it would have written
    assert not Deployment.objects.exists() and not DeploymentVersion.objects.exists()
    assert deployment_files(tmp_path) == []
    settings.QUOTA_STORED_BYTES = 0  # 0 lifts the quota
    assert create(api, "prod").status_code == 201


def test_deployments_past_the_count_limit_are_refused_until_one_is_deleted(api, experiment, settings, tmp_path):
    settings.QUOTA_DEPLOYMENTS = 2
    assert create(api, "one").status_code == 201
    assert create(api, "two").status_code == 201
    files = deployment_files(tmp_path)
    refused = create(api, "three")
    assert refused.status_code == 429
    assert refused.json() == {"error": "You have 2 deployments, the most allowed; delete one you no longer need "
                                       "first.", "details": {"deployments": 2, "quota": 2}}
    assert sorted(Deployment.objects.values_list("name", flat=True)) == ["one", "two"]
    assert deployment_files(tmp_path) == files
    assert api.delete("/api/deployments/one").status_code == 204
    assert create(api, "three").status_code == 201
    settings.QUOTA_DEPLOYMENTS = 0  # 0 lifts the limit
    assert create(api, "four").status_code == 201


def test_an_ingest_past_the_stored_bytes_quota_is_refused_and_nothing_is_buffered(api, user, experiment, settings,
                                                                                  tmp_path):
    assert create(api, "prod").status_code == 201
    x, y = load_digits_arrays()
    batch = {"inputs": x[:200].tolist(), "labels": y[:200].tolist()}  # 200 x 64 float32 + int64 labels
    settings.QUOTA_STORED_BYTES = stored_bytes(owner=user) + 20_000
    refused = api.post("/api/deployments/prod/ingest", batch, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("Storing 51.6 KiB more would take your files to ")
    assert not DeploymentBatch.objects.exists()
    assert not list(tmp_path.glob("deployments/*/*/buffer/*"))
    assert Deployment.objects.get(name="prod").drift_checks.count() == 0
    settings.QUOTA_STORED_BYTES += 60_000
    assert api.post("/api/deployments/prod/ingest", batch, format="json").status_code == 200


def test_deleting_a_deployment_removes_its_mlflow_runs_and_their_files(api, user, experiment,
                                                                       django_capture_on_commit_callbacks):
    name = f"d-{uuid4().hex[:8]}"  # unused in the shared MLflow registry, which outlives each test's database
    assert django_settings.MLFLOW_TRACKING_URI.startswith("sqlite:")  # the local store: files we can see
    mlflow_dir = Path(django_settings.MLFLOW_ARTIFACT_ROOT) / user.username
    before = stored_bytes(owner=user)
    assert create(api, name).status_code == 201
    after_create = stored_bytes(owner=user)
    # The worker's light job: version 1's model logged in its own run and registered.
    version_register(version_id=DeploymentVersion.objects.get(deployment__name=name).pk)
    c = tracking.client()
    [mv] = c.search_model_versions(f"name='alice.deploy.{name}'")
    run_dir = mlflow_dir / mv.run_id
    [logged] = c.search_logged_models(experiment_ids=[c.get_run(mv.run_id).info.experiment_id],
                                      filter_string=f"source_run_id = '{mv.run_id}'")
    model_dir = mlflow_dir / "models" / logged.model_id
    assert any(p.is_file() for p in model_dir.rglob("*"))
    logged_bytes = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    # MLflow's copy counts against the quota.
    assert stored_bytes(owner=user) >= after_create + logged_bytes

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/deployments/{name}").status_code == 204
    assert not model_dir.exists() and not run_dir.exists()
    assert c.search_registered_models(f"name='alice.deploy.{name}'") == []
    assert stored_bytes(owner=user) == before
    assert list(c.search_logged_models(experiment_ids=[logged.experiment_id],
                                       filter_string=f"source_run_id = '{mv.run_id}'")) == []
