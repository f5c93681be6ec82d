"""Bring your own model, take it anywhere: a model class defined only here, exported with torch.export and
uploaded over HTTP, trains by replay, is deployed, flags drift on rotated digits, is updated and promoted,
and its new version loads with plain torch and with mlflow.pyfunc in a Python without CLaaS."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clserver.training.streams import load_digits_arrays, rotate_images
from tests.modelfactory.programs import ResidualNet, exported

TRAINING = {"epochs": 4, "train_mb_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "device": "cpu", "seed": 0}
EXPERIMENT = {"benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
              "strategy": {"name": "replay", "params": {"mem_size": 300}}, "training": TRAINING}
FINISHED = ("promoted", "rejected", "failed", "cancelled")
# Loads a downloaded program and an MLflow version in a fresh interpreter: -I keeps the project off sys.path.
OUTSIDE = """
import json, sys
import numpy as np, torch
try:
    import modelfactory
    sys.exit("CLaaS is importable")
except ImportError:
    pass
path, tracking, rows, *uris = sys.argv[1:]
x = torch.tensor(np.load(rows), dtype=torch.float32)
out = {"torch": torch.export.load(path).module()(x).argmax(1).tolist()}
import mlflow
mlflow.set_tracking_uri(tracking)
mlflow.set_registry_uri(tracking)
for uri in uris:
    scores = mlflow.pyfunc.load_model(uri).predict(x.numpy())
    out[uri] = {"pyfunc": np.asarray(scores).argmax(1).tolist(),
                "pytorch": mlflow.pytorch.load_model(uri)(x).argmax(1).tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def pat(service):
    return service.user("pat")


def run(client, name: str, model: dict) -> dict:
    response = client.post("/base-scenario/setup/", {**EXPERIMENT, "exp_name": name, "model": model})
    assert response.status_code == 201, response.text
    assert client.post(f"/base-scenario/{client.username}/exec/{name}").status_code == 202
    assert client.wait_status(name, timeout=600)["status"] == "completed"
    return client.get(f"/base-scenario/{client.username}/results/{name}").json()


@pytest.fixture(scope="module")
def lifecycle(service, pat, tmp_path_factory) -> dict[str, Any]:
    torch.manual_seed(0)
    raw = exported(ResidualNet(), torch.randn(4, 64))
    created = pat.post("/api/models/", files={"file": ("residual.pt2", raw)}, data={"name": "residual"})
    assert created.status_code == 201, created.text
    state: dict[str, Any] = {"registered": created.json()}
    state["program"] = run(pat, "own-model", {"registered": "residual"})
    state["zoo"] = run(pat, "zoo-model", {"architecture": "simple_mlp", "params": {"hidden_size": 128}})

    deployed = pat.post("/api/deployments/", {
        "name": "own", "source": {"exp_name": "own-model"},
        "detector": {"name": "mmd", "p_val": 0.05, "n_permutations": 100, "preprocess": {"name": "penultimate"}},
        "update": {"trigger": "drift", "min_samples": 200, "tolerance": 0.0, "memory_size": 500,
                   "strategy": {"name": "replay"}, "training": {**TRAINING, "epochs": 10}}})
    assert deployed.status_code == 201, deployed.text
    x, y = load_digits_arrays()
    order = np.random.RandomState(0).permutation(len(x))
    turned = rotate_images(x[order[:600]].reshape(-1, 8, 8), 90).reshape(600, 64)
    ingested = pat.post("/api/deployments/own/ingest", {"inputs": turned.tolist(), "labels": y[order[:600]].tolist()})
    assert ingested.status_code == 200, ingested.text
    state["ingest"] = ingested.json()
    assert state["ingest"]["update"] is not None, state["ingest"]
    update_id = state["ingest"]["update"]["id"]
    import time

    deadline = time.time() + 600
    while time.time() < deadline:
        updates = {u["id"]: u for u in pat.get("/api/deployments/own").json()["updates"]}
        if updates[update_id]["status"] in FINISHED:
            break
        time.sleep(0.5)
    state["update"] = updates[update_id]
    state["detail"] = pat.get("/api/deployments/own").json()

    rows = rotate_images(x[order[600:664]].reshape(-1, 8, 8), 90).reshape(64, 64).astype(np.float32)
    folder = tmp_path_factory.mktemp("outside")
    np.save(folder / "rows.npy", rows)
    predicted = pat.post("/api/deployments/own/predict", {"inputs": rows.tolist()}).json()
    state["predicted"] = predicted
    download = pat.get("/api/deployments/own/versions/2/download?format=pt2")
    assert download.status_code == 200, download.text[:300]
    (folder / "own-v2.pt2").write_bytes(download.content)
    state["folder"], state["rows"] = folder, rows
    return state


def in_the_test(client, path: str, rows: np.ndarray) -> list[int]:
    """Classes from a state_dict download loaded into the test's own class (what CLaaS predicts with)."""
    import io

    response = client.get(path)
    assert response.status_code == 200, response.text[:300]
    model = ResidualNet()
    model.load_state_dict(torch.load(io.BytesIO(response.content), weights_only=True))
    return model.eval()(torch.tensor(rows)).argmax(1).tolist()


def test_an_uploaded_program_trains_by_replay_as_well_as_the_zoo_model(lifecycle):
    program = lifecycle["program"]["metrics"]["final_accuracy"]
    zoo = lifecycle["zoo"]["metrics"]["final_accuracy"]
    print("final accuracy: program", program, "simple_mlp", zoo)
    assert program >= 0.8
    assert abs(program - zoo) <= 0.05


def test_the_deployed_program_flags_drift_through_its_penultimate_layer_and_is_updated(lifecycle):
    assert lifecycle["ingest"]["drift"]["is_drift"] is True
    assert lifecycle["update"]["status"] == "promoted", lifecycle["update"]
    assert lifecycle["detail"]["champion_version"] == 2
    assert lifecycle["predicted"]["model_version"] == 2


def test_every_registered_version_loads_with_plain_torch_and_mlflow_outside_claas_and_predicts_the_same(
        service, pat, lifecycle):
    folder: Path = lifecycle["folder"]
    versions = {v["version"]: v for v in lifecycle["detail"]["versions"]}
    assert versions[2]["mlflow_version"]
    deployed = f"models:/pat.deploy.own/{versions[2]['mlflow_version']}"
    trained = lifecycle["program"]["model"]["mlflow_uri"]
    registered = f"models:/pat.residual/{lifecycle['registered']['versions'][0]['mlflow_version']}"
    tracking = f"sqlite:///{service.data_dir / 'mlflow.db'}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-I", "-c", OUTSIDE, str(folder / "own-v2.pt2"), tracking,
                           str(folder / "rows.npy"), deployed, trained, registered], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    outside = json.loads(done.stdout.strip().splitlines()[-1])
    claas = lifecycle["predicted"]["predictions"]
    assert outside["torch"] == claas
    assert outside[deployed] == {"pyfunc": claas, "pytorch": claas}
    rows = lifecycle["rows"]
    expected = in_the_test(pat, "/api/experiments/own-model/model", rows)
    assert outside[trained] == {"pyfunc": expected, "pytorch": expected}
    expected = in_the_test(pat, "/api/models/residual/versions/1/download", rows)
    assert outside[registered] == {"pyfunc": expected, "pytorch": expected}


