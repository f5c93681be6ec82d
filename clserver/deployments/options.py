"""A deployment's `update` options (trigger, memory, strategy, training) checked and filled with defaults."""
from __future__ import annotations

from typing import Any

from claas_site.errors import InvalidInput
from claas_site.params import Param, keys_only
from clserver.deployments import data
from clserver.deployments.models import UpdateTrigger
from clserver.experiments.options import training_validate
from clserver.training.strategies import STRATEGIES

# Strategies an update cannot use: they do not continue from the champion's weights.
UPDATE_EXCLUDED = {
    "joint_training": "it trains offline on a whole stream at once",
    "gdumb": "it retrains from scratch on its memory",
    "ensemble": "it grows one model per experience, which a single served model cannot be",
}
UPDATE_PARAMS = (
    Param("trigger", "str", UpdateTrigger.DRIFT.value, "When an update starts by itself.",
          choices=[t.value for t in UpdateTrigger]),
    Param("min_samples", "int", 200, "Labelled samples that must be buffered before an update starts.",
          min=1, max=10_000_000),
    Param("every_n_samples", "int", 1000, "With trigger every_n_samples: buffered samples that start one.",
          min=1, max=10_000_000),
    Param("tolerance", "float", 0.0, "The candidate is promoted when its validation accuracy is at least the "
          "champion's minus this.", min=0.0, max=1.0),
    Param("validation_fraction", "float", 0.2, "Fraction of the buffered data held out to validate on.",
          min=0.05, max=0.5),
    Param("memory_size", "int", 500, "Samples in the replay memory.", min=0, max=1_000_000),
    Param("memory_policy", "str", "reservoir", "How the memory is refreshed after a promotion: a uniform "
          "sample of all data seen (reservoir) or the same per class (class_balanced).",
          choices=data.MEMORY_POLICIES),
)
UPDATE_KEYS = tuple(p.name for p in UPDATE_PARAMS) + ("strategy", "training")
DEFAULT_UPDATE_STRATEGY = {"name": "replay", "params": {}}


def object_or_empty(value: Any, *, where: str) -> dict[str, Any]:
    """A JSON object given at `where`; {} when it was left out."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object.", details={where: type(value).__name__})
    return value


def update_options(*, raw: Any) -> dict[str, Any]:
    """Validate `update` options; the result has every default filled."""
    raw = object_or_empty(raw, where="update")
    keys_only(raw, allowed=UPDATE_KEYS, where="update")
    out = {p.name: (p.coerce(raw[p.name], "update") if p.name in raw else p.default) for p in UPDATE_PARAMS}
    strategy = object_or_empty(raw.get("strategy"), where="update.strategy") or dict(DEFAULT_UPDATE_STRATEGY)
    keys_only(strategy, allowed=("name", "params"), where="update.strategy")
    entry = STRATEGIES.get(strategy.get("name", "replay"), "update.strategy.name")
    if entry.name in UPDATE_EXCLUDED:
        raise InvalidInput(f"update.strategy '{entry.name}' cannot update a deployment: "
                           f"{UPDATE_EXCLUDED[entry.name]}.", details={"update.strategy.name": entry.name})
    given = object_or_empty(strategy.get("params"), where="update.strategy.params")
    params = entry.validate(given, "update.strategy.params")
    if "mem_size" in params and "mem_size" not in given and out["memory_size"] > 0:
        # Replay draws from the deployment's memory: by default, all of it.
        params["mem_size"] = out["memory_size"]
    out["strategy"] = {"name": entry.name, "params": params}
    out["training"] = training_options(raw=raw.get("training"))
    return out


def training_options(*, raw: Any) -> dict[str, Any]:
    """Validate `update.training` (the experiments' training options and an optimizer), defaults filled."""
    raw = object_or_empty(raw, where="update.training")
    return training_validate(raw=raw, where="update.training",
                             optimizer_object=lambda value: object_or_empty(value, where="update.training.optimizer"))


def update_options_override(*, base: dict[str, Any], raw: Any) -> dict[str, Any]:
    """The deployment's options with a manual update's `strategy` / `training` laid over them."""
    raw = object_or_empty(raw, where="request body")
    keys_only(raw, allowed=("strategy", "training"), where="request body")
    merged: dict[str, Any] = {k: v for k, v in base.items() if k not in ("strategy", "training")}
    if "strategy" in raw:
        merged["strategy"] = raw["strategy"]
    else:
        merged["strategy"] = base["strategy"]
    training = dict(base["training"])
    training.update(object_or_empty(raw.get("training"), where="training"))
    merged["training"] = training
    return update_options(raw=merged)

