"""GET /api/strategies/, /api/optimizers/ and /api/benchmarks/: every key an entry declares, in its order."""
from __future__ import annotations


def test_strategies_name_their_family_and_whether_they_keep_a_memory_or_train_offline(api):
    strategies = {s["name"]: s for s in api.get("/api/strategies/").json()}
    assert list(strategies["replay"]) == ["name", "help", "params", "family", "memory"]
    assert strategies["replay"]["family"] == "rehearsal" and strategies["replay"]["memory"] is True
    assert list(strategies["naive"]) == ["name", "help", "params", "family"]
    assert strategies["joint_training"]["offline"] is True
    assert {s["family"] for s in strategies.values()} == {"baseline", "rehearsal", "regularization"}


def test_an_integer_parameter_keeps_integer_bounds(api):
    response = api.get("/api/benchmarks/")
    digits = next(b for b in response.json() if b["name"] == "split_digits")
    assert list(digits) == ["name", "help", "params", "kind"] and digits["kind"] == "class_incremental"
    n_experiences = next(p for p in digits["params"] if p["name"] == "n_experiences")
    assert list(n_experiences) == ["name", "type", "default", "help", "min", "max"]
    assert b'"name":"n_experiences","type":"int","default":5,"help":"Number of experiences.","min":1,"max":10}' \
        in response.content


def test_optimizers_list_their_parameters_with_float_bounds(api):
    sgd = next(o for o in api.get("/api/optimizers/").json() if o["name"] == "sgd")
    assert list(sgd) == ["name", "help", "params"]
    momentum = next(p for p in sgd["params"] if p["name"] == "momentum")
    assert (momentum["default"], momentum["min"], momentum["max"]) == (0.9, 0.0, 0.999)