def test_a_program_version_downloads_as_state_dict_and_pt2_but_not_torchscript(pat, lifecycle):
    assert pat.get("/api/models/residual/versions/1/download?format=pt2").status_code == 200
    refused = pat.get("/api/models/residual/versions/1/download?format=torchscript")
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("An uploaded program has no TorchScript download")


def test_an_experiments_final_model_downloads_as_a_program_that_predicts_like_its_state_dict(pat, lifecycle,
                                                                                            tmp_path):
    rows = lifecycle["rows"]
    for name in ("own-model", "zoo-model"):
        response = pat.get(f"/api/experiments/{name}/model?format=pt2")
        assert response.status_code == 200, response.text[:300]
        assert response.headers["Content-Disposition"].endswith(f'{name}.pt2"')
        (tmp_path / f"{name}.pt2").write_bytes(response.content)
        program = torch.export.load(str(tmp_path / f"{name}.pt2")).module()
        classes = program(torch.tensor(rows)).argmax(1).tolist()
        if name == "own-model":
            assert classes == in_the_test(pat, "/api/experiments/own-model/model", rows)
        assert len(classes) == len(rows)
    assert pat.get("/api/experiments/zoo-model/model?format=torchscript").status_code == 200
    assert pat.get("/api/experiments/own-model/model?format=torchscript").status_code == 400
