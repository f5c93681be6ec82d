"""The production loop over HTTP against a live web process and a real worker: drift checks,
an update by replay that is validated and promoted, a diverging one that is rejected,
rollback, and the MLflow aliases that follow the champion."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from tests.service import Client

SOURCE = {"exp_name": "deploy-source", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
          "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
          "strategy": {"name": "replay", "params": {"mem_size": 300}},
          "training": {"epochs": 5, "train_mb_size": 32, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                       "device": "cpu", "seed": 0}}
UPDATE_TRAINING = {"epochs": 10, "train_mb_size": 32, "device": "cpu", "seed": 0,
                   "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
FINISHED = ("promoted", "rejected", "failed", "cancelled")


@pytest.fixture(scope="module")
def dora(service):
    return service.user("dora")


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    """The benchmark's own split. Its test part is held out from the source model's training: half is
    ingested (the no-drift batch), half only evaluated. The deployment validates on the whole test
    part, so the promotion decision sees the ingested half again; the accuracies asserted here
    come from digits no model was trained on."""
    x, y = load_digits_arrays()
    tr, te = stratified_split(y, 0.2, 1)
    order = np.random.RandomState(0).permutation(tr)
    return {"x": x, "y": y, "te_ingest": te[::2], "te_eval": te[1::2],
            "rot_ingest": order[:600], "rot_fresh": order[600:]}


def rotated(x: np.ndarray) -> np.ndarray:
    return rotate_images(x.reshape(-1, 8, 8), 90).reshape(len(x), 64)


@pytest.fixture(scope="module")
def source(dora) -> str:
    assert dora.post("/base-scenario/setup/", SOURCE).status_code == 201
    assert dora.post(f"/base-scenario/dora/exec/{SOURCE['exp_name']}").status_code == 202
    assert dora.wait_status(SOURCE["exp_name"], timeout=300)["status"] == "completed"
    return SOURCE["exp_name"]


def deploy(client, name: str, detector: dict, update: dict) -> dict:
    response = client.post("/api/deployments/", {"name": name, "source": {"exp_name": "deploy-source"},
                                                  "detector": detector, "update": update})
    assert response.status_code == 201, response.text
    return response.json()


def ingest(client, name: str, x: np.ndarray, y: np.ndarray) -> dict:
    response = client.post(f"/api/deployments/{name}/ingest", {"inputs": x.tolist(), "labels": y.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def accuracy(client, name: str, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    response = client.post(f"/api/deployments/{name}/predict", {"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    return float((np.asarray(body["predictions"]) == y).mean()), body["model_version"]


def wait_update(client, name: str, update_id: int, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        updates = {u["id"]: u for u in client.get(f"/api/deployments/{name}").json()["updates"]}
        if updates[update_id]["status"] in FINISHED:
            return updates[update_id]
        time.sleep(0.5)
    raise AssertionError(f"update {update_id} of {name} did not finish in {timeout} s: {updates[update_id]}")


def mlflow_alias(service, registered: str, alias: str, expected: str, timeout: float = 90) -> str:
    """The version an MLflow alias points at, once it reaches `expected` (aliases move in the worker)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{service.data_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    deadline, found = time.time() + timeout, None
    while time.time() < deadline:
        try:
            found = str(client.get_model_version_by_alias(registered, alias).version)
        except MlflowException:
            found = None
        if found == expected:
            return found
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def main(dora, source, digits) -> dict[str, Any]:
    """The `digits` deployment (mmd, updates on drift) before and after the rotated digits arrive."""
    x, y = digits["x"], digits["y"]
    created = deploy(dora, "digits", {"name": "mmd", "p_val": 0.05, "n_permutations": 100},
                     {"trigger": "drift", "min_samples": 200, "tolerance": 0.0, "memory_size": 500,
                      "strategy": {"name": "replay"}, "training": UPDATE_TRAINING})
    fresh_x, fresh_y = rotated(x[digits["rot_fresh"]]), y[digits["rot_fresh"]]
    eval_x, eval_y = x[digits["te_eval"]], y[digits["te_eval"]]
    state: dict[str, Any] = {"created": created, "fresh": (fresh_x, fresh_y), "eval": (eval_x, eval_y)}
    state["before_rotated"] = accuracy(dora, "digits", fresh_x, fresh_y)
    state["before_unrotated"] = accuracy(dora, "digits", eval_x, eval_y)
    state["same"] = ingest(dora, "digits", x[digits["te_ingest"]], y[digits["te_ingest"]])
    state["turned"] = ingest(dora, "digits", rotated(x[digits["rot_ingest"]]), y[digits["rot_ingest"]])
    assert state["turned"]["update"] is not None, state["turned"]
    state["update"] = wait_update(dora, "digits", state["turned"]["update"]["id"])
    state["after_rotated"] = accuracy(dora, "digits", fresh_x, fresh_y)
    state["after_unrotated"] = accuracy(dora, "digits", eval_x, eval_y)
    state["detail"] = dora.get("/api/deployments/digits").json()
    print("\nmain deployment:", {k: v for k, v in state.items() if k.startswith(("before", "after"))},
          "drift p-values:", state["same"]["drift"]["p_val"], state["turned"]["drift"]["p_val"],
          "update:", state["update"]["metrics"], state["update"]["cost"])
    return state


def test_held_out_digits_show_no_drift_and_rotated_digits_do_with_mmd(main, digits):
    same, turned = main["same"]["drift"], main["turned"]["drift"]
    assert same["detector"] == "mmd" and same["is_drift"] is False and same["p_val"] >= 0.05
    assert main["same"]["update"] is None
    assert turned["is_drift"] is True and turned["p_val"] < 0.05 and turned["distance"] > same["distance"]
    checks = main["detail"]["drift_checks"]
    assert [(c["n_samples"], c["is_drift"]) for c in checks] == [(len(digits["te_ingest"]), False), (600, True)]
    assert all(c["threshold"] == 0.05 and c["champion_version"] == 1 for c in checks)


def test_drift_on_rotated_digits_starts_an_update_that_is_promoted_and_keeps_the_past(main, digits):
    assert main["turned"]["update"]["status"] == "queued"
    update = main["update"]
    assert update["status"] == "promoted", update
    buffered = len(digits["te_ingest"]) + len(digits["rot_ingest"])
    assert update["trigger"] == "drift" and update["n_samples"] == buffered and update["candidate_version"] == 2
    assert update["candidate_accuracy"] >= update["champion_accuracy"]
    assert "is at least the champion's" in update["reason"]
    assert main["before_rotated"] == (pytest.approx(main["before_rotated"][0]), 1)
    assert main["before_rotated"][0] < 0.5
    assert main["before_unrotated"][0] >= 0.8
    rotated_after, version = main["after_rotated"]
    assert version == 2 and rotated_after >= 0.8
    assert main["after_unrotated"][0] >= 0.8
    detail = main["detail"]
    assert detail["champion_version"] == 2 and detail["buffered_samples"] == 0
    assert [v["aliases"] for v in detail["versions"]] == [[], ["champion"]]
    assert detail["versions"][1]["memory_size"] == 500 and detail["versions"][1]["origin"] == "update"


def test_each_update_records_its_cost_next_to_retraining_from_scratch(main, digits):
    cost, detail = main["update"]["cost"], main["detail"]
    buffered = len(digits["te_ingest"]) + len(digits["rot_ingest"])
    seen = detail["source_train_samples"] + buffered
    assert detail["source_train_samples"] == len(digits["rot_ingest"]) + len(digits["rot_fresh"])
    assert cost["scratch_samples"] == seen * UPDATE_TRAINING["epochs"]
    assert 0 < cost["samples_processed"] < cost["scratch_samples"]
    assert cost["saving"] == pytest.approx(1 - cost["samples_processed"] / cost["scratch_samples"])
    held_out = round(buffered * 0.2)
    assert cost["train_time_s"] > 0 and cost["new_samples"] == buffered - held_out and cost["memory_samples"] == 500
    assert main["update"]["metrics"]["candidate"]["n_new"] == held_out


def test_a_diverging_update_is_rejected_and_the_champion_keeps_serving(service, dora, source, digits):
    x, y = digits["x"], digits["y"]
    deploy(dora, "digits-ks", {"name": "ks"}, {"trigger": "manual", "min_samples": 100, "training": UPDATE_TRAINING})
    same = ingest(dora, "digits-ks", x[digits["te_ingest"]], y[digits["te_ingest"]])
    assert same["drift"]["detector"] == "ks" and same["drift"]["is_drift"] is False
    turned = ingest(dora, "digits-ks", rotated(x[digits["rot_ingest"][:300]]), y[digits["rot_ingest"][:300]])
    assert turned["drift"]["is_drift"] is True and turned["drift"]["p_val"] < turned["drift"]["threshold"]
    buffered = len(digits["te_ingest"]) + 300
    assert turned["update"] is None and turned["buffered"] == buffered

    before, _ = accuracy(dora, "digits-ks", x[digits["te_eval"]], y[digits["te_eval"]])
    wild = {"training": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 1e4, "momentum": 0.9}}}
    queued = dora.post("/api/deployments/digits-ks/update", wild)
    assert queued.status_code == 202, queued.text
    assert dora.post("/api/deployments/digits-ks/update", wild).status_code == 409
    update = wait_update(dora, "digits-ks", queued.json()["id"])
    assert update["status"] == "rejected", update
    assert update["candidate_accuracy"] < update["champion_accuracy"]
    assert update["reason"].startswith(("Training diverged", "The candidate's validation accuracy"))
    after, version = accuracy(dora, "digits-ks", x[digits["te_eval"]], y[digits["te_eval"]])
    assert version == 1 and after == before
    detail = dora.get("/api/deployments/digits-ks").json()
    assert detail["champion_version"] == 1
    assert [v["aliases"] for v in detail["versions"]] == [["champion"], ["challenger"]]
    # The data was not learned, so it waits in the buffer for a better update.
    assert detail["buffered_samples"] == buffered
    never_served = dora.post("/api/deployments/digits-ks/rollback", {"version": 2})
    assert never_served.status_code == 409 and "never served" in never_served.json()["error"]
    registered = "dora.deploy.digits-ks"
    challenger = detail["versions"][1]["mlflow_version"]
    assert challenger and mlflow_alias(service, registered, "challenger", challenger) == challenger
    champion = detail["versions"][0]["mlflow_version"]
    assert mlflow_alias(service, registered, "champion", champion) == champion


