"""On a real `mlflow server`: the deployment's aliases (`challenger` marks a rejected update, `champion`
follows a promotion and each rollback) and the experiment runs' end states (FINISHED, FAILED, KILLED)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from tests.scaled.conftest import Scaled

SOURCE = {"exp_name": "alias-source", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
          "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
          "strategy": {"name": "replay", "params": {"mem_size": 300}},
          "training": {"epochs": 3, "train_mb_size": 32, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                       "device": "cpu", "seed": 0}}
UPDATE = {"trigger": "manual", "min_samples": 100, "tolerance": 0.0, "memory_size": 300,
          "strategy": {"name": "replay"},
          "training": {"epochs": 6, "train_mb_size": 32, "device": "cpu", "seed": 0,
                       "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
# A learning rate no model survives: the candidate falls below the champion (or diverges) and is rejected.
WILD = {"training": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 1e4, "momentum": 0.9}}}
REGISTERED = "gale.deploy.aliases"
FINISHED = ("promoted", "rejected", "failed", "cancelled")


def wait_update(client, update_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        updates = {u["id"]: u for u in client.get("/api/deployments/aliases").json()["updates"]}
        if updates[update_id]["status"] in FINISHED:
            return updates[update_id]
        time.sleep(0.5)
    raise AssertionError(f"update {update_id} did not finish in {timeout} s: {updates[update_id]}")


def alias_on_server(registry, alias: str, expected: str, timeout: float = 120):
    """The server's version for `alias` once it is `expected` (aliases move in a worker), else the last seen."""
    from mlflow.exceptions import MlflowException

    deadline, found = time.time() + timeout, None
    while time.time() < deadline:
        try:
            found = registry.get_model_version_by_alias(REGISTERED, alias)
        except MlflowException:
            found = None
        if found is not None and found.version == expected:
            break
        time.sleep(0.5)
    print(f"{alias} -> {found and found.version} (tags {found and found.tags})")
    return found


def versions(client) -> dict[int, tuple[str, list[str]]]:
    """Each deployment version's MLflow version and the aliases CLaaS says it holds."""
    detail = client.get("/api/deployments/aliases").json()
    return {v["version"]: (v["mlflow_version"], v["aliases"]) for v in detail["versions"]}


@pytest.fixture(scope="module")
def gale(scaled: Scaled):
    client = scaled.service.user("gale")
    assert client.post("/base-scenario/setup/", SOURCE).status_code == 201
    assert client.post(f"/base-scenario/gale/exec/{SOURCE['exp_name']}").status_code == 202
    assert client.wait_status(SOURCE["exp_name"], timeout=300)["status"] == "completed"
    return client


