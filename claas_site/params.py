"""Parameter schemas for the registries (architectures, strategies, benchmarks, detectors).

A registry entry declares its parameters once; the same declaration validates user options,
fills defaults, is listed by the API, rendered by the GUI form and turned into the request
schema of OpenAPI (claas_site/serializers.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from claas_site.errors import InvalidInput

PARAM_TYPES = ("int", "float", "bool", "str", "int_list", "object")
# An int_list parameter (e.g. an input shape) holds at most this many entries.
INT_LIST_MAX = 64


def keys_only(obj: dict[str, Any], *, allowed: tuple[str, ...], where: str) -> None:
    """Refuse a key not in `allowed`, naming it and where it was."""
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidInput(f"{where} has unknown key '{unknown[0]}' (allowed: {', '.join(allowed)}).",
                           details={where: {"unknown": unknown}})


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # int | float | bool | str | int_list | object (an object of `fields`)
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    nullable: bool = False
    fields: tuple["Param", ...] = ()

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"Param {self.name!r} has type {self.type!r}; it must be one of {PARAM_TYPES}.")
        if (self.type == "object") != bool(self.fields):
            raise ValueError(f"Param {self.name!r}: an object, and only an object, declares its fields.")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default,
                               "help": self.help}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.nullable:
            out["nullable"] = True
        if self.fields:
            out["fields"] = [f.describe() for f in self.fields]
        return out

    def coerce(self, value: Any, where: str) -> Any:
        label = f"{where}.{self.name}" if where else self.name
        if value is None:
            if self.nullable:
                return None
            raise InvalidInput(f"{label} must not be null.", details={label: "null"})
        if self.type == "bool":
            if not isinstance(value, bool):
                raise InvalidInput(f"{label} must be true or false.", details={label: value})
            out: Any = value
        elif self.type == "int":
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            ):
                raise InvalidInput(f"{label} must be an integer.", details={label: _short(value)})
            out = int(value)
        elif self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"{label} must be a number.", details={label: _short(value)})
            out = float(value)
            if not math.isfinite(out):
                raise InvalidInput(f"{label} must be a finite number.", details={label: str(value)})
        elif self.type == "str":
            if not isinstance(value, str):
                raise InvalidInput(f"{label} must be a string.", details={label: _short(value)})
            out = value
        elif self.type == "int_list":
            if not isinstance(value, list) or not value or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value
            ):
                raise InvalidInput(f"{label} must be a non-empty list of integers.",
                                   details={label: _short(value)})
            if len(value) > INT_LIST_MAX:
                raise InvalidInput(f"{label} may hold at most {INT_LIST_MAX} entries.", details={label: len(value)})
            for v in value:
                self._check_range(v, label)
            return list(value)
        elif self.type == "object":
            if not isinstance(value, dict):
                raise InvalidInput(f"{label} must be an object.", details={label: _short(value)})
            keys_only(value, allowed=tuple(f.name for f in self.fields), where=label)
            return {f.name: (f.coerce(value[f.name], label) if f.name in value else f.default) for f in self.fields}
        else:  # pragma: no cover - a programming error in a registry
            raise ValueError(f"Unknown parameter type {self.type!r}")
        if self.choices is not None and out not in self.choices:
            options = ", ".join(str(c) for c in self.choices)
            raise InvalidInput(f"{label} must be one of: {options}.", details={label: _short(value)})
        if self.type in ("int", "float"):
            self._check_range(out, label)
        return out

    def _check_range(self, value: float, label: str) -> None:
        if self.min is not None and value < self.min:
            raise InvalidInput(f"{label} must be at least {self.min}.", details={label: value})
        if self.max is not None and value > self.max:
            raise InvalidInput(f"{label} must be at most {self.max}.", details={label: value})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Entry:
    """One row of a registry: a name, a builder and its parameters."""

    name: str
    builder: Callable[..., Any]
    params: tuple[Param, ...] = ()
    help: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help,
                "params": [p.describe() for p in self.params], **self.extra}

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, given: Any, where: str) -> dict[str, Any]:
        """Return the full parameter dict (defaults filled); unknown keys are an error."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise InvalidInput(f"{where} must be an object.", details={where: _short(given)})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"{where} has unknown key '{unknown[0]}' for {self.name} (allowed: {allowed}).",
                details={where: {"unknown": unknown}},
            )
        return {name: (p.coerce(given[name], where) if name in given else p.default)
                for name, p in known.items()}


class Registry:
    """A table of name -> Entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, params: Sequence[Param] = (), help: str = "",
                 **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            self._entries[name] = Entry(name, builder, tuple(params), help, dict(extra))
            return builder
        return decorator

    def get(self, name: Any, where: str) -> Entry:
        if not isinstance(name, str) or name not in self._entries:
            names = ", ".join(self._entries)
            raise InvalidInput(f"Unknown {self.kind} '{name}'; choose one of: {names}.",
                               details={where: _short(name)})
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def describe(self) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self._entries.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