def test_rollback_switches_what_predict_answers_with_and_the_mlflow_alias_follows(service, dora, main):
    fresh_x, fresh_y = main["fresh"]
    versions = {v["version"]: v["mlflow_version"] for v in main["detail"]["versions"]}
    assert versions[1] and versions[2]
    assert mlflow_alias(service, "dora.deploy.digits", "champion", versions[2]) == versions[2]

    response = dora.post("/api/deployments/digits/rollback", {"version": 1})
    assert response.status_code == 200 and response.json()["champion_version"] == 1
    rotated_acc, version = accuracy(dora, "digits", fresh_x, fresh_y)
    assert version == 1 and rotated_acc == pytest.approx(main["before_rotated"][0])
    assert mlflow_alias(service, "dora.deploy.digits", "champion", versions[1]) == versions[1]

    assert dora.post("/api/deployments/digits/rollback", {"version": 2}).status_code == 200
    assert accuracy(dora, "digits", fresh_x, fresh_y) == (pytest.approx(main["after_rotated"][0]), 2)
    assert mlflow_alias(service, "dora.deploy.digits", "champion", versions[2]) == versions[2]
    events = [e["type"] for e in dora.get("/api/deployments/digits/events").json()]
    assert events.count("rollback") == 2 and "validated" in events and "update_progress" in events


