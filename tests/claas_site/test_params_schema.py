"""The OpenAPI request schemas are generated from the Params that validate the requests, so they match them."""
from __future__ import annotations

from typing import Any

import pytest

from claas_site.params import Param, Registry
from claas_site.serializers import param_field
from clserver.deployments.options import UPDATE_EXCLUDED, UPDATE_PARAMS
from clserver.deployments.services import CREATE_KEYS
from clserver.drift.detectors import DETECTORS, PREPROCESSORS
from clserver.experiments.options import OVERWRITE, TOP_KEYS, TRAINING_KEYS, TRAINING_PARAMS
from clserver.training.benchmarks import BENCHMARKS
from clserver.training.strategies import OPTIMIZERS, STRATEGIES

SETUP = "/base-scenario/setup/"
DEPLOY = "/api/deployments/"
UPDATE = "/api/deployments/{name}/update"


@pytest.fixture
def schema(api) -> dict[str, Any]:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def resolved(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A node with its $ref (and a nullable field's single allOf) followed."""
    while True:
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        elif len(node.get("allOf", ())) == 1:
            node = node["allOf"][0]
        else:
            return node


def body(schema: dict[str, Any], path: str) -> dict[str, Any]:
    operation = schema["paths"][path]["post"]
    return resolved(schema, operation["requestBody"]["content"]["application/json"]["schema"])


def prop(schema: dict[str, Any], node: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        node = resolved(schema, node["properties"][name])
    return node


def one_of(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The choices of a registry field, by entry name."""
    return {name: resolved(schema, {"$ref": ref}) for name, ref in node["discriminator"]["mapping"].items()}


def assert_documents(schema: dict[str, Any], node: dict[str, Any], params: tuple[Param, ...],
                     defaults: bool = True) -> None:
    """Every Param is a property with its type, bounds, choices and (unless laid over others) default."""
    types = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "int_list": "array",
             "object": "object"}
    for param in params:
        field = node["properties"][param.name]
        shape = resolved(schema, field)
        if param.choices is not None:
            assert shape["enum"] == list(param.choices), param.name
        else:
            assert shape["type"] == types[param.type], param.name
        if defaults:  # a default of null is left unsaid
            assert field.get("default") == param.default, param.name
        else:
            assert "default" not in field, param.name
        item = shape["items"] if param.type == "int_list" else shape
        if param.min is not None:
            assert item["minimum"] == param.min, param.name
        if param.max is not None:
            assert item["maximum"] == param.max, param.name
        assert bool(field.get("nullable")) == param.nullable, param.name
        if param.fields:  # an object's own fields, each with its default
            assert_documents(schema, shape, param.fields)


def assert_registry(schema: dict[str, Any], node: dict[str, Any], registry: Registry, nested: str | None = None,
                    leave_out: tuple[str, ...] = ()) -> None:
    choices = one_of(schema, node)
    assert list(choices) == [name for name in registry.names() if name not in leave_out]
    for name, choice in choices.items():
        assert resolved(schema, choice["properties"]["name"])["enum"] == [name]
        entry = registry.get(name, "name")
        params_node = prop(schema, choice, nested) if nested and entry.params else choice
        assert_documents(schema, params_node, entry.params)


def test_setup_lists_every_option_of_options_py(schema):
    setup = body(schema, SETUP)
    assert set(setup["properties"]) == set(TOP_KEYS) | {OVERWRITE.name}
    assert setup["required"] == ["exp_name"]
    assert_documents(schema, setup, (OVERWRITE,))
    training = prop(schema, setup, "training")
    assert "deterministic" in training["properties"]
    assert_documents(schema, training, TRAINING_PARAMS)
    assert set(training["properties"]) == set(TRAINING_KEYS)


def test_setup_lists_every_optimizer_strategy_and_benchmark_with_their_defaults(schema):
    setup = body(schema, SETUP)
    assert_registry(schema, prop(schema, setup, "training", "optimizer"), OPTIMIZERS)
    assert set(OPTIMIZERS.names()) >= {"sgd", "adam", "adamw"}
    assert_registry(schema, prop(schema, setup, "strategy"), STRATEGIES, nested="params")
    assert_registry(schema, prop(schema, setup, "benchmark"), BENCHMARKS)


def test_deployment_create_lists_update_options_detectors_and_the_strategies_an_update_can_use(schema):
    create = body(schema, DEPLOY)
    assert set(create["properties"]) == set(CREATE_KEYS)
    update = prop(schema, create, "update")
    assert_documents(schema, update, UPDATE_PARAMS)
    assert_registry(schema, prop(schema, update, "strategy"), STRATEGIES, nested="params",
                    leave_out=tuple(UPDATE_EXCLUDED))
    assert_documents(schema, prop(schema, update, "training"), TRAINING_PARAMS)
    detector = prop(schema, create, "detector")
    assert_registry(schema, detector, DETECTORS)
    for choice in one_of(schema, detector).values():
        assert_registry(schema, prop(schema, choice, "preprocess"), PREPROCESSORS)


def test_a_manual_update_documents_training_options_without_defaults(schema):
    """They are laid over the deployment's options: what is left out keeps the deployment's value."""
    request = body(schema, UPDATE)
    assert set(request["properties"]) == {"strategy", "training"}
    assert_documents(schema, prop(schema, request, "training"), TRAINING_PARAMS, defaults=False)


@pytest.mark.parametrize("param, kind", [
    (Param("n", "int", 3, min=1, max=9), "IntegerField"),
    (Param("x", "float", 0.5, min=0.0, max=1.0), "FloatField"),
    (Param("b", "bool", False), "BooleanField"),
    (Param("s", "str", "a"), "CharField"),
    (Param("c", "str", "a", choices=["a", "b"]), "ChoiceField"),
    (Param("shape", "int_list", [64], min=1), "ListField"),
    (Param("k", "int", None, nullable=True), "IntegerField"),
])
def test_each_param_type_becomes_a_field_with_its_default(param, kind):
    field = param_field(param=param)
    assert type(field).__name__ == kind
    assert field.default == param.default and field.required is False
    assert field.allow_null is param.nullable
