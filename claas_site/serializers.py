"""Serializers shared by the apps: registry entries, and request schemas generated from Params.

A request body is declared once, as the `Param`s of claas_site/params.py and the registries'
entries; the functions below turn those declarations into DRF serializers for the OpenAPI
schema (types, bounds, choices, defaults, help), so the schema cannot drift from the checks.
The checks themselves stay with the declarations (`Param.coerce`, `Entry.validate`), which
answer one sentence naming the field.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework import serializers

from claas_site.params import INT_LIST_MAX, PARAM_TYPES, Param, Registry

# Generated classes by name: one class per component, however often a request reuses it.
_GENERATED: dict[str, type[serializers.Serializer]] = {}


class ParamSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=list(PARAM_TYPES))
    default = serializers.JSONField(allow_null=True)
    help = serializers.CharField(allow_blank=True)
    min = serializers.FloatField(required=False)
    max = serializers.FloatField(required=False)
    choices = serializers.ListField(child=serializers.JSONField(), required=False)
    nullable = serializers.BooleanField(required=False)


class RegistryEntrySerializer(serializers.Serializer):
    """One entry of a registry (strategy, benchmark, architecture, optimizer, detector)."""

    name = serializers.CharField()
    help = serializers.CharField(allow_blank=True)
    params = ParamSerializer(many=True)


def param_field(*, param: Param, with_default: bool = True) -> serializers.Field:
    """The DRF field documenting one parameter: its type, bounds, choices, default and help."""
    kwargs: dict[str, Any] = {"required": False, "allow_null": param.nullable}
    if param.help:
        kwargs["help_text"] = param.help
    if with_default:
        kwargs["default"] = list(param.default) if isinstance(param.default, list) else param.default
    bounds = {"min_value": param.min, "max_value": param.max}
    if param.choices is not None:
        return serializers.ChoiceField(choices=list(param.choices), **kwargs)
    if param.type == "int":
        return serializers.IntegerField(**bounds, **kwargs)
    if param.type == "float":
        return serializers.FloatField(**bounds, **kwargs)
    if param.type == "bool":
        return serializers.BooleanField(**kwargs)
    if param.type == "str":
        return serializers.CharField(allow_blank=True, **kwargs)
    if param.type == "int_list":
        return serializers.ListField(child=serializers.IntegerField(**bounds), min_length=1,
                                     max_length=INT_LIST_MAX, **kwargs)
    if param.type == "object":
        fields = params_serializer(component=f"{_camel(param.name)}Option", params=param.fields)
        return fields(**kwargs)
    raise ValueError(f"Unknown parameter type {param.type!r}")  # pragma: no cover - a registry's mistake


def params_serializer(*, component: str, params: Sequence[Param], fields: dict[str, serializers.Field] | None = None,
                      with_defaults: bool = True, help: str = "") -> type[serializers.Serializer]:
    """A Serializer class named `<component>Serializer` with one field per Param, plus `fields`.

    `with_defaults=False` documents options laid over other options (their defaults are those).
    """
    name = f"{component}Serializer"
    if name not in _GENERATED:
        attrs: dict[str, Any] = {p.name: param_field(param=p, with_default=with_defaults) for p in params}
        attrs.update(fields or {})
        attrs["__doc__"] = help or None
        attrs["__module__"] = __name__
        _GENERATED[name] = type(serializers.Serializer)(name, (serializers.Serializer,), attrs)
    return _GENERATED[name]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))


def registry_serializer(*, registry: Registry, component: str, key: str = "name", nested: str | None = None,
                        exclude: Sequence[str] = (), prefix: str | None = None,
                        fields: dict[str, serializers.Field] | None = None,
                        **kwargs: Any) -> PolymorphicProxySerializer:
    """One of the registry's entries, chosen by `key`: a oneOf of one component per entry.

    Each entry's parameters sit beside `key` (`{"name": "sgd", "lr": 0.1}`), or under `nested`
    (`{"name": "replay", "params": {"mem_size": 200}}`). Entries' components are named
    `<prefix><Entry>` (prefix: the component's name), so two requests may share them while
    leaving out different entries. `fields` are added to every entry; `kwargs` go to the field
    (required, ...).
    """
    prefix = component if prefix is None else prefix
    choices: dict[str, type[serializers.Serializer]] = {}
    for name in registry.names():
        if name in exclude:
            continue
        entry = registry.get(name, key)
        own: dict[str, serializers.Field] = {key: serializers.ChoiceField(choices=[name])}
        if nested is None:
            choices[name] = params_serializer(component=f"{prefix}{_camel(name)}", params=entry.params,
                                              fields={**own, **copy.deepcopy(fields or {})}, help=entry.help)
        else:
            inner = params_serializer(component=f"{prefix}{_camel(name)}Params", params=entry.params)
            own[nested] = inner(required=False)
            choices[name] = params_serializer(component=f"{prefix}{_camel(name)}", params=(),
                                              fields={**own, **copy.deepcopy(fields or {})}, help=entry.help)
    return PolymorphicProxySerializer(component_name=component, serializers=choices, resource_type_field_name=key,
                                      **kwargs)
