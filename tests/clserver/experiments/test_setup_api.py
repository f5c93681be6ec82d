"""Setting up experiments over the API: defaults, conflicts, and every kind of bad input."""
from __future__ import annotations

import pytest

from clserver.models import Experiment

SETUP = "/base-scenario/setup/"


def post(api, body):
    return api.post(SETUP, body, format="json")


def assert_refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "details"}
    assert body["error"].endswith(".") and "\n" not in body["error"] and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


def test_setup_fills_every_default(api, user):
    response = post(api, {"exp_name": "digits-replay"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "ready" and body["exp_name"] == "digits-replay"
    options = body["options"]
    assert options["model"] == {"architecture": "simple_mlp", "params": {
        "num_classes": 10, "input_shape": [64], "hidden_size": 128, "hidden_layers": 1, "drop_rate": 0.5}}
    assert options["benchmark"] == {"name": "split_digits", "n_experiences": 5, "seed": 1, "test_size": 0.2}
    assert options["strategy"] == {"name": "replay", "params": {"mem_size": 200, "policy": "experience_balanced",
                                                                 "batch_size_mem": 0}}
    assert options["training"] == {"epochs": 10, "train_mb_size": 32, "eval_mb_size": 256, "device": "auto",
                                   "seed": 0, "deterministic": False, "early_stopping": None,
                                   "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                            "weight_decay": 0.0}}
    assert options["from_experiment"] is None
    assert body["urls"]["results"] == "/base-scenario/alice/results/digits-replay"


def test_the_name_exists_conflict_and_overwrite(api, user):
    assert post(api, {"exp_name": "twice"}).status_code == 201
    assert_refused(post(api, {"exp_name": "twice"}), 409, "overwrite")
    replaced = post(api, {"exp_name": "twice", "overwrite": True, "strategy": {"name": "naive"}})
    assert replaced.status_code == 201
    assert Experiment.objects.get(name="twice").options["strategy"]["name"] == "naive"


def test_overwrite_of_a_running_experiment_is_refused(api, user):
    post(api, {"exp_name": "busy"})
    Experiment.objects.filter(name="busy").update(status="running")
    assert_refused(post(api, {"exp_name": "busy", "overwrite": True}), 409, "running")


@pytest.mark.parametrize("body, words", [
    ({"exp_name": "x", "strategy": {"name": "magic"}}, ["Unknown strategy 'magic'", "replay"]),
    ({"exp_name": "x", "benchmark": {"name": "imagenet"}}, ["Unknown benchmark 'imagenet'"]),
    ({"exp_name": "x", "model": {"architecture": "transformer"}}, ["Unknown architecture 'transformer'"]),
    ({"exp_name": "x", "training": {"optimizer": {"name": "lbfgs"}}}, ["Unknown optimizer 'lbfgs'"]),
    ({"exp_name": "x", "colour": "blue"}, ["unknown key 'colour'"]),
    ({"exp_name": "x", "training": {"epochz": 3}}, ["unknown key 'epochz'"]),
    ({"exp_name": "x", "strategy": {"name": "ewc", "params": {"mem_size": 10}}}, ["unknown key 'mem_size'", "ewc"]),
    ({"exp_name": "x", "training": {"epochs": 0}}, ["training.epochs must be at least 1"]),
    ({"exp_name": "x", "training": {"epochs": -3}}, ["training.epochs must be at least 1"]),
    ({"exp_name": "x", "training": {"epochs": "ten"}}, ["training.epochs must be an integer"]),
    ({"exp_name": "x", "training": {"optimizer": {"name": "sgd", "lr": -1}}}, ["training.optimizer.lr"]),
    ({"exp_name": "x", "strategy": {"name": "replay", "params": {"mem_size": 100000}}},
     ["mem_size is 100000", "training samples"]),
    ({"exp_name": "x", "benchmark": {"name": "split_digits", "n_experiences": 3}},
     ["n_experiences must divide the 10 classes"]),
    ({"exp_name": "x", "benchmark": {"name": "split_digits", "n_experiences": 11}}, ["at most 10"]),
    ({"exp_name": "x", "benchmark": {"name": "permuted_digits", "n_experiences": 51}}, ["at most 50"]),
    ({"exp_name": "bad name!"}, ["exp_name may contain only letters"]),
    ({"exp_name": "a" * 101}, ["at most 100 characters"]),
    ({}, ["exp_name is required"]),
    ({"exp_name": "x", "training": {"device": "cuda"}}, ["no CUDA device"]),
    ({"exp_name": "x", "training": {"device": "tpu"}}, ["training.device must be auto, cpu, cuda or cuda:N"]),
    ({"exp_name": "x", "training": {"deterministic": "yes"}}, ["training.deterministic must be true or false"]),
    ({"exp_name": "x", "model": {"architecture": "simple_mlp", "params": {"input_shape": [3, 32, 32]}}},
     ["does not fit the benchmark"]),
    ({"exp_name": "x", "model": {"architecture": "simple_mlp", "params": {"num_classes": 5}}},
     ["num_classes is 5"]),
    ({"exp_name": "x", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 1.5}}},
     ["hidden_size must be an integer"]),
    ({"exp_name": "x", "from_experiment": "ghost"}, ["no experiment named 'ghost'"]),
    ({"exp_name": "x", "model": {"registered": "ghost"}}, ["no registered model named 'ghost'"]),
    ({"exp_name": "x", "benchmark": {"name": "dataset", "dataset": "ghost"}}, ["no dataset named 'ghost'"]),
])
def test_bad_options_are_refused_and_nothing_is_created(api, user, body, words):
    assert_refused(post(api, body), 400, *words)
    assert Experiment.objects.count() == 0


def test_a_non_object_body_is_refused(api, user):
    assert_refused(api.post(SETUP, [1, 2], format="json"), 400)
    assert Experiment.objects.count() == 0


def test_username_in_the_path_must_be_the_caller(api, user, other_user):
    post(api, {"exp_name": "mine"})
    for verb, path in [("post", "/base-scenario/bob/exec/mine"), ("get", "/base-scenario/bob/results/mine"),
                       ("get", "/base-scenario/bob/status/mine")]:
        assert_refused(getattr(api, verb)(path), 403, "username in the path")


def test_results_and_status_of_an_unknown_experiment_are_404(api, user):
    assert_refused(api.get("/base-scenario/alice/results/nothing"), 404, "no experiment named 'nothing'")
    assert_refused(api.get("/base-scenario/alice/status/nothing"), 404)
    assert_refused(api.post("/base-scenario/alice/exec/nothing"), 404)


def test_another_users_experiment_is_invisible(api, other_api, user, other_user):
    post(api, {"exp_name": "private"})
    assert_refused(other_api.get("/base-scenario/bob/results/private"), 404)
    assert_refused(other_api.get("/api/experiments/private"), 404)
    assert other_api.get("/api/experiments/").json() == []


def test_from_experiment_must_be_completed(api, user):
    post(api, {"exp_name": "first"})
    assert_refused(post(api, {"exp_name": "second", "from_experiment": "first"}), 400, "is ready, not completed")


def test_registries_list_parameters_and_defaults(api):
    strategies = {s["name"]: s for s in api.get("/api/strategies/").json()}
    replay = {p["name"]: p for p in strategies["replay"]["params"]}
    assert replay["mem_size"]["default"] == 200
    assert replay["policy"]["choices"] == ["experience_balanced", "class_balanced", "reservoir"]
    benchmarks = {b["name"]: b for b in api.get("/api/benchmarks/").json()}
    assert {"split_digits", "permuted_digits", "rotated_digits", "dataset", "split_mnist", "split_fashion_mnist",
            "split_cifar10", "permuted_mnist"} <= set(benchmarks)
    assert {o["name"] for o in api.get("/api/optimizers/").json()} == {"sgd", "adam", "adamw"}


def test_list_detail_delete(api, user):
    post(api, {"exp_name": "one"})
    post(api, {"exp_name": "two"})
    assert [e["exp_name"] for e in api.get("/api/experiments/").json()] == ["two", "one"]
    assert api.get("/api/experiments/one").json()["status"] == "ready"
    assert api.delete("/api/experiments/one").status_code == 204
    assert_refused(api.get("/api/experiments/one"), 404)
    Experiment.objects.filter(name="two").update(status="running")
    assert_refused(api.delete("/api/experiments/two"), 409, "cancel it before deleting")


def test_cancel_of_a_queued_experiment_is_immediate(api, user):
    post(api, {"exp_name": "waiting"})
    Experiment.objects.filter(name="waiting").update(status="queued")
    response = api.post("/api/experiments/waiting/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert_refused(api.post("/api/experiments/waiting/cancel"), 409, "only queued or running")
