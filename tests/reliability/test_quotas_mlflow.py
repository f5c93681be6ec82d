"""MLflow's copies of a user's models count as the user's stored bytes, and deleting the model or the
experiment deletes its runs with their files, so the bytes are free again (issue 13, finding 4)."""
from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
import torch
from django.conf import settings

from claas_site.quotas import stored_bytes
from claas_site import tracking
from modelfactory.architectures import architecture_build
from modelfactory.models import ModelVersion

SETUP = {"model": {"architecture": "simple_mlp", "params": {"hidden_size": 16}},
         "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 1},
         "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Own files; MLflow keeps the shared store (its artifacts of this user are measured as deltas)."""
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    return tmp_path


@pytest.fixture
def name() -> str:
    """Unused in the shared MLflow registry, which outlives each test's database."""
    return f"m-{uuid4().hex[:8]}"


def run_dirs(user, run_id: str) -> tuple[Path, list[Path]]:
    """A run's artifact folder and the folders of the models logged in it."""
    mlflow_dir = Path(settings.MLFLOW_ARTIFACT_ROOT) / user.username  # the local store of the tests
    c = tracking.client()
    logged = c.search_logged_models(experiment_ids=[c.get_run(run_id).info.experiment_id],
                                    filter_string=f"source_run_id = '{run_id}'")
    return mlflow_dir / run_id, [mlflow_dir / "models" / m.model_id for m in logged]


def files_in(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_models_mlflow_copies_count_and_deleting_the_model_deletes_them(api, user, name,
                                                                          django_capture_on_commit_callbacks):
    before = stored_bytes(owner=user)
    created = api.post("/api/models/", {"name": name, "architecture": "simple_mlp", "params": {"hidden_size": 16}},
                       format="json")
    assert created.status_code == 201 and created.json()["mlflow_error"] is None
    size = ModelVersion.objects.get(model__name=name).size_bytes
    c = tracking.client()
    [mv] = c.search_model_versions(f"name='alice.{name}'")
    run_dir, [model_dir] = run_dirs(user, mv.run_id)
    assert files_in(run_dir) >= size and files_in(model_dir) >= size  # the state_dict and the logged model
    # Its own weights file and both MLflow copies count.
    assert stored_bytes(owner=user) - before == size + files_in(run_dir) + files_in(model_dir)

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/models/{name}").status_code == 204
    assert not run_dir.exists() and not model_dir.exists()
    assert c.search_registered_models(f"name='alice.{name}'") == []
    assert stored_bytes(owner=user) == before


def test_deleting_an_experiment_deletes_its_mlflow_runs_and_their_files(api, user, name,
                                                                        django_capture_on_commit_callbacks):
    assert api.post("/base-scenario/setup/", {**SETUP, "exp_name": name}, format="json").status_code == 201
    before = stored_bytes(owner=user)
    # What the runner logs: one run tagged with the experiment, a model per experience, the last registered.
    _, run_id = tracking.run_start(username="alice", run_name=name, params={},
                                   tags={"claas.user": "alice", "claas.experiment": name})
    model = architecture_build(architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64],
                                                                  "hidden_size": 16, "hidden_layers": 1,
                                                                  "drop_rate": 0.0})
    example = torch.zeros(2, 64).numpy()
    tracking.model_log(run_id=run_id, model=model, input_example=example, name="experience_0")
    tracking.model_log(run_id=run_id, model=model, input_example=example, name="experience_1",
                       registered_name=f"alice.{name}")
    tracking.run_end(run_id=run_id, status="FINISHED")
    run_dir, model_dirs = run_dirs(user, run_id)
    assert len(model_dirs) == 2 and all(files_in(d) > 0 for d in model_dirs)
    assert stored_bytes(owner=user) == before + sum(files_in(d) for d in model_dirs) + files_in(run_dir)

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/experiments/{name}").status_code == 204
    assert not run_dir.exists() and not any(d.exists() for d in model_dirs)
    assert tracking.client().search_registered_models(f"name='alice.{name}'") == []
    assert stored_bytes(owner=user) == before


def test_only_a_local_store_is_counted_and_only_in_the_users_own_folder(settings, tmp_path):
    settings.MLFLOW_TRACKING_URI = f"sqlite:///{tmp_path}/mlflow.db"
    settings.MLFLOW_ARTIFACT_ROOT = str(tmp_path / "artifacts")
    assert tracking.user_artifact_dir(username="alice") == (tmp_path / "artifacts" / "alice").resolve()
    assert tracking.user_artifact_dir(username="..") is None  # not a folder of its own
    settings.MLFLOW_ARTIFACT_ROOT = "s3://bucket/claas"
    assert tracking.user_artifact_dir(username="alice") is None
    settings.MLFLOW_TRACKING_URI, settings.MLFLOW_ARTIFACT_ROOT = "http://mlflow:5000", str(tmp_path)
    assert tracking.user_artifact_dir(username="alice") is None  # the server keeps them: not counted here
