"""The seed's three user stories over HTTP against a live web process and a real worker."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from modelfactory.architectures import architecture_build

QUALITY = {"exp_name": "", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
           "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
           "training": {"epochs": 10, "train_mb_size": 32, "eval_mb_size": 256,
                        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "device": "cpu", "seed": 0}}


@pytest.fixture(scope="module")
def carol(service):
    return service.user("carol")


def run_experiment(client, name: str, strategy: dict, **overrides) -> dict:
    body = {**QUALITY, "exp_name": name, "strategy": strategy, **overrides}
    created = client.post("/base-scenario/setup/", body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "ready"
    queued = client.post(f"/base-scenario/{client.username}/exec/{name}")
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "queued"
    final = client.wait_status(name)
    assert final["status"] == "completed", final
    results = client.get(f"/base-scenario/{client.username}/results/{name}")
    assert results.status_code == 200
    return results.json()


@pytest.mark.parametrize("strategy, low, high", [
    ({"name": "naive"}, 0.0, 0.35),
    ({"name": "replay", "params": {"mem_size": 200}}, 0.80, 1.0),
    ({"name": "cumulative"}, 0.90, 1.0),
])
def test_classic_phenomena_of_continual_learning(carol, strategy, low, high):
    results = run_experiment(carol, f"quality-{strategy['name']}", strategy)
    metrics = results["metrics"]
    assert low <= metrics["final_accuracy"] <= high, metrics["final_accuracy"]
    R = metrics["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert metrics["final_accuracy"] == pytest.approx(sum(R[-1]) / 5)
    assert len(results["experiences"]) == 5
    assert sorted(c for e in results["experiences"] for c in e["classes"]) == list(range(10))
    assert results["cost"]["samples_processed"] > 0 and results["cost"]["train_time_s"] > 0
    # The embedded worker trains on one core fewer than the machine has (the web process keeps one).
    omp = os.environ.get("OMP_NUM_THREADS")
    assert results["cost"]["torch_threads"] == (int(omp) if omp else max(1, len(os.sched_getaffinity(0)) - 1))
    assert {"forgetting", "bwt", "fwt", "stream_accuracy"} <= set(metrics)
    if strategy["name"] == "naive":
        assert metrics["forgetting"] > 0.5 and metrics["bwt"] < -0.5


def test_results_model_loads_into_the_architecture_and_downloads(service, carol, tmp_path):
    results = run_experiment(carol, "model-file", {"name": "replay", "params": {"mem_size": 100}},
                             training={**QUALITY["training"], "epochs": 2})
    model_info = results["model"]
    # save_path is relative to the data dir: the operator resolves it, users never see server paths.
    assert not os.path.isabs(model_info["save_path"])
    state = torch.load(service.data_dir / model_info["save_path"], weights_only=True)
    model = architecture_build(architecture="simple_mlp", params=results["config"]["model"]["params"])
    model.load_state_dict(state)
    download = carol.get(model_info["download_url"])
    assert download.status_code == 200
    path = tmp_path / "model.pt"
    path.write_bytes(download.content)
    assert set(torch.load(path, weights_only=True)) == set(state)
    assert model_info["mlflow_uri"] == f"models:/carol.model-file/1"
    assert results["mlflow"]["run_id"] and results["mlflow"]["url"].endswith(results["mlflow"]["run_id"])


def test_same_options_and_seed_give_the_same_accuracy_matrix(carol):
    strategy = {"name": "replay", "params": {"mem_size": 200}}
    training = {**QUALITY["training"], "epochs": 3}
    first = run_experiment(carol, "repeat-a", strategy, training=training)["metrics"]["accuracy_matrix"]
    second = run_experiment(carol, "repeat-b", strategy, training=training)["metrics"]["accuracy_matrix"]
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)


def test_exec_of_a_queued_or_running_experiment_is_a_conflict(carol):
    body = {**QUALITY, "exp_name": "busy", "strategy": {"name": "naive"},
            "training": {**QUALITY["training"], "epochs": 20}}
    assert carol.post("/base-scenario/setup/", body).status_code == 201
    assert carol.post("/base-scenario/carol/exec/busy").status_code == 202
    again = carol.post("/base-scenario/carol/exec/busy")
    assert again.status_code == 409
    assert "already" in again.json()["error"]
    assert carol.wait_status("busy")["status"] == "completed"


def test_status_reports_progress_while_running(carol):
    body = {**QUALITY, "exp_name": "progress", "strategy": {"name": "naive"},
            "training": {**QUALITY["training"], "epochs": 30}}
    carol.post("/base-scenario/setup/", body)
    carol.post("/base-scenario/carol/exec/progress")
    seen = set()
    deadline = time.time() + 600
    while time.time() < deadline:
        status = carol.get("/base-scenario/carol/status/progress").json()
        seen.add(round(status["progress"], 2))
        if status["status"] == "completed":
            break
        time.sleep(0.1)
    assert status["status"] == "completed" and status["progress"] == 1.0
    assert len([p for p in seen if 0 < p < 1]) >= 3, seen


def test_cancel_stops_a_running_experiment(carol):
    body = {**QUALITY, "exp_name": "to-cancel", "strategy": {"name": "naive"},
            "training": {**QUALITY["training"], "epochs": 500}}
    carol.post("/base-scenario/setup/", body)
    carol.post("/base-scenario/carol/exec/to-cancel")
    carol.wait_status("to-cancel", ("running",), timeout=60)
    assert carol.post("/api/experiments/to-cancel/cancel").status_code == 202
    assert carol.wait_status("to-cancel", timeout=60)["status"] == "cancelled"


def test_next_experiment_continues_from_a_finished_one(carol):
    first = run_experiment(carol, "stream-part1", {"name": "replay", "params": {"mem_size": 200}},
                           benchmark={"name": "split_digits", "n_experiences": 5, "seed": 1},
                           training={**QUALITY["training"], "epochs": 5})
    body = {"exp_name": "stream-part2", "from_experiment": "stream-part1",
            "benchmark": {"name": "rotated_digits", "n_experiences": 2, "seed": 1, "max_angle": 30},
            "strategy": {"name": "replay", "params": {"mem_size": 200}},
            "training": {**QUALITY["training"], "epochs": 5}}
    assert carol.post("/base-scenario/setup/", body).status_code == 201
    carol.post("/base-scenario/carol/exec/stream-part2")
    assert carol.wait_status("stream-part2")["status"] == "completed"
    events = carol.get("/api/experiments/stream-part2/events").json()
    continued = [e for e in events if e["type"] == "continued"]
    assert continued and continued[0]["state"] == "strategy"
    second = carol.get("/base-scenario/carol/results/stream-part2").json()
    # Starting from a trained model: the first unrotated-ish experience is already well known.
    assert second["metrics"]["initial_accuracy"][0] > 0.5 > first["metrics"]["initial_accuracy"][0]


def test_a_killed_worker_resumes_from_the_last_checkpoint(service, carol):
    body = {**QUALITY, "exp_name": "crash", "strategy": {"name": "replay", "params": {"mem_size": 200}},
            "model": {"architecture": "simple_mlp", "params": {"hidden_size": 512}},
            "training": {**QUALITY["training"], "epochs": 60}}
    assert carol.post("/base-scenario/setup/", body).status_code == 201
    assert carol.post("/base-scenario/carol/exec/crash").status_code == 202
    deadline = time.time() + 600
    while time.time() < deadline:
        events = carol.get("/api/experiments/crash/events").json()
        if any(e["type"] == "checkpoint" and e["experience"] == 1 for e in events):
            break
        time.sleep(0.05)
    service.kill_worker()
    # The last experience whose checkpoint was on disk when the worker died.
    done_before = max(e["experience"] for e in carol.get("/api/experiments/crash/events").json()
                      if e["type"] == "checkpoint")
    assert 1 <= done_before < 4
    service.start_worker()
    final = carol.wait_status("crash", timeout=600)
    assert final["status"] == "completed" and final["attempts"] == 2
    events = carol.get("/api/experiments/crash/events").json()
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["from_experience"] == done_before + 1
    after = events[events.index(resumed[0]):]
    retrained = {e["experience"] for e in after if e["type"] == "epoch_end"}
    assert retrained == set(range(done_before + 1, 5))
    results = carol.get("/base-scenario/carol/results/crash").json()
    assert len(results["metrics"]["accuracy_matrix"]) == 5
    assert [e["index"] for e in results["experiences"]] == [0, 1, 2, 3, 4]
    assert results["metrics"]["final_accuracy"] >= 0.8