def test_champion_and_challenger_follow_updates_and_rollbacks_on_a_real_mlflow_server(scaled, gale):
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=scaled.mlflow_url, registry_uri=scaled.mlflow_url)
    x, y = load_digits_arrays()
    train, _ = stratified_split(y, 0.2, 1)
    turned = np.random.RandomState(0).permutation(train)[:300]
    x_turned = rotate_images(x[turned].reshape(-1, 8, 8), 90).reshape(-1, 64)

    # Version 1's registration and the aliases after a rollback are light jobs: a default-queue worker runs them.
    light = scaled.service.start_worker(args=("run_worker", "--queue", "default"))
    try:
        created = gale.post("/api/deployments/", {"name": "aliases", "source": {"exp_name": SOURCE["exp_name"]},
                                                  "detector": {"name": "ks"}, "update": UPDATE})
        assert created.status_code == 201, created.text
        v1 = alias_on_server(registry, "champion", "1")
        assert v1 is not None, scaled.worker_logs()[-3000:]
        assert versions(gale)[1] == (v1.version, ["champion"])
        ingested = gale.post("/api/deployments/aliases/ingest", {"inputs": x_turned.tolist(), "labels": y[turned].tolist()})
        assert ingested.status_code == 200 and ingested.json()["buffered"] == 300, ingested.text

        # A rejected update: its version becomes the challenger, the champion stays.
        queued = gale.post("/api/deployments/aliases/update", WILD)
        assert queued.status_code == 202, queued.text
        rejected = wait_update(gale, queued.json()["id"])
        assert rejected["status"] == "rejected", rejected
        mlflow_v2 = versions(gale)[2][0]
        challenger = alias_on_server(registry, "challenger", mlflow_v2)
        assert challenger is not None and challenger.version == mlflow_v2
        assert challenger.tags["claas.decision"] == "rejected"
        assert alias_on_server(registry, "champion", v1.version).version == v1.version

        # A promoted update on the same (rotated) data: the champion moves to it, the challenger stays.
        queued = gale.post("/api/deployments/aliases/update", {})
        assert queued.status_code == 202, queued.text
        promoted = wait_update(gale, queued.json()["id"])
        assert promoted["status"] == "promoted", promoted
        assert promoted["candidate_version"] == 3
        mlflow_v3 = versions(gale)[3][0]
        champion = alias_on_server(registry, "champion", mlflow_v3)
        assert champion is not None and champion.version == mlflow_v3
        assert champion.tags["claas.decision"] == "promoted"
        assert alias_on_server(registry, "challenger", mlflow_v2).version == mlflow_v2
        assert versions(gale) == {1: (v1.version, []), 2: (mlflow_v2, ["challenger"]),
                                  3: (mlflow_v3, ["champion"])}

        # Rolling back through the REST API moves `champion` back to version 1, and forward again to 3.
        back = gale.post("/api/deployments/aliases/rollback", {"version": 1})
        assert back.status_code == 200 and back.json()["champion_version"] == 1, back.text
        assert alias_on_server(registry, "champion", v1.version).version == v1.version
        assert registry.get_registered_model(REGISTERED).aliases == {"champion": v1.version,
                                                                     "challenger": mlflow_v2}
        refused = gale.post("/api/deployments/aliases/rollback", {"version": 2})
        assert refused.status_code == 409 and "never served" in refused.json()["error"]
        forward = gale.post("/api/deployments/aliases/rollback", {"version": 3})
        assert forward.status_code == 200 and forward.json()["champion_version"] == 3, forward.text
        assert alias_on_server(registry, "champion", mlflow_v3).version == mlflow_v3
        assert registry.get_registered_model(REGISTERED).aliases == {"champion": mlflow_v3,
                                                                     "challenger": mlflow_v2}
    finally:
        scaled.service.kill_worker(light)


def run_on_server(tracking, run_name: str, status: str, timeout: float = 60):
    """gale's MLflow run named `run_name`, once it has `status` (runs end in a worker), else as last seen."""
    experiment = tracking.get_experiment_by_name("claas/gale")
    deadline, found = time.time() + timeout, None
    while time.time() < deadline:
        runs = tracking.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
        found = runs[0] if runs else None
        if found is not None and found.info.status == status:
            break
        time.sleep(0.5)
    print(f"run {run_name}: {found and found.info.status} (claas.error {found and found.data.tags.get('claas.error')!r})")
    return found


def test_experiment_runs_end_finished_failed_or_killed_on_a_real_mlflow_server(scaled, gale):
    from mlflow import MlflowClient

    tracking = MlflowClient(tracking_uri=scaled.mlflow_url)
    assert run_on_server(tracking, SOURCE["exp_name"], "FINISHED").info.status == "FINISHED"

    # MAS at Avalanche's own default strength blows up under SGD at lr 0.1 in its second experience.
    diverges = {"exp_name": "diverges", "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 3},
                "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
                "strategy": {"name": "mas", "params": {"lambda_reg": 1.0}},
                "training": {"epochs": 2, "train_mb_size": 32, "device": "cpu"}}
    assert gale.post("/base-scenario/setup/", diverges).status_code == 201
    assert gale.post("/base-scenario/gale/exec/diverges").status_code == 202
    failed = gale.wait_status("diverges", timeout=300)
    assert failed["status"] == "failed"
    run = run_on_server(tracking, "diverges", "FAILED")
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["claas.error"]

    slow = {**SOURCE, "exp_name": "cancelled", "training": {**SOURCE["training"], "epochs": 500}}
    assert gale.post("/base-scenario/setup/", slow).status_code == 201
    assert gale.post("/base-scenario/gale/exec/cancelled").status_code == 202
    deadline = time.time() + 120
    while time.time() < deadline and not gale.get("/base-scenario/gale/status/cancelled").json().get("epoch"):
        time.sleep(0.3)  # training has begun (its first epoch is counted)
    assert gale.post("/api/experiments/cancelled/cancel").status_code in (200, 202)
    assert gale.wait_status("cancelled", timeout=120)["status"] == "cancelled"
    assert run_on_server(tracking, "cancelled", "KILLED").info.status == "KILLED"
