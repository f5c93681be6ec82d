"""Property tests of the options validator: whatever arrives, it answers options or one clear refusal.

Inputs are drawn from the registries' own parameter schemas (in range, out of range, wrong
type, unknown keys) mixed with arbitrary JSON, so every registry entry is exercised.
"""
from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from claas_site.errors import InvalidInput
from claas_site.params import Param
from clserver.training.benchmarks import BENCHMARKS
from clserver.experiments.options import TOP_KEYS, TRAINING_PARAMS, options_validate
from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from modelfactory.architectures import ARCHITECTURES

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
UNKNOWN = st.sampled_from(["colour", "", "exp_name ", "__class__", "💥"])


def value_for(param: Param) -> st.SearchStrategy[Any]:
    """Mostly values the parameter's schema allows, sometimes values just outside it, sometimes junk."""
    low = param.min if param.min is not None else -10**6
    high = param.max if param.max is not None else 10**6
    if param.type == "int":
        inside = st.integers(int(math.ceil(low)), int(high))
        edges = st.sampled_from([int(math.ceil(low)) - 1, int(high) + 1, 2.0, 3.5, True, "7"])
    elif param.type == "float":
        inside = st.floats(low, high, allow_nan=False)
        edges = st.sampled_from([low - 1, high + 1, float("nan"), float("inf"), "0.1", False])
    elif param.type == "bool":
        inside, edges = st.booleans(), st.sampled_from([0, 1, "true", None])
    elif param.type == "object":
        inside = st.fixed_dictionaries({}, optional={f.name: value_for(f) for f in param.fields})
        edges = st.sampled_from([[], "{}", 1, {"colour": 1}])
    elif param.type == "int_list":
        inside = st.lists(st.integers(int(math.ceil(low)), min(int(high), 64)), min_size=1, max_size=3)
        edges = st.sampled_from([[], [0], [True], list(range(65)), "64", [1.5]])
    else:
        inside = st.sampled_from(list(param.choices)) if param.choices else st.text(max_size=20)
        edges = st.sampled_from([5, None, "NOPE", ["a"]])
    return st.one_of(inside, inside, inside, edges, JSON)


def params_for(entry: Any) -> st.SearchStrategy[dict[str, Any]]:
    known = st.fixed_dictionaries({}, optional={p.name: value_for(p) for p in entry.params})
    return st.one_of(known, known, known, st.builds(lambda d, k, v: {**d, k: v}, known, UNKNOWN, JSON), JSON)


def block(registry: Any, nested: bool) -> st.SearchStrategy[Any]:
    """{"name": ..., "params": {...}} (or the params beside the name, as benchmarks take them)."""
    def one(entry: Any) -> st.SearchStrategy[Any]:
        name = st.one_of(st.just(entry.name), st.just(entry.name), st.sampled_from(["nope", "", 3]))
        if nested:
            return st.fixed_dictionaries({"name": name}, optional={"params": params_for(entry)})
        return st.builds(lambda n, p: {"name": n, **p} if isinstance(p, dict) else {"name": n, "x": p},
                         name, params_for(entry))
    return st.one_of(*[one(e) for e in registry._entries.values()], JSON)


TRAINING = st.one_of(
    st.fixed_dictionaries({}, optional={**{p.name: value_for(p) for p in TRAINING_PARAMS},
                                        "optimizer": st.one_of(
                                            *[st.builds(lambda n, p: {"name": n, **p} if isinstance(p, dict) else p,
                                                        st.just(e.name), params_for(e))
                                              for e in OPTIMIZERS._entries.values()], JSON)}),
    JSON,
)
MODEL = st.one_of(
    *[st.fixed_dictionaries({"architecture": st.just(e.name)}, optional={"params": params_for(e)})
      for e in ARCHITECTURES._entries.values()],
    st.fixed_dictionaries({"registered": st.text(max_size=10)}, optional={"version": JSON}),
    JSON,
)
OPTIONS = st.fixed_dictionaries(
    {"exp_name": st.one_of(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True), JSON)},
    optional={"model": MODEL, "benchmark": block(BENCHMARKS, nested=False), "strategy": block(STRATEGIES, nested=True),
              "training": TRAINING, "from_experiment": st.one_of(st.none(), st.text(max_size=10), JSON)},
)
ANYTHING = st.one_of(OPTIONS, OPTIONS, OPTIONS, st.builds(lambda d, k, v: {**d, k: v}, OPTIONS, UNKNOWN, JSON), JSON)


def one_sentence(message: str) -> bool:
    return bool(message) and message.rstrip().endswith((".", "?", "!")) and "Traceback" not in message


@pytest.mark.django_db
@PROPERTY
@given(raw=ANYTHING)
def test_any_input_gives_options_or_one_clear_refusal(user, raw):
    try:
        validated = options_validate(owner=user, raw=raw)
    except InvalidInput as exc:
        assert one_sentence(exc.message), exc.message
        event("refused")
        return
    event("accepted")
    options = validated.options
    assert set(options) == set(TOP_KEYS)
    assert set(options["training"]) == {p.name for p in TRAINING_PARAMS} | {"optimizer"}
    assert 1 <= options["training"]["epochs"] <= 1000
    # What the validator returns is complete and normal: validating it again changes nothing.
    assert options_validate(owner=user, raw=options).options == options


@pytest.mark.django_db
@PROPERTY
@given(where=st.sampled_from(["options", "model", "strategy", "training", "training.optimizer"]), key=UNKNOWN)
def test_an_unknown_key_anywhere_is_refused_by_name(user, where, key):
    raw: dict[str, Any] = {"exp_name": "e", "model": {"architecture": "simple_mlp"},
                           "strategy": {"name": "naive"}, "training": {"optimizer": {"name": "sgd"}}}
    target = raw
    if where != "options":
        for part in where.split("."):
            target = target[part]
    target[key] = 1
    with pytest.raises(InvalidInput) as refused:
        options_validate(owner=user, raw=raw)
    assert f"unknown key '{key}'" in refused.value.message or f"unknown key {key!r}" in refused.value.message


ALL_PARAMS = [(f"{reg.kind}.{entry.name}.{p.name}", p) for reg in (STRATEGIES, OPTIMIZERS, BENCHMARKS, ARCHITECTURES)
              for entry in reg._entries.values() for p in entry.params] + [(f"training.{p.name}", p)
                                                                             for p in TRAINING_PARAMS]


@pytest.mark.parametrize("label, param", ALL_PARAMS, ids=[label for label, _ in ALL_PARAMS])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_parameter_keeps_to_its_schema(label, param, data):
    value = data.draw(st.one_of(value_for(param), JSON))
    try:
        out = param.coerce(value, "where")
    except InvalidInput as exc:
        assert exc.message.startswith((f"where.{param.name} ", f"where.{param.name}.")), exc.message
        assert one_sentence(exc.message), exc.message
        return
    if value is None:
        assert param.nullable and out is None
        return
    if param.type == "object":  # every field, each kept to its own schema
        assert list(out) == [f.name for f in param.fields]
        return
    expected = {"int": int, "float": float, "bool": bool, "str": str, "int_list": list}[param.type]
    assert type(out) is expected and not (param.type in ("int", "float") and isinstance(value, bool))
    numbers = out if param.type == "int_list" else [out] if param.type in ("int", "float") else []
    for number in numbers:
        assert math.isfinite(number)
        assert param.min is None or number >= param.min
        assert param.max is None or number <= param.max
    if param.choices is not None:
        assert out in param.choices