def test_predict_answers_alike_on_the_fast_path_and_through_django(service, dora, main):
    """Token calls take the fast path; a request with cookies goes through Django: same answer, same headers."""
    fresh_x = main["fresh"][0][:20]
    fast = dora.post("/api/deployments/digits/predict", {"inputs": fresh_x.tolist()})
    django = dora.post("/api/deployments/digits/predict", {"inputs": fresh_x.tolist()},
                       headers={"Cookie": "theme=dark"})
    assert fast.status_code == django.status_code == 200
    assert fast.json() == django.json() and len(fast.json()["predictions"]) == 20
    for header in ("Content-Type", "Vary", "Allow", "X-Frame-Options", "X-Content-Type-Options",
                   "Referrer-Policy", "Cross-Origin-Opener-Policy"):
        assert fast.headers.get(header) == django.headers.get(header), header


def test_predict_mistakes_on_the_fast_path_still_get_the_api_error_format(service, dora, main):
    rows = main["fresh"][0][:3]
    too_narrow = dora.post("/api/deployments/digits/predict", {"inputs": rows[:, :10].tolist()})
    assert too_narrow.status_code == 400
    assert too_narrow.json()["error"] == ("Each row of inputs must have 64 features (the model's input size); "
                                          "these rows have 10.")
    unknown = dora.post("/api/deployments/nowhere/predict", {"inputs": rows.tolist()})
    assert unknown.status_code == 404 and unknown.json()["error"] == "You have no deployment named 'nowhere'."
    extra = dora.post("/api/deployments/digits/predict", {"inputs": rows.tolist(), "labels": [1, 2, 3]})
    assert extra.status_code == 400 and "predict takes only inputs" in extra.json()["error"]
    not_json = dora.post("/api/deployments/digits/predict", data=b"{inputs", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "error" in not_json.json()
    # Another user's deployment is not there for them; a wrong token is not let in.
    eve = service.user("eve-fast")
    assert eve.post("/api/deployments/digits/predict", {"inputs": rows.tolist()}).status_code == 404
    stranger = Client(service.base_url, "0" * 40)
    refused = stranger.post("/api/deployments/digits/predict", {"inputs": rows.tolist()})
    assert refused.status_code == 401 and refused.json()["error"]


def test_a_rotated_token_no_longer_predicts(service, dora, main):
    rows = main["fresh"][0][:2].tolist()
    old_token = dora.session.headers["Authorization"].split()[1]
    assert dora.post("/api/deployments/digits/predict", {"inputs": rows}).status_code == 200
    rotated_token = dora.post("/api/auth/token/rotate")
    assert rotated_token.status_code == 201
    new_token = rotated_token.json()["token"]
    dora.session.headers["Authorization"] = f"Token {new_token}"
    assert dora.post("/api/deployments/digits/predict", {"inputs": rows}).status_code == 200
    stale = Client(service.base_url, old_token).post("/api/deployments/digits/predict", {"inputs": rows})
    assert stale.status_code == 401 and stale.json()["error"]


def test_the_first_version_is_registered_with_its_validation_figures(service, dora, main):
    from mlflow import MlflowClient

    uri = f"sqlite:///{service.data_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {v["version"]: v for v in dora.get("/api/deployments/digits").json()["versions"]}
    first = versions[1]
    assert first["mlflow_version"]
    registered = client.get_model_version("dora.deploy.digits", first["mlflow_version"])
    assert float(registered.tags["claas.validation_accuracy"]) == pytest.approx(first["validation_accuracy"],
                                                                                rel=1e-5)
    run = client.get_run(registered.run_id)
    assert run.data.metrics["validation_accuracy"] == pytest.approx(first["validation_accuracy"])
    assert run.data.metrics["validation_samples"] > 0
