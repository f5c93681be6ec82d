"""The Python client against a live CLaaS, with nothing but the client: a model class defined here is
registered, datasets go up from numpy and from a DataFrame, a replay experiment runs behind a progress
bar, its results come back as numpy and pandas, and a deployment predicts, flags rotated digits, is
updated, rolled back and downloaded. Refusals arrive as ClaasError with the server's sentence."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from sklearn.datasets import load_digits
from torch import nn

from claas_client import ClaasError, Client, Results

EPOCHS, N_EXPERIENCES = 4, 5
TRAINING = {"epochs": EPOCHS, "train_mb_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "device": "cpu", "seed": 0}


class DigitNet(nn.Module):
    """Defined only here: batch norm and dropout, ending in a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 128)
        self.bn = nn.BatchNorm1d(128)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.inp(x)))))


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    order = np.random.RandomState(0).permutation(len(data.target))
    return (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int64)


def turned(x: np.ndarray) -> np.ndarray:
    """The digits rotated by 90 degrees: the same classes, another domain."""
    return np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64).copy()


def client_of(service, username: str) -> Client:
    user = service.user(username)
    return Client(service.base_url, user.session.headers["Authorization"].split()[1])


@pytest.fixture(scope="module")
def claas(service) -> Client:
    return client_of(service, "nora")


@pytest.fixture(scope="module")
def lifecycle(claas: Client, tmp_path_factory) -> dict[str, Any]:
    torch.manual_seed(0)
    x, y = digits()
    state: dict[str, Any] = {"x": x, "y": y}
    state["registered"] = claas.register_model("digitnet", DigitNet(), torch.randn(4, 64), description="mine")
    state["zoo"] = claas.register_architecture("zoo-mlp", "simple_mlp", {"hidden_size": 32})
    state["numpy"] = claas.upload_dataset("digits-np", x, y)
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).assign(digit=y)
    state["frame"] = claas.upload_dataset("digits-df", frame, label="digit")

    claas.setup("replay", model={"registered": "digitnet"},
                benchmark={"name": "dataset", "dataset": "digits-np", "scenario": "class_incremental",
                           "n_experiences": N_EXPERIENCES, "seed": 1},
                strategy={"name": "replay", "params": {"mem_size": 300}}, training=TRAINING)
    bar = io.StringIO()
    state["results"] = claas.run("replay", timeout=600, progress_options={"file": bar, "mininterval": 0})
    state["bar"] = bar.getvalue()
    claas.setup("from-frame", model={"registered": "zoo-mlp"},
                benchmark={"name": "dataset", "dataset": "digits-df", "scenario": "new_instances",
                           "n_experiences": 2, "seed": 1},
                strategy={"name": "naive"}, training={**TRAINING, "epochs": 2})
    state["frame_results"] = claas.run("from-frame", progress=False, timeout=600)

    state["deployed"] = claas.deploy(
        "own", source="replay",
        detector={"name": "mmd", "p_val": 0.05, "n_permutations": 100, "preprocess": {"name": "penultimate"}},
        update={"trigger": "drift", "min_samples": 200, "tolerance": 0.0, "memory_size": 500,
                "strategy": {"name": "replay"}, "training": {**TRAINING, "epochs": 10}})
    held_out = x[-64:]
    state["before"] = claas.predict("own", held_out)
    state["ingests"], state["updates"] = [], []
    for start in (0, 600):  # drifted batches until an update is promoted
        answer = claas.ingest("own", turned(x[start:start + 600]), y[start:start + 600])
        state["ingests"].append(answer)
        if answer["update"] is not None:
            state["updates"].append(claas.wait_update("own", answer["update"]["id"], timeout=600))
            if state["updates"][-1]["status"] == "promoted":
                break
    state["after"] = claas.predict("own", turned(held_out))
    folder = tmp_path_factory.mktemp("downloads")
    state["pt2"] = claas.download("own", state["after"].version, format="pt2", path=folder / "own.pt2")
    state["rolled_back"] = claas.rollback("own", 1)
    state["after_rollback"] = claas.predict("own", turned(held_out))
    state["held_out"] = held_out
    return state


