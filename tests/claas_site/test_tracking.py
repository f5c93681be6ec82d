"""claas_site/tracking.py against a real local MLflow store (SQLite and a folder of artifacts):
runs end with the status they are given, an alias names a registered version, and deleting a
resource's runs removes their files and their registered versions at once."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from claas_site import tracking


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One store for the module: MLflow builds its tables once, each test uses its own user.
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def store(settings, store_dir: Path) -> Iterator[Path]:
    settings.MLFLOW_TRACKING_URI = f"sqlite:///{store_dir / 'mlflow.db'}"
    settings.MLFLOW_ARTIFACT_ROOT = str(store_dir / "artifacts")
    tracking._mlflow.cache_clear()
    yield store_dir / "artifacts"
    tracking._mlflow.cache_clear()


def test_a_run_holds_its_flattened_params_and_tags_and_ends_with_the_given_status(store):
    exp_id, run_id = tracking.run_start(
        username="ada", run_name="split-mnist", tags={"claas.experiment": "e1"},
        params={"strategy": {"name": "ewc", "params": {"ewc_lambda": 0.4}}, "training": {"epochs": 2}})
    run = tracking.client().get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.experiment_id == exp_id
    assert tracking.client().get_experiment(exp_id).name == "claas/ada"
    assert run.data.params == {"strategy.name": "ewc", "strategy.params.ewc_lambda": "0.4", "training.epochs": "2"}
    assert run.data.tags["claas.experiment"] == "e1"

    tracking.run_metrics(run_id=run_id, metrics={"accuracy": 0.5}, step=0)
    tracking.run_metric_history(run_id=run_id, key="loss", values=[(0, 2.0), (1, 1.5), (2, 1.0)])
    tracking.run_end(run_id=run_id, status="FINISHED")

    run = tracking.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"accuracy": 0.5, "loss": 1.0}
    history = tracking.client().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.0)]


def test_a_failed_run_is_marked_failed(store):
    _, run_id = tracking.run_start(username="bob", run_name="broken", params={}, tags={})
    tracking.run_end(run_id=run_id, status="FAILED")
    assert tracking.client().get_run(run_id).info.status == "FAILED"


def test_a_users_runs_share_one_mlflow_experiment_with_artifacts_in_their_own_folder(store):
    first, _ = tracking.run_start(username="cleo", run_name="a", params={}, tags={})
    second, _ = tracking.run_start(username="cleo", run_name="b", params={}, tags={})
    assert first == second
    assert tracking.user_artifact_dir(username="cleo") == (store / "cleo").resolve()
    assert tracking.user_artifact_dir(username="..") is None  # never a folder above the root


def test_long_params_are_cut_to_what_mlflow_stores():
    assert tracking.flatten({"a": {"b": "x" * 900}, "c": [1, 2]}) == {"a.b": "x" * tracking.MAX_PARAM_LENGTH,
                                                                     "c": "[1, 2]"}


def test_an_alias_names_one_registered_version(store):
    assert tracking.registry_add(name="dan.model", source="file:///nowhere/1") == "1"
    assert tracking.registry_add(name="dan.model", source="file:///nowhere/2") == "2"
    tracking.registry_alias(name="dan.model", alias="champion", version=1)
    assert str(tracking.client().get_model_version_by_alias("dan.model", "champion").version) == "1"

    tracking.registry_alias(name="dan.model", alias="champion", version="2")  # the alias moves
    assert str(tracking.client().get_model_version_by_alias("dan.model", "champion").version) == "2"
    assert sorted(str(v["version"]) for v in tracking.registry_versions(name="dan.model")) == ["1", "2"]
    tracking.registry_alias(name="dan.model", alias="challenger", version="1")
    listed = {str(v["version"]): v["aliases"] for v in tracking.registry_versions(name="dan.model")}
    assert listed == {"1": ["challenger"], "2": ["champion"]}

    tracking.registry_versions_delete(name="dan.model", versions=["1", "2"])
    assert tracking.registry_versions(name="dan.model") == []


def test_deleting_a_resources_runs_removes_their_files_and_registered_versions_and_nothing_else(store, tmp_path):
    c = tracking.client()
    _, gone = tracking.run_start(username="eve", run_name="old", params={}, tags={"claas.experiment": "old"})
    _, kept = tracking.run_start(username="eve", run_name="new", params={}, tags={"claas.experiment": "new"})
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"\0" * 1024)
    for run_id in (gone, kept):
        c.log_artifact(run_id, str(weights), artifact_path="state_dict")
    tracking.registry_add(name="eve.old", source=f"runs:/{gone}/state_dict", run_id=gone)
    gone_dir = Path(c.get_run(gone).info.artifact_uri.removeprefix("file://")).parent
    kept_dir = Path(c.get_run(kept).info.artifact_uri.removeprefix("file://")).parent
    assert (gone_dir / "artifacts" / "state_dict" / "weights.pt").is_file()
    assert gone_dir.is_relative_to(store / "eve")

    assert tracking.runs_delete(username="eve", tag="claas.experiment", value="old") == [gone]

    assert not gone_dir.exists()
    assert c.get_run(gone).info.lifecycle_stage == "deleted"
    assert tracking.registry_versions(name="eve.old") == []
    assert (kept_dir / "artifacts" / "state_dict" / "weights.pt").is_file()
    assert c.get_run(kept).info.lifecycle_stage == "active"


def test_deleting_the_runs_of_a_user_mlflow_never_saw_deletes_nothing(store):
    assert tracking.runs_delete(username="nobody-here", tag="claas.experiment", value="x") == []
