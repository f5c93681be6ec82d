"""Experiments that start from a registered model, and the models they keep from deletion."""
from __future__ import annotations

import torch

from clserver.models import Experiment, JobStatus
from tests.modelfactory.files import build, saved

SETUP = {"exp_name": "from-registered", "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 1},
         "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}}


def registered_with_two_versions(api, register):
    register("mymodel", seed=1)
    weights = build(seed=33).state_dict()
    response = api.post("/api/models/mymodel/versions/", {"file": saved(weights)}, format="multipart")
    assert response.status_code == 201
    return weights


def test_an_experiment_starts_from_the_registered_versions_weights(api, register):
    from clserver.training.runner import initial_model

    weights = registered_with_two_versions(api, register)
    response = api.post("/base-scenario/setup/", {**SETUP, "model": {"registered": "mymodel", "version": 2}},
                        format="json")
    assert response.status_code == 201, response.json()
    options = response.json()["options"]["model"]
    assert options["registered"] == "mymodel" and options["version"] == 2
    assert options["architecture"] == "simple_mlp" and options["params"]["hidden_size"] == 16

    model = initial_model(Experiment.objects.get(name="from-registered"))
    state = model.state_dict()
    assert list(state) == list(weights)
    for key, value in weights.items():
        assert torch.equal(state[key], value), key


def test_a_model_in_use_by_an_experiment_cannot_be_deleted(api, register):
    registered_with_two_versions(api, register)
    assert api.post("/base-scenario/setup/", {**SETUP, "model": {"registered": "mymodel", "version": 2}},
                    format="json").status_code == 201

    response = api.delete("/api/models/mymodel")
    assert response.status_code == 409
    assert response.json()["error"] == ("Registered model 'mymodel' version 2 is used by experiment "
                                        "'from-registered' (ready); delete that first.")

    Experiment.objects.filter(name="from-registered").update(status=JobStatus.RUNNING)
    response = api.delete("/api/models/mymodel")
    assert response.status_code == 409
    assert "experiment 'from-registered' (running)" in response.json()["error"]

    Experiment.objects.filter(name="from-registered").update(status=JobStatus.COMPLETED)
    assert api.delete("/api/experiments/from-registered").status_code == 204
    assert api.delete("/api/models/mymodel").status_code == 204


def test_another_users_model_cannot_be_used_by_an_experiment(other_api, register):
    register("mymodel")
    response = other_api.post("/base-scenario/setup/", {**SETUP, "model": {"registered": "mymodel"}}, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "model.registered: You have no registered model named 'mymodel'."