def test_a_model_class_defined_here_registers_as_a_program(lifecycle):
    registered = lifecycle["registered"]
    assert registered["architecture"] == "program"
    assert registered["latest_version"] == 1
    assert registered["description"] == "mine"
    assert lifecycle["zoo"]["architecture"] == "simple_mlp"


def test_numpy_arrays_and_a_dataframe_upload_as_the_same_dataset(lifecycle):
    from_numpy, from_frame = lifecycle["numpy"], lifecycle["frame"]
    assert (from_numpy["n_samples"], from_numpy["n_features"]) == (1797, 64)
    assert (from_frame["n_samples"], from_frame["n_features"]) == (1797, 64)
    assert from_numpy["classes"] == from_frame["classes"] == list(range(10))
    assert from_frame["original_format"] in ("parquet", "csv")


def test_run_follows_the_experiment_to_the_end_of_its_progress_bar(lifecycle):
    total = N_EXPERIENCES * EPOCHS
    assert f"{total}/{total}" in lifecycle["bar"]
    assert "100%" in lifecycle["bar"]


def test_results_come_back_as_a_numpy_matrix_and_a_dataframe(lifecycle):
    results: Results = lifecycle["results"]
    assert results.status == "completed"
    matrix = results.accuracy_matrix
    assert isinstance(matrix, np.ndarray) and matrix.shape == (N_EXPERIENCES, N_EXPERIENCES)
    assert results.final_accuracy == pytest.approx(matrix[-1].mean(), abs=1e-6)
    assert results.final_accuracy >= 0.7
    table = results.to_pandas()
    assert isinstance(table, pd.DataFrame) and len(table) == N_EXPERIENCES
    assert results.raw["metrics"]["accuracy_matrix"] == matrix.tolist()
    assert lifecycle["frame_results"].accuracy_matrix.shape == (2, 2)
    assert lifecycle["frame_results"].final_accuracy > 0.5


def test_the_deployment_flags_rotated_digits_and_promotes_an_update(lifecycle):
    assert lifecycle["before"].version == 1
    assert lifecycle["before"].classes.shape == (64,)
    assert lifecycle["ingests"][0]["drift"]["is_drift"] is True
    assert lifecycle["updates"] and lifecycle["updates"][-1]["status"] == "promoted", lifecycle["updates"]
    assert lifecycle["after"].version == lifecycle["updates"][-1]["candidate_version"] >= 2


def test_a_rollback_serves_version_1_again(lifecycle):
    assert lifecycle["rolled_back"]["champion_version"] == 1
    assert lifecycle["after_rollback"].version == 1


def test_a_downloaded_version_predicts_what_the_deployment_predicted(lifecycle):
    path: Path = lifecycle["pt2"]
    module = torch.export.load(str(path)).module()
    rows = torch.tensor(turned(lifecycle["held_out"]))
    assert module(rows).argmax(1).numpy().tolist() == lifecycle["after"].classes.tolist()


def test_a_registered_version_downloads_as_a_state_dict_of_the_class(claas, lifecycle):
    raw = claas.download_model("digitnet", 1, format="state_dict")
    weights = torch.load(io.BytesIO(raw), weights_only=True)
    model = DigitNet()
    model.load_state_dict(weights)


def test_an_invalid_option_raises_claas_error_with_the_servers_sentence(service, claas, lifecycle):
    bad = {"exp_name": "typo", "model": {"registered": "digitnet"},
           "benchmark": {"name": "split_digits", "n_experiences": 3}}
    with pytest.raises(ClaasError) as raised:
        claas.setup("typo", model=bad["model"], benchmark=bad["benchmark"])
    server = requests.post(service.base_url + "/base-scenario/setup/", json=bad, timeout=30,
                           headers=claas._http.session.headers).json()
    assert raised.value.status_code == 400
    assert raised.value.message == server["error"]
    assert raised.value.details == server["details"]
    assert "n_experiences" in str(raised.value)
    with pytest.raises(ClaasError) as missing:
        claas.predict("no-such-deployment", lifecycle["held_out"][:2])
    assert missing.value.status_code == 404


def test_a_wrong_token_raises_claas_error(service):
    with pytest.raises(ClaasError) as raised:
        Client(service.base_url, "not-a-token").experiments()
    assert raised.value.status_code == 401
    assert raised.value.message
